"""The pty slave given to the build user (Nix's startBuilder: chmod 0600, chown uid:0) on
every path a build's slave takes: a forked child, a direct clone, a prepared child's
hand-over, a direct launch."""

from __future__ import annotations

import dataclasses
import os

import pytest

from goalkeeper.sandbox.process import Spawner
from goalkeeper.sandbox.seccomp import nix_policy
from goalkeeper.sandbox.spec import Credentials, LaunchProfile

from .conftest import needs_userns, plain_spec, run_build, sandbox_spec

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(os.getuid() != 0, reason="chown to another uid needs root")]

OWNER = 30123  # no account needed: a uid is a number to the kernel
PROBE = "echo reopened > /dev/stderr; stat -L -c '%u %g %a' /dev/stderr"


def _unsandboxed(tmp_path, owner):
    # cwd /: pytest's tmp_path is root's 0700, out of the build user's reach
    return dataclasses.replace(plain_spec(tmp_path, PROBE), cwd="/", pty_owner=owner,
                               credentials=Credentials(uid=OWNER, gid=OWNER))


def test_a_forked_child_gets_its_slave_as_the_build_user(spawner, tmp_path):
    out = run_build(spawner, _unsandboxed(tmp_path, OWNER))
    assert out.exited.exit_status == 0, out.output
    assert out.output == f"reopened\n{OWNER} 0 600\n".encode()
    out = run_build(spawner, _unsandboxed(tmp_path, None))  # root's, as opened: not for it
    assert b"Permission denied" in out.output


def test_a_direct_launch_gets_its_slave_as_the_build_user(tmp_path):
    with Spawner(LaunchProfile(seccomp=nix_policy(required=False))) as profiled:
        out = run_build(profiled, _unsandboxed(tmp_path, OWNER))
    assert out.exited.exit_status == 0, out.output
    assert out.output == f"reopened\n{OWNER} 0 600\n".encode()


@needs_userns
def test_cloned_and_prepared_children_get_their_slave_as_the_build_user(spawner, tmp_path):
    """Inside, the owner is unmapped (65534) unless it is the mapped host uid, group 0 is
    the sandbox's 100 (gid_map 100 -> 0 here); the mode is Nix's 0600 either way (the
    host's devpts gives 0620, group tty)."""
    seen = []
    for i in range(8):
        build_dir = tmp_path / str(i)
        build_dir.mkdir()
        spec = dataclasses.replace(sandbox_spec(build_dir, PROBE), pty_owner=OWNER)
        out = run_build(spawner, spec, build_id=i)
        seen.append((out.started.prepared, out.output))
        if out.started.prepared:
            break
    assert seen[0] == (False, b"sh: 1: cannot create /dev/stderr: Permission denied\n"
                              b"65534 100 600\n")
    assert seen[-1] == (True, seen[0][1])  # a prepared child took it, and saw the same
    build_dir = tmp_path / "mapped"
    build_dir.mkdir()
    mapped = dataclasses.replace(sandbox_spec(build_dir, PROBE), pty_owner=os.getuid())
    assert run_build(spawner, mapped, build_id=99).output == b"reopened\n1000 100 600\n"
