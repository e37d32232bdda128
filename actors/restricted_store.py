"""The restricted store of a recursive Nix build (Nix 2.8's `RestrictedStore`).

A derivation that requires `recursive-nix` may call Nix while it builds.  Its
client talks to a socket in the build dir (`recursive_daemon.py`), served with the
daemon's own op handlers (`goalkeeper.protocol`), but through this store, which
shows only the build's input closure and the paths the build added or built, and
makes every added or built path a dependency of the build:

- `RestrictedStoreActor` holds that allowed set (Nix's `inputPaths` + `addedPaths`)
  and answers "is this path allowed" and "add this dependency" (`isAllowed`,
  `addDependency`'s bookkeeping).  Connection threads ask it; the goal reads the
  final set when it registers the outputs (added paths may be referenced).
- `RestrictedStore` answers the handlers' store queries as RestrictedStore does:
  a path outside the set is invalid, path infos are censored (no deriver,
  registration time 0, not ultimate, no signatures), referrers are empty.
- `RestrictedStoreIO` is the connections' `StoreIO`: additions go to the real
  store and become dependencies; builds run on a Worker of their own (as Nix's
  `LocalStore::buildPaths` makes one) sharing the engine's store actor and build
  runner, so a build slot held by the outer build never blocks them; the closures
  of built outputs become dependencies.

Why the handlers live in protocol/: actors/ must not import tools/, and the daemon
(tools/daemon) and this store serve the very same ops; protocol/ holds them behind
the `StoreIO` interface and imports neither.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import pykka

from goalkeeper.protocol.store_io import LocalStoreIO
from goalkeeper.store.errors import InvalidPath, StoreError
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.paths import StorePath

ASK_TIMEOUT_S = 60.0  # the actor only looks up a set; this bounds a stuck caller


# -- the actor --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class IsAllowed:
    path: StorePath


@dataclass(frozen=True, slots=True, kw_only=True)
class AddDependency:
    """Allow `path` from now on; answered True if it was not allowed before (the caller
    then makes it appear in the sandbox)."""

    path: StorePath


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryAllowedPaths:
    """(input paths, added paths)."""


class RestrictedStoreActor(pykka.ThreadingActor):
    """What one recursive build may see: its input closure and what it added or built."""

    def __init__(self, input_paths: frozenset[StorePath]):
        super().__init__()
        self.input_paths = frozenset(input_paths)
        self.added_paths: set[StorePath] = set()

    def on_receive(self, message):
        match message:
            case IsAllowed(path=path):
                return path in self.input_paths or path in self.added_paths
            case AddDependency(path=path):
                if path in self.input_paths or path in self.added_paths:
                    return False
                self.added_paths.add(path)
                return True
            case QueryAllowedPaths():
                return self.input_paths, frozenset(self.added_paths)
            case _:
                raise TypeError(f"unexpected message {message!r}")


# -- the store as the recursive client sees it ------------------------------------------------

class RestrictedStore:
    """The store queries of the op handlers, answered as Nix's RestrictedStore does.

    Args:
        next: the real `LocalStore`.
        actor_ref: the build's `RestrictedStoreActor`.
        add_dependency: `addDependency`: allow a path and make it appear in the sandbox.
    """

    def __init__(self, next, actor_ref: pykka.ActorRef, add_dependency: Callable[[StorePath], None]):
        self.next = next
        self.store_dir = next.store_dir
        self.config = next.config
        self.layout = next.layout
        self._actor = actor_ref
        self.add_dependency = add_dependency

    def is_allowed(self, path: StorePath) -> bool:
        return self._actor.ask(IsAllowed(path=path), timeout=ASK_TIMEOUT_S)

    def allowed_paths(self) -> frozenset[StorePath]:
        inputs, added = self._actor.ask(QueryAllowedPaths(), timeout=ASK_TIMEOUT_S)
        return inputs | added

    def print(self, path: StorePath) -> str:
        return self.next.print(path)

    def real_path(self, path: StorePath) -> str:
        # Nix 2.8's daemon dumps NarFromPath from toRealPath itself, unchecked.
        return self.next.real_path(path)

    # queries

    def query_path_info(self, path: StorePath) -> ValidPathInfo | None:
        if not self.is_allowed(path):
            return None
        info = self.next.query_path_info(path)
        if info is None:
            return None
        # "Censor impure information."
        return info.replace(deriver=None, registration_time=0, ultimate=False, sigs=frozenset())

    def require_path_info(self, path: StorePath) -> ValidPathInfo:
        info = self.query_path_info(path)
        if info is None:
            raise InvalidPath(f"path '{self.print(path)}' is not valid")
        return info

    def is_valid_path(self, path: StorePath) -> bool:
        return self.query_path_info(path) is not None

    def query_all_valid_paths(self) -> list[StorePath]:
        return sorted(self.allowed_paths())

    def query_referrers(self, path: StorePath) -> set[StorePath]:
        return set()

    def query_valid_derivers(self, path: StorePath) -> set[StorePath]:
        return set()  # Store::queryValidDerivers: RestrictedStore does not override it

    def query_partial_derivation_output_map(self, path: StorePath) -> dict[str, StorePath | None]:
        if not self.is_allowed(path):
            raise InvalidPath(f"cannot query output map for unknown path '{self.print(path)}' in recursive Nix")
        return self.next.query_partial_derivation_output_map(path)

    def query_path_from_hash_part(self, hash_part: str) -> StorePath | None:
        raise StoreError("queryPathFromHashPart")

    def read_derivation(self, drv_path: StorePath):
        return self.next.read_derivation(drv_path)

    def query_realisation(self, drv_output):
        return None  # Nix answers only realisations the build added; goalkeeper tracks none yet

    # additions

    def add_text_to_store(self, name: str, text: bytes, references=(), repair: bool = False) -> StorePath:
        path = self.next.add_text_to_store(name, text, references, repair)
        self.add_dependency(path)
        return path

    def add_temp_root(self, path: StorePath) -> None:
        pass

    def register_drv_output(self, realisation) -> None:
        raise StoreError("registerDrvOutput")

    def update_path_info(self, info) -> None:
        raise StoreError(f"operation 'addSignatures' is not supported by store '{STORE_URI}'")


STORE_URI = "local"  # RestrictedStore::getUri() is its LocalStore's: "local"


def unsupported(op: str) -> StoreError:
    """`Store::unsupported`."""
    return StoreError(f"operation '{op}' is not supported by store '{STORE_URI}'")


# -- the StoreIO of the recursive connections -------------------------------------------------

class RestrictedStoreIO(LocalStoreIO):
    """Additions and builds for the recursive client (RestrictedStore's overrides).

    Args:
        store: the `RestrictedStore`.
        services: the outer goal's `GoalServices` (store actor, build runner, settings).
    """

    def __init__(self, store: RestrictedStore, services, say: Callable[[str], None] | None = None):
        super().__init__(store)
        self.next = store.next
        self._next_io = LocalStoreIO(store.next)  # additions go to the real store, then become dependencies
        self._services = services
        self._say = say
        self._worker_ref: pykka.ActorRef | None = None
        self._lock = threading.Lock()
        self._closed = False

    def import_nar(self, info, source, *, repair: bool = False) -> None:
        self._next_io.import_nar(info, source, repair=repair)
        self.store.add_dependency(info.path)

    def add_from_dump(self, name, method, algo, source, references, repair: bool = False) -> StorePath:
        path = self._next_io.add_from_dump(name, method, algo, source, references, repair)
        self.store.add_dependency(path)
        return path

    def add_indirect_root(self, link: str) -> None:
        pass

    def find_roots(self) -> list:
        return []

    def collect_garbage(self) -> tuple[list[str], int]:
        return [], 0

    def optimise_store(self, log) -> None:
        pass  # Store::optimiseStore: nothing

    def verify_store(self, check_contents: bool, repair: bool, log) -> bool:
        return False  # Store::verifyStore: no errors

    # builds

    @staticmethod
    def engine_path(target):
        from .worker_messages import DerivedPath

        return DerivedPath(target.path, target.outputs)

    def _check_allowed(self, targets, what: str) -> None:
        for target in targets:
            if not self.store.is_allowed(target.path):
                raise InvalidPath(what.format(target.render(self.store.store_dir)))

    def realise(self, targets, build_mode: int, *, keep_going: bool, observer, settings=None):
        """`buildPathsWithResults`: only allowed targets, normal mode; built outputs' closures
        become dependencies.  (The client's options are not applied: Nix applies no
        SetOptions in recursive mode.)"""
        from .derivation_goal_state import BuildMode
        from .worker_messages import Realise

        if build_mode != 0:
            raise StoreError("unsupported build mode")
        self._check_allowed(targets, "cannot build '{}' in recursive Nix because path is unknown")
        done: Future = Future()
        self._worker().tell(Realise(targets=tuple(self.engine_path(t) for t in targets),
                                    build_mode=BuildMode.Normal,
                                    keep_going=bool(self._services.settings.get("keep-going")),
                                    observer=self._observe, done=done))
        realised = done.result()
        new_paths = set()
        for result in realised.results.values():
            for out in result.built_outputs.values():
                new_paths.add(self.next.store_dir.parse(out) if isinstance(out, str) else out)
        for path in sorted(self.next.compute_fs_closure(new_paths)) if new_paths else ():
            self.store.add_dependency(path)
        return realised

    def _observe(self, event) -> None:
        # Nix's recursive daemon logs through the outer process's logger, which shows inner
        # builds as it shows any: their "building '…'", failures and log lines reach the
        # outer build's client, not the recursive one.
        if self._say is None:
            return
        kind = type(event).__name__
        if kind == "Message":
            self._say(event.text)
        elif kind == "LogLine":
            self._say(event.line)

    def query_missing(self, targets):
        """Unknown for what the build may not see; the rest as the store answers it."""
        from .query_missing import Missing, query_missing

        allowed = [t for t in targets if self.store.is_allowed(t.path)]
        missing = query_missing(self._services.reader, [self.engine_path(t) for t in allowed])
        unknown = set(missing.unknown) | {t.path for t in targets if t not in allowed}
        return Missing(will_build=missing.will_build, will_substitute=missing.will_substitute,
                       unknown=unknown, download_size=missing.download_size, nar_size=missing.nar_size)

    def _worker(self) -> pykka.ActorRef:
        from .worker import WorkerActor

        with self._lock:
            if self._closed:
                raise StoreError("the recursive Nix daemon is shutting down")
            if self._worker_ref is None:
                self._worker_ref = WorkerActor.start(self._services)
            return self._worker_ref

    def close(self) -> None:
        """Cancel the builds still running for the recursive client and stop its Worker."""
        from .worker import stop_worker

        with self._lock:
            self._closed = True
            worker_ref, self._worker_ref = self._worker_ref, None
        if worker_ref is not None:
            stop_worker(worker_ref)
