"""`goalkeeper daemon`: the worker-protocol server (daemon.cc `daemonLoop` + `processConnection`).

One `Daemon` serves one local store. Each connection runs on its own thread,
outside the actor system; builds go to one long-lived `Engine`, created on the
first request that needs it and shared by every connection, so a derivation
two clients want is built once. Peer credentials (SO_PEERCRED) decide, as
Nix's `matchUser` does, whether a client is trusted (`trusted-users`) or
allowed at all (`allowed-users`). SIGTERM stops accepting, stops the engine
(killing running builds) and closes the store.
"""

from __future__ import annotations

import grp
import itertools
import os
import pwd
import signal
import socket
import struct
import threading

from goalkeeper.protocol.errors import ProtocolError

from . import add_ops, build_ops, misc_ops, query_ops
from .connection import Connection, stderr_note

HANDLERS = {**query_ops.HANDLERS, **add_ops.HANDLERS, **build_ops.HANDLERS, **misc_ops.HANDLERS}
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Daemon:
    """What every connection shares: the store, the settings, the engine, activity ids.

    Args:
        store: an open LocalStore (the daemon closes it in `close`).
        settings: the daemon's settings (nix.conf and `--option`).
        quiet: leave out the per-connection notes on stderr.
    """

    def __init__(self, store, settings, *, quiet: bool = False):
        self.store = store
        self.store_dir = store.store_dir
        self.settings = settings
        self.handlers = HANDLERS
        self.quiet = quiet
        self._engine = None
        self._engine_lock = threading.Lock()
        # Activity ids are (pid << 32) + counter, as nix-daemon numbers them.
        self._activity_ids = itertools.count(os.getpid() << 32)
        self._ids_lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._conns: set[socket.socket] = set()
        self._closed = False

    # -- shared services ---------------------------------------------------------------------

    def next_activity_id(self) -> int:
        with self._ids_lock:
            return next(self._activity_ids)

    def note(self, text: str) -> None:
        if not self.quiet:
            stderr_note(text)

    @property
    def engine(self):
        with self._engine_lock:
            if self._closed:
                raise ProtocolError("the daemon is shutting down")
            if self._engine is None:
                from goalkeeper.actors.engine import Engine

                # nix-daemon's logger is not "verbose", so build errors carry the log tail.
                self._engine = Engine(self.store, self.settings, logger_is_verbose=False)
            return self._engine

    @staticmethod
    def engine_path(target):
        """The engine's DerivedPath for a protocol one."""
        from goalkeeper.actors.worker_messages import DerivedPath

        return DerivedPath(target.path, target.outputs)

    def realise(self, targets, build_mode: int, *, keep_going: bool, observer):
        from goalkeeper.actors.derivation_goal_state import BuildMode

        return self.engine.realise([self.engine_path(t) for t in targets], build_mode=BuildMode(build_mode),
                                   keep_going=keep_going, observer=observer)

    def query_missing(self, targets):
        return self.engine.query_missing([self.engine_path(t) for t in targets])

    # -- connections -------------------------------------------------------------------------

    def serve_connection(self, read, send, *, trusted: bool, peer: str = "client") -> None:
        """Serve one client on the calling thread (used for --stdio and by the socket threads)."""
        try:
            Connection(read, send, self, trusted=trusted, peer=peer).serve()
        finally:
            self.store.release_thread_db()

    def serve_socket(self, sock: socket.socket) -> None:
        """Accept connections on a listening socket until it is closed (by `close`)."""
        while not self._closed:
            try:
                conn, _ = sock.accept()
            except OSError:
                if self._closed:
                    return
                raise
            thread = threading.Thread(target=self._serve_accepted, args=(conn,), daemon=True,
                                      name="goalkeeper-daemon-conn")
            with self._engine_lock:
                self._threads.add(thread)
                self._conns.add(conn)
            thread.start()

    def _serve_accepted(self, conn: socket.socket) -> None:
        try:
            pid, uid, gid = _peer_credentials(conn)
            user, group = _user_name(uid), _group_name(gid)
            trusted = match_user(user, group, self.settings.get("trusted-users"))
            if (not trusted and not match_user(user, group, self.settings.get("allowed-users"))) \
                    or (group and group == self.settings.get("build-users-group")):
                self.note(f"error: user '{user}' is not allowed to connect to the Nix daemon")
                return
            self.note(f"accepted connection from pid {pid}, user {user}{' (trusted)' if trusted else ''}")
            self.serve_connection(lambda n: conn.recv(min(n, 1 << 20)), conn.sendall, trusted=trusted,
                                  peer=f"pid {pid}")
        finally:
            with self._engine_lock:
                self._threads.discard(threading.current_thread())
                self._conns.discard(conn)
            conn.close()

    def close(self) -> None:
        """Stop the engine (killing builds), end the connections, close the store."""
        with self._engine_lock:
            self._closed = True
            engine, self._engine = self._engine, None
            conns = list(self._conns)
        if engine is not None:
            engine.close()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.store.close()


def match_user(user: str, group: str, users) -> bool:
    """daemon.cc `matchUser`: `*`, the user's name, or `@group` (primary group or membership)."""
    users = list(users or ())
    if "*" in users or user in users:
        return True
    for item in users:
        if item.startswith("@"):
            name = item[1:]
            if name == group:
                return True
            try:
                if user in grp.getgrnam(name).gr_mem:
                    return True
            except KeyError:
                continue
    return False


def _peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    return _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def listen(path: str) -> socket.socket:
    """A listening Unix socket at `path` (a stale one is replaced), writable by everyone as nix-daemon's."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o666)
    sock.listen(128)
    return sock


class Terminated(Exception):
    """SIGTERM or SIGINT arrived."""


def run_until_signalled(daemon: Daemon, sock: socket.socket) -> None:
    """Serve on `sock` in the calling (main) thread until SIGTERM/SIGINT, then shut down cleanly."""

    def on_signal(signum, frame):
        raise Terminated()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        daemon.serve_socket(sock)
    except Terminated:
        pass
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        sock.close()
        daemon.close()
