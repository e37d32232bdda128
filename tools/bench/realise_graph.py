"""Benchmark: realise graphs of trivial builds, goalkeeper vs `nix-store -r` (sandbox off).

    python -m goalkeeper.tools.bench.realise_graph [--nodes 1000] [--shape wide|chain|both] [--jobs 2]
    python -m goalkeeper.tools.bench.realise_graph --scaling [--nodes 1000 10000] [--shape ...]

Compare mode (default): for each shape, two fresh stores get the same
derivations (written by goalkeeper, identical paths since both stores use the
same store directory in turn), then `nix-store -r -j 2` and `goalkeeper
realise -j 2` each run once as a subprocess; prints the wall time per build
of each and the ratio goalkeeper/Nix (target <= 0.5).

Scaling mode (`--scaling`): goalkeeper alone at each node count; prints the
time per goal, which must not grow with the graph (superlinear growth is a bug),
and the peak RSS of the goalkeeper process.

Shapes: `wide` is N-1 leaves and a root over all of them; `chain` is N links,
each an input of the next. Every builder is `/bin/sh -c 'echo … > $out'`.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from goalkeeper.store.content_address import ContentAddress
from goalkeeper.store.derivation import Deferred, Derivation
from goalkeeper.store.derivation_hash import fill_in_outputs
from goalkeeper.store.hashes import sha256
from goalkeeper.store.local import LocalStore
from goalkeeper.store.nar import hash_path
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.paths import DRV_EXTENSION, StorePath
from goalkeeper.store.settings import Settings
from goalkeeper.store.store_config import parse_store_uri

TARGET_RATIO = 0.5
SHAPES = ("wide", "chain")
NO_SANDBOX = ["--option", "build-users-group", "", "--option", "substituters", "", "--option", "sandbox", "false"]
BATCH = 1000  # derivations registered per transaction


def store_uri(root: str) -> str:
    """A sandbox-off local store under `root` (logical dir = real dir = root/store)."""
    return f"local?store={root}/store&state={root}/var/nix&log={root}/var/log/nix"


def create_store(root: str) -> str:
    for d in ("store", "var/nix", "var/log/nix"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    return store_uri(root)


def write_graph(store: LocalStore, shape: str, nodes: int, *, system: str | None = None) -> StorePath:
    """Write a `shape` graph of `nodes` derivations into `store`; return the top derivation.

    The .drv files are written and registered directly, in batches of one
    transaction each (as `nix-instantiate` would register them one by one, but
    thousands of times faster), with exactly the contents Nix would write.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape '{shape}'")
    system = system or Settings().get("system")
    store_dir = store.store_dir
    written: dict[StorePath, Derivation] = {}
    cache: dict = {}  # hashDerivationModulo memo, shared by the whole graph
    batch: list[ValidPathInfo] = []

    def add(name: str, script: str, inputs: list[StorePath]) -> StorePath:
        drv = Derivation(name=name, outputs={"out": Deferred()}, input_drvs={p: frozenset({"out"}) for p in inputs},
                         platform=system, builder="/bin/sh", args=("-c", script),
                         env={"builder": "/bin/sh", "name": name, "system": system})
        drv = fill_in_outputs(store_dir, drv, written.__getitem__, cache)
        text = drv.unparse(store_dir)
        path = drv.drv_path(store_dir, text)
        real = store.real_path(path)
        with open(real, "wb") as f:
            f.write(text)
        os.chmod(real, 0o444)
        os.utime(real, (1, 1))  # canonical mtime, as the store gives every path
        nar_hash, nar_size = hash_path(real)
        batch.append(ValidPathInfo(path=path, nar_hash=nar_hash, nar_size=nar_size, references=drv.references(),
                                   ca=ContentAddress("text", sha256(text))))
        if len(batch) >= BATCH:
            flush()
        written[path] = drv
        return path

    def flush() -> None:
        store.register_valid_paths(batch)
        batch.clear()

    if shape == "wide":
        leaves = [add(f"leaf-{i}", f"echo {i} > $out", []) for i in range(nodes - 1)]
        top = add("root", "echo root > $out", leaves)
    else:
        top = None
        for i in range(nodes):
            top = add(f"link-{i}", f"echo {i} > $out", [top] if top is not None else [])
    flush()
    assert top is not None and top.name.endswith(DRV_EXTENSION)
    return top


@dataclass(frozen=True)
class Run:
    status: int
    seconds: float
    max_rss_kib: int


def timed(argv: list[str], log: str) -> Run:
    """Run `argv` with stdout+stderr to `log`; wall time and the process's own peak RSS (wait4)."""
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from waiting again
    return Run(proc.returncode, seconds, usage.ru_maxrss)


def goalkeeper_argv(uri: str, jobs: int, targets: list[str], options: list[str] = NO_SANDBOX) -> list[str]:
    return [sys.executable, "-m", "goalkeeper.tools.cli", "--store", uri, *options,
            "realise", "-j", str(jobs), *targets]


def nix_argv(uri: str, jobs: int, targets: list[str], options: list[str] = NO_SANDBOX) -> list[str]:
    return ["nix-store", "--store", uri, *options, "-r", "-j", str(jobs), *targets]


def prepared_store(work: str, shape: str, nodes: int) -> tuple[str, str]:
    """A fresh store at work/s with the graph written; (uri, printed top drv path)."""
    root = os.path.join(work, "s")
    uri = create_store(root)
    store = LocalStore.open(parse_store_uri(uri))
    try:
        top = write_graph(store, shape, nodes)
        return uri, store.print(top)
    finally:
        store.close()


def remove_store(root: str) -> None:
    for dirpath, _, _ in os.walk(root):
        os.chmod(dirpath, 0o755)  # store directories are read-only
    shutil.rmtree(root)


def retire_store(work: str) -> None:
    """Move the store at work/s aside, to be removed by `remove_retired_stores`.

    Not removed now: on ext4 without a journal (this machine's), creating a file
    right after thousands were deleted scans past the recently deleted inodes
    (0.8 ms instead of 0.05 ms for a lock file), and the next engine to run would
    pay for the previous one's store.
    """
    retired = os.path.join(work, "retired")
    os.makedirs(retired, exist_ok=True)
    os.rename(os.path.join(work, "s"), os.path.join(retired, str(len(os.listdir(retired)))))


@contextlib.contextmanager
def bench_workdir() -> Iterator[str]:
    """A temporary directory for the runs; the retired stores go with it at the end."""
    with tempfile.TemporaryDirectory(prefix="gk-bench-") as work:
        try:
            yield work
        finally:
            retired = os.path.join(work, "retired")
            if os.path.isdir(retired):
                remove_store(retired)


def run_one(work: str, shape: str, nodes: int, jobs: int, which: str, options: list[str] = NO_SANDBOX) -> Run:
    """Realise a fresh `shape` graph with `which` ("goalkeeper" or "nix"), then retire the store."""
    uri, top = prepared_store(work, shape, nodes)
    argv = (goalkeeper_argv if which == "goalkeeper" else nix_argv)(uri, jobs, [top], options)
    try:
        run = timed(argv, os.path.join(work, f"{which}-{shape}-{nodes}.log"))
        if run.status != 0:
            with open(os.path.join(work, f"{which}-{shape}-{nodes}.log"), "rb") as f:
                tail = f.read()[-2000:].decode(errors="replace")
            raise SystemExit(f"{which} failed on {shape}/{nodes} (exit {run.status}):\n{tail}")
        return run
    finally:
        retire_store(work)


def compile_bytecode() -> None:
    """Write goalkeeper's bytecode, as `pip install` does for a regular install.

    An editable install run with PYTHONDONTWRITEBYTECODE compiles every module from
    source on each start (0.2 s of a `goalkeeper realise`), which is not what a user's
    installed goalkeeper pays; Python still reads bytecode written here.
    """
    for package in ("actors", "sandbox", "store", "protocol", "tools"):
        module = importlib.import_module(f"goalkeeper.{package}")
        compileall.compile_dir(os.path.dirname(module.__file__), quiet=1)


def compare(shapes: list[str], nodes: int, jobs: int, *, options: list[str] = NO_SANDBOX,
            label: str = "sandbox off", target: float = TARGET_RATIO) -> bool:
    """Both engines on the same graphs with `options`; whether every ratio meets `target`."""
    compile_bytecode()
    ok = True
    print(f"realise {nodes} trivial builds, -j {jobs}, {label} (wall time per build)", flush=True)
    with bench_workdir() as work:
        for shape in shapes:
            nix = run_one(work, shape, nodes, jobs, "nix", options)
            gk = run_one(work, shape, nodes, jobs, "goalkeeper", options)
            ratio = gk.seconds / nix.seconds
            ok &= ratio <= target
            print(f"  {shape:5}  nix-store -r {nix.seconds / nodes * 1e3:7.2f} ms  "
                  f"goalkeeper {gk.seconds / nodes * 1e3:7.2f} ms  ratio {ratio:5.2f} "
                  f"({'meets' if ratio <= target else 'misses'} target <= {target})  "
                  f"peak RSS nix {nix.max_rss_kib // 1024} MiB, goalkeeper {gk.max_rss_kib // 1024} MiB",
                  flush=True)
    return ok


def scaling(shapes: list[str], sizes: list[int], jobs: int) -> bool:
    compile_bytecode()
    ok = True
    print(f"goalkeeper realise, -j {jobs}, sandbox off: time per goal by graph size")
    with bench_workdir() as work:
        for shape in shapes:
            per_goal = []
            for nodes in sizes:
                run = run_one(work, shape, nodes, jobs, "goalkeeper")
                per_goal.append(run.seconds / nodes)
                print(f"  {shape:5} {nodes:7} nodes  {run.seconds:8.2f} s  {run.seconds / nodes * 1e3:7.3f} ms/goal  "
                      f"peak RSS {run.max_rss_kib // 1024} MiB")
            growth = per_goal[-1] / per_goal[0]
            # Start-up cost is amortised better by bigger graphs, so linear means growth <= ~1.
            linear = growth <= 1.5
            ok &= linear
            print(f"  {shape:5} per-goal time x{growth:.2f} from {sizes[0]} to {sizes[-1]} nodes "
                  f"({'linear' if linear else 'SUPERLINEAR'})")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m goalkeeper.tools.bench.realise_graph", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", help="graph size(s) (default 1000; --scaling: 1000 10000)")
    parser.add_argument("--shape", choices=("wide", "chain", "both"), default="both")
    parser.add_argument("--jobs", "-j", type=int, default=2)
    parser.add_argument("--scaling", action="store_true", help="goalkeeper alone: time per goal by graph size")
    args = parser.parse_args(argv)
    shapes = list(SHAPES) if args.shape == "both" else [args.shape]
    if args.scaling:
        return 0 if scaling(shapes, args.nodes or [1000, 10000], args.jobs) else 1
    if shutil.which("nix-store") is None:
        parser.error("nix-store is not installed (use --scaling for goalkeeper alone)")
    return 0 if compare(shapes, (args.nodes or [1000])[0], args.jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
