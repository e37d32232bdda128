"""Store URIs as Nix 2.8 reads them (store-api.cc `openStore`, local-fs-store.hh).

- `local?store=S&state=T&log=L&root=R&real=X`: a local store. `store` is the
  *logical* store dir (it enters every hash); the files live in `real`, by
  default `R/nix/store` under a root, else the logical dir itself.
- a bare absolute path `/R`: `local?root=/R` (a "chroot store": logical dir stays
  `/nix/store`, files in `/R/nix/store`, state in `/R/nix/var/nix`).
- `auto` (the default, or `$NIX_REMOTE`): local if the state dir is writable,
  else the daemon if its socket exists, else local.
- `daemon` and `unix://PATH`: a daemon at the default or given socket.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable

from .errors import StoreError
from .paths import DEFAULT_STORE_DIR, StoreDir

DEFAULT_STATE_DIR = "/nix/var/nix"
DEFAULT_LOG_DIR = "/nix/var/log/nix"

_LOCAL_PARAMS = {"store", "state", "log", "root", "real"}


class BadStoreURI(StoreError):
    """A store URI goalkeeper cannot open, naming the URI."""


@dataclass(frozen=True, slots=True)
class Environment:
    """The environment variables that choose Nix's default directories."""

    store_dir: str = DEFAULT_STORE_DIR
    state_dir: str = DEFAULT_STATE_DIR
    log_dir: str = DEFAULT_LOG_DIR
    remote: str | None = None
    daemon_socket: str | None = None

    @classmethod
    def from_environ(cls, environ: "os._Environ[str] | dict[str, str] | None" = None) -> "Environment":
        env = os.environ if environ is None else environ
        return cls(
            store_dir=env.get("NIX_STORE_DIR") or env.get("NIX_STORE") or DEFAULT_STORE_DIR,
            state_dir=env.get("NIX_STATE_DIR") or DEFAULT_STATE_DIR,
            log_dir=env.get("NIX_LOG_DIR") or DEFAULT_LOG_DIR,
            remote=env.get("NIX_REMOTE") or None,
            daemon_socket=env.get("NIX_DAEMON_SOCKET_PATH") or None,
        )

    @property
    def default_daemon_socket(self) -> str:
        return self.daemon_socket or os.path.join(self.state_dir, "daemon-socket", "socket")


@dataclass(frozen=True, slots=True)
class LocalStoreConfig:
    """Where a local store keeps everything. `store_dir` is logical; `real_store_dir` holds the files."""

    store_dir: StoreDir
    real_store_dir: str
    state_dir: str
    log_dir: str
    root_dir: str = ""
    uri: str = "local"

    @property
    def db_dir(self) -> str:
        return os.path.join(self.state_dir, "db")

    def to_real_path(self, logical: str) -> str:
        """`Store::toRealPath`: the file behind a logical store path (or sub-path)."""
        if self.real_store_dir == self.store_dir.path:
            return logical
        return self.real_store_dir + logical[len(self.store_dir.path) :]


@dataclass(frozen=True, slots=True)
class DaemonStoreConfig:
    """A daemon reached over a Unix socket (client in goalkeeper.protocol)."""

    socket_path: str
    store_dir: StoreDir = field(default_factory=StoreDir)
    uri: str = "daemon"


StoreConfig = LocalStoreConfig | DaemonStoreConfig


def parse_store_uri(
    uri: str | None, env: Environment | None = None, warn: Callable[[str], None] | None = None
) -> StoreConfig:
    """Turn a `--store` URI (None means the `store` setting's default) into a config.

    Follows 2.8's `openStore`: the query is split off first; `auto` honours a
    `state` parameter; any non-URI containing a `/` is a chroot store rooted at
    its absolute path; unknown parameters only warn (`warn`), like Nix.
    """
    env = env or Environment.from_environ()
    if uri is None or uri == "":
        uri = env.remote or "auto"
    base, _, query = uri.partition("?")
    params = _parse_query(query)
    if base == "auto":
        state = params.get("state", env.state_dir)
        if _writable(state) or not os.path.exists(env.default_daemon_socket):
            return _local(env, params, uri, warn)
        return DaemonStoreConfig(env.default_daemon_socket, StoreDir(params.get("store", env.store_dir)), uri)
    if base == "local":
        return _local(env, params, uri, warn)
    if base == "daemon":
        return DaemonStoreConfig(env.default_daemon_socket, StoreDir(params.get("store", env.store_dir)), uri)
    if base.startswith("unix://"):
        path = base[len("unix://") :]
        if not path.startswith("/"):
            raise BadStoreURI(f"store URI '{uri}' must name an absolute socket path")
        return DaemonStoreConfig(path, StoreDir(params.get("store", env.store_dir)), uri)
    if "://" not in base and "/" in base:
        # `isNonUriPath`: a chroot store rooted at the path's absolute form.
        return _local(env, {**params, "root": os.path.abspath(base)}, uri, warn)
    raise BadStoreURI(f"don't know how to open Nix store '{uri}'")


def _parse_query(query: str) -> dict[str, str]:
    """`splitUriAndParams`: `k=v` pairs joined by `&`; items without `=` are ignored, as in Nix."""
    params: dict[str, str] = {}
    for item in query.split("&") if query else ():
        key, sep, value = item.partition("=")
        if sep:
            params[urllib.parse.unquote(key)] = urllib.parse.unquote(value)
    return params


def _local(env: Environment, params: dict[str, str], uri: str,
           warn: Callable[[str], None] | None) -> LocalStoreConfig:
    for key in sorted(params):
        if key not in _LOCAL_PARAMS:
            if warn is not None:
                warn(f"unknown setting '{key}'")
            continue
        if not params[key].startswith("/"):
            raise BadStoreURI(
                f"not an absolute path: '{params[key]}' (parameter '{key}' of store '{uri}')"
            )
    root = os.path.normpath(params["root"]) if params.get("root") else ""
    store_dir = StoreDir(params.get("store", env.store_dir))
    # local-fs-store.hh: under a root, files live in ROOT/nix/store whatever the logical dir.
    state = params.get("state") or (root + DEFAULT_STATE_DIR if root else env.state_dir)
    log = params.get("log") or (root + DEFAULT_LOG_DIR if root else env.log_dir)
    real = params.get("real") or (root + DEFAULT_STORE_DIR if root else store_dir.path)
    return LocalStoreConfig(
        store_dir=store_dir,
        real_store_dir=os.path.normpath(real),
        state_dir=os.path.normpath(state),
        log_dir=os.path.normpath(log),
        root_dir=root,
        uri=uri,
    )


def _writable(path: str) -> bool:
    return os.access(path, os.R_OK | os.W_OK)
