"""ctypes bindings for the Linux calls Python 3.11's ``os`` lacks.

Every wrapper raises ``OSError`` with the C ``errno`` on failure, so callers can report
``(step, errno)`` exactly as the kernel gave it.  Only the standard library is imported:
this module runs in the forked child.
"""

from __future__ import annotations

import ctypes
import os
import platform

_libc = ctypes.CDLL(None, use_errno=True)

# clone(2)/unshare(2) flags (linux/sched.h).
CLONE_PARENT = 0x00008000  # the child's parent is the caller's parent (the zygote's spawner)
CLONE_NEWNS = 0x00020000  # mount namespace
CLONE_NEWUTS = 0x04000000  # hostname and domainname
CLONE_NEWIPC = 0x08000000  # SysV IPC, POSIX message queues
CLONE_NEWUSER = 0x10000000  # user namespace: uid/gid maps, capabilities
CLONE_NEWPID = 0x20000000  # the first process becomes pid 1
CLONE_NEWNET = 0x40000000  # network: only a (down) loopback device

# mount(2) flags (linux/mount.h).
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 0x2  # umount2: lazy unmount

# Network interface flags and ioctl (linux/if.h, linux/sockios.h).
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40
SIOCSIFFLAGS = 0x8914

# Syscalls glibc has no wrapper for, per machine (asm/unistd.h).
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "clone": 56},
    "aarch64": {"pivot_root": 41, "clone": 220},
    "riscv64": {"pivot_root": 41, "clone": 220},
    "i686": {"pivot_root": 217, "clone": 120},
    "i386": {"pivot_root": 217, "clone": 120},
    "armv7l": {"pivot_root": 218, "clone": 120},
    "ppc64le": {"pivot_root": 203, "clone": 120},
    "s390x": {"pivot_root": 217, "clone": 120},
}
SYSCALLS = _SYSCALLS.get(platform.machine(), {})

_libc.syscall.restype = ctypes.c_long
_libc.personality.argtypes = [ctypes.c_ulong]


def _check(result: int, *what: object) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), *[str(w) for w in what[:1]])
    return result


def _path(p: str | bytes | None) -> bytes | None:
    return os.fsencode(p) if p is not None else None


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)))


def mount(source: str | bytes | None, target: str | bytes, fstype: str | bytes | None,
          flags: int = 0, data: bytes | None = None) -> None:
    _check(_libc.mount(_path(source), _path(target), _path(fstype), ctypes.c_ulong(flags),
                       data), target)


def umount2(target: str | bytes, flags: int = 0) -> None:
    _check(_libc.umount2(_path(target), ctypes.c_int(flags)), target)


def pivot_root(new_root: str | bytes, put_old: str | bytes) -> None:
    _check(_libc.syscall(ctypes.c_long(SYSCALLS["pivot_root"]), _path(new_root),
                         _path(put_old)), new_root)


def sethostname(name: bytes) -> None:
    _check(_libc.sethostname(name, ctypes.c_size_t(len(name))))


def setdomainname(name: bytes) -> None:
    _check(_libc.setdomainname(name, ctypes.c_size_t(len(name))))


def personality(persona: int) -> int:
    """Set the execution domain; ``0xffffffff`` only queries it."""
    return _check(_libc.personality(persona))


def clone(flags: int) -> int:
    """A fork-like raw clone(2): no new stack, so the child resumes here with a copy of
    ours, like fork().  Returns 0 in the child and the child's pid in the parent.

    Unlike ``os.fork()`` this runs no Python or glibc at-fork handlers, which is safe only
    in a single-threaded process (the spawner) whose child never returns to its caller's
    loop: it applies a spec and then execs or ``_exit``s.  With CLONE_NEWPID the child is
    pid 1 of the new namespace, which a plain fork after unshare() could not give us.
    """
    # Arguments beyond flags (stack, parent_tid, child_tid/tls) are all zero, so the
    # per-architecture argument order (CLONE_BACKWARDS*) does not matter.
    return _check(_libc.syscall(ctypes.c_long(SYSCALLS["clone"]), ctypes.c_ulong(flags),
                                None, None, None, None))


# setns(2) and the namespace ioctls (linux/nsfs.h), for joining a running build's
# namespaces from a helper process (`add_to_sandbox`).
NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1): an fd for the user namespace owning this one


def setns(fd: int, nstype: int = 0) -> None:
    """Move the calling thread into the namespace ``fd`` refers to (0: any type)."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)))


def owning_user_namespace(ns_fd: int) -> int:
    """A new fd for the user namespace that owns namespace ``ns_fd``."""
    import fcntl

    return fcntl.ioctl(ns_fd, NS_GET_USERNS)
