"""Unsandboxed builds started by the spawner through ``subprocess``, without a forked child.

Everything a forked child would do for such a build is either a process attribute the
spawner already carries (its launch profile: personality, core limit, the seccomp filter
and no-new-privileges) or one ``subprocess`` does between vfork and exec (new session, fds
0-2, chdir, closing the rest, umask, default signal dispositions).  The one thing missing
is the builder's own PR_SET_PDEATHSIG: if the spawner dies, its ``_kill_all`` SIGKILLs the
builder's process group instead (and the engine does, should the spawner be SIGKILLed).

With credentials (a build user), ``subprocess`` forks instead (CPython refuses vfork with a
uid) and does runChild's setgroups (if a list is given), setgid and setuid; a little Python
then runs in that child (`_BuildUserExec`) to re-arm the parent-death signal that the uid
change cleared, as a forked child's step "pdeathsig" does.
"""

from __future__ import annotations

import _signal
import os
import signal
import subprocess

import prctl

from .spec import BuildSpec, LaunchProfile, same_filter
from .terminal import give_pty, open_pty

_ALL_SIGNALS = frozenset(_signal.valid_signals())


class LaunchFailed(Exception):
    """The build did not start.  ``execed``: the failure is the builder's exec (or what
    subprocess did right before it), which a forked child would report after it started."""

    def __init__(self, step: str, err: int, message: str, execed: bool, master: int = -1):
        super().__init__(step, err, message)
        self.step, self.errno, self.message, self.execed = step, err, message, execed
        self.master = master  # the pty master, still open, when execed


def launches_directly(spec: BuildSpec, profile: LaunchProfile | None, filter_in_force) -> bool:
    """The spec asks for nothing but what the spawner's launch profile already gave it."""
    p = profile
    return (p is not None and spec.sandbox is None and spec.builtin is None
            and spec.personality_set is None and spec.personality_or == p.personality_or
            and spec.rlimits == p.rlimits and same_filter(spec.seccomp, p.seccomp)
            and (filter_in_force is not None or spec.seccomp is None
                 or not spec.seccomp.required))


def launch(spec: BuildSpec) -> tuple[int, subprocess.Popen]:
    """Start the builder: (pty master, its Popen), the builder exec'd.

    Raises:
        LaunchFailed: naming the step.
    """
    step = "openpty"
    try:
        master, slave = open_pty()
    except OSError as e:
        raise LaunchFailed(step, e.errno or 0, e.strerror or str(e), False) from e
    try:
        if spec.pty_owner is not None:
            step = "pty-owner"
            give_pty(slave, spec.pty_owner)
        step = "dup-fds"
        stdin = os.open(spec.stdin_path, os.O_RDWR | os.O_CLOEXEC)
        try:
            step = "exec"
            proc = _popen(spec, stdin, slave)
        finally:
            os.close(stdin)
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        if isinstance(e, OSError):
            if step == "exec" and e.filename == spec.cwd:
                step = "chdir"
            elif step == "exec" and e.filename is None and spec.credentials is not None:
                # subprocess names no file for a failure before exec but chdir's:
                # setgroups, setregid or setreuid.
                step = "setgid/setuid"
            detail = f": {os.fsdecode(e.filename)}" if e.filename else ""
            err, message = e.errno or 0, f"{e.strerror}{detail}"
        elif isinstance(e, ValueError):  # a NUL byte in the environment or argv
            err, message = 0, f"{type(e).__name__}: {e}"
        else:  # _BuildUserExec raised (it reports nothing else)
            step, err, message = "pdeathsig", 0, f"{type(e).__name__}: {e}"
        os.close(slave)
        if step != "exec":
            os.close(master)
            raise LaunchFailed(step, err, message, False) from e
        raise LaunchFailed(step, err, message, True, master) from e
    os.close(slave)
    return master, proc


def _popen(spec: BuildSpec, stdin: int, slave: int) -> subprocess.Popen:
    creds = spec.credentials
    if creds is None:
        return subprocess.Popen(
            list(spec.argv), executable=spec.builder, env=dict(spec.env), cwd=spec.cwd,
            stdin=stdin, stdout=slave, stderr=slave, close_fds=True,
            start_new_session=True, restore_signals=True, umask=spec.umask)
    # Signals stay blocked across the fork (as in the spawner's _fork): unlike after a
    # vfork, subprocess leaves our Python handlers to a forked child, which would swallow
    # a Kill before its exec.  _BuildUserExec resets them, then unblocks.
    saved = _signal.pthread_sigmask(_signal.SIG_BLOCK, _ALL_SIGNALS)
    try:
        groups = creds.supplementary_gids
        return subprocess.Popen(
            list(spec.argv), executable=spec.builder, env=dict(spec.env), cwd=spec.cwd,
            stdin=stdin, stdout=slave, stderr=slave, close_fds=True,
            start_new_session=True, restore_signals=True, umask=spec.umask,
            extra_groups=None if groups is None else list(groups), group=creds.gid,
            user=creds.uid, preexec_fn=_BuildUserExec(saved, spec.kill_with_parent))
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, saved)


class _BuildUserExec:
    """What a directly launched build user's child does after setuid, just before exec.

    The kernel clears PR_SET_PDEATHSIG when the euid changes, so it is set again here
    (and the spawner's survival checked, as child.py does; unsandboxed, getppid() tells).
    Our Python handlers are reset to the default before the signals blocked across the
    fork are unblocked: a signal pending since then acts as it would on the builder.
    """

    __slots__ = ("mask", "kill_with_parent", "spawner", "caught")

    def __init__(self, mask, kill_with_parent: bool) -> None:
        self.mask, self.kill_with_parent, self.spawner = mask, kill_with_parent, os.getpid()
        # Ignored ones stay ignored (restore_signals resets SIGPIPE and SIGXFSZ), as
        # CPython's own reset after vfork does.
        self.caught = [sig for sig in _ALL_SIGNALS - {signal.SIGKILL, signal.SIGSTOP}
                       if _signal.getsignal(sig) not in (_signal.SIG_DFL, _signal.SIG_IGN, None)]

    def __call__(self) -> None:
        if self.kill_with_parent:
            prctl.set_pdeathsig(signal.SIGKILL)
            if os.getppid() != self.spawner:  # we died before it was armed
                os._exit(1)
        for sig in self.caught:
            _signal.signal(sig, _signal.SIG_DFL)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, self.mask)
