"""Prepared sandboxes: the spawner clones children ahead of the builds that take them."""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import time

import pytest

from goalkeeper.sandbox.messages import Exited, SetupFailed, Spawned, Started
from goalkeeper.sandbox.spec import IdMap

from .conftest import needs_userns, run_build, sandbox_spec
from .test_spawner import _alive, _wait_for
from .test_spawner_failures import _events_until

pytestmark = [needs_userns, pytest.mark.timeout(60)]

PROBE = "id -u; id -g; echo $$; hostname; ls /; [ -t 1 ] && echo tty"


def _until_prepared(spawner, tmp_path, script: str, tries: int = 8, **kw):
    """Builds until one was taken by a prepared child (the spawner refills when idle)."""
    outcomes = []
    for i in range(tries):
        build_dir = tmp_path / f"{script[:4]}{kw}{i}"
        build_dir.mkdir()
        out = run_build(spawner, sandbox_spec(build_dir, script, **kw), build_id=i)
        outcomes.append(out)
        if out.started is not None and out.started.prepared:
            return outcomes
    raise AssertionError("no build was taken by a prepared child")


@pytest.fixture
def dirs(tmp_path):
    for name in ("b0", "b9"):
        (tmp_path / name).mkdir()
    return tmp_path


def test_a_prepared_child_runs_the_build_as_a_fresh_one(spawner, dirs):
    outcomes = _until_prepared(spawner, dirs, PROBE)
    first, last = outcomes[0], outcomes[-1]
    assert not first.started.prepared
    assert first.exited.exit_status == last.exited.exit_status == 0
    assert first.output == last.output
    assert last.output.startswith(b"1000\n100\n1\nlocalhost\n") and last.output.endswith(b"tty\n")


def test_another_namespace_set_is_cloned_directly_and_then_pooled(spawner, dirs):
    _until_prepared(spawner, dirs, "true")
    # A fixed-output build keeps the host network: not what the pool prepared for.
    outcomes = _until_prepared(spawner, dirs, "cat /proc/net/dev | wc -l", fixed_output=True)
    assert not outcomes[0].started.prepared
    assert outcomes[0].output == outcomes[-1].output  # the host's interfaces, both times


def test_concurrent_builds_each_get_their_own_child(spawner, tmp_path):
    # Two at a time, as -j 2: each build is set up once, by one child.
    build_id = 0
    prepared = 0
    for _ in range(6):
        if build_id:  # the pool prepares for the last spec; the zygote answers later
            _wait_for(lambda: len(_waiting_children(spawner)) == 2)
        ids = []
        for _ in range(2):
            build_id += 1
            (tmp_path / str(build_id)).mkdir()
            spawner.spawn(build_id, sandbox_spec(tmp_path / str(build_id), "true"))
            ids.append(build_id)
        events = []
        for i in ids:
            _events_until(spawner, i, Exited, events)
        for e in events:
            if isinstance(e, Spawned):
                os.close(e.pty_master)
        assert not [e for e in events if isinstance(e, SetupFailed)]
        started = [e for e in events if isinstance(e, Started)]
        assert sorted(e.build_id for e in started) == ids
        prepared += sum(e.prepared for e in started)
        exited = [e for e in events if isinstance(e, Exited)]
        assert [e.result.exit_status for e in exited] == [0, 0]
    assert prepared >= 4


def test_the_pool_is_refilled_after_a_lone_builder_not_while_it_runs(spawner, dirs):
    # A clone while the builder runs would make its exit wait for the spawner's thread.
    _until_prepared(spawner, dirs, "true")
    _wait_for(lambda: len(_waiting_children(spawner)) == 2)
    (dirs / "wait").mkdir()
    spec = sandbox_spec(dirs / "wait", "while [ ! -e /build/go ]; do sleep 0.01; done")
    spawner.spawn(50, spec)
    events = _events_until(spawner, 50, Started)
    time.sleep(0.3)  # time enough for a clone, had one been wanted
    assert len(_waiting_children(spawner)) == 2  # the builder and one prepared child
    (dirs / "wait" / "build" / "go").touch()
    events = _events_until(spawner, 50, Exited, events)
    os.close(next(e.pty_master for e in events if isinstance(e, Spawned)))
    assert [e.result.exit_status for e in events if isinstance(e, Exited)] == [0]
    _wait_for(lambda: len(_waiting_children(spawner)) == 2)  # two prepared ones again


def _waiting_children(spawner) -> list[int]:
    """The spawner's children in sandboxes (builders and prepared ones; not its zygote)."""
    return [pid for pid in _children(spawner) if _is_pid_1(pid)]


def _children(spawner) -> list[int]:
    return [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if _ppid(pid) == spawner.pid and _alive(pid)]


def _is_pid_1(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.split()[1:] == [str(pid), "1"] for line in f if line.startswith("NSpid:"))
    except FileNotFoundError:
        return False


def test_setup_failure_after_the_hand_over_names_its_step(spawner, dirs):
    _until_prepared(spawner, dirs, "true")
    spec = sandbox_spec(dirs / "b9", "true", extra_paths=["/does/not/exist"])
    out = run_build(spawner, spec, build_id=99)
    assert out.started is None and out.failed.step == "bind-mount"
    assert out.failed.errno == errno.ENOENT


def test_children_that_cannot_be_prepared_leave_builds_to_direct_clones(spawner, dirs):
    spec = sandbox_spec(dirs / "b0", "true")
    bad = IdMap(inside=0, outside=os.getuid(), count=0)  # the kernel refuses a 0-id range
    spec = dataclasses.replace(spec, sandbox=dataclasses.replace(spec.sandbox, uid_map=bad))
    for i in range(3):
        spawner.spawn(i, spec)
        events = _events_until(spawner, i, Exited)  # the half-made child is still reaped
        failed = [e for e in events if isinstance(e, SetupFailed) and e.build_id == i]
        assert [(e.step, e.errno) for e in failed] == [("uid_map", errno.EINVAL)]


def test_prepared_children_die_with_the_spawner(spawner, dirs):
    _until_prepared(spawner, dirs, "true")
    waiting = []

    def pool_filled() -> bool:
        waiting[:] = _children(spawner)  # the zygote too
        return len(waiting) >= 3

    _wait_for(pool_filled)
    spawner.stop()
    _wait_for(lambda: not any(_alive(pid) for pid in waiting))


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None


def _zygote_ready(spawner, dirs) -> int:
    """Builds until both prepared children are the zygote's (it starts in ~0.1 s; until
    then the spawner clones them itself); the zygote's pid."""
    for i in range(100):
        waiting = _waiting_children(spawner)
        if len(waiting) == 2 and all(_cloned_by_zygote(pid) for pid in waiting):
            [zygote] = [pid for pid in _children(spawner) if not _is_pid_1(pid)]
            return zygote
        (dirs / f"z{i}").mkdir()
        run_build(spawner, sandbox_spec(dirs / f"z{i}", "true"), build_id=1000 + i)
        time.sleep(0.05)
    raise AssertionError("the zygote made no prepared child")


def _cloned_by_zygote(pid: int) -> bool:
    # A clone runs its maker's program until it execs: the zygote's, not the spawner's.
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return b"goalkeeper.sandbox.zygote" in f.read()


def test_the_zygote_makes_the_pool_children_of_the_spawner(spawner, dirs):
    """Cloned with CLONE_PARENT: the spawner's children (it reaps them), made by one more
    child of the spawner outside any sandbox, its zygote: stopped, no refill happens."""
    zygote = _zygote_ready(spawner, dirs)
    os.kill(zygote, signal.SIGSTOP)
    try:
        outcomes = [run_build(spawner, sandbox_spec(dirs / name, "true"), build_id=i)
                    for i, name in enumerate(("b0", "b9"))]
        assert [(o.started.prepared, o.exited.exit_status) for o in outcomes] == [(True, 0)] * 2
        time.sleep(0.3)  # time enough for a clone
        assert _waiting_children(spawner) == []
        # With the zygote's children still to come, a build gets a clone of its own.
        (dirs / "late").mkdir()
        late = run_build(spawner, sandbox_spec(dirs / "late", "true"), build_id=7)
        assert (late.started.prepared, late.exited.exit_status) == (False, 0)
    finally:
        os.kill(zygote, signal.SIGCONT)
    _wait_for(lambda: len(_waiting_children(spawner)) == 2)


def test_without_its_zygote_the_spawner_prepares_children_itself(spawner, dirs):
    zygote = _zygote_ready(spawner, dirs)
    os.kill(zygote, signal.SIGKILL)
    _wait_for(lambda: not _alive(zygote))
    outcomes = [run_build(spawner, sandbox_spec(dirs / name, "true"), build_id=i)
                for i, name in enumerate(("b0", "b9"))]
    assert [o.exited.exit_status for o in outcomes] == [0, 0]
    assert all(o.started.prepared for o in outcomes)  # the two the zygote had made
    _wait_for(lambda: len(_waiting_children(spawner)) == 2)  # and two more, made here
    assert not any(_cloned_by_zygote(pid) for pid in _waiting_children(spawner))
    assert _until_prepared(spawner, dirs / "b0", "true")[0].started.prepared
