"""Benchmark: N QueryPathInfo round trips from the real Nix client, goalkeeper's daemon vs nix-daemon.

One chroot store of N registered paths is made with goalkeeper's LocalStore
and copied, so both daemons serve equivalent stores (same logical paths, same
database contents). The real client, `nix-store -q --hash P1 ... PN`, asks
QueryPathInfo once per path over one connection (its path-info cache never
hits: the paths are distinct). Both clients must print the same hashes.

    python -m goalkeeper.tools.bench.daemon_queries [--paths 10000] [--runs 3]

Prints the best time of each daemon and the ratio goalkeeper/Nix.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from goalkeeper.store.local import LocalStore
from goalkeeper.store.settings import Settings
from goalkeeper.store.store_config import parse_store_uri

from .register_paths import make_infos

OPTIONS = ["--option", "build-users-group", "", "--option", "substituters", ""]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIX_")}
    env["NIX_USER_CONF_FILES"] = ""
    return env


def make_store(root: str, n: int) -> list[str]:
    """A chroot store at `root` with `n` valid paths (empty files); returns their printed paths."""
    settings = Settings.load(overrides=[("build-users-group", "")])
    with LocalStore.open(parse_store_uri(root), settings) as store:
        infos = make_infos(store.store_dir, n)
        for info in infos:
            with open(store.real_path(info.path), "wb"):
                pass
        for i in range(0, n, 1000):
            store.register_valid_paths(infos[i : i + 1000])
        return [store.print(info.path) for info in infos]


def wait_for_socket(path: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    """Until a daemon accepts connections on `path`; RuntimeError if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = f": {proc.stderr.read().decode()}" if proc.stderr is not None else ""
            raise RuntimeError(f"daemon exited with {proc.returncode}{detail}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"no daemon listening on {path}")


def init_nix_store(root, env: dict) -> None:
    """Create a fresh chroot store's layout before `nix-daemon` serves it: otherwise the
    children it forks for the first connections (wait_for_socket's probe among them) race
    to create it and one fails ("creating symlink ... File exists")."""
    subprocess.run(["nix-store", "--store", str(root), "--init"], env=env, check=True, capture_output=True,
                   stdin=subprocess.DEVNULL, timeout=60)


def start_daemon(kind: str, root: str, sock: str) -> subprocess.Popen:
    env = _env()
    if kind == "nix":
        init_nix_store(root, env)
        env["NIX_DAEMON_SOCKET_PATH"] = sock
        argv = ["nix-daemon", "--store", root, *OPTIONS]
    else:
        argv = [sys.executable, "-m", "goalkeeper.tools.cli", "--store", root, *OPTIONS, "daemon", "--socket", sock,
                "--quiet"]
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for_socket(sock, proc)
    return proc


def stop_daemon(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def query_all(sock: str, root: str, paths: list[str]) -> tuple[float, bytes]:
    """Time `nix-store -q --hash` of every path through the daemon at `sock`."""
    argv = ["nix-store", "--store", f"unix://{sock}?root={root}", *OPTIONS, "-q", "--hash", *paths]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, env=_env(), stdin=subprocess.DEVNULL, timeout=600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"nix-store -q --hash failed: {proc.stderr.decode()[-2000:]}")
    return elapsed, proc.stdout


def bench(n: int, runs: int = 3, workdir: str | None = None) -> float:
    """Run the comparison; returns the ratio of goalkeeper's time to Nix's."""
    top = tempfile.mkdtemp(prefix="gk-daemon-queries-", dir=workdir)
    try:
        paths = make_store(os.path.join(top, "gk"), n)
        shutil.copytree(os.path.join(top, "gk"), os.path.join(top, "nix"), symlinks=True)
        best: dict[str, float] = {}
        outputs: dict[str, bytes] = {}
        for kind in ("nix", "gk"):
            root, sock = os.path.join(top, kind), os.path.join(top, f"{kind}.sock")
            proc = start_daemon(kind, root, sock)
            try:
                query_all(sock, root, paths[:10])  # warm up: the engine's imports, the page cache
                for _ in range(runs):
                    elapsed, out = query_all(sock, root, paths)
                    best[kind] = min(best.get(kind, elapsed), elapsed)
                    outputs[kind] = out
            finally:
                stop_daemon(proc)
        if outputs["gk"] != outputs["nix"] or len(outputs["nix"].splitlines()) != n:
            raise RuntimeError("the two daemons answered differently")
        ratio = best["gk"] / best["nix"]
        print(f"{n} QueryPathInfo round trips over one connection (nix-store -q --hash, best of {runs}):")
        print(f"  nix-daemon:        {best['nix']:.3f} s  ({n / best['nix']:,.0f}/s)")
        print(f"  goalkeeper daemon: {best['gk']:.3f} s  ({n / best['gk']:,.0f}/s)")
        print(f"  ratio goalkeeper/nix: {ratio:.2f}")
        return ratio
    finally:
        shutil.rmtree(top, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    bench(args.paths, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
