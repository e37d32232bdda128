"""Unsandboxed builds launched directly (vfork + exec) by a spawner with a launch profile
must be indistinguishable, to the builder and to the engine, from forked-child builds."""

from __future__ import annotations

import dataclasses
import re
import resource
import time

import pytest

from goalkeeper.sandbox.process import Spawner
from goalkeeper.sandbox.seccomp import nix_policy
from goalkeeper.sandbox.spec import LaunchProfile

from .conftest import plain_spec, run_build

pytestmark = pytest.mark.timeout(60)

# What a builder can observe of its process: filter, privileges, signals, personality,
# limits, session and process group, fds, umask, cwd, environment, terminal.
PROBE = r"""
grep -E '^(Seccomp|NoNewPrivs|SigBlk|SigIgn|SigCgt|CapEff|CapBnd):' /proc/self/status
cat /proc/self/personality
ulimit -c; ulimit -Hc
set -- $(cat /proc/self/stat)
[ "$1" = "$5" ] && [ "$1" = "$6" ] && echo "pgrp and session are my pid"
ls /proc/self/fd
readlink /proc/self/fd/0
[ -t 1 ] && echo "stdout is a tty"
umask; pwd; env | sort
"""

POLICY = nix_policy(required=False)


@pytest.fixture
def profiled():
    with Spawner(LaunchProfile(seccomp=POLICY)) as sp:
        yield sp


@pytest.fixture
def plain():
    with Spawner() as sp:
        yield sp


def _normalised(output: bytes) -> bytes:
    # ls /proc/self/fd lists ls's own directory fd; its number is the same either way
    return re.sub(rb"/tmp/\S+", b"TMP", output)


def test_a_direct_launch_looks_like_a_forked_child(profiled, plain, tmp_path):
    spec = plain_spec(tmp_path, PROBE)
    direct = run_build(profiled, spec)
    forked = run_build(plain, spec)
    assert direct.started is not None and direct.started.setup_ns == 0  # took the direct path
    assert forked.started is not None and forked.started.setup_ns > 0
    assert direct.exited.exit_status == forked.exited.exit_status == 0
    assert b"Seccomp:\t2" in direct.output and b"NoNewPrivs:\t1" in direct.output
    assert b"00040000" in direct.output  # ADDR_NO_RANDOMIZE
    assert _normalised(direct.output) == _normalised(forked.output)


@pytest.fixture
def profiled_with_core_limit():
    """A profiled spawner whose own core limit was 1 MiB before the profile set it to 0."""
    saved = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (1 << 20, saved[1]))
    try:
        with Spawner(LaunchProfile(seccomp=POLICY)) as sp:
            yield sp
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, saved)


def test_other_specs_still_fork_and_keep_their_own_attributes(profiled_with_core_limit, tmp_path):
    profiled = profiled_with_core_limit
    # No filter wanted: a spawner already filtered cannot honour that, and says so.
    unfiltered = run_build(profiled, dataclasses.replace(plain_spec(tmp_path, "true"), seccomp=None))
    assert unfiltered.failed is not None and unfiltered.failed.step == "seccomp"
    assert "differs from the one the engine started with" in unfiltered.failed.message
    # A different personality or no core limit: forked, as asked, not as the profile says.
    spec = dataclasses.replace(plain_spec(tmp_path, "cat /proc/self/personality; ulimit -c"), personality_or=0, rlimits=())
    out = run_build(profiled, spec)
    assert out.started.setup_ns > 0
    lines = out.output.split()
    assert lines[0] == b"00000000"
    assert lines[1] == b"2048"  # the spawner's limit before the profile (dash: 512-byte blocks)


def test_exec_failure_reads_as_a_builder_that_exited_1(profiled, tmp_path):
    out = run_build(profiled, plain_spec(tmp_path, "", builder=b"/nonexistent/builder"))
    assert out.failed.step == "exec" and out.failed.errno == 2
    assert out.exited.exit_status == 1
    assert out.spawned is not None  # its pty reads EOF like a forked child's


def test_bad_cwd_and_nul_in_env_name_their_step(profiled, tmp_path):
    spec = plain_spec(tmp_path, "true")
    out = run_build(profiled, dataclasses.replace(spec, cwd=str(tmp_path / "missing")))
    assert out.failed.step == "chdir" and str(tmp_path / "missing") in out.failed.message
    out = run_build(profiled, dataclasses.replace(spec, env=((b"A", b"x\0y"),)))
    assert out.failed.step == "exec" and "null byte" in out.failed.message


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


def test_stopping_the_spawner_kills_direct_builders(tmp_path):
    sp = Spawner(LaunchProfile(seccomp=POLICY))
    sp.start()
    pid_file = tmp_path / "pid"
    sp.spawn(1, plain_spec(tmp_path, f"echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; "
                                     "exec sleep 60"))
    deadline = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    pid = int(pid_file.read_text())
    assert _alive(pid)
    sp.stop()  # EOF: the spawner SIGKILLs every build's process group and exits
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(pid), "the directly launched builder survived its spawner"
