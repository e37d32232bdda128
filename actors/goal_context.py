"""What goals read from the local store, and the output locks they hold.

`StoreReader` is one SQLite connection shared by every goal thread under a
lock: a wide graph has thousands of goal actors alive at once, and a
connection each would exhaust file descriptors. Reads are short; the store
actor keeps its own connection for writes, so readers never wait on a commit
(WAL).

`LocalGoalContext` is the `GoalContext` of one derivation goal: the seed's
inline store calls, plus the goal's `outputLocks`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from goalkeeper.store import valid_paths as vp
from goalkeeper.store.db import StoreDB
from goalkeeper.store.derivation import Derivation
from goalkeeper.store.derivation_hash import static_output_hashes
from goalkeeper.store.errors import StoreError
from goalkeeper.store.hashes import Hash
from goalkeeper.store.local import LocalStore
from goalkeeper.store.locks import PathLocks
from goalkeeper.store.nar import delete_path, hash_path
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.paths import StorePath
from goalkeeper.store.realisations import DrvOutput, Realisation
from goalkeeper.store.settings import Settings
from goalkeeper.store.signatures import path_info_is_untrusted, public_keys

T = TypeVar("T")


class StoreReader:
    """Store queries from any thread, on one shared connection."""

    def __init__(self, store: LocalStore):
        self.store = store
        self._lock = threading.Lock()
        self._db = store.layout.connect()
        # `pathContentsGoodCache`: Nix keeps one per Worker, i.e. per run; the worker
        # clears it when a run starts with no other run going (`forget_contents_checks`).
        self._contents_good: dict[StorePath, bool] = {}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def run(self, fn: Callable[[LocalStore], T]) -> T:
        with self._lock, self.store.using_db(self._db) as store:
            return fn(store)

    def _query(self, fn: Callable[[StoreDB], T]) -> T:
        """One of the store's statements straight on the shared connection (no store object
        to lend it to: goals ask several per build)."""
        with self._lock, self._db.errors("querying"):
            return fn(self._db)

    def is_valid_path(self, path: StorePath) -> bool:
        return self._query(lambda db: vp.is_valid_path(db, self.store.store_dir, path))

    def query_path_info(self, path: StorePath) -> ValidPathInfo | None:
        return self._query(lambda db: vp.query_path_info(db, self.store.store_dir, path))

    def query_partial_derivation_output_map(self, drv_path: StorePath) -> dict[str, StorePath | None]:
        if self.store.layout.ca_derivations:  # realisations complete the map
            return self.run(lambda s: s.query_partial_derivation_output_map(drv_path))
        return self._query(lambda db: dict(vp.query_derivation_outputs(db, self.store.store_dir, drv_path)))

    def compute_fs_closure(self, paths) -> set[StorePath]:
        """The closure of `paths` (a list) by references."""
        return self._query(lambda db: vp.query_closure(db, self.store.store_dir, list(paths)))

    def query_realisation(self, output_hash: Hash, output_name: str) -> StorePath | None:
        real = self.query_realisation_info(DrvOutput(output_hash, output_name))
        return None if real is None else real.out_path

    def query_realisation_info(self, id: DrvOutput) -> Realisation | None:
        if not self.store.layout.ca_derivations:
            return None
        return self.run(lambda s: s.query_realisation(id))

    def mark_contents_good(self, path: StorePath) -> None:
        self._contents_good[path] = True

    def forget_contents_checks(self) -> None:
        self._contents_good = {}

    def path_contents_good(self, path: StorePath, say: Callable[[str], None]) -> bool:
        """`Worker::pathContentsGood`: the path exists and its NAR hash is the registered one."""
        cached = self._contents_good.get(path)
        if cached is not None:
            return cached
        printed = self.store.print(path)
        say(f"checking path '{printed}'...")
        info = self.query_path_info(path)
        try:
            current, _ = hash_path(self.store.real_path(path), info.nar_hash.algo) if info else (None, 0)
            good = info is not None and (info.nar_hash == current or info.nar_hash.digest == bytes(32))
        except FileNotFoundError:
            good = False
        self._contents_good[path] = good
        if not good:
            say(f"path '{printed}' is corrupted or missing!")
        return good


class LocalGoalContext:
    """The `GoalContext` of one derivation goal on a local store."""

    def __init__(self, reader: StoreReader, settings: Settings, drv_path: StorePath, *, keep_going: bool,
                 on_wait: Callable[[str], None]):
        store = reader.store
        self.reader = reader
        self.store = store
        self.settings = settings
        self.keep_going = keep_going
        self.use_substitutes = bool(settings.get("substitute"))
        self.try_fallback = bool(settings.get("fallback"))
        self.ca_derivations = store.layout.ca_derivations
        self.build_repeat = int(settings.get("repeat"))
        self.printed_drv_path = store.print(drv_path)
        self._say = on_wait  # messages for the user
        self._output_locks = PathLocks(on_wait=on_wait)
        self._drv_cache: dict[StorePath, Derivation] = {}

    # -- reads -----------------------------------------------------------------------------

    def is_valid_path(self, path: StorePath) -> bool:
        return self.reader.is_valid_path(path)

    def read_derivation(self, drv_path: StorePath) -> Derivation:
        drv = self._drv_cache.get(drv_path)
        if drv is None:
            drv = self._drv_cache[drv_path] = self.store.read_derivation(drv_path)
        return drv

    def static_output_hashes(self, drv: Derivation) -> dict[str, Hash]:
        # The store's cache is shared by all goals: each input drv is hashed once per run.
        return static_output_hashes(self.store.store_dir, drv, self.store.read_derivation,
                                    self.store.drv_hash_cache())

    def known_output_paths(self, drv: Derivation) -> dict[str, StorePath | None]:
        return {name: path for name, (_, path) in drv.outputs_and_opt_paths(self.store.store_dir).items()}

    def query_realisation(self, output_hash: Hash, output_name: str) -> StorePath | None:
        return self.reader.query_realisation(output_hash, output_name)

    def path_contents_good(self, path: StorePath) -> bool:
        return self.reader.path_contents_good(path, self._say)

    def compute_fs_closure(self, paths: list[StorePath]) -> set[StorePath]:
        return self.reader.compute_fs_closure(paths)

    def outputs_to_drv(self, drv_path: StorePath) -> dict[StorePath, StorePath]:
        """repairClosure's map: each output path in the input closure -> the drv producing it."""
        result: dict[StorePath, StorePath] = {}
        drv_closure = self.reader.compute_fs_closure([drv_path])
        for path in drv_closure:
            if not path.is_derivation():
                continue
            for out in self.reader.query_partial_derivation_output_map(path).values():
                if out is not None:
                    result[out] = path
        return result

    def substitutes_allowed(self, drv: Derivation) -> bool:
        """`ParsedDerivation::substitutesAllowed`: the `allowSubstitutes` attribute, default true."""
        return drv.env.get("allowSubstitutes", "1") == "1"

    def input_closure(self, drv: Derivation) -> frozenset[StorePath]:
        """inputsRealised: the closures of the wanted outputs of the input drvs, and of the sources."""
        roots: list[StorePath] = []
        for input_drv, wanted in drv.input_drvs.items():
            outputs = self.reader.query_partial_derivation_output_map(input_drv)
            if not outputs:  # an unregistered .drv: its static outputs
                outputs = self.known_output_paths(self.read_derivation(input_drv))
            for name in sorted(wanted):
                if name not in outputs:
                    raise StoreError(f"derivation '{self.printed_drv_path}' requires non-existent output "
                                     f"'{name}' from input derivation '{self.store.print(input_drv)}'")
                path = outputs[name]
                if path is None:
                    raise StoreError(
                        f"derivation '{self.printed_drv_path}' requires output '{name}' from input derivation "
                        f"'{self.store.print(input_drv)}', which is supposedly realized already, yet we still "
                        "don't know what path corresponds to that output")
                roots.append(path)
        roots.extend(drv.input_srcs)
        return frozenset(self.reader.compute_fs_closure(roots))

    # -- output locks ----------------------------------------------------------------------

    def try_lock_outputs(self, paths: list[StorePath]) -> bool:
        if self._output_locks.held:
            return True
        return self._output_locks.lock_paths([self.store.real_path(p) for p in paths], wait=False)

    def unlock_outputs(self, delete: bool) -> None:
        self._output_locks.set_deletion(delete)
        self._output_locks.unlock()

    def delete_invalid_output(self, path: StorePath) -> None:
        """`deleteTmpDir`'s sibling in tryToBuild: remove a stale, invalid output before building."""
        real = self.store.real_path(path)
        try:
            delete_path(real)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise StoreError(f"cannot delete stale output '{self.store.print(path)}': {err.strerror}") from err

    def add_temp_root(self, path: StorePath) -> None:
        self.store.add_temp_root(path)


def engine_public_keys(settings: Settings):
    """`getPublicKeys`: trusted-public-keys and the public halves of secret-key-files."""
    return public_keys(settings.get("trusted-public-keys"), settings.get("secret-key-files"))


class LocalSubstitutionContext:
    """The `SubstitutionContext` of one substitution goal."""

    def __init__(self, reader: StoreReader, settings: Settings, substituters: tuple, *, keep_going: bool,
                 public_keys=None):
        self.reader = reader
        self.public_keys = public_keys  # the engine's getPublicKeys(); None: read them from settings
        self.store = reader.store
        self.store_dir = reader.store.store_dir
        self.keep_going = keep_going
        self.use_substitutes = bool(settings.get("substitute"))
        self.try_fallback = bool(settings.get("fallback"))
        self.read_only = False  # Nix's readOnlyMode is for evaluation only
        self.require_sigs = bool(settings.get("require-sigs"))
        self.settings = settings
        self.substituters = substituters

    def is_valid_path(self, path: StorePath) -> bool:
        return self.reader.is_valid_path(path)

    def add_temp_root(self, path: StorePath) -> None:
        self.store.add_temp_root(path)

    def path_info_is_untrusted(self, info: ValidPathInfo) -> bool:
        """`pathInfoIsUntrusted`: with require-sigs, no valid signature by a trusted key
        (a content-addressed path proves itself)."""
        if not self.require_sigs:
            return False
        if self.public_keys is None:
            self.public_keys = engine_public_keys(self.settings)
        return path_info_is_untrusted(info, self.store_dir, self.public_keys, self.require_sigs)

    def mark_contents_good(self, path: StorePath) -> None:
        self.reader.mark_contents_good(path)

    def query_realisation(self, id: DrvOutput) -> Realisation | None:
        return self.reader.query_realisation_info(id)

