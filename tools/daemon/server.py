"""`goalkeeper daemon`: the worker-protocol server (daemon.cc `daemonLoop` + `processConnection`).

One `Daemon` serves one local store. Each connection runs on its own thread,
outside the actor system; builds go to one long-lived `Engine`, created on the
first request that needs it and shared by every connection, so a derivation
two clients want is built once. Peer credentials (SO_PEERCRED) decide, as
Nix's `matchUser` does, whether a client is trusted (`trusted-users`) or
allowed at all (`allowed-users`). If the store is deleted (and perhaps
recreated) between connections, the next connection gets it reopened
(`generation.py`). SIGTERM stops accepting, stops the engine (killing running
builds) and closes the store.
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
from goalkeeper.store.errors import StoreError
from goalkeeper.store.signatures import public_keys

from goalkeeper.protocol.client_settings import ClientSettingsCache
from goalkeeper.protocol.server import HANDLERS, Connection, stderr_note

from .generation import StoreGeneration, engine_path
from goalkeeper.store import unix_socket
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Daemon:
    """What every connection shares: the store and its engine, the settings, activity ids.

    Args:
        store: an open LocalStore (the daemon closes it in `close`, or when it is replaced).
        settings: the daemon's settings (nix.conf and `--option`).
        quiet: leave out the per-connection notes on stderr.
    """

    def __init__(self, store, settings, *, quiet: bool = False):
        self.store_dir = store.store_dir
        self.settings = settings
        self.handlers = HANDLERS
        self.quiet = quiet
        self._current = StoreGeneration(store, settings)
        self._retired: set[StoreGeneration] = set()
        self._lock = threading.Lock()
        # Activity ids are (pid << 32) + counter, as nix-daemon numbers them.
        self._activity_ids = itertools.count(os.getpid() << 32)
        self._ids_lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._closed = False
        self._public_keys = None
        self._client_settings = ClientSettingsCache(settings, warn=self.note)

    # -- shared services ---------------------------------------------------------------------

    @property
    def store(self):
        """The store new connections get."""
        return self._current.store

    def next_activity_id(self) -> int:
        with self._ids_lock:
            return next(self._activity_ids)

    def note(self, text: str) -> None:
        if not self.quiet:
            stderr_note(text)

    engine_path = staticmethod(engine_path)

    def client_settings(self, options):
        """The settings a client's builds use (its SetOptions applied; one object per distinct set)."""
        return self._client_settings.get(options)

    def public_keys(self):
        """The keys whose signatures make an imported path trusted (parsed once)."""
        with self._lock:
            if self._public_keys is None:
                self._public_keys = public_keys(self.settings.get("trusted-public-keys"),
                                                self.settings.get("secret-key-files"))
            return self._public_keys

    def acquire(self) -> StoreGeneration:
        """The generation a new connection uses: the current one, or a fresh one if the
        store was deleted or replaced since it was opened."""
        with self._lock:
            if self._closed:
                raise ProtocolError("the daemon is shutting down")
            current = self._current
            if current.is_stale():
                from goalkeeper.store.local import LocalStore

                self.note(f"the store at '{current.store.config.real_store_dir}' was replaced; reopening it")
                current.retired = True
                if current.users == 0:
                    # Before opening the new one: both would share this process's temp roots file.
                    current.close()
                else:
                    self._retired.add(current)
                current = self._current = StoreGeneration(
                    LocalStore.open(current.store.config, current.store.settings), self.settings)
            current.users += 1
            return current

    def release(self, generation: StoreGeneration) -> None:
        generation.store.release_thread_db()
        with self._lock:
            generation.users -= 1
            done = generation.retired and generation.users == 0 and generation in self._retired
            if done:
                self._retired.discard(generation)
        if done:
            generation.close()

    # -- connections -------------------------------------------------------------------------

    def serve_connection(self, read, send, *, trusted: bool, peer: str = "client") -> None:
        """Serve one client on the calling thread (used for --stdio and by the socket threads)."""
        generation = self.acquire()
        try:
            Connection(read, send, self, generation, trusted=trusted, peer=peer).serve()
        finally:
            self.release(generation)

    def serve_socket(self, sock: socket.socket) -> None:
        """Accept connections on a listening socket until it is closed (by `close`)."""
        while not self._closed:
            try:
                conn, _ = sock.accept()
            except OSError:
                if self._closed:
                    return
                raise
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve_accepted, args=(conn,), daemon=True,
                             name="goalkeeper-daemon-conn").start()

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
        except ProtocolError as e:  # shutting down, or the store cannot be reopened
            self.note(f"error: {e}")
        except StoreError as e:
            self.note(f"error: {e}")
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def close(self) -> None:
        """Stop the engines (killing builds), end the connections, close the stores."""
        with self._lock:
            self._closed = True
            generations = [self._current, *self._retired]
            self._retired.clear()
            conns = list(self._conns)
        for generation in generations:
            generation.close()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


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
    unix_socket.bind(sock, path)
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
