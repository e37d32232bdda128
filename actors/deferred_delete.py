"""Deleting build directories and chroots off the goals' threads.

When a goal is done with its build directory and chroot, Nix deletes them before the
goal finishes (`deleteTmpDir`, `~LocalDerivationGoal`): their names are free again, and
nothing of them is left.  Deleting a tree costs a few milliseconds (an lstat and an
unlink or rmdir per entry), and in a chain of builds the next one waits for it.  So
`discard` only renames the tree into a hidden trash directory beside it (one rename: the
name is free at once, as in Nix) and a background thread deletes it.

While discards keep coming (a chain of builds), the thread and its trash directories stay:
it lingers `LINGER_S` with nothing to do before it removes the trash directories and ends.
Making and removing a directory and starting a thread per build cost more than the
deletion itself (creating an inode is slow on a file system without a journal, where the
allocator scans recently deleted ones).  `drain` ends the lingering at once: when it
returns, nothing discarded is left, nor a trash directory, nor the thread.  An exiting
interpreter does the same (the thread is not a daemon: it waits for the deletions to end,
but not for the lingering).

A trash directory is ``<parent>/.goalkeeper-trash-<pid>``: in the same directory, so the
rename never crosses a filesystem, and per process, so two engines on one store never
remove each other's.  Where the rename is refused, the tree is deleted at once as before.
The thread is not a daemon: an exiting interpreter waits for the deletions to end.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque

from goalkeeper.store.nar import delete_path

_TRASH_PREFIX = ".goalkeeper-trash-"
LINGER_S = 1.5  # idle time before the thread removes its trash directories and ends


class _Deleter:
    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        """A fresh state; also in a forked child, whose copy of the parent's queue, trash
        directories and thread are the parent's (and whose copied lock may be held)."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # work queued, thread ended, or drain asked
        self._queue: deque[str] = deque()
        self._trash_dirs: set[str] = set()  # made by us, removed when the thread ends
        self._thread: threading.Thread | None = None
        self._draining = 0  # callers of `drain` waiting: the thread ends as soon as it is idle
        self._names = itertools.count()

    def discard(self, path: str) -> None:
        parent, name = os.path.split(path.rstrip("/"))
        trash = os.path.join(parent, f"{_TRASH_PREFIX}{os.getpid()}")
        with self._lock:
            target = None
            for _ in range(2):
                try:
                    if trash not in self._trash_dirs:
                        try:
                            os.mkdir(trash, 0o700)
                        except FileExistsError:
                            pass  # left by a dead process with our pid: reuse it
                        self._trash_dirs.add(trash)
                    target = f"{trash}/{next(self._names)}-{name}"
                    os.rename(path, target)
                    break
                except FileNotFoundError:
                    target = None
                    if not os.path.lexists(path):
                        return  # nothing to delete
                    self._trash_dirs.discard(trash)  # removed behind our back (a GC): again
                except OSError:  # EXDEV, EACCES, EBUSY ...: delete it here and now
                    target = None
                    break
            if target is not None:
                self._queue.append(target)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="goalkeeper-delete")
                    self._thread.start()
                else:
                    self._changed.notify_all()
                return
        delete_path(path)

    def drain(self) -> None:
        with self._lock:
            self._draining += 1
            try:
                self._changed.notify_all()
                while self._thread is not None:
                    self._changed.wait()
            finally:
                self._draining -= 1

    def _run(self) -> None:
        while True:
            with self._lock:
                idle_since = time.monotonic()
                while not self._queue:
                    left = LINGER_S - (time.monotonic() - idle_since)
                    if self._draining or left <= 0:
                        self._end()
                        return
                    self._changed.wait(left)
                target = self._queue.popleft()
            try:
                delete_path(target)
            except OSError:
                pass  # as Nix's deleteTmpDir in a destructor: ignored (the trash dir stays)

    def _end(self) -> None:
        """Remove the trash directories and let the thread go (with the lock held, queue empty)."""
        for trash in self._trash_dirs:
            try:
                os.rmdir(trash)
            except OSError:
                pass  # removed already, or (a stranger's file) not empty
        self._trash_dirs.clear()
        self._thread = None
        self._changed.notify_all()


_deleter = _Deleter()
# Before the interpreter joins non-daemon threads at exit: end the lingering (the deletions
# still queued are done first, as `drain` does).
threading._register_atexit(_deleter.drain)  # type: ignore[attr-defined]  # as concurrent.futures
os.register_at_fork(after_in_child=_deleter._reset)


def discard(path: str) -> None:
    """Make ``path`` (a file or a whole tree) vanish now, and delete it in the background."""
    _deleter.discard(path)


def drain() -> None:
    """Wait until every discarded tree is deleted and the trash directories are gone."""
    _deleter.drain()
