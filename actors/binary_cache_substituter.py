"""Binary caches as substituters: the `Substituter` interface over `store.binary_cache.BinaryCache`.

    subs = substituters_from_settings(store, settings, warn=print)
    Engine(store, settings, substituters=subs)

`query_path_info` answers the substitution goal's question (from memory, the
narinfo disk cache for HTTP caches, or the cache itself); `copy_path` is Nix's
`copyStorePath` + `LocalStore::addToStore`: under the path's lock, the NAR is
restored into a temp name while its hashes and sizes are checked as it
streams, then the content address (if any) is checked, the tree canonicalised
and renamed into place, and only then registered. Any failed check leaves
nothing behind and nothing registered.

A cache that cannot be reached when first used prints Nix's warning and then
has nothing (as Nix leaves it out of its substituters). One that fails later
is disabled for 60 s when `fallback` is on, as Nix's `maybeDisable`.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from goalkeeper.store.binary_cache import BinaryCache, NoSuchBinaryCacheFile, TransferError
from goalkeeper.store.canonicalise import canonicalise_path_metadata
from goalkeeper.store.errors import FormatError, StoreError
from goalkeeper.store.hashes import Base, hash_file
from goalkeeper.store.locks import PathLocks
from goalkeeper.store.nar import delete_path, hash_flat, hash_path, restore_path
from goalkeeper.store.nar_info_disk_cache import CacheInfo, NarInfoDiskCache
from goalkeeper.store.narinfo import NarInfo
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.paths import StorePath
from goalkeeper.store.realisations import DrvOutput, Realisation
from goalkeeper.store.signatures import PublicKeys, path_info_is_untrusted, public_keys

from .substitution_goal_state import SubstituteGone, SubstituterDisabled

DISABLE_SECONDS = 60  # maybeDisable: how long a failing cache is left alone
MEMORY_CACHE_SIZE = 65536  # narinfos kept in memory (Nix's path-info-cache-size)
QUERY_THREADS = 128  # parallel narinfo queries (Nix #5118: 8 threads were 50x slower than 1,000)
_temp_counter = itertools.count()

Say = Callable[[str], None]


def _stderr(message: str) -> None:
    import sys

    sys.stderr.write(message + "\n")


class BinaryCacheSubstituter:
    """One binary cache substituting into one local store.

    Args:
        cache: the cache (not yet initialised: that happens on first use).
        store: the LocalStore to copy into.
        keys: trusted public keys (`trusted-public-keys` + `secret-key-files`).
        require_sigs: the `require-sigs` setting.
        try_fallback: the `fallback` setting (a failing cache is then disabled for a while).
        disk_cache: narinfo disk cache (HTTP caches only, as Nix).
        warn: prints `warning: …` lines; `say`: prints info lines ("copying path …").
    """

    def __init__(self, cache: BinaryCache, store, *, keys: PublicKeys, require_sigs: bool = True,
                 try_fallback: bool = False, disk_cache: NarInfoDiskCache | None = None,
                 warn: Say = _stderr, say: Say | None = None):
        self.cache = cache
        self.store = store
        self.keys = keys
        self.require_sigs = require_sigs
        self.try_fallback = try_fallback
        self.disk_cache = disk_cache
        self._warn = warn
        self._say = say or warn
        self._init_lock = threading.Lock()
        self._initialised = False
        self._usable = True
        self._disabled_until = 0.0
        self._memory: OrderedDict[str, NarInfo | None] = OrderedDict()
        self._memory_lock = threading.Lock()

    # -- the Substituter interface ------------------------------------------------------------

    @property
    def uri(self) -> str:
        return self.cache.uri

    @property
    def store_dir(self):
        return self.cache.store_dir

    @property
    def is_trusted(self) -> bool:
        return self.cache.is_trusted

    @property
    def priority(self) -> int:
        self.ensure_init()
        return self.cache.priority

    def ensure_init(self) -> bool:
        """Read nix-cache-info once (or take it from the disk cache); False if the cache is unusable."""
        if self._initialised:
            return self._usable
        with self._init_lock:
            if self._initialised:
                return self._usable
            try:
                self._init()
            except StoreError as err:
                # getDefaultSubstituters: `logWarning(e.info())` and leave the store out.
                self._warn(f"warning: {err}")
                self._usable = False
            self._initialised = True
            return self._usable

    def _init(self) -> None:
        cache = self.cache
        if self.disk_cache is not None:
            known = self.disk_cache.cache_exists(cache.uri)
            if known is not None:
                cache.apply_cache_info(f"StoreDir: {known.store_dir}\nWantMassQuery: {int(known.want_mass_query)}\n"
                                       f"Priority: {known.priority}\n")
                return
        cache.init()
        if self.disk_cache is not None:
            self.disk_cache.create_cache(cache.uri, CacheInfo(cache.store_dir.path, cache.want_mass_query,
                                                              cache.priority))

    def _check_enabled(self) -> None:
        if self._disabled_until and time.monotonic() >= self._disabled_until:
            self._disabled_until = 0.0  # "re-enabling binary cache"
        if self._disabled_until:
            raise SubstituterDisabled(f"substituter '{self.uri}' is disabled")

    def _maybe_disable(self) -> None:
        if self.try_fallback and not self._disabled_until:
            self._warn(f"disabling binary cache '{self.uri}' for {DISABLE_SECONDS} seconds")
            self._disabled_until = time.monotonic() + DISABLE_SECONDS

    def query_nar_info(self, path: StorePath) -> NarInfo | None:
        """The cache's narinfo for `path`, or None (also when the cache is unusable).

        Raises:
            SubstituterDisabled: disabled after an earlier failure.
            StoreError: the cache failed (unreachable, corrupt narinfo).
        """
        if not self.ensure_init():
            return None
        key = path.hash_part
        with self._memory_lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                found = self._memory[key]
                return found if found is None or found.path == path else None
        self._check_enabled()
        narinfo = None
        outcome = "unknown"
        if self.disk_cache is not None:
            outcome, narinfo = self.disk_cache.lookup_nar_info(self.uri, key)
        if outcome == "unknown":
            try:
                narinfo = self.cache.query_nar_info(path)
            except TransferError:
                self._maybe_disable()
                raise
            if self.disk_cache is not None:
                self.disk_cache.upsert_nar_info(self.uri, key, narinfo)
        with self._memory_lock:
            self._memory[key] = narinfo
            if len(self._memory) > MEMORY_CACHE_SIZE:
                self._memory.popitem(last=False)
        return narinfo if narinfo is not None and narinfo.path == path else None

    def query_path_info(self, path: StorePath) -> ValidPathInfo | None:
        narinfo = self.query_nar_info(path)
        return None if narinfo is None else narinfo.info

    def query_realisation(self, id: DrvOutput) -> Realisation | None:
        """The cache's realisation of a CA derivation output (`realisations/<id>.doi`), or None.

        Raises:
            SubstituterDisabled: disabled after an earlier failure.
            StoreError: the cache failed, or its realisation file is malformed.
        """
        if not self.ensure_init():
            return None
        self._check_enabled()
        try:
            doc = self.cache.query_realisation(str(id))
        except TransferError:
            self._maybe_disable()
            raise
        if doc is None:
            return None
        where = f"realisation '{id}' in '{self.uri}'"
        try:
            deps = {DrvOutput.parse(k): StorePath(v) for k, v in doc.get("dependentRealisations", {}).items()}
            return Realisation(id=DrvOutput.parse(doc["id"]), out_path=StorePath(doc["outPath"]),
                               signatures=frozenset(doc.get("signatures", ())), dependent_realisations=deps)
        except (StoreError, AttributeError, TypeError) as err:
            raise StoreError(f"{where} is malformed: {err}") from err

    def query_path_infos(self, paths: Iterable[StorePath], *, threads: int = QUERY_THREADS,
                         on_error: Say | None = None) -> dict[StorePath, NarInfo]:
        """`querySubstitutablePathInfos` for one cache: every path at once, on parallel connections.

        A failure for one path is passed to `on_error` (or raised, without it) and the others go on.
        """
        paths = list(dict.fromkeys(paths))
        if not paths or not self.ensure_init():
            return {}
        found: dict[StorePath, NarInfo] = {}
        errors: list[StoreError] = []

        def one(path: StorePath) -> None:
            try:
                narinfo = self.query_nar_info(path)
            except SubstituterDisabled:
                return
            except StoreError as err:
                errors.append(err)
                return
            if narinfo is not None:
                found[path] = narinfo

        workers = max(1, min(threads, len(paths)))
        if workers == 1:
            for path in paths:
                one(path)
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="goalkeeper-narinfo") as pool:
                list(pool.map(one, paths))
        if errors:
            if on_error is None:
                raise errors[0]
            for err in errors:
                on_error(f"error: {err}")
        return found

    # -- copying ------------------------------------------------------------------------------

    def copy_path(self, path: StorePath, info: ValidPathInfo, repair: bool, check_sigs: bool) -> None:
        """`copyStorePath(sub, local, path)`: download, verify, restore and register `info.path`.

        Raises:
            StoreError: a bad signature, hash, size or archive (nothing is registered).
            SubstituteGone: the narinfo or NAR vanished since the query.
        """
        store = self.store
        printed = store.print(info.path)
        if check_sigs and path_info_is_untrusted(info, store.store_dir, self.keys, self.require_sigs):
            raise StoreError(f"cannot add path '{printed}' because it lacks a valid signature")
        narinfo = self.query_nar_info(path)
        if narinfo is None:
            raise SubstituteGone(f"path '{self.store_dir.print(path)}' is no longer in binary cache '{self.uri}'")
        if (narinfo.info.nar_hash, narinfo.info.nar_size) != (info.nar_hash, info.nar_size):
            raise StoreError(f"the narinfo of '{printed}' in '{self.uri}' changed while it was substituted")
        self._say(f"copying path '{self.store_dir.print(path)}' from '{self.uri}'...")
        store.add_temp_root(info.path)
        real = store.real_path(info.path)
        with PathLocks([real]) as lock:
            if repair or not store.is_valid_path(info.path):
                self._restore(narinfo, info, real, printed)
                try:
                    # Nix registers the cache's info with registrationTime now and ultimate off.
                    store.register_valid_paths([info.replace(registration_time=0, ultimate=False)])
                except BaseException:
                    delete_path(real)
                    raise
            lock.set_deletion(True)

    def _restore(self, narinfo: NarInfo, info: ValidPathInfo, real: str, printed: str) -> None:
        temp = os.path.join(os.path.dirname(real), f".gk-subst-{os.getpid()}-{next(_temp_counter)}-{info.path.name}")
        try:
            try:
                reader = self.cache.nar_reader(narinfo)
            except NoSuchBinaryCacheFile as err:
                raise SubstituteGone(str(err)) from err
            except TransferError:
                self._maybe_disable()
                raise
            try:
                restore_path(temp, reader)
                reader.finish()
            except FormatError as err:
                raise StoreError(f"NAR '{narinfo.url}' of '{printed}' from '{self.uri}' is corrupt: "
                                 f"{err.reason}") from err
            finally:
                reader.close()
            _check_content_address(info, temp, printed)
            canonicalise_path_metadata(temp)
            delete_path(real)  # an invalid leftover, or the corrupt path being repaired
            os.rename(temp, real)
        except BaseException:
            delete_path(temp)
            raise


def _check_content_address(info: ValidPathInfo, temp: str, printed: str) -> None:
    """addToStore's check that the restored tree really has the content address it claims."""
    ca = info.ca
    if ca is None:
        return
    if ca.method == "recursive":
        actual = hash_path(temp, ca.hash.algo)[0]
    elif ca.method == "flat":
        actual = hash_flat(temp, ca.hash.algo)
    else:
        actual = hash_file(ca.hash.algo, temp)
    if actual != ca.hash:
        raise StoreError(f"ca hash mismatch importing path '{printed}';\n"
                         f"  specified: {ca.hash.to_string(Base.BASE32, True)}\n"
                         f"  got:       {actual.to_string(Base.BASE32, True)}")


# -- from settings --------------------------------------------------------------------------------


def substituters_from_settings(store, settings, *, uris: Sequence[str] | None = None, warn: Say = _stderr,
                               say: Say | None = None, disk_cache: NarInfoDiskCache | None = None,
                               sort_by_priority: bool | None = None) -> list[BinaryCacheSubstituter]:
    """`getDefaultSubstituters`: one substituter per URI of `substituters` (duplicates once).

    A URI that cannot be opened prints a warning and is left out. With more than one
    cache they are sorted by priority (which reads each nix-cache-info now); a lone
    cache is left uninitialised until a goal needs it, so a run that substitutes
    nothing never touches the network.
    """
    if uris is None:
        uris = list(settings.get("substituters"))
    if not bool(settings.get("substitute")):
        return []
    keys = public_keys(settings.get("trusted-public-keys"), settings.get("secret-key-files"))
    timeout = float(int(settings.get("connect-timeout")) or 30)
    subs: list[BinaryCacheSubstituter] = []
    done: set[str] = set()
    for uri in uris:
        if not uri or uri in done:
            continue
        done.add(uri)
        try:
            cache = BinaryCache.open(uri, timeout=timeout)
        except StoreError as err:
            warn(f"warning: {err}")
            continue
        http = cache.uri.startswith(("http://", "https://"))
        if http and disk_cache is None:
            disk_cache = _open_disk_cache(settings, warn)
        subs.append(BinaryCacheSubstituter(
            cache, store, keys=keys, require_sigs=bool(settings.get("require-sigs")),
            try_fallback=bool(settings.get("fallback")), disk_cache=disk_cache if http else None,
            warn=warn, say=say))
    if sort_by_priority if sort_by_priority is not None else len(subs) > 1:
        subs = [s for s in subs if s.ensure_init()]
        subs.sort(key=lambda s: s.priority)  # stable, as std::list::sort
    return subs


def _open_disk_cache(settings, warn: Say) -> NarInfoDiskCache | None:
    try:
        return NarInfoDiskCache(positive_ttl=int(settings.get("narinfo-cache-positive-ttl")),
                                negative_ttl=int(settings.get("narinfo-cache-negative-ttl")))
    except Exception as err:  # an unwritable cache dir must not stop substitution
        warn(f"warning: cannot open the narinfo disk cache: {err}")
        return None


def query_substitutable_path_infos(substituters: Sequence[BinaryCacheSubstituter], paths: Iterable[StorePath],
                                   *, try_fallback: bool = False, on_error: Say | None = None,
                                   store_dir=None) -> dict[StorePath, NarInfo]:
    """`Store::querySubstitutablePathInfos`: the first substituter (in order) that has each path.

    Errors of one cache are printed and skipped with `try_fallback`, raised without it, as Nix.
    """
    wanted = list(dict.fromkeys(paths))
    found: dict[StorePath, NarInfo] = {}
    for sub in substituters:
        if store_dir is not None and sub.store_dir != store_dir:
            continue  # no content address to recompute the path with, as Nix for plain paths
        todo = [p for p in wanted if p not in found]
        if not todo:
            break
        found.update(sub.query_path_infos(todo, on_error=on_error if try_fallback else None))
    return found


def close_substituters(substituters: Iterable[BinaryCacheSubstituter]) -> None:
    """Release the disk caches' connections (HTTP connections close with their threads)."""
    closed: set[int] = set()
    for sub in substituters:
        cache = sub.disk_cache
        if cache is not None and id(cache) not in closed:
            closed.add(id(cache))
            cache.close()


def query_missing(store, substituters: Sequence[BinaryCacheSubstituter], targets, *, use_substitutes: bool = True,
                  try_fallback: bool = False, on_error: Say | None = None):
    """`Store::queryMissing` with substituters: what will be built, fetched, or is unknown.

    Nix walks the graph on a thread pool with one narinfo query per path; here the
    walk goes level by level and each level's queries run at once
    (`query_substitutable_path_infos`), which is what makes 800 lookups cheap.
    Returns an `actors.query_missing.Missing`.
    """
    from .query_missing import Missing
    from .worker_messages import DerivedPath

    missing = Missing()
    done: set = set()
    frontier = list(targets)
    while frontier:
        next_level: list = []
        opaque: list[StorePath] = []
        outputs_to_check: list[tuple[StorePath, object, list[StorePath]]] = []  # (drv path, drv, invalid outputs)
        for target in frontier:
            if target in done:
                continue
            done.add(target)
            if not target.is_built:
                if not store.is_valid_path(target.path):
                    opaque.append(target.path)
                continue
            if not store.is_valid_path(target.path):
                missing.unknown.add(target.path)  # "FIXME: we could try to substitute the derivation"
                continue
            outputs = store.query_partial_derivation_output_map(target.path)
            known = all(path is not None for path in outputs.values())
            invalid = sorted({path for name, path in outputs.items()
                              if path is not None and (not target.outputs or name in target.outputs)
                              and not store.is_valid_path(path)})
            if known and not invalid:
                continue
            drv = store.read_derivation(target.path)
            if known and use_substitutes and drv.env.get("allowSubstitutes", "1") == "1":
                outputs_to_check.append((target.path, drv, invalid))
            else:
                _must_build(missing, target.path, drv, next_level)
        paths = opaque + [p for _, _, outs in outputs_to_check for p in outs]
        infos = query_substitutable_path_infos(substituters, paths, try_fallback=try_fallback, on_error=on_error,
                                               store_dir=store.store_dir)
        for path in opaque:
            narinfo = infos.get(path)
            if narinfo is None:
                missing.unknown.add(path)
                continue
            missing.will_substitute.add(path)
            missing.download_size += narinfo.file_size
            missing.nar_size += narinfo.info.nar_size
            next_level.extend(DerivedPath(ref) for ref in sorted(narinfo.info.references))
        for drv_path, drv, outs in outputs_to_check:
            if all(out in infos for out in outs):
                next_level.extend(DerivedPath(out) for out in outs)  # all substitutable: fetch them
            else:
                _must_build(missing, drv_path, drv, next_level)
        frontier = next_level
    return missing


def _must_build(missing, drv_path: StorePath, drv, next_level: list) -> None:
    """`mustBuildDrv`: the derivation will be built, so its input derivations are wanted."""
    from .worker_messages import DerivedPath

    missing.will_build.add(drv_path)
    for input_drv, wanted in sorted(drv.input_drvs.items()):
        next_level.append(DerivedPath(input_drv, frozenset(wanted)))
