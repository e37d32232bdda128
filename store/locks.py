"""Locks exactly as Nix 2.8 takes them (libstore/pathlocks.cc, gc.cc), so Nix and goalkeeper share a store.

All locks are BSD `flock` locks, which belong to an *open file description*:
two threads of one process that each open the lock file exclude each other
just as two processes do, while one descriptor shared by threads does not.
So every `PathLocks` opens its own descriptors, and the one descriptor a
store shares between threads (the GC lock) is guarded by a `threading.Lock`.

- `<path>.lock`: opened O_RDWR|O_CREAT 0600, `flock(LOCK_EX)`; if the file is
  non-empty after locking, its previous holder deleted it (and wrote the "d"
  token), so we retry on a fresh file. Several paths are locked in sorted
  order, so two lockers never wait on each other in a cycle.
- `db/big-lock`: shared for the store's lifetime; schema upgrades take it exclusively.
- `gc.lock`: taken shared (non-blocking) while appending a temp root; a
  running collector holds it exclusively and is told of the root over
  `gc-socket/socket` instead.
- `temproots/<pid>`: exclusively locked by its process for its lifetime;
  roots are appended as `<store path>\\0`. The collector treats a file it can
  lock as stale.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import threading
from typing import Callable, Iterable

from .errors import StoreError
from . import unix_socket

DELETION_TOKEN = b"d"  # written after unlinking a lock file, so waiters see a non-empty (stale) file


class LockError(StoreError):
    """A lock file could not be opened or locked, naming the file."""


def open_lock_file(path: str, create: bool = True) -> int | None:
    """`openLockFile`: an O_CLOEXEC descriptor on `path` (mode 0600), or None if absent and not `create`."""
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        return os.open(path, flags, 0o600)
    except FileNotFoundError:
        if create:
            raise
        return None
    except OSError as err:
        raise LockError(f"opening lock file '{path}': {err.strerror}") from err


def lock_file(fd: int, kind: str, wait: bool) -> bool:
    """`lockFile`: kind is "read" (LOCK_SH), "write" (LOCK_EX) or "none" (LOCK_UN).

    Returns False if `wait` is off and the lock is held elsewhere.
    """
    op = {"read": fcntl.LOCK_SH, "write": fcntl.LOCK_EX, "none": fcntl.LOCK_UN}[kind]
    if not wait:
        op |= fcntl.LOCK_NB
    while True:
        try:
            fcntl.flock(fd, op)
            return True
        except InterruptedError:
            continue
        except BlockingIOError:
            return False


def delete_lock_file(path: str, fd: int) -> None:
    """`deleteLockFile`: unlink, then write the token so waiters know their file is stale."""
    try:
        os.unlink(path)
    except OSError:
        pass  # removing the lock file is an optimisation, not a necessity (pathlocks.cc)
    os.write(fd, DELETION_TOKEN)


class PathLocks:
    """Exclusive locks on `<path>.lock` for a set of (real) paths, taken in sorted order.

    Use as a context manager, or call `lock_paths` / `unlock`. With
    `set_deletion(True)` the lock files are deleted on release, as Nix does
    once the locked paths are valid.
    """

    def __init__(
        self,
        paths: Iterable[str] = (),
        wait_msg: str = "",
        *,
        on_wait: Callable[[str], None] | None = None,
    ):
        self._fds: list[tuple[int, str]] = []
        self._delete = False
        self._on_wait = on_wait or _print_error
        paths = list(paths)
        if paths:
            self.lock_paths(paths, wait_msg)

    def lock_paths(self, paths: Iterable[str], wait_msg: str = "", wait: bool = True) -> bool:
        """Lock every path (sorted); False (holding nothing) if `wait` is off and one is busy."""
        assert not self._fds, "PathLocks already holds locks"
        for path in sorted(set(paths)):
            lock_path = path + ".lock"
            while True:
                fd = open_lock_file(lock_path, True)
                assert fd is not None
                try:
                    if not lock_file(fd, "write", False):
                        if not wait:
                            os.close(fd)
                            self.unlock()
                            return False
                        if wait_msg:
                            self._on_wait(wait_msg)
                        lock_file(fd, "write", True)
                    stale = os.fstat(fd).st_size != 0
                except BaseException:
                    os.close(fd)
                    raise
                if not stale:
                    break
                # The previous holder unlinked the file while we waited: lock a fresh one.
                os.close(fd)
            self._fds.append((fd, lock_path))
        return True

    def set_deletion(self, delete: bool) -> None:
        """Delete the lock files when releasing (Nix: once the paths are valid)."""
        self._delete = delete

    def unlock(self) -> None:
        fds, self._fds = self._fds, []
        for fd, lock_path in fds:
            try:
                if self._delete:
                    delete_lock_file(lock_path, fd)
            finally:
                os.close(fd)

    @property
    def held(self) -> list[str]:
        return [p for _, p in self._fds]

    def __enter__(self) -> "PathLocks":
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    def __del__(self) -> None:
        if self._fds:
            self.unlock()


class BigLock:
    """`db/big-lock`, held shared while the store is open (exclusive during schema upgrades)."""

    def __init__(self, path: str, *, on_wait: Callable[[str], None] | None = None):
        self.path = path
        self._on_wait = on_wait or _print_info
        fd = open_lock_file(path, True)
        assert fd is not None
        self.fd = fd
        if not lock_file(fd, "read", False):
            self._on_wait("waiting for the big Nix store lock...")
            lock_file(fd, "read", True)

    def upgrade(self, message: str = "waiting for exclusive access to the Nix store...") -> None:
        """Take the lock exclusively (flock converts in place; not atomic, as in Nix)."""
        if not lock_file(self.fd, "write", False):
            self._on_wait(message)
            lock_file(self.fd, "write", True)

    def downgrade(self) -> None:
        lock_file(self.fd, "read", True)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class TempRoots:
    """This process's `temproots/<pid>` file and the GC-lock protocol for adding roots (gc.cc addTempRoot).

    Thread-safe: one file per process; appends are serialised by a lock
    because the shared GC-lock descriptor cannot exclude our own threads.
    A forked child notices the new pid and makes its own file.
    """

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self.temp_roots_dir = os.path.join(state_dir, "temproots")
        self.gc_lock_path = os.path.join(state_dir, "gc.lock")
        self.gc_socket_path = os.path.join(state_dir, "gc-socket", "socket")
        self._mutex = threading.Lock()
        self._pid = -1
        self._fd = -1
        self._gc_fd = -1
        self._socket: socket.socket | None = None

    @property
    def file_name(self) -> str:
        return os.path.join(self.temp_roots_dir, str(os.getpid()))

    def _create_file(self) -> None:
        """`createTempRootsFile`: a fresh, locked file for this pid."""
        pid = os.getpid()
        if self._pid == pid and self._fd >= 0:
            return
        # After a fork the inherited descriptors belong to the parent's file and lock.
        self._fd = self._gc_fd = -1
        self._socket = None
        path = os.path.join(self.temp_roots_dir, str(pid))
        while True:
            # A file with our pid must be stale: no two live processes share a pid.
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            fd = open_lock_file(path, True)
            assert fd is not None
            lock_file(fd, "write", True)
            if os.fstat(fd).st_size == 0:
                break
            # The collector deleted the file before we locked it; it will not once we hold the lock.
            os.close(fd)
        self._fd, self._pid = fd, pid

    def add(self, printed_path: str) -> None:
        """`addTempRoot`: protect `printed_path` (a full logical store path) from Nix's GC."""
        with self._mutex:
            self._create_file()
            if self._gc_fd < 0:
                fd = open_lock_file(self.gc_lock_path, True)
                assert fd is not None
                self._gc_fd = fd
            while True:
                if lock_file(self._gc_fd, "read", False):
                    try:
                        # Appending while holding the shared GC lock: the collector either sees
                        # this root in the file or has already been told over its socket.
                        os.write(self._fd, printed_path.encode() + b"\0")
                    finally:
                        lock_file(self._gc_fd, "none", True)
                    return
                if self._tell_collector(printed_path):
                    os.write(self._fd, printed_path.encode() + b"\0")
                    return

    def _tell_collector(self, printed_path: str) -> bool:
        """The collector is running: send it the root and wait for its `1`. False means retry."""
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # Python sockets are CLOEXEC
                unix_socket.connect(sock, self.gc_socket_path)
                self._socket = sock
            self._socket.sendall(printed_path.encode() + b"\n")
            reply = self._socket.recv(1)
            if reply != b"1":
                raise ConnectionResetError(errno.ECONNRESET, "GC socket disconnected")
            return True
        except (ConnectionRefusedError, FileNotFoundError, BrokenPipeError, ConnectionResetError):
            # The collector may have exited between our lock attempt and connecting: start over.
            if self._socket is not None:
                self._socket.close()
            self._socket = None
            return False

    def close(self) -> None:
        """Remove this process's temp roots file (LocalStore's destructor)."""
        with self._mutex:
            if self._fd >= 0 and self._pid == os.getpid():
                try:
                    os.unlink(os.path.join(self.temp_roots_dir, str(self._pid)))
                except OSError:
                    pass
                os.close(self._fd)
            if self._gc_fd >= 0 and self._pid == os.getpid():
                os.close(self._gc_fd)
            if self._socket is not None:
                self._socket.close()
            self._fd = self._gc_fd = -1
            self._socket = None
            self._pid = -1


def _print_error(message: str) -> None:
    print(message, file=sys.stderr)


_print_info = _print_error
