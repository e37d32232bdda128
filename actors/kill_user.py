"""Nix 2.8's `killUser` (libutil/util.cc): SIGKILL every process of a build user.

Nix forks, setuid()s to the uid and calls ``kill(-1, SIGKILL)``: as that user, a mass kill
reaches exactly that user's processes (except the caller), however they escaped the
build's process group or session.  It sends it once: it stops at the first success or at
ESRCH/EPERM (nothing left), retrying only on EINTR.

Our engine has threads, so it must not fork and run Python; a `subprocess` with
``user=`` must fork rather than vfork, which costs ~8 ms from the engine's large process
(twice per build).  So one small single-threaded helper, started once through
`subprocess`, does the forking: per request it forks a child that setuid()s and kills,
reaps it and answers with its wait status (~1 ms).  The helper ends with the engine (EOF
on its stdin).  Callers block while it works, so this runs on a small pool that reports
back through a callback (`submit_kill_user`); actor threads never wait on it.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .user_lock import UserLockError

_MAX_KILLS = 2  # requests queued at once (-j 2 ends two builds at once); the helper serialises
_HELPER = r"""
import os, signal, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
for line in inp:
    uid = int(line)
    if uid == 0:  # never kill(-1) as root
        out.write(b"256\n")
        out.flush()
        continue
    pid = os.fork()
    if pid == 0:
        try:
            os.setuid(uid)
            while True:
                try:
                    os.kill(-1, signal.SIGKILL)
                except InterruptedError:
                    continue
                except (ProcessLookupError, PermissionError):
                    pass  # nothing (left) to kill
                break
            os._exit(0)
        except BaseException:
            os._exit(1)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    out.write(b"%d\n" % status)
    out.flush()
"""


class _Killer:
    """The helper process, started on first use and again if it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    def kill(self, uid: int) -> int:
        """Run killUser for `uid`; its wait status."""
        with self._lock:
            for attempt in (1, 2):
                proc = self._started()
                try:
                    proc.stdin.write(b"%d\n" % uid)
                    proc.stdin.flush()
                    answer = proc.stdout.readline()
                except OSError:
                    answer = b""
                if answer:
                    return int(answer)
                self._stop()  # it died (killed from outside?): once more with a new one
            raise OSError("the killUser helper died")

    def _started(self) -> subprocess.Popen:
        if self._proc is None:
            # -I -S: no site, no environment, nothing of ours imported: a bare interpreter.
            self._proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _HELPER], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/")
        return self._proc

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
            proc.wait()

    def close(self) -> None:
        with self._lock:
            self._stop()


_killer = _Killer()
atexit.register(_killer.close)
_pool: ThreadPoolExecutor | None = None


def kill_user(uid: int) -> None:
    """`killUser`: SIGKILL every process of `uid`; blocks until done (never on an actor thread).

    Raises:
        UserLockError: "cannot kill processes for uid ..." if that could not be done.
    """
    assert uid != 0  # just to be safe...
    try:
        status = _killer.kill(uid)
    except OSError as e:
        raise UserLockError(f"cannot kill processes for uid '{uid}': {e}") from e
    if status != 0:
        raise UserLockError(f"cannot kill processes for uid '{uid}': {_status_to_string(status)}")


def submit_kill_user(uid: int, done: Callable[[str | None], None]) -> None:
    """Run `kill_user(uid)` on the kill pool; call `done` (on a pool thread) with None, or
    with the error's message."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_MAX_KILLS, thread_name_prefix="kill-user")

    def run() -> None:
        try:
            kill_user(uid)
            error = None
        except UserLockError as e:
            error = str(e)
        except Exception as e:  # a bug here must still let the goal go on
            error = f"internal error killing the processes of uid {uid}: {e}"
        done(error)

    _pool.submit(run)


def _status_to_string(status: int) -> str:
    """`statusToString` of a wait status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"failed due to signal {sig} ({signal.strsignal(sig)})"
    return f"failed with exit code {os.WEXITSTATUS(status)}"
