"""A signal that reaches a child during setup acts on the child as it would on the builder.

The spawner's Python handlers (SIGTERM stops its loop) are inherited by the forked child;
until they are reset, a Kill(SIGTERM) sent during setup would run the spawner's handler in
the child and be lost, and the builder would run anyway.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(30)

_SPAWNER = textwrap.dedent("""
    import json, os, signal, socket
    from goalkeeper.sandbox import child
    from goalkeeper.sandbox.spawner import SpawnerLoop
    from goalkeeper.sandbox.spec import BuildSpec
    ours, theirs = socket.socketpair()
    loop = SpawnerLoop(ours)
    signal.set_wakeup_fd(loop._wake_w)  # the handlers of SpawnerLoop.run
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: loop._stop())
    spec = BuildSpec(builder=b"/bin/sh", argv=(b"sh", b"-c", b"echo builder ran"), env=(),
                     build_dir="/", build_dir_in_sandbox="/", cwd="/")
    out_r, out_w = os.pipe()
    setup_r, setup_w = os.pipe2(os.O_CLOEXEC)
    sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
    pid = loop._cloner.fork(spec)
    if pid == 0:
        os.kill(os.getpid(), signal.SIGTERM)  # = a Kill(SIGTERM) right after the fork
        child.run(spec, child.ChildFds(pty_slave=out_w, setup_w=setup_w, sync_r=sync_r,
                                       sync_w=sync_w, lifeline_r=loop._lifeline_r,
                                       lifeline_w=loop._lifeline_w))
    os.close(out_w)
    _, status = os.waitpid(pid, 0)
    output = b""
    while chunk := os.read(out_r, 4096):
        output += chunk
    print(json.dumps({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                      "output": output.decode(), "running": loop._running,
                      "mask": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, []))}))
""")


def test_sigterm_during_setup_kills_the_child_before_its_builder_runs():
    proc = subprocess.run([sys.executable, "-c", _SPAWNER], capture_output=True, timeout=20)
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    assert result["signal"] == signal.SIGTERM and result["output"] == ""
    # The spawner itself was not signalled, and its own mask is back as it was.
    assert result["running"] is True and result["mask"] == []
