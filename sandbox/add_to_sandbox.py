"""Make a store directory appear inside a running sandbox (Nix's `addDependency` child).

    python -m goalkeeper.sandbox.add_to_sandbox SPAWNER_PID BUILDER_PID SOURCE TARGET

A recursive Nix build adds or builds paths while its builder runs; they must show up
in its chroot at once.  Nix forks a child that joins the sandbox's user namespace and
the *first* mount namespace of the builder (saved before the builder unshared a second
one and pivoted into the chroot), creates TARGET and bind-mounts SOURCE there; the
chroot's store dir is a shared mount, so the mount propagates into the builder's own
namespace.  The engine process has threads and must never fork, so it runs this module
instead (``subprocess``: exec, then a single-threaded process, as setns(CLONE_NEWUSER)
requires).

The first mount namespace is held by the spawner (its fd for the child, kept until the
child is reaped).  We find it among the spawner's open fds: the mount namespace owned
by the builder's user namespace that is not the builder's current one.

Exit status 0 on success; otherwise a one-line reason on stderr and status 1.
Imports only the standard library and this package's `_linux`.
"""

from __future__ import annotations

import os
import sys

from . import _linux


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def find_first_mount_namespace(spawner_pid: int, builder_pid: int) -> int:
    """An fd for the builder's first (un-pivoted) mount namespace, as the spawner holds it.

    Raises:
        LookupError: the spawner holds no such namespace (the build ended, or it is not
            sandboxed in its own user namespace).
    """
    user_ns = _identity(os.stat(f"/proc/{builder_pid}/ns/user"))
    current = _identity(os.stat(f"/proc/{builder_pid}/ns/mnt"))
    fd_dir = f"/proc/{spawner_pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            if not os.readlink(f"{fd_dir}/{name}").startswith("mnt:["):
                continue
            fd = os.open(f"{fd_dir}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # closed meanwhile
        try:
            owner = _linux.owning_user_namespace(fd)
        except OSError:
            os.close(fd)
            continue
        try:
            same_user_ns = _identity(os.fstat(owner)) == user_ns
        finally:
            os.close(owner)
        if same_user_ns and _identity(os.fstat(fd)) != current:
            return fd
        os.close(fd)
    raise LookupError(f"no saved mount namespace of process {builder_pid}")


def add_to_sandbox(spawner_pid: int, builder_pid: int, source: str, target: str) -> None:
    """Bind-mount ``source`` (a host path) on ``target`` (a path under the chroot's store
    dir, as seen on the host) in the builder's first mount namespace."""
    # The chroot's store dir is the same directory on the host and in that namespace.
    os.makedirs(target, exist_ok=True)
    mount_ns = find_first_mount_namespace(spawner_pid, builder_pid)
    user_ns = os.open(f"/proc/{builder_pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    if _identity(os.fstat(user_ns)) != _identity(os.stat("/proc/self/ns/user")):
        # Joining the mount namespace needs CAP_SYS_ADMIN in the user namespace owning it.
        _linux.setns(user_ns, _linux.CLONE_NEWUSER)
    _linux.setns(mount_ns, _linux.CLONE_NEWNS)
    _linux.mount(source, target, "", _linux.MS_BIND)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: add_to_sandbox SPAWNER_PID BUILDER_PID SOURCE TARGET", file=sys.stderr)
        return 2
    try:
        add_to_sandbox(int(argv[0]), int(argv[1]), argv[2], argv[3])
    except (OSError, LookupError) as e:
        print(f"bind mount from '{argv[2]}' to '{argv[3]}' failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
