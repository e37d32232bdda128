"""The daemon socket of a recursive Nix build (Nix 2.8's `startDaemon`/`stopDaemon`/`addDependency`).

While a `recursive-nix` build runs, its goal serves ``<build dir>/.nix-socket``: one
thread accepts, one thread per client runs the worker protocol's op loop
(`goalkeeper.protocol.server.Connection`), untrusted, through the build's
`RestrictedStore` (`restricted_store.py`).  As in Nix, nothing but errors is tunnelled
to the recursive client (its daemon keeps the global logger), and its SetOptions
change nothing.

`addDependency`: a path the build added or built is allowed from then on, and in a
sandboxed build it must appear inside the running chroot at once.  A file is
hard-linked (or copied) into the chroot's store dir, which the builder sees; a
directory is bind-mounted there from the builder's first mount namespace by a helper
process (`goalkeeper.sandbox.add_to_sandbox`): this process has threads, so it never
forks.

When the build ends (any way) the goal calls `stop`: the socket stops accepting and
is removed, clients are disconnected, builds still running for them are cancelled,
and the actor stops.  `added_paths` stays readable: the outputs may refer to them.
"""

from __future__ import annotations

import itertools
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable

from goalkeeper.protocol.build_ops import read_build_derivation, check_build_derivation_trusted
from goalkeeper.protocol.ops import Op
from goalkeeper.protocol.serializers import read_path
from goalkeeper.protocol.server import HANDLERS, Connection
from goalkeeper.protocol.wire import WireReader, WireWriter
from goalkeeper.store.errors import InvalidPath, StoreError
from goalkeeper.store.paths import StorePath
from goalkeeper.store.signatures import public_keys

from .restricted_store import (ASK_TIMEOUT_S, AddDependency, QueryAllowedPaths, RestrictedStore,
                               RestrictedStoreActor, RestrictedStoreIO, unsupported)
from .start_builder import RECURSIVE_SOCKET, BuildPlan, _link_or_copy
from goalkeeper.store import unix_socket


def _ensure_path(conn, r: WireReader) -> None:
    """RestrictedStore::ensurePath: an allowed path is valid already; nothing to substitute."""
    path = read_path(r, conn.store_dir)
    conn.start_work()
    if not conn.store.is_allowed(path):
        raise InvalidPath(f"cannot substitute unknown path '{conn.store_dir.print(path)}' in recursive Nix")
    conn.finish(WireWriter().u64(1))


def _build_derivation(conn, r: WireReader) -> None:
    """The daemon's checks, then RestrictedStore::buildDerivation: unsupported."""
    _drv_path, drv, _mode = read_build_derivation(conn, r)
    conn.start_work()
    check_build_derivation_trusted(conn, drv)
    raise unsupported("buildDerivation")


RESTRICTED_HANDLERS = {**HANDLERS, Op.EnsurePath: _ensure_path, Op.BuildDerivation: _build_derivation}


class _Services:
    """What the recursive connections share (the `daemon` of a `Connection`)."""

    tunnel_logs = False  # daemon::Recursive: the global logger stays; only errors reach the client

    def __init__(self, store_dir, settings):
        self.store_dir = store_dir
        self.settings = settings
        self.handlers = RESTRICTED_HANDLERS
        self._ids = itertools.count(os.getpid() << 32)
        self._ids_lock = threading.Lock()
        self._keys = None

    def note(self, text: str) -> None:
        pass  # Nix only debug()s connections here

    def client_settings(self, options):
        return None  # daemon::Recursive: "FIXME: use some setting in recursive mode"

    def next_activity_id(self) -> int:
        with self._ids_lock:
            return next(self._ids)

    def public_keys(self):
        if self._keys is None:
            self._keys = public_keys(self.settings.get("trusted-public-keys"), self.settings.get("secret-key-files"))
        return self._keys


class RecursiveDaemon:
    """The restricted daemon of one build: start before the builder runs, stop when it ended.

    Args:
        services: the goal's `GoalServices`.
        plan: the build's `BuildPlan` (build dir, chroot).
        input_paths: the build's input closure (`inputPaths`).
        say: prints a message as the goal's (the inner builds' "building '…'" lines: Nix's
            recursive daemon leaves them to its global logger, not to the client).
    """

    def __init__(self, services, plan: BuildPlan, input_paths: frozenset[StorePath],
                 say: Callable[[str], None] | None = None):
        self.services = services
        self.plan = plan
        self.build_id: int | None = None  # set once the runner has the build
        self.socket_path = f"{plan.build_dir}/{RECURSIVE_SOCKET}"
        self.added_paths: frozenset[StorePath] = frozenset()
        self._actor = RestrictedStoreActor.start(input_paths)
        self._store = RestrictedStore(services.store, self._actor, self.add_dependency)
        self._io = RestrictedStoreIO(self._store, services, say=say)
        self._conn_services = _Services(services.store.store_dir, services.settings)
        self._deps_lock = threading.Lock()
        self._lock = threading.Lock()
        self._clients: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._sock: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._stopped = False

    def start(self) -> None:
        """createUnixDomainSocket(socketPath, 0600) and the accepting thread."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            unix_socket.bind(sock, self.socket_path)
            os.chmod(self.socket_path, 0o600)
            sock.listen(5)
        except OSError as e:
            sock.close()
            self._actor.stop()
            raise StoreError(f"cannot bind to socket '{self.socket_path}': {e.strerror}") from e
        self._sock = sock
        self._accepting = threading.Thread(target=self._accept_loop, name="recursive-nix-daemon", daemon=True)
        self._accepting.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return  # shut down by stop() (EINVAL), as Nix's daemon thread ends
            with self._lock:
                if self._stopped:
                    client.close()
                    return
                self._clients.add(client)
                thread = threading.Thread(target=self._serve, args=(client,), name="recursive-nix-conn",
                                          daemon=True)
                self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        try:
            Connection(lambda n: client.recv(min(n, 1 << 20)), client.sendall, self._conn_services, self._io,
                       trusted=False, peer="recursive Nix client").serve()
        finally:
            with self._lock:
                self._clients.discard(client)
            client.close()
            self.services.store.release_thread_db()

    # -- addDependency ------------------------------------------------------------------------

    def add_dependency(self, path: StorePath) -> None:
        """Allow `path` and, in a sandboxed build, make it appear in the chroot before returning."""
        # One at a time: a second client adding the same path must not see it "allowed"
        # before it is mounted.
        with self._deps_lock:
            if self._actor.ask(AddDependency(path=path), timeout=ASK_TIMEOUT_S) and self.plan.use_chroot:
                self._materialise(path)

    def _materialise(self, path: StorePath) -> None:
        store = self.services.store
        printed = store.print(path)
        source = store.real_path(path)
        target = self.plan.chroot_root + printed
        if os.path.lexists(target):
            raise StoreError(f"store path '{printed}' already exists in the sandbox")
        if not stat.S_ISDIR(os.lstat(source).st_mode):
            _link_or_copy(source, target)
            return
        process = None if self.build_id is None else self.services.runner.builder_process(self.build_id)
        if process is not None:
            spawner_pid, builder_pid = process
            done = subprocess.run(
                [sys.executable, "-m", "goalkeeper.sandbox.add_to_sandbox", str(spawner_pid), str(builder_pid),
                 source, target], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if done.returncode == 0:
                return
        raise StoreError(f"could not add path '{printed}' to sandbox")

    # -- the end --------------------------------------------------------------------------------

    def stop(self) -> frozenset[StorePath]:
        """stopDaemon: stop accepting, end the connections and their builds, remove the
        socket, stop the actor.  Returns (and keeps in `added_paths`) the added paths."""
        with self._lock:
            if self._stopped:
                return self.added_paths
            self._stopped = True
            clients = list(self._clients)
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._accepting.join()
            self._sock.close()
        for client in clients:  # faster than Nix, which waits for its clients to hang up
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._io.close()
        for thread in self._threads:
            thread.join()
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        try:
            _inputs, added = self._actor.ask(QueryAllowedPaths(), timeout=ASK_TIMEOUT_S)
            self.added_paths = added
        finally:
            self._actor.stop()
        return self.added_paths


def start_recursive_daemon(services, plan: BuildPlan, input_paths: frozenset[StorePath], *,
                           say: Callable[[str], None] | None = None) -> RecursiveDaemon:
    """startDaemon: serve the build's restricted store on ``<build dir>/.nix-socket``."""
    daemon = RecursiveDaemon(services, plan, input_paths, say)
    daemon.start()
    return daemon
