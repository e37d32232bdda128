"""Sandboxed builds: what a builder can observe, probed from inside (bubblewrap-style)."""

from __future__ import annotations

import dataclasses
import errno
import os

import pytest

from goalkeeper.sandbox.seccomp import nix_policy

from .conftest import needs_userns, run_build, sandbox_spec

pytestmark = [needs_userns, pytest.mark.timeout(60)]

# Each probe prints one "key=value" line; python3 gives exact errno values.
_PROBE = r"""
echo uid=$(id -u) gid=$(id -g) groups=$(id -G) user=$(id -un) group=$(id -gn)
echo pid=$$ ppid=$PPID
echo hostname=$(cat /proc/sys/kernel/hostname) domainname=$(cat /proc/sys/kernel/domainname)
echo net=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ,)
echo lo=$(cat /sys/class/net/lo/operstate 2>/dev/null || echo nosys)
echo dev=$(ls /dev | tr '\n' ,)
echo seccomp=$(grep '^Seccomp:' /proc/self/status | cut -f2) nnp=$(grep '^NoNewPrivs:' /proc/self/status | cut -f2)
echo capeff=$(grep '^CapEff:' /proc/self/status | cut -f2)
echo cwd=$(pwd) root=$(ls / | tr '\n' ,)
echo procs=$(ls /proc | grep -c '^[0-9]')
python3 -c '
import errno, os
open("f", "w").close()
for mode in (0o4755, 0o2755, 0o755):
    try:
        os.chmod("f", mode); print("chmod%o=ok" % mode)
    except OSError as e:
        print("chmod%o=%s" % (mode, errno.errorcode[e.errno]))
try:
    os.setxattr("f", "user.x", b"1"); print("setxattr=ok")
except OSError as e:
    print("setxattr=%s" % errno.errorcode[e.errno])
'
"""


def _probe(tmp_path) -> dict[str, str]:
    out = run_build(spawner_holder[0], sandbox_spec(tmp_path, _PROBE))
    assert out.failed is None, out.failed
    assert out.exited.exit_status == 0, out.output
    values = {}
    for token in out.output.decode().split():
        key, _, value = token.partition("=")
        values[key] = value
    return values


spawner_holder: list = []


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    from goalkeeper.sandbox.process import Spawner
    with Spawner() as sp:
        spawner_holder[:] = [sp]
        yield _probe(tmp_path_factory.mktemp("probe"))


def test_identity(probe):
    assert (probe["uid"], probe["gid"], probe["groups"]) == ("1000", "100", "100")
    assert (probe["user"], probe["group"]) == ("nixbld", "nixbld")
    assert probe["capeff"] == "0000000000000000"


def test_pid_namespace(probe):
    assert (probe["pid"], probe["ppid"]) == ("1", "0")
    # Only our own: pid 1, the $(...) subshell, and its ls and grep (no host processes).
    assert int(probe["procs"]) <= 4


def test_uts(probe):
    assert (probe["hostname"], probe["domainname"]) == ("localhost", "(none)")


def test_only_loopback_and_it_is_up(probe):
    assert probe["net"] == "lo,"
    assert probe["lo"] == "nosys"  # no /sys in Nix's sandbox; up-ness checked below


def test_minimal_dev(probe):
    expected = ["fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
                "stdout", "tty", "urandom", "zero"]
    if os.path.exists("/dev/kvm"):
        expected.append("kvm")
    assert probe["dev"].rstrip(",").split(",") == sorted(expected)


def test_seccomp_and_no_new_privs(probe):
    assert (probe["seccomp"], probe["nnp"]) == ("2", "1")
    assert probe["chmod4755"] == "EPERM" and probe["chmod2755"] == "EPERM"
    assert probe["chmod755"] == "ok"
    assert probe["setxattr"] == "ENOTSUP"


@pytest.mark.parametrize(("seccomp", "expected"), [
    (nix_policy(), ("2", "1")),
    (nix_policy(allow_new_privileges=True), ("2", "0")),  # allow-new-privileges = true
    (None, ("0", "0")),  # filter-syscalls = false: Nix's setupSeccomp returns at once
])
def test_no_new_privs_comes_only_from_the_seccomp_policy(spawner, tmp_path, seccomp, expected):
    script = ("echo $(grep '^Seccomp:' /proc/self/status | cut -f2)"
              " $(grep '^NoNewPrivs:' /proc/self/status | cut -f2)")
    spec = dataclasses.replace(sandbox_spec(tmp_path, script), seccomp=seccomp)
    out = run_build(spawner, spec)
    assert tuple(out.output.split()) == tuple(v.encode() for v in expected)


def test_filesystem(probe):
    assert probe["cwd"] == "/build"
    assert set(probe["root"].rstrip(",").split(",")) >= {"bin", "build", "dev", "etc", "nix",
                                                         "proc", "tmp", "usr"}


def test_loopback_is_up(spawner, tmp_path):
    script = ("python3 -c 'import socket; s=socket.socket(); s.bind((\"127.0.0.1\", 0)); "
              "s.listen(); c=socket.create_connection(s.getsockname()); print(\"connected\")'")
    out = run_build(spawner, sandbox_spec(tmp_path, script))
    assert out.output == b"connected\n"


def test_missing_bind_source_fails_in_the_mount_step(spawner, tmp_path):
    out = run_build(spawner, sandbox_spec(tmp_path, "true", extra_paths=["/nonexistent/path"]))
    assert out.started is None
    assert (out.failed.step, out.failed.errno) == ("bind-mount", errno.ENOENT)
    assert "/nonexistent/path" in out.failed.message


def test_optional_missing_bind_source_is_skipped(spawner, tmp_path):
    out = run_build(spawner, sandbox_spec(tmp_path, "test ! -e /nonexistent",
                                          extra_paths=["/nonexistent?"]))
    assert out.failed is None and out.exited.exit_status == 0


def test_missing_builder_in_sandbox_fails_in_step_exec(spawner, tmp_path):
    spec = sandbox_spec(tmp_path, "")
    spec = type(spec)(**{**{f: getattr(spec, f) for f in spec.__slots__},
                         "builder": b"/nix/store/missing-builder"})
    out = run_build(spawner, spec)
    assert (out.failed.step, out.failed.errno) == ("exec", errno.ENOENT)
