"""One opening of the daemon's store, and the engine on it.

nix-daemon opens the store afresh for every connection (`openUncachedStore`
in its forked child), so deleting the store and its database between
connections only means the next client gets a new, empty store. goalkeeper's
daemon keeps one store and one engine for all connections instead (a build two
clients want is built once), so it emulates that: when a connection arrives and
the database file or the store directory is no longer the one it opened (deleted,
or deleted and recreated), the current `StoreGeneration` is retired and a new
one opened, which recreates the layout as `LocalStore.open` does. Connections
keep the generation they started with; a retired one is closed when its last
connection ends.
"""

from __future__ import annotations

import os
import threading

from goalkeeper.protocol.errors import ProtocolError
from goalkeeper.protocol.store_io import LocalStoreIO


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class StoreGeneration(LocalStoreIO):
    """A store, opened once, and the build engine on it (created on first use): the
    `StoreIO` of the daemon's connections.

    Args:
        store: an open LocalStore (closed with the generation).
        settings: the daemon's settings, for the engine.
    """

    def __init__(self, store, settings):
        super().__init__(store)
        self.settings = settings
        self.users = 0
        self.retired = False
        self._engine = None
        self._lock = threading.Lock()
        self._closed = False
        self._identity = self._current_identity()

    def _current_identity(self):
        return _identity(self.store.layout.db_path), _identity(self.store.config.real_store_dir)

    def is_stale(self) -> bool:
        """The database or the store directory is not the one this generation opened."""
        return self._current_identity() != self._identity

    @property
    def engine(self):
        with self._lock:
            if self._closed:
                raise ProtocolError("the daemon is shutting down")
            if self._engine is None:
                from goalkeeper.actors.engine import Engine

                # nix-daemon's logger is not "verbose", so build errors carry the log tail.
                self._engine = Engine(self.store, self.settings, logger_is_verbose=False)
            return self._engine

    def realise(self, targets, build_mode: int, *, keep_going: bool, observer, settings=None):
        """Build for a client; `settings`: its own (SetOptions), shared by clients sending the same."""
        from goalkeeper.actors.derivation_goal_state import BuildMode

        return self.engine.realise([engine_path(t) for t in targets], build_mode=BuildMode(build_mode),
                                   keep_going=keep_going, observer=observer, settings=settings)

    def build_derivation(self, drv_path, drv, build_mode: int, *, observer, settings=None):
        """`Store::buildDerivation` for a client: `drv` held in memory, its `.drv` need not exist."""
        from goalkeeper.actors.derivation_goal_state import BuildMode

        return self.engine.build_derivation(drv_path, drv, build_mode=BuildMode(build_mode), observer=observer,
                                            settings=settings)

    def query_missing(self, targets):
        return self.engine.query_missing([engine_path(t) for t in targets])

    @staticmethod
    def engine_path(target):
        return engine_path(target)

    def close(self) -> None:
        """Stop the engine (killing its builds), then close the store."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()
        self.store.close()


def engine_path(target):
    """The engine's DerivedPath for a protocol one."""
    from goalkeeper.actors.worker_messages import DerivedPath

    return DerivedPath(target.path, target.outputs)
