"""Shared helpers: run builds through a real spawner process."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from goalkeeper.sandbox import layout
from goalkeeper.sandbox.messages import Exited, SetupFailed, Spawned, Started
from goalkeeper.sandbox.process import Spawner
from goalkeeper.sandbox.spec import BuildSpec, ChildExited, Credentials
from goalkeeper.sandbox.seccomp import nix_policy


def user_namespaces_available() -> str | None:
    """None if unprivileged-style user namespaces work here, else the reason they don't."""
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            if f.read().strip() == "0":
                return "user namespaces disabled (max_user_namespaces = 0)"
    except FileNotFoundError:
        return "no user namespace support in this kernel"
    probe = ("from goalkeeper.sandbox import _linux; "
             "_linux.unshare(_linux.CLONE_NEWUSER | _linux.CLONE_NEWNS | _linux.CLONE_NEWPID)")
    if subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode != 0:
        return "unshare(CLONE_NEWUSER) refused"
    return None


_USERNS = user_namespaces_available()
needs_userns = pytest.mark.skipif(_USERNS is not None, reason=str(_USERNS))


@dataclass
class Outcome:
    spawned: Spawned | None = None
    started: Started | None = None
    failed: SetupFailed | None = None
    exited: ChildExited | None = None
    output: bytes = b""
    events: list = field(default_factory=list)


def read_pty(master: int) -> bytes:
    """Read a pty master to its end: EIO means every slave fd is closed (EOF)."""
    out = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


def run_build(spawner: Spawner, spec: BuildSpec, build_id: int = 1,
              timeout: float = 20) -> Outcome:
    """Spawn, collect every event of the build and its whole output."""
    outcome = Outcome()
    spawner.spawn(build_id, spec)
    while outcome.exited is None and not (outcome.failed and outcome.spawned is None):
        for event in spawner.wait_event(timeout):
            outcome.events.append(event)
            if isinstance(event, Spawned):
                outcome.spawned = event
            elif isinstance(event, Started):
                outcome.started = event
            elif isinstance(event, SetupFailed):
                outcome.failed = event
            elif isinstance(event, Exited):
                outcome.exited = event.result
    if outcome.spawned is not None:
        outcome.output = read_pty(outcome.spawned.pty_master)
        os.close(outcome.spawned.pty_master)
    return outcome


def plain_spec(tmp_path, script: str, **kw) -> BuildSpec:
    """An unsandboxed /bin/sh -c script build in tmp_path."""
    kw.setdefault("builder", b"/bin/sh")
    kw.setdefault("argv", (b"sh", b"-c", script.encode()))
    return BuildSpec(env=((b"PATH", b"/usr/bin:/bin"),), build_dir=str(tmp_path),
                     build_dir_in_sandbox=str(tmp_path), cwd=str(tmp_path),
                     seccomp=nix_policy(required=False), **kw)


def sandbox_spec(tmp_path, script: str, *, env=(), extra_paths=(), **kw) -> BuildSpec:
    """A sandboxed build laid out as Nix 2.8 does, with /bin /lib /lib64 /usr bound in."""
    build_dir = tmp_path / "build"
    build_dir.mkdir(mode=0o700, exist_ok=True)
    (tmp_path / "store").mkdir(exist_ok=True)
    paths = [p for p in ("/bin", "/lib", "/lib64", "/usr") if os.path.exists(p)]
    sandbox = layout.nix_sandbox(
        chroot_root=str(tmp_path / "store" / "x.drv.chroot"), build_dir=str(build_dir),
        sandbox_paths=layout.parse_sandbox_paths(paths + list(extra_paths)),
        host_uid=os.getuid(), host_gid=os.getgid(), kvm=os.path.exists("/dev/kvm"),
        **kw)
    return BuildSpec(builder=b"/bin/sh", argv=(b"sh", b"-c", script.encode()),
                     env=((b"PATH", b"/usr/bin:/bin"),) + tuple(env),
                     build_dir=str(build_dir), build_dir_in_sandbox="/build", cwd="/build",
                     sandbox=sandbox, credentials=Credentials(uid=1000, gid=100),
                     seccomp=nix_policy())


@pytest.fixture
def spawner():
    sp = Spawner()
    sp.start()
    yield sp
    sp.stop()
