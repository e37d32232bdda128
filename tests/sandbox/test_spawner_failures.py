"""A spawn that fails before the child exists fails that build only: the spawner answers
SetupFailed with the step, closes what it had opened, and keeps serving the others."""

from __future__ import annotations

import dataclasses
import errno
import os
import resource
import signal

import pytest

from goalkeeper.sandbox.messages import Exited, SetupFailed, Started
from goalkeeper.sandbox.spec import IdMap, SeccompPolicy, SeccompRule

from .conftest import needs_userns, plain_spec, run_build, sandbox_spec

pytestmark = pytest.mark.timeout(60)


def _events_until(spawner, build_id, kind, events=None):
    events = [] if events is None else events
    while not any(isinstance(e, kind) and e.build_id == build_id for e in events):
        events += spawner.wait_event(20)
    return events


def _fds(pid: int) -> set[int]:
    return {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}


def _limit_leaving(open_fds: set[int], free: int) -> int:
    """The RLIMIT_NOFILE under which exactly ``free`` more fds can be opened."""
    limit = 0
    while free or limit in open_fds:
        if limit not in open_fds:
            free -= 1
        limit += 1
    return limit


@pytest.mark.parametrize(("free", "step"), [(1, "openpty"), (2, "pipe"), (3, "pipe")])
def test_out_of_fds_fails_only_that_build(spawner, tmp_path, free, step):
    spawner.spawn(1, plain_spec(tmp_path, "exec sleep 600"))
    events = _events_until(spawner, 1, Started)
    before = _fds(spawner.pid)
    original = resource.prlimit(spawner.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(spawner.pid, resource.RLIMIT_NOFILE,
                     (_limit_leaving(before, free), original[1]))
    try:
        spawner.spawn(2, plain_spec(tmp_path, "true"))
        events = _events_until(spawner, 2, SetupFailed, events)
    finally:
        resource.prlimit(spawner.pid, resource.RLIMIT_NOFILE, original)
    failed = next(e for e in events if isinstance(e, SetupFailed))
    assert (failed.build_id, failed.step, failed.errno) == (2, step, errno.EMFILE)
    assert _fds(spawner.pid) == before  # nothing opened for build 2 was left behind
    # The spawner still serves: the running build is still there, and new builds start.
    assert run_build(spawner, plain_spec(tmp_path, "exit 7"), build_id=3).exited.exit_status == 7
    spawner.kill(1, signal.SIGTERM)
    events = _events_until(spawner, 1, Exited, events)
    exited = next(e for e in events if isinstance(e, Exited) and e.build_id == 1)
    assert exited.result.signal == signal.SIGTERM
    os.close(events[0].pty_master)


@pytest.mark.parametrize(("policy", "err"), [
    (SeccompPolicy(rules=(SeccompRule(syscall="no_such_syscall", errno=1),)), errno.EINVAL),
    (SeccompPolicy(rules=(), extra_arches=("NO_SUCH_ARCH",)), 0),  # not an OSError
])
def test_bad_seccomp_policy_fails_in_step_seccomp(spawner, tmp_path, policy, err):
    assert run_build(spawner, plain_spec(tmp_path, "true")).exited.exit_status == 0  # it is up
    before = _fds(spawner.pid)
    out = run_build(spawner, dataclasses.replace(plain_spec(tmp_path, "true"), seccomp=policy))
    assert out.spawned is None and out.exited is None
    assert (out.failed.step, out.failed.errno) == ("seccomp", err)
    assert _fds(spawner.pid) == before
    assert run_build(spawner, plain_spec(tmp_path, "exit 3")).exited.exit_status == 3


@needs_userns
@pytest.mark.parametrize("step", ["uid_map", "gid_map"])
def test_id_map_failure_names_its_step_and_file(spawner, tmp_path, step):
    spec = sandbox_spec(tmp_path, "true")
    bad = IdMap(inside=0, outside=os.getuid(), count=0)  # the kernel refuses a 0-id range
    spec = dataclasses.replace(spec, sandbox=dataclasses.replace(spec.sandbox, **{step: bad}))
    spawner.spawn(1, spec)
    events = _events_until(spawner, 1, Exited)  # the half-made child is still reaped
    failed = next(e for e in events if isinstance(e, SetupFailed))
    assert (failed.step, failed.errno) == (step, errno.EINVAL)
    assert failed.message.endswith(f"/{step}") and "/proc/" in failed.message
