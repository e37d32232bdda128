"""The embedding API: one long-lived build engine per store.

    engine = Engine(store, settings)
    realised = engine.realise([DerivedPath(drv_path, frozenset())], observer=print)
    ...
    engine.close()

An `Engine` owns a store actor (the one writer of the database), a Worker
actor with its goal actors, and a build runner (one thread and one spawner
process). `realise` may be called from many threads at once; requests share
goals, so a derivation wanted by two callers is built once. Observers are
called on the engine's threads with `Message`, `LogLine` and `Progress`
events; keep them quick.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import pykka

from goalkeeper.store.derivation import BasicDerivation
from goalkeeper.store.local import LocalStore
from goalkeeper.store.paths import StorePath
from goalkeeper.store.settings import Settings

from .derivation_goal_state import BuildMode
from .goal_context import StoreReader, engine_public_keys
from .query_missing import Missing, query_missing
from .results import BuildResult, Status
from .start_builder import wait_for_cleanup
from .store_actor import start_store_actor
from .worker import GoalServices, WorkerActor, stop_worker
from .worker_messages import BuildDerivation, DerivedPath, Realise, Realised

__all__ = ["Engine", "DerivedPath", "Realised", "Missing", "BuildMode", "BuildResult"]


class Engine:
    """A build engine on one local store.

    Args:
        store: an open LocalStore; the engine does not close it.
        settings: read when goals are created (max-jobs when the engine starts).
        substituters: objects with the `Substituter` interface, in priority order; None:
            the binary caches of the `substituters` setting (closed with the engine).
        logger_is_verbose: the caller shows every build log line (as `nix-store` does), so
            failure messages leave out the "last N log lines" tail, as Nix's do then.
    """

    def __init__(self, store: LocalStore, settings: Settings, *, substituters: Sequence | None = (),
                 poll_interval: float | None = None, logger_is_verbose: bool = False,
                 warn: Callable[[str], None] | None = None):
        from .binary_cache_substituter import substituters_from_settings
        from .build_runner import BuildRunner

        self.store = store
        self.settings = settings
        self._own_substituters = substituters is None
        if substituters is None:
            kwargs = {} if warn is None else {"warn": warn, "say": warn}
            substituters = substituters_from_settings(store, settings, **kwargs)
        self.substituters = tuple(substituters)
        self._pending: set[Future] = set()  # futures of realise() calls not yet answered
        self._pending_lock = threading.Lock()
        self._closed = False
        self._store_ref = start_store_actor(store)
        self._reader = StoreReader(store)
        # Each build's log lines go to its own goal's worker (run_build's callbacks).
        self._runner = BuildRunner(log_dir=store.config.log_dir, settings=settings,
                                   logger_is_verbose=logger_is_verbose)
        self._runner.start()
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(settings.get("max-substitution-jobs"))),
                                        thread_name_prefix="goalkeeper-substitute")
        services = GoalServices(store=store, reader=self._reader, settings=settings, store_ref=self._store_ref,
                                runner=self._runner, substituters=self.substituters,
                                substitution_pool=self._pool,
                                public_keys=engine_public_keys(settings) if self.substituters else None)
        kwargs = {} if poll_interval is None else {"poll_interval": poll_interval}
        self._worker_ref = WorkerActor.start(services, **kwargs)

    def realise(self, targets: Sequence[DerivedPath], *, build_mode: BuildMode = BuildMode.Normal,
                keep_going: bool | None = None,
                observer: Callable[[object], None] | None = None,
                settings: Settings | None = None) -> Realised:
        """`Store::buildPaths`: build or substitute `targets`; returns when all ended (or one
        failed without keep-going).

        `settings`: this caller's own (e.g. a daemon client's, after SetOptions), read by
        the goals made for it instead of the engine's; such goals are shared with other
        callers only if they pass the same Settings object. The build runner's limits
        (timeout, max-silent-time, log size) and max-jobs stay the engine's.
        """
        if keep_going is None:
            keep_going = bool((settings or self.settings).get("keep-going"))
        return self._ask_worker(lambda done: Realise(
            targets=tuple(targets), build_mode=build_mode, keep_going=keep_going, observer=observer, done=done,
            settings=settings))

    def build_derivation(self, drv_path: StorePath, drv: BasicDerivation, *,
                         build_mode: BuildMode = BuildMode.Normal,
                         observer: Callable[[object], None] | None = None,
                         settings: Settings | None = None) -> BuildResult:
        """`Store::buildDerivation`: build `drv`, given in memory, as `drv_path` (whose `.drv`
        need not exist); every output is wanted, its input sources must be valid or
        substitutable. For input-addressed outputs the paths in `drv` are used.

        The goal is this call's alone (Nix runs a Worker per call), so a build of the same
        path by another caller is not shared, only serialised by the output locks.

        Returns the goal's `BuildResult`; an error thrown out of the worker (Nix's
        `buildDerivation` catches it) is a MiscFailure whose `error_msg` is the whole
        error text, ``error: …``, as Nix's `e.msg()`.
        """
        keep_going = bool((settings or self.settings).get("keep-going"))
        realised = self._ask_worker(lambda done: BuildDerivation(
            drv_path=drv_path, drv=drv, build_mode=build_mode, keep_going=keep_going,
            observer=observer, done=done, settings=settings))
        result = realised.results.get(DerivedPath(drv_path, frozenset()))
        if result is not None:
            return result
        return BuildResult(status=Status.MiscFailure, error_msg=f"error: {realised.error}")

    def _ask_worker(self, make_request: Callable[[Future], object]) -> Realised:
        """Send the worker a request made with its `done` future and wait for the `Realised`."""
        if self._closed:
            raise RuntimeError("the engine is closed")
        done: Future = Future()
        with self._pending_lock:
            self._pending.add(done)
        try:
            self._worker_ref.tell(make_request(done))
            return done.result()
        except pykka.ActorDeadError:
            raise RuntimeError("the build engine has stopped") from None
        finally:
            with self._pending_lock:
                self._pending.discard(done)

    def query_missing(self, targets: Sequence[DerivedPath], *,
                      on_error: Callable[[str], None] | None = None) -> Missing:
        """`Store::queryMissing`: what would be built, fetched (asking the binary caches
        in parallel), or is unknown."""
        if not self.substituters:
            return query_missing(self._reader, list(targets))
        from .binary_cache_substituter import query_missing as query_missing_with_caches

        return query_missing_with_caches(
            self.store, self.substituters, list(targets), use_substitutes=bool(self.settings.get("substitute")),
            try_fallback=bool(self.settings.get("fallback")), on_error=on_error)

    def close(self) -> None:
        """Stop every goal (killing their builds) and the engine's actors and threads."""
        if self._closed:
            return
        self._closed = True
        stop_worker(self._worker_ref)
        # A request still queued when the worker stopped was never seen by it.
        with self._pending_lock:
            pending = list(self._pending)
        for done in pending:
            if not done.done():
                done.set_result(Realised(results={}, exit_status=1, error="the build engine was stopped"))
        self._runner.stop()
        # nothing of past builds left behind: build dirs and chroots being deleted in the
        # background, spare chroot skeletons
        wait_for_cleanup()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._own_substituters:
            from .binary_cache_substituter import close_substituters

            close_substituters(self.substituters)
        self._store_ref.stop()
        self._reader.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
