"""Bench: narinfo queries for 800 paths from a binary cache served over loopback HTTP.

    python -m goalkeeper.tools.bench.narinfo_queries [--paths 800] [--threads 128] [--in-process]

Nix issue #5118: ~800 narinfo lookups took 38 s with 8 threads and 0.73 s with
1,000; the target here is <= 0.73 s. The cache (synthetic, signed narinfos) is
served by the stdlib's threading HTTP server with keep-alive, in a separate
process by default so the server does not share the client's GIL (a real cache
is another machine). Prints one line: paths, threads, seconds, found.

`serve_directory` is also the loopback server the tests use.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

from goalkeeper.store.binary_cache import BinaryCache
from goalkeeper.store.hashes import hash_bytes
from goalkeeper.store.narinfo import NarInfo, render
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.paths import StoreDir, StorePath
from goalkeeper.store.signatures import SecretKey, sign_path_info


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection per client thread, as curl reuses them

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as two writes; with Nagle's algorithm the second waits
        # for the client's delayed ACK (40 ms a response). Real servers set this too.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # many clients connect at once


@contextlib.contextmanager
def serve_directory(root: str) -> Iterator[str]:
    """Serve `root` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=root)
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def serve_directory_in_process(root: str) -> Iterator[str]:
    """The same server in a child process (its own GIL); yields the base URL."""
    code = ("import sys; from goalkeeper.tools.bench.narinfo_queries import serve_directory\n"
            "with serve_directory(sys.argv[1]) as url:\n    print(url, flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, root], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        url = proc.stdout.readline().strip()
        if not url:
            raise RuntimeError("the cache server did not start")
        yield url
    finally:
        proc.stdin.close()  # EOF: the server stops
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_cache(root: str, count: int, key: SecretKey | None = None,
               store_dir: StoreDir = StoreDir("/nix/store")) -> list[StorePath]:
    """Write `count` signed narinfos (a chain of references) into a cache at `root`; return their paths."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "nix-cache-info"), "w") as f:
        f.write(f"StoreDir: {store_dir.path}\nWantMassQuery: 1\nPriority: 40\n")
    paths: list[StorePath] = []
    for i in range(count):
        name = f"bench-{i}"
        path = store_dir.make_text_path(name, hash_bytes("sha256", name.encode()))
        refs = frozenset(paths[-2:])
        info = ValidPathInfo(path=path, nar_hash=hash_bytes("sha256", path.base.encode()), nar_size=1000 + i,
                             references=refs)
        if key is not None:
            info = sign_path_info(info, store_dir, key)
        digest = hash_bytes("sha256", b"file" + path.base.encode())
        narinfo = NarInfo(info=info, url=f"nar/{digest.base32()}.nar.xz", compression="xz", file_hash=digest,
                          file_size=500 + i)
        with open(os.path.join(root, f"{path.hash_part}.narinfo"), "w") as f:
            f.write(render(narinfo, store_dir))
        paths.append(path)
    return paths


def query_all(url: str, paths: list[StorePath], threads: int) -> tuple[float, int]:
    """Query every path's narinfo from a fresh substituter (no disk cache); (seconds, how many found)."""
    from goalkeeper.actors.binary_cache_substituter import BinaryCacheSubstituter

    cache = BinaryCache.open(url)
    sub = BinaryCacheSubstituter(cache, store=None, keys={}, disk_cache=None)
    start = time.perf_counter()
    found = sub.query_path_infos(paths, threads=threads)
    return time.perf_counter() - start, len(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=800)
    parser.add_argument("--threads", type=int, default=128)
    parser.add_argument("--in-process", action="store_true", help="run the server in this process (shares the GIL)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gk-bench-cache-") as root:
        paths = make_cache(root, args.paths, SecretKey.generate("bench-1"))
        serve = serve_directory if args.in_process else serve_directory_in_process
        with serve(root) as url:
            seconds, found = query_all(url, paths, args.threads)
    print(f"narinfo queries: {args.paths} paths, {args.threads} threads, {seconds:.3f} s, {found} found")
    return 0 if found == args.paths else 1


if __name__ == "__main__":
    sys.exit(main())
