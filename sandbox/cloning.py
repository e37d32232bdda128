"""Making a build's child: its pty, the fork or the clone with its namespaces, the id maps.

Used by the spawner for a build's own child and by its zygote for prepared ones; it imports
nothing the child side does not (pyseccomp only where a filter must be compiled), so the
zygote, a fresh interpreter, stays small: every page a process maps is one a child of it
unmaps again at exec, on the build's critical path.
"""

from __future__ import annotations

import gc
import os
import _signal
import signal
import socket
import time
from dataclasses import dataclass

from . import _linux, child
from .spec import BuildSpec, same_filter
from .terminal import give_pty, open_pty

_ALL_SIGNALS = frozenset(_signal.valid_signals())


@dataclass(frozen=True, slots=True)
class Cloned:
    """A child just made: its pty master and setup channel are still ours to hand on."""

    pid: int
    master: int
    setup_r: int
    mount_ns: int
    forked_ns: int  # setup_ns counts from here
    spawn_ns: int


class CloneFailed(Exception):
    def __init__(self, step: str, error: BaseException, pid: int | None = None):
        super().__init__(step, error, pid)
        self.step, self.error, self.pid = step, error, pid




class Cloner:
    """Makes a build's child: pty, pipes, the fork or clone, the id maps.

    One per process that clones (the spawner; its zygote): ``lifeline_r``/``lifeline_w``
    are the spawner's lifeline pipe, ``filter_in_force`` the SeccompPolicy it runs under.
    """

    def __init__(self, lifeline_r: int, lifeline_w: int, filter_in_force=None) -> None:
        self._lifeline_r, self._lifeline_w = lifeline_r, lifeline_w
        self._filter_in_force = filter_in_force

    def clone(self, spec: BuildSpec, child_main, *, with_pty: bool = True,
               clone_parent: bool = False) -> Cloned:
        """Fork or clone a child that runs ``child_main(fds, seccomp_filter)``; id maps written.

        ``with_pty=False``: the child gets its pty later (a pooled child, at hand-over).

        Raises:
            CloneFailed: naming the step; its ``pid`` is set (and the child SIGKILLed)
                if the child exists already.
        """
        t0 = time.perf_counter_ns()
        opened: list[int] = []
        step = "openpty"
        try:
            # The pty comes first: opened after CLONE_NEWUSER it would be owned by a devpts
            # instance the builder's namespace does not map (EPERM / wrong owner).
            master, slave = open_pty() if with_pty else (-1, -1)
            opened += (master, slave)
            if with_pty and spec.pty_owner is not None:
                step = "pty-owner"
                give_pty(slave, spec.pty_owner)
            step = "pipe"
            setup_r, setup_w = os.pipe2(os.O_CLOEXEC)
            opened += (setup_r, setup_w)
            sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
            opened += (sync_r, sync_w)
            step = "seccomp"
            seccomp_filter = self.child_filter(spec)
            step = "clone" if spec.sandbox is not None else "fork"
            pid = self.fork(spec, clone_parent)
        except Exception as e:
            # EMFILE, no free pty, a bad policy: this build fails, the others go on (as in
            # Nix, where only the goal whose startBuilder threw fails).
            for fd in opened:
                if fd != -1:
                    os.close(fd)
            raise CloneFailed(step, e) from e
        fds = child.ChildFds(pty_slave=slave, setup_w=setup_w, sync_r=sync_r, sync_w=sync_w,
                             lifeline_r=self._lifeline_r, lifeline_w=self._lifeline_w)
        if pid == 0:  # the child; never returns
            gc.disable()  # a collection would touch (copy) every page of the heap before exec
            child_main(fds, seccomp_filter)
        forked_ns = time.perf_counter_ns()
        for fd in (slave, setup_w, sync_r):
            if fd != -1:
                os.close(fd)
        mount_ns = -1
        sandbox = spec.sandbox
        step = "uid_map"
        try:
            if sandbox is not None and sandbox.user_namespace:
                # Order matters: gid_map is only writable by an unprivileged parent after
                # setgroups has been denied.
                for step, text in (("uid_map", sandbox.uid_map.render()),
                                   ("setgroups", b"deny"),
                                   ("gid_map", sandbox.gid_map.render())):
                    write_file(f"/proc/{pid}/{step}", text)
            if sandbox is not None and sandbox.unshare_mount_before_pivot:
                # Nix's sandboxMountNamespace: keeps the un-pivoted namespace for binding
                # paths in later; as long as it lives, the builder's fds opened before
                # pivot_root (stdin's /dev/null) still resolve to "/dev/null", not "/null".
                step = "mount-ns"
                mount_ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            if sandbox is not None and sandbox.user_namespace:
                step = "id-map-sync"
                os.write(sync_w, b"1")  # the child waits for this (wait-for-id-map)
        except OSError as e:
            # The child is waiting on the sync pipe; closing it makes it exit.
            for fd in (master, setup_r, sync_w, mount_ns):
                if fd != -1:
                    os.close(fd)
            kill_group(pid, signal.SIGKILL)
            raise CloneFailed(step, e, pid) from e
        os.close(sync_w)
        return Cloned(pid=pid, master=master, setup_r=setup_r, mount_ns=mount_ns,
                       forked_ns=forked_ns, spawn_ns=time.perf_counter_ns() - t0)

    def child_filter(self, spec: BuildSpec):
        """The filter a forked child must load (None: none, or ours, which it inherits)."""
        if self._filter_in_force is None:
            if not spec.seccomp:
                return None
            # Imported only here: a zygote under the spawner's filter never needs pyseccomp.
            from .seccomp import compile_policy

            return compile_policy(spec.seccomp)
        if not same_filter(spec.seccomp, self._filter_in_force):
            # A filter cannot be lifted; the engine asked for this one when it started us.
            raise OSError(0, "the build's syscall filter differs from the one the engine "
                             "started with (filter-syscalls or allow-new-privileges changed)")
        return None

    def fork(self, spec: BuildSpec, clone_parent: bool = False) -> int:
        # All signals stay blocked across the fork, as CPython's _posixsubprocess does:
        # the child inherits our Python handlers (SIGTERM would stop *our* loop, in its
        # copy), and a Kill arriving before it resets them would be swallowed.  The child
        # resets every disposition and then unblocks (child.py, step "signals"), so a
        # signal sent during setup stays pending and then acts as it would on the builder.
        # _signal's functions take and return plain ints; signal's wrappers convert all 64
        # to enums on every call, which cost ~0.35 ms per spawn.
        saved = _signal.pthread_sigmask(_signal.SIG_BLOCK, _ALL_SIGNALS)
        try:
            pid = self._fork_or_clone(spec, clone_parent)
        except BaseException:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, saved)
            raise
        if pid != 0:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, saved)
        return pid

    @staticmethod
    def _fork_or_clone(spec: BuildSpec, clone_parent: bool = False) -> int:
        sandbox = spec.sandbox
        if sandbox is None:
            return os.fork()
        flags = (_linux.CLONE_NEWNS | _linux.CLONE_NEWPID | _linux.CLONE_NEWIPC
                 | _linux.CLONE_NEWUTS | signal.SIGCHLD)
        if clone_parent:
            flags |= _linux.CLONE_PARENT
        if sandbox.user_namespace:
            flags |= _linux.CLONE_NEWUSER
        if sandbox.private_network:
            flags |= _linux.CLONE_NEWNET
        return _linux.clone(flags)


def make_prepared(cloner: Cloner, template: BuildSpec, clone_parent: bool = False):
    """Clone a child prepared for ``template``: (its Cloned, our end of its spec socket).

    ``clone_parent``: in the zygote, which makes the child the spawner's.
    """
    # A socket, not a pipe: the pty comes with the spec (SCM_RIGHTS).  Opening it only
    # then keeps the host's pty numbers (/dev/pts/N, which a builder sees) as they are
    # without a pool, and a waiting child from holding a pty.
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    spec_w, spec_r = ours.detach(), theirs.detach()
    try:
        cloned = cloner.clone(template,
                         lambda fds, f: child.run_prepared(template, fds, f, spec_r),
                         with_pty=False, clone_parent=clone_parent)
    except BaseException:
        os.close(spec_w)
        raise
    finally:
        os.close(spec_r)
    return cloned, spec_w


def kill_group(pid: int, sig: int) -> None:
    # The child calls setsid() first thing; until then its group does not exist yet.
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from e  # the kernel's EINVAL names no file
    finally:
        os.close(fd)
