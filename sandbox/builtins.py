"""Nix 2.8's builtin builders: `builtin:fetchurl`, `builtin:buildenv`, `builtin:unpack-channel`.

Nix runs a builtin in the forked child once the build environment is set up (the
sandbox, the build directory as working directory), where another builder would be
exec'd (`runChild`). It sees the derivation's own environment with the input
rewrites applied, not initEnv's. A failure is written to stderr as Nix prints its
errors ("error: unable to download '…': …") and the child exits 1, so the goal
reports "builder for '…' failed with exit code 1".

`run_in_child` is what the spawner's child calls; this module and what it imports
are loaded by the spawner before it forks (the child may already be inside a
chroot without Python's files).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Mapping

from goalkeeper.store import compression, nar
from goalkeeper.store.errors import StoreError
from goalkeeper.store.hashes import Hash

from .buildenv import BuildenvError, builtin_buildenv
from .file_transfer import DownloadError, download
from .spec import BuiltinSpec


class BuiltinError(Exception):
    """A builtin builder failed; `message` is Nix's text (without "error: ")."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def run_builtin(spec: BuiltinSpec, warn: Callable[[str], None]) -> None:
    """Run the builtin in the current directory (the build dir); BuiltinError on failure."""
    try:
        if spec.builder == "builtin:fetchurl":
            builtin_fetchurl(spec, warn)
        elif spec.builder == "builtin:buildenv":
            builtin_buildenv(dict(spec.env), warn)
        elif spec.builder == "builtin:unpack-channel":
            builtin_unpack_channel(dict(spec.env))
        else:
            raise BuiltinError(f"unsupported builtin builder '{spec.builder[len('builtin:'):]}'")
    except (BuildenvError, DownloadError) as err:
        raise BuiltinError(err.message) from err
    except StoreError as err:
        raise BuiltinError(str(err)) from err


def run_in_child(spec: BuiltinSpec) -> int:
    """The child's end of a builtin build: run it, say why it failed on stderr; the exit status."""

    def warn(text: str) -> None:
        os.write(2, f"warning: {text}\n".encode())

    try:
        run_builtin(spec, warn)
    except BuiltinError as err:
        os.write(2, f"error: {err.message}\n".encode())
        return 1
    except Exception as err:  # std::exception in Nix: its what(), still exit 1
        os.write(2, f"error: {err}\n".encode())
        return 1
    return 0


def builtin_fetchurl(spec: BuiltinSpec, warn: Callable[[str], None]) -> None:
    """`builtinFetchurl`: the URL (or a hashed mirror) into `$out`, a file or an unpacked NAR."""
    env = dict(spec.env)
    netrc_file = None
    if spec.netrc_data:
        # curl wants a file; Nix writes it into the build directory
        netrc_file = "netrc"
        fd = os.open(netrc_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(spec.netrc_data)
    store_path = _attr(env, "out")
    main_url = _attr(env, "url")
    unpack = env.get("unpack") == "1"

    def fetch(url: str) -> None:
        if unpack:
            _fetch_nar(url, store_path, xz=main_url.endswith(".xz"), netrc_file=netrc_file,
                       tries=spec.download_attempts, warn=warn)
        else:
            with open(store_path, "wb") as f:
                download(url, f.write, netrc_file=netrc_file, tries=spec.download_attempts, warn=warn)
        if env.get("executable") == "1":
            try:
                os.chmod(store_path, 0o755)
            except OSError as err:
                raise BuiltinError(f"making '{store_path}' executable: {err.strerror}") from err

    if _attr(env, "outputHashMode") == "flat":
        for mirror in spec.hashed_mirrors:
            try:
                if not mirror.endswith("/"):
                    mirror += "/"
                h = Hash.parse_any(_attr(env, "outputHash"), _attr(env, "outputHashAlgo") or None)
                fetch(f"{mirror}{h.algo}/{h.base16()}")
                return
            except (BuiltinError, DownloadError, StoreError):
                pass  # Nix only says so at debug level, then tries the next one
    fetch(main_url)


def _fetch_nar(url: str, store_path: str, *, xz: bool, netrc_file: str | None, tries: int,
               warn: Callable[[str], None]) -> None:
    """Download a NAR (xz-compressed if the URL says so) and restore it at `store_path`."""
    # A NAR is small next to a build's disk; keeping it whole keeps restore_path simple
    # (restorePath reads from curl's stream in Nix; the result is the same tree).
    pieces: list[bytes] = []
    download(url, pieces.append, netrc_file=netrc_file, tries=tries, warn=warn)
    data = b"".join(pieces)
    if xz:
        data = b"".join(compression.stream(compression.make_decompressor("xz"), [data]))
    nar.restore_path(store_path, io.BytesIO(data))


def builtin_unpack_channel(env: Mapping[str, str]) -> None:
    """`builtinUnpackChannel`: unpack the tarball `src`; its one top entry becomes `channelName`."""
    out = _attr(env, "out")
    channel_name = _attr(env, "channelName")
    src = _attr(env, "src")
    os.makedirs(out, exist_ok=True)
    try:
        with tarfile.open(src) as archive:  # any compression, as libarchive's filter_all
            # libarchive's SECURE_SYMLINKS and SECURE_NODOTDOT: nothing outside `out`
            archive.extractall(out, filter="tar")
    except (tarfile.TarError, OSError) as err:
        raise BuiltinError(f"failed to extract archive ({err})") from err
    entries = os.listdir(out)
    if len(entries) != 1:
        raise BuiltinError(f"channel tarball '{src}' contains more than one file")
    try:
        os.rename(f"{out}/{entries[0]}", f"{out}/{channel_name}")
    except OSError as err:
        raise BuiltinError(f"renaming channel directory: {err.strerror}") from err


def _attr(env: Mapping[str, str], name: str) -> str:
    if name not in env:
        raise BuiltinError(f"attribute '{name}' missing")
    return env[name]
