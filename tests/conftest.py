"""Shared fixtures: run goalkeeper in-process, run real Nix, and scratch stores for both.

Fixtures (all function-scoped):
    gk(*argv) -> GkResult(status, stdout, stderr)
        `goalkeeper.tools.cli.main(argv)` in-process, output captured as bytes.
    run_nix(*argv, input=None, check=True, timeout=120) -> subprocess.CompletedProcess
        A real Nix binary (`argv[0]` is e.g. "nix-store"); stdout/stderr are bytes.
        With check=True a non-zero exit fails the test, showing stderr.
        Skips the test if the Nix binaries are not installed.
    local_store, chroot_store -> ScratchStore
        Empty stores under tmp_path for both Nix and goalkeeper:
        `local?store=T/store&state=T/var/nix&log=T/var/log/nix` (logical store dir
        T/store) and a chroot store `T` (logical /nix/store, files in T/nix/store).
        `.args` is `["--store", uri, "--option", "build-users-group", ""]`, valid for
        both `gk(*store.args, ...)` and `run_nix("nix-store", *store.args, ...)`.
    nix_store_args -> local_store.args

Every test runs without NIX_REMOTE, NIX_CONFIG, NIX_STORE_DIR, NIX_STATE_DIR,
NIX_LOG_DIR and with no user nix.conf (NIX_USER_CONF_FILES=""), for goalkeeper
and real Nix alike; the machine's /etc/nix/nix.conf still applies to both.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

NIX_BINARIES = ("nix", "nix-store", "nix-instantiate", "nix-hash")
_LEAKY_ENV = ("NIX_REMOTE", "NIX_CONFIG", "NIX_STORE_DIR", "NIX_STORE", "NIX_STATE_DIR", "NIX_LOG_DIR",
              "NIX_CONF_DIR", "NIX_DAEMON_SOCKET_PATH")


@dataclass(frozen=True)
class GkResult:
    status: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True)
class ScratchStore:
    """A store under tmp_path usable by real Nix and goalkeeper alike."""

    uri: str
    store_dir: str  # logical: what store paths start with
    real_store_dir: str  # where the files are
    state_dir: str
    log_dir: str

    @property
    def args(self) -> list[str]:
        return ["--store", self.uri, "--option", "build-users-group", ""]


@pytest.fixture(autouse=True)
def _hermetic_nix_env(monkeypatch):
    for name in _LEAKY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NIX_USER_CONF_FILES", "")


@pytest.fixture
def gk():
    from goalkeeper.tools.cli import main

    def run(*argv: str) -> GkResult:
        out, err = io.BytesIO(), io.BytesIO()
        status = main([str(a) for a in argv], stdout=out, stderr=err)
        return GkResult(status, out.getvalue(), err.getvalue())

    return run


@pytest.fixture
def run_nix():
    missing = [b for b in NIX_BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(f"real Nix binaries not installed: {', '.join(missing)}")

    def run(*argv: str, input: bytes | None = None, check: bool = True, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(a) for a in argv], input=input, capture_output=True,
                              timeout=timeout, env=env, stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            pytest.fail(f"{' '.join(map(str, argv))} exited {proc.returncode}:\n"
                        f"{proc.stderr.decode(errors='replace')}")
        return proc

    return run


@pytest.fixture
def local_store(tmp_path: Path) -> ScratchStore:
    root = tmp_path / "local"
    store, state, log = root / "store", root / "var" / "nix", root / "var" / "log" / "nix"
    for d in (store, state, log):
        d.mkdir(parents=True)
    uri = f"local?store={store}&state={state}&log={log}"
    return ScratchStore(uri, str(store), str(store), str(state), str(log))


@pytest.fixture
def chroot_store(tmp_path: Path) -> ScratchStore:
    root = tmp_path / "chroot"
    root.mkdir()
    return ScratchStore(str(root), "/nix/store", f"{root}/nix/store", f"{root}/nix/var/nix",
                        f"{root}/nix/var/log/nix")


@pytest.fixture
def nix_store_args(local_store: ScratchStore) -> list[str]:
    return local_store.args
