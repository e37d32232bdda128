"""SQLite connections to the store database with Nix 2.8's settings (libstore/sqlite.cc, local-store.cc).

Each connection belongs to the thread that opened it (Python's sqlite3 enforces
it). Write transactions start with `BEGIN IMMEDIATE` so that the write lock is
taken up front, where SQLite's busy handler can wait for it; Nix's deferred
`begin` instead retries the whole transaction on SQLITE_BUSY, and `retry_busy`
does that too for the rare busy results the handler cannot absorb (a WAL
snapshot gone stale, recovery by another process).
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import sys
import time
import urllib.parse
from typing import Callable, Iterator, TypeVar

from .errors import StoreError

T = TypeVar("T")

BUSY_TIMEOUT_S = 60 * 60  # sqlite3_busy_timeout(db, 60 * 60 * 1000) in sqlite.cc
WAL_AUTOCHECKPOINT = 40000  # pages; "enough to instantiate the NixOS system derivation in one fsync"
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_BUSY_WARN_AFTER_S = 10.0  # handleSQLiteBusy warns once every 10 s


class SQLiteError(StoreError):
    """A database operation failed, naming the database and what was being done.

    Attributes:
        path: the database file.
        what: the operation, e.g. "opening", "registering paths".
    """

    def __init__(self, message: str, *, path: str, what: str):
        self.path = path
        self.what = what
        super().__init__(message)


class SQLiteBusy(SQLiteError):
    """The database stayed locked for longer than the busy timeout."""


def _is_busy(err: sqlite3.Error) -> bool:
    code = getattr(err, "sqlite_errorcode", None)
    if code is None:
        return "locked" in str(err)
    return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)


class StoreDB:
    """One connection to `db.sqlite`: Nix's pragmas, transactions and error mapping.

    Args:
        path: the database file.
        create: create it if missing (`SQLITE_OPEN_CREATE`).
        use_wal: `use-sqlite-wal`; when off, Nix uses the `unix-dotfile` VFS and
            the `truncate` journal (for NFS and WSL).
        fsync_metadata: `fsync-metadata`; `synchronous=normal` when on, `off` when not.
        busy_timeout: seconds SQLite waits for a lock before reporting busy.
    """

    def __init__(
        self,
        path: str,
        *,
        create: bool = False,
        use_wal: bool = True,
        fsync_metadata: bool = True,
        busy_timeout: float = BUSY_TIMEOUT_S,
    ):
        self.path = path
        mode = "rwc" if create else "rw"
        uri = f"file:{urllib.parse.quote(path)}?mode={mode}"
        if not use_wal:
            uri += "&vfs=unix-dotfile"
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, as Nix's SQLiteTxn does.
            self.conn: sqlite3.Connection | None = sqlite3.connect(
                # Used by one thread at a time; closing may happen from the owner's closer.
                uri, uri=True, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self.conn.execute("pragma foreign_keys = 1")
            self.conn.execute(f"pragma synchronous = {'normal' if fsync_metadata else 'off'}")
            journal = "wal" if use_wal else "truncate"
            (previous,) = self.conn.execute("pragma main.journal_mode").fetchone()
            if previous != journal:
                self.conn.execute(f"pragma main.journal_mode = {journal}")
            if use_wal:
                self.conn.execute(f"pragma wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")
        except sqlite3.Error as err:
            self.close()
            raise SQLiteError(f"cannot open SQLite database '{path}': {err}", path=path, what="opening") from err

    def close(self) -> None:
        conn, self.conn = getattr(self, "conn", None), None
        if conn is not None:
            conn.close()

    def __enter__(self) -> "StoreDB":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- statements -------------------------------------------------------------------------

    def execute(self, sql: str, params: tuple | list = ()) -> sqlite3.Cursor:
        assert self.conn is not None, "database is closed"
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows) -> sqlite3.Cursor:
        assert self.conn is not None, "database is closed"
        return self.conn.executemany(sql, rows)

    @property
    def in_transaction(self) -> bool:
        return self.conn is not None and self.conn.in_transaction

    # -- transactions -----------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, what: str = "updating the database") -> Iterator["StoreDB"]:
        """A write transaction (`SQLiteTxn`): committed on success, rolled back on any exception."""
        assert self.conn is not None, "database is closed"
        with self.errors(what):
            self.conn.execute("begin immediate")
        try:
            yield self
        except BaseException as exc:
            if self.conn is not None and self.conn.in_transaction:
                self.conn.execute("rollback")
            if isinstance(exc, sqlite3.Error):
                with self.errors(what):
                    raise
            raise
        with self.errors(what):
            try:
                self.conn.execute("commit")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("rollback")
                raise

    @contextlib.contextmanager
    def savepoint(self, name: str) -> Iterator["StoreDB"]:
        """A nested transaction: on an exception only its own changes are undone."""
        self.execute(f"savepoint {name}")
        try:
            yield self
        except BaseException:
            self.execute(f"rollback to {name}")
            self.execute(f"release {name}")
            raise
        self.execute(f"release {name}")

    @contextlib.contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Map sqlite3 errors to `SQLiteError` naming the database and the operation."""
        try:
            yield
        except sqlite3.Error as err:
            cls = SQLiteBusy if _is_busy(err) else SQLiteError
            raise cls(f"{what} in database '{self.path}': {err}", path=self.path, what=what) from err


def map_sqlite_errors(what: str):
    """Decorator for methods of objects with a `.db()`: sqlite3 errors become `SQLiteError`s."""

    def wrap(fn):
        import functools

        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except sqlite3.Error as err:
                path = getattr(getattr(self, "layout", None), "db_path", "db.sqlite")
                cls = SQLiteBusy if _is_busy(err) else SQLiteError
                raise cls(f"{what} in database '{path}': {err}", path=path, what=what) from err

        return wrapper

    return wrap


def retry_busy(fn: Callable[[], T], *, on_wait: Callable[[str], None] | None = None) -> T:
    """`retrySQLite`: run `fn` again (after a short random sleep) while it fails with SQLITE_BUSY.

    `fn` must be a whole transaction, so that a retry starts from scratch.
    """
    started = time.monotonic()
    warned_at = started
    while True:
        try:
            return fn()
        except (SQLiteBusy, sqlite3.OperationalError) as err:
            if isinstance(err, sqlite3.OperationalError) and not _is_busy(err):
                raise
            now = time.monotonic()
            if now - warned_at >= _BUSY_WARN_AFTER_S:
                warned_at = now
                message = "SQLite database is busy"
                if on_wait is not None:
                    on_wait(message)
                else:
                    print(f"warning: {message}", file=sys.stderr)
            # Nix sleeps a random 0-100 ms so that contenders spread out.
            time.sleep(random.random() * 0.1)


def file_is_database(path: str) -> bool:
    """True if `path` exists and starts with SQLite's header (a cheap check before opening)."""
    try:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def fsync_dir(path: str) -> None:
    """Make a rename or creation in directory `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
