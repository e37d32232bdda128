"""When the engine dies, the spawner and every builder die with it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from .conftest import needs_userns
from .test_spawner import _alive, _wait_for

pytestmark = pytest.mark.timeout(60)

_ENGINE = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    from goalkeeper.sandbox.process import Spawner
    from goalkeeper.sandbox.messages import Started
    from conftest import plain_spec, sandbox_spec
    import pathlib
    tmp = pathlib.Path({tmp!r})
    script = ("D={marker_dir}; sleep 600 & echo $$ $! > $D/pids.tmp; mv $D/pids.tmp $D/pids; "
              "exec sleep 600")
    spec = ({sandboxed} and sandbox_spec or plain_spec)(tmp, script)
    sp = Spawner()
    sp.start()
    sp.spawn(1, spec)
    while not any(isinstance(e, Started) for e in sp.wait_event(20)):
        pass
    with open({tmp!r} + "/spawner", "w") as f:
        f.write(str(sp.pid))
    time.sleep(600)
""")


@pytest.mark.parametrize("sandboxed", [False, pytest.param(True, marks=needs_userns)])
def test_killing_the_engine_kills_the_builders(tmp_path, sandboxed):
    # In the sandbox the builder sees /build; outside it is tmp_path/build.
    build_dir = tmp_path / "build"
    build_dir.mkdir(mode=0o700)
    marker_dir = "/build" if sandboxed else str(build_dir)
    code = _ENGINE.format(tests=os.path.dirname(__file__), tmp=str(tmp_path),
                          marker_dir=marker_dir, sandboxed=sandboxed)
    engine = subprocess.Popen([sys.executable, "-c", code])
    try:
        _wait_for((tmp_path / "spawner").exists, timeout=30)
        _wait_for((build_dir / "pids").exists, timeout=30)
        spawner_pid = int((tmp_path / "spawner").read_text())
        if sandboxed:  # the pids the builder wrote are its namespace's; find the host ones
            # (the spawner's other child is its zygote, in the host's pid namespace)
            builder = next(p for p in _children_of(spawner_pid) if _is_pid_1(p))
            # the pids file exists once `mv` wrote it, but `mv` may still be the shell's
            # child for a moment; then the shell execs the second sleep
            _wait_for(lambda: len(_children_of(builder)) == 1, timeout=10)
            pids = [builder] + _children_of(builder)
        else:
            pids = [int(p) for p in (build_dir / "pids").read_text().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        engine.kill()  # SIGKILL: no cleanup code in the engine runs
        engine.wait()
        _wait_for(lambda: not _alive(spawner_pid), timeout=10)
        for pid in pids:
            _wait_for(lambda: not _alive(pid), timeout=10)
    finally:
        engine.kill()
        engine.wait()


def _children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _is_pid_1(pid: int) -> bool:
    """pid is pid 1 of a namespace of its own (`NSpid: <host pid> 1`)."""
    with open(f"/proc/{pid}/status") as f:
        return any(line.split()[1:] == [str(pid), "1"] for line in f if line.startswith("NSpid:"))
