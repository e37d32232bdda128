"""Fixtures of the daemon tests: goalkeeper's daemon in-process, and a real daemon process
(`nix-daemon` or `goalkeeper daemon`) on its own chroot store for the real Nix client."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from goalkeeper.store.local import LocalStore
from goalkeeper.store.settings import Settings
from goalkeeper.store.store_config import parse_store_uri
from goalkeeper.tools.bench.daemon_queries import init_nix_store, wait_for_socket
from goalkeeper.tools.daemon import Daemon, listen


@pytest.fixture
def daemon(tmp_path):
    """goalkeeper's daemon in this process on a fresh chroot store, serving `daemon.socket_path`;
    its notes (the daemon's own log) collect in `daemon.notes`."""
    store = LocalStore.open(parse_store_uri(str(tmp_path / "root")), Settings.load())
    d = Daemon(store, Settings.load(overrides=[("build-users-group", "")]))
    d.notes = []
    d.note = d.notes.append
    path = str(tmp_path / "sock")
    sock = listen(path)
    thread = threading.Thread(target=d.serve_socket, args=(sock,), daemon=True)
    thread.start()
    d.socket_path = path
    yield d
    d.close()
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    thread.join(10)


LEAKY_ENV = ("NIX_REMOTE", "NIX_CONFIG", "NIX_STORE_DIR", "NIX_STORE", "NIX_STATE_DIR", "NIX_LOG_DIR",
             "NIX_CONF_DIR", "NIX_DAEMON_SOCKET_PATH")
# A diverted (chroot) store forces the sandbox; the builders need /bin/sh inside it.
DAEMON_OPTIONS = ["--option", "build-users-group", "", "--option", "substituters", "",
                  "--option", "sandbox-paths", "/bin /lib /lib64 /usr"]
CLIENT_OPTIONS = ["--option", "build-users-group", "", "--option", "substituters", ""]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    env["NIX_USER_CONF_FILES"] = ""
    return env


class DaemonSide:
    """One daemon and its store; `run(...)` runs a Nix client command against it; `env`: the
    environment its clients run in."""

    def __init__(self, name: str, root: Path, proc: subprocess.Popen, sock: str):
        self.name, self.root, self.proc, self.sock = name, root, proc, sock
        self.uri = f"unix://{sock}?root={root}"
        self.env = _env()

    def run(self, *argv, check=True, timeout=30) -> subprocess.CompletedProcess:
        cmd = [str(argv[0]), "--store", self.uri, *CLIENT_OPTIONS, *map(str, argv[1:])]
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, env=self.env, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            pytest.fail(f"[{self.name}] {' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr.decode()}")
        return proc

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _start(name: str, top: Path) -> DaemonSide:
    root = top / name
    root.mkdir()
    sock = str(top / f"{name}.sock")
    env = _env()
    if name == "nix":
        init_nix_store(root, env)
        env["NIX_DAEMON_SOCKET_PATH"] = sock
        argv = ["nix-daemon", "--store", str(root), *DAEMON_OPTIONS]
    else:
        argv = [sys.executable, "-m", "goalkeeper.tools.cli", "--store", str(root), *DAEMON_OPTIONS,
                "daemon", "--socket", sock, "--quiet"]
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    wait_for_socket(sock, proc, timeout=20)
    return DaemonSide(name, root, proc, sock)


@contextlib.contextmanager
def _pair(top: Path):
    if shutil.which("nix-daemon") is None:
        pytest.skip("real Nix is not installed")
    started: list[DaemonSide] = []
    try:
        for name in ("nix", "gk"):
            started.append(_start(name, top))
        yield started
    finally:
        for side in started:
            side.stop()


@pytest.fixture(scope="session")
def daemon_pair_on():
    """`with daemon_pair_on(top) as (nix, gk):` both daemons on stores under ``top``, stopped at the end."""
    return _pair


@pytest.fixture
def daemon_pair(tmp_path):
    """(tmp_path, [nix side, goalkeeper side]): both daemons for one test."""
    with _pair(tmp_path) as pair:
        yield tmp_path, pair


@pytest.fixture(scope="session")
def start_daemon_side():
    """`start(name, top)`: "nix" starts nix-daemon, "gk" goalkeeper's daemon, on ``top/name``
    (a chroot store) listening on ``top/name.sock``; returns its `DaemonSide` (stop it)."""
    return _start
