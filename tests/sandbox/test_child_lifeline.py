"""A child whose spawner dies during setup exits instead of hanging or running its builder.

A small script plays the spawner: it forks a child that runs ``child.run`` and exits at
once.  The child's stdout (its "pty slave") is a pipe only it holds once the script is
gone, so EOF on the test's read end means the child (and any builder) exited, and the
bytes before EOF tell whether the builder ran.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(30)

_SPAWNER = textwrap.dedent("""
    import os, sys
    from goalkeeper.sandbox import child
    from goalkeeper.sandbox.spec import BuildSpec, IdMap, SandboxSpec
    out_w, scenario = int(sys.argv[1]), sys.argv[2]
    sandbox = None
    if scenario == "id-map":  # wait-for-id-map; plain fork, so nothing is unshared
        sandbox = SandboxSpec(root="/nonexistent", uid_map=IdMap(inside=0, outside=0),
                              gid_map=IdMap(inside=0, outside=0))
    spec = BuildSpec(builder=b"/bin/sh", argv=(b"sh", b"-c", b"echo builder ran"), env=(),
                     build_dir="/", build_dir_in_sandbox="/", cwd="/", sandbox=sandbox,
                     kill_with_parent=scenario == "lifeline")
    setup_r, setup_w = os.pipe2(os.O_CLOEXEC)
    sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
    life_r, life_w = os.pipe2(os.O_CLOEXEC)  # as SpawnerLoop.__init__
    gone_r, gone_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(gone_w)
        os.read(gone_r, 1)  # EOF: the "spawner" has exited, before PDEATHSIG is armed
        child.run(spec, child.ChildFds(pty_slave=out_w, setup_w=setup_w, sync_r=sync_r,
                                       sync_w=sync_w, lifeline_r=life_r, lifeline_w=life_w))
    print(pid, flush=True)
    os._exit(0)
""")


@pytest.mark.parametrize("scenario", ["lifeline", "id-map"])
def test_child_exits_when_the_spawner_dies_during_setup(scenario):
    out_r, out_w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", _SPAWNER, str(out_w), scenario],
                            stdout=subprocess.PIPE, pass_fds=(out_w,))
    os.close(out_w)
    pid = int(proc.stdout.read())
    proc.wait()
    try:
        output = b""
        while True:
            readable, _, _ = select.select([out_r], [], [], 10)
            assert readable, f"the child is stuck in setup ({scenario})"
            chunk = os.read(out_r, 4096)
            if not chunk:
                break
            output += chunk
        assert output == b""  # exited in setup: the builder never ran
    finally:
        os.close(out_r)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
