"""Unsandboxed builds through the spawner: exit statuses, signals, the pty, setup errors."""

from __future__ import annotations

import errno
import os
import signal

import pytest

from goalkeeper.sandbox.messages import Exited, Started
from goalkeeper.sandbox.spec import ChildExited

from .conftest import plain_spec, run_build

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("code", [0, 1, 3, 100, 255])
def test_exit_codes(spawner, tmp_path, code):
    out = run_build(spawner, plain_spec(tmp_path, f"exit {code}"))
    assert out.started is not None and out.failed is None
    assert out.exited.exit_status == code
    assert out.exited.signal is None
    assert out.exited.describe() == f"exited with code {code}"


def test_death_by_signal_is_128_plus_n(spawner, tmp_path):
    out = run_build(spawner, plain_spec(tmp_path, "kill -SEGV $$"))
    assert out.exited.signal == signal.SIGSEGV
    assert out.exited.exit_status == 128 + signal.SIGSEGV
    # Core dumps are off (RLIMIT_CORE 0): no "core dumped" bit in the wait status.
    assert not os.WCOREDUMP(out.exited.status)
    assert out.exited.describe() == "failed due to signal 11 (Segmentation fault)"


def test_output_through_raw_pty(spawner, tmp_path):
    # Raw mode: "\n" is not turned into "\r\n", bytes pass unchanged, stdout and stderr
    # are the same terminal, and EOF shows up as EIO on the master (read_pty).
    script = r"printf 'a\nb\r\n\001\377'; echo err >&2; test -t 1 && test -t 2 && echo tty"
    out = run_build(spawner, plain_spec(tmp_path, script))
    assert out.exited.exit_status == 0
    assert out.output == b"a\nb\r\n\x01\xfferr\ntty\n"


def test_stdin_is_dev_null_and_no_fds_leak(spawner, tmp_path):
    out = run_build(spawner, plain_spec(tmp_path, "ls /proc/self/fd; readlink /proc/self/fd/0"))
    # 0-2 plus the fd ls itself opens on /proc/self/fd
    assert out.output.split() == [b"0", b"1", b"2", b"3", b"/dev/null"]


def test_environment_cwd_umask_and_signals(spawner, tmp_path):
    script = ("env; pwd; umask; grep -E '^Sig(Ign|Blk)' /proc/self/status; "
              "cat /proc/self/personality; ulimit -c")
    out = run_build(spawner, plain_spec(tmp_path, script))
    lines = out.output.decode().splitlines()
    assert [line for line in lines if "=" in line] in (["PATH=/usr/bin:/bin"],
                                                       ["PATH=/usr/bin:/bin", f"PWD={tmp_path}"])
    assert str(tmp_path) in lines and "0022" in lines
    # Python ignores SIGPIPE; the child must not pass that on to the builder.
    assert "SigIgn:\t0000000000000000" in lines and "SigBlk:\t0000000000000000" in lines
    assert "00040000" in lines  # ADDR_NO_RANDOMIZE
    assert lines[-1] == "0"


def test_missing_builder_fails_in_step_exec(spawner, tmp_path):
    out = run_build(spawner, plain_spec(tmp_path, "", builder=b"/nonexistent/builder",
                                        argv=(b"builder",)))
    assert out.started is None
    assert (out.failed.step, out.failed.errno) == ("exec", errno.ENOENT)
    assert out.exited.exit_status == 1  # still reaped and reported


def test_bad_cwd_fails_in_step_chdir(spawner, tmp_path):
    spec = plain_spec(tmp_path, "true")
    spec = type(spec)(**{**{f: getattr(spec, f) for f in spec.__slots__},
                         "cwd": str(tmp_path / "missing")})
    out = run_build(spawner, spec)
    assert (out.failed.step, out.failed.errno) == ("chdir", errno.ENOENT)


def test_kill_signals_the_whole_process_group(spawner, tmp_path):
    marker = tmp_path / "bg-pid"
    spawner.spawn(7, plain_spec(tmp_path, f"sleep 600 & echo $! > {marker}.tmp; "
                                          f"mv {marker}.tmp {marker}; wait"))
    events = []
    while not any(isinstance(e, Started) for e in events):
        events += spawner.wait_event(10)
    _wait_for(marker.exists)
    background = int(marker.read_text())
    spawner.kill(7, signal.SIGTERM)
    while not any(isinstance(e, Exited) for e in events):
        events += spawner.wait_event(10)
    exited = next(e for e in events if isinstance(e, Exited)).result
    assert exited.signal == signal.SIGTERM
    _wait_for(lambda: not _alive(background))  # the background sleep got it too
    os.close(events[0].pty_master)


def test_many_builds_interleaved(spawner, tmp_path):
    for i in range(8):
        spawner.spawn(i, plain_spec(tmp_path, f"echo {i}; exit {i}"))
    results: dict[int, ChildExited] = {}
    masters = []
    while len(results) < 8:
        for e in spawner.wait_event(20):
            if isinstance(e, Exited):
                results[e.build_id] = e.result
            elif hasattr(e, "pty_master"):
                masters.append(e.pty_master)
    assert {i: r.exit_status for i, r in results.items()} == {i: i for i in range(8)}
    for m in masters:
        os.close(m)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(predicate, timeout: float = 10.0) -> None:
    import time
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)
