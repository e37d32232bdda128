"""Benchmark: NAR-hash a large tree with goalkeeper and with `nix-hash`, and compare.

    python -m goalkeeper.tools.bench.hash_tree [--size-mb 300] [--dir DIR] [--runs 3]

Builds a tree of about `--size-mb` MB (a few big files, thousands of small files
in nested directories, symlinks, executables) in a temporary directory that is
removed afterwards, or in `--dir` (kept, and reused if it already exists).
The page cache is warmed first; each contender runs `--runs` times and the best
time counts. Both must print the same sha256; the ratio goalkeeper/nix of
throughputs is the figure of merit (target >= 0.9).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

from goalkeeper.store.nar import hash_path

BIG_SHARE = 0.7  # fraction of the bytes in the big files
BIG_FILES = 4
SMALL_MEAN = 24 * 1024  # mean size of the small files
FILES_PER_DIR = 40
TARGET_RATIO = 0.9


def build_tree(root: str, size_mb: int, seed: int = 1) -> tuple[int, int]:
    """Create the benchmark tree under `root`; return (bytes of file contents, number of entries)."""
    rng = random.Random(seed)
    total = size_mb * 1024 * 1024
    os.makedirs(root)
    written = entries = 0
    big = int(total * BIG_SHARE)
    for i in range(BIG_FILES):
        size = big // BIG_FILES + rng.randrange(-4096, 4096)
        written += _write(os.path.join(root, f"big-{i}.bin"), size, rng)
        entries += 1
    dirs = [root]
    while written < total:
        if len(dirs) == 1 or rng.random() < 1 / FILES_PER_DIR:
            parent = rng.choice(dirs[-20:])
            d = os.path.join(parent, f"dir {len(dirs)}" if rng.random() < 0.1 else f"d{len(dirs)}")
            os.mkdir(d)
            dirs.append(d)
            entries += 1
        d = dirs[-1] if rng.random() < 0.8 else rng.choice(dirs)
        name = os.path.join(d, f"{'.' if rng.random() < 0.05 else ''}f{entries}")
        size = min(int(rng.expovariate(1 / SMALL_MEAN)), total - written)
        written += _write(name, size, rng)
        if rng.random() < 0.1:
            os.chmod(name, 0o755)
        if rng.random() < 0.05:
            target = os.path.relpath(name, d) if rng.random() < 0.5 else "/nonexistent/target"
            os.symlink(target, name + ".link")
            entries += 1
        entries += 1
    return written, entries


def _write(path: str, size: int, rng: random.Random) -> int:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 22)
            f.write(rng.randbytes(n))
            left -= n
    return size


def _best_interleaved(contenders: dict, runs: int) -> dict[str, tuple[float, str]]:
    """Run every contender once per round, `runs` rounds; keep each one's best time.

    Interleaving keeps load from other processes from favouring whoever ran first.
    """
    best: dict[str, tuple[float, str]] = {name: (float("inf"), "") for name in contenders}
    for _ in range(runs):
        for name, fn in contenders.items():
            start = time.perf_counter()
            result = fn()
            elapsed = time.perf_counter() - start
            best[name] = min(best[name], (elapsed, result))
    return best


def _run(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def bench(root: str, runs: int, command: bool) -> float:
    """Time every contender on `root`, print the figures, return the in-process ratio."""
    nar_size = hash_path(root)[1]  # also warms the page cache
    _run(["nix-hash", "--type", "sha256", "--base32", root])
    mb = nar_size / 1e6
    contenders = {
        "nix-hash --type sha256 --base32": lambda: _run(["nix-hash", "--type", "sha256", "--base32", root]),
        "goalkeeper hash_path (in-process)": lambda: hash_path(root)[0].base32(),
    }
    if command:
        cmd = [sys.executable, "-m", "goalkeeper.tools.cli", "hash-path", root]
        contenders["goalkeeper hash-path (command)"] = lambda: _run(cmd)
    best = _best_interleaved(contenders, runs)
    print(f"NAR size: {mb:.1f} MB, best of {runs} interleaved runs each")
    for name, (elapsed, result) in best.items():
        print(f"{name:36} {elapsed:.3f} s  {mb / elapsed:7.1f} MB/s  {result}")
    t_nix, h_nix = best["nix-hash --type sha256 --base32"]
    for name, (_, result) in best.items():
        if result != h_nix:
            raise SystemExit(f"hash mismatch: {name} printed {result}, nix-hash {h_nix}")
    ratio = t_nix / best["goalkeeper hash_path (in-process)"][0]
    print(f"throughput ratio goalkeeper/nix (in-process): {ratio:.3f}  (target >= {TARGET_RATIO})")
    if command:
        print(f"throughput ratio goalkeeper/nix (command, incl. interpreter start): "
              f"{t_nix / best['goalkeeper hash-path (command)'][0]:.3f}")
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m goalkeeper.tools.bench.hash_tree", description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=300, help="size of the tree's file contents (default 300)")
    parser.add_argument("--dir", help="build the tree here and keep it (reused if it exists)")
    parser.add_argument("--runs", type=int, default=3, help="runs per contender; the best counts (default 3)")
    parser.add_argument("--no-command", action="store_true", help="skip timing the `goalkeeper hash-path` command")
    args = parser.parse_args(argv)
    tmp = None
    if args.dir:
        root = os.path.abspath(args.dir)
    else:
        tmp = tempfile.mkdtemp(prefix="goalkeeper-bench-")
        root = os.path.join(tmp, "tree")
    try:
        if not os.path.exists(root):
            start = time.perf_counter()
            size, entries = build_tree(root, args.size_mb)
            print(f"built {root}: {size / 1e6:.1f} MB in {entries} entries ({time.perf_counter() - start:.1f} s)")
        ratio = bench(root, args.runs, not args.no_command)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp)
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
