"""Deleting build directories and chroots off the goals' threads.

When a goal is done with its build directory and chroot, Nix deletes them before the
goal finishes (`deleteTmpDir`, `~LocalDerivationGoal`): their names are free again, and
nothing of them is left.  Deleting a tree costs a few milliseconds (an lstat and an
unlink or rmdir per entry), and in a chain of builds the next one waits for it.  So
`discard` only renames the tree into a hidden trash directory beside it (one rename: the
name is free at once, as in Nix) and a background thread deletes it; the thread removes
the trash directories as soon as it has nothing left to do, and `drain` waits for that.

A trash directory is ``<parent>/.goalkeeper-trash-<pid>``: in the same directory, so the
rename never crosses a filesystem, and per process, so two engines on one store never
remove each other's.  Where the rename is refused, the tree is deleted at once as before.
The thread is not a daemon: an exiting interpreter waits for the deletions to end.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import deque

from goalkeeper.store.nar import delete_path

_TRASH_PREFIX = ".goalkeeper-trash-"


class _Deleter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queue: deque[str] = deque()
        self._trash_dirs: set[str] = set()  # made by us, removed when the queue is empty
        self._thread: threading.Thread | None = None
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
                return
        delete_path(path)

    def drain(self) -> None:
        with self._lock:
            while self._thread is not None:
                self._idle.wait()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    for trash in self._trash_dirs:
                        try:
                            os.rmdir(trash)
                        except OSError:
                            pass  # removed already, or (a stranger's file) not empty
                    self._trash_dirs.clear()
                    self._thread = None
                    self._idle.notify_all()
                    return
                target = self._queue.popleft()
            try:
                delete_path(target)
            except OSError:
                pass  # as Nix's deleteTmpDir in a destructor: ignored (the trash dir stays)


_deleter = _Deleter()


def discard(path: str) -> None:
    """Make ``path`` (a file or a whole tree) vanish now, and delete it in the background."""
    _deleter.discard(path)


def drain() -> None:
    """Wait until every discarded tree is deleted and the trash directories are gone."""
    _deleter.drain()
