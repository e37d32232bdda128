"""Benchmark: realise graphs of trivial *sandboxed* builds, goalkeeper vs `nix-store -r`.

    python -m goalkeeper.tools.bench.realise_sandboxed [--nodes 1000] [--shape wide|chain|both] [--jobs 2]
    python -m goalkeeper.tools.bench.realise_sandboxed --profile [--nodes 200] [--shape chain]

Compare mode (default): as `realise_graph`, but both engines run with `sandbox = true`
(and `build-users-group = ''`, `sandbox-paths = /bin /lib /lib64 /usr` so that /bin/sh
runs in the chroot), in one run; prints the wall time per build of each and the ratio
goalkeeper/Nix (target <= 0.25).

Profile mode (`--profile`): goalkeeper alone, in this process, with the engine's steps
timed from outside (no engine code changes): where a sandboxed build's time goes, per
build -- the chroot and build dir made by start_builder, the spawner's own part (pty,
clone, id maps) and the child's (fork to exec: mounts, pivot_root ...), the builder's run,
registerOutputs (the move out of the chroot included), and the chroot's deletion.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager

from . import realise_graph
from .realise_graph import SHAPES, bench_workdir, prepared_store, retire_store

TARGET_RATIO = 0.25
SANDBOXED = ["--option", "build-users-group", "", "--option", "substituters", "",
             "--option", "sandbox", "true", "--option", "sandbox-paths", "/bin /lib /lib64 /usr"]


def compare(shapes: list[str], nodes: int, jobs: int) -> bool:
    return realise_graph.compare(shapes, nodes, jobs, options=SANDBOXED, label="sandbox = true",
                                 target=TARGET_RATIO)


# -- profile mode ------------------------------------------------------------------------------


class _Timings:
    """Durations (ms) by step name, appended from any thread."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.lock = threading.Lock()

    def add(self, name: str, ms: float) -> None:
        with self.lock:
            self.samples[name].append(ms)


def _wrap(owner, name: str, timings: _Timings, label: str):
    original = getattr(owner, name)

    def timed_call(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            timings.add(label, (time.perf_counter() - t0) * 1e3)

    setattr(owner, name, timed_call)
    return original


@contextmanager
def _instrumented(timings: _Timings):
    """Time the engine's per-build steps by wrapping them (restored on exit)."""
    from goalkeeper.actors import register_outputs, start_builder
    from goalkeeper.sandbox import process
    from goalkeeper.sandbox.messages import Exited, Started

    patched = [(start_builder, "start_builder", "engine: start_builder (build dir + chroot)"),
               (start_builder, "_sandbox", "engine:   of which the chroot (_sandbox)"),
               (start_builder._skeletons, "take", "engine:     of which its skeleton (made ahead)"),
               (register_outputs, "register_outputs", "engine: register_outputs (move out, register)"),
               (start_builder, "delete_build_dir", "engine: delete build dir + chroot")]
    originals = [(owner, name, _wrap(owner, name, timings, label)) for owner, name, label in patched]
    timed_take = start_builder._skeletons.take

    def counted_take(*args, **kwargs):
        ready = timed_take(*args, **kwargs)
        timings.add("engine:     skeleton ready (1) or made (0)", float(ready))
        return ready

    start_builder._skeletons.take = counted_take
    spawned_at: dict[int, float] = {}
    started_at: dict[int, float] = {}
    spawn, read_events = process.Spawner.spawn, process.Spawner.read_events

    def timed_spawn(self, build_id, spec):
        spawned_at[build_id] = time.perf_counter()
        return spawn(self, build_id, spec)

    def timed_read_events(self):
        events = read_events(self)
        now = time.perf_counter()
        for e in events:
            if isinstance(e, Started):
                timings.add("spawner: pty, clone, id maps (spawn_ns)", e.spawn_ns / 1e6)
                timings.add("child: clone to exec (setup_ns)", e.setup_ns / 1e6)
                if e.build_id in spawned_at:
                    started_at[e.build_id] = now
                    timings.add("engine: Spawn sent to Started read",
                                (now - spawned_at[e.build_id]) * 1e3)
            elif isinstance(e, Exited) and e.build_id in started_at:
                timings.add("builder: Started to Exited read", (now - started_at.pop(e.build_id)) * 1e3)
                spawned_at.pop(e.build_id, None)
        return events

    process.Spawner.spawn, process.Spawner.read_events = timed_spawn, timed_read_events
    try:
        yield
    finally:
        process.Spawner.spawn, process.Spawner.read_events = spawn, read_events
        for owner, name, original in originals:
            setattr(owner, name, original)
        del start_builder._skeletons.take  # the class's again


def profile(shapes: list[str], nodes: int, jobs: int) -> bool:
    from goalkeeper.tools import cli

    print(f"goalkeeper realise, {nodes} trivial builds, -j {jobs}, sandbox = true, in-process: "
          "per-build step times (ms; mean, median, p90)")
    with bench_workdir() as work:
        for shape in shapes:
            uri, top = prepared_store(work, shape, nodes)
            timings = _Timings()
            try:
                with _instrumented(timings), open(os.devnull, "wb") as sink:
                    t0 = time.perf_counter()
                    status = cli.main(["--store", uri, *SANDBOXED, "realise", "-j", str(jobs), top],
                                      stdout=sink)
                    seconds = time.perf_counter() - t0
            finally:
                retire_store(work)
            if status != 0:
                raise SystemExit(f"goalkeeper failed on {shape}/{nodes} (exit {status})")
            print(f"  {shape}: {seconds / nodes * 1e3:.2f} ms per build (wall)")
            for label in sorted(timings.samples):
                xs = sorted(timings.samples[label])
                print(f"    {label:48} {statistics.fmean(xs):7.2f} {xs[len(xs) // 2]:7.2f} "
                      f"{xs[int(len(xs) * 0.9)]:7.2f}  (n={len(xs)})")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m goalkeeper.tools.bench.realise_sandboxed",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, help="graph size (default 1000; --profile: 200)")
    parser.add_argument("--shape", choices=("wide", "chain", "both"), default="both")
    parser.add_argument("--jobs", "-j", type=int, default=2)
    parser.add_argument("--profile", action="store_true",
                        help="goalkeeper alone, in-process: where the time goes per build")
    args = parser.parse_args(argv)
    shapes = list(SHAPES) if args.shape == "both" else [args.shape]
    if args.profile:
        return 0 if profile(shapes, args.nodes or 200, args.jobs) else 1
    if shutil.which("nix-store") is None:
        parser.error("nix-store is not installed (use --profile for goalkeeper alone)")
    return 0 if compare(shapes, args.nodes or 1000, args.jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
