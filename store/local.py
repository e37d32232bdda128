"""The local store (libstore/local-store.cc) in Nix 2.8's own on-disk format.

A `LocalStore` is shared by threads: each thread gets its own SQLite
connection on first use (connections belong to their thread), and every
write is one `BEGIN IMMEDIATE` transaction, so goalkeeper threads, goalkeeper
processes and real Nix can register paths in one store at the same moment.

Adding a path follows one order so that a kill -9 at any instant leaves
nothing that claims more than it has: the contents are written under a temp
name inside the real store dir and canonicalised; then, holding the path's
lock, any invalid leftover at the final name is deleted, the temp is renamed
into place, and only then is the path registered. A crash leaves either an
unregistered temp (garbage to Nix's GC) or an unregistered final path, which
the next adder deletes before reuse.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
import threading
from typing import Callable, Iterable, Iterator, Sequence

from . import valid_paths as vp
from .closure import compute_fs_closure
from .canonicalise import canonicalise_path_metadata
from .content_address import ContentAddress
from .db import StoreDB, map_sqlite_errors, retry_busy
from .derivation import Derivation
from .derivation_hash import DrvHashCache
from .errors import BadStorePath, InvalidPath, StoreError
from .hashes import hash_bytes
from .locks import PathLocks, TempRoots
from .nar import delete_path, dump_path, hash_flat, hash_path, restore_path
from .path_info import ValidPathInfo
from .paths import StoreDir, StorePath
from .store_config import LocalStoreConfig
from .store_layout import StoreLayout

_temp_counter = itertools.count()
_DRV_HASH_CACHE_MAX = 100_000  # memoised drv hashes kept before starting afresh
_PARSED_DRVS_MAX = 1024  # parsed .drv files kept before starting afresh (a few MB for real ones)


class LocalStore:
    """A local Nix store: its files, its database and its locks.

    Attributes:
        config: where everything lives.
        store_dir: the logical store dir (`config.store_dir`).
        layout: the directories and files under the state dir.
    """

    def __init__(self, config: LocalStoreConfig, settings=None):
        self.config = config
        self.store_dir: StoreDir = config.store_dir
        self.settings = settings
        self.layout = StoreLayout(config, settings)
        self.temp_roots = TempRoots(config.state_dir)
        self._local = threading.local()
        self._dbs: list[StoreDB] = []
        self._dbs_lock = threading.Lock()
        self._drv_hash_cache: DrvHashCache = {}
        # drv path -> (the file's identity when read, experimental features, the parse).
        self._parsed_drvs: dict[StorePath, tuple[tuple, object, Derivation]] = {}
        self._closed = False
        # (owner thread ident, fn): while a store actor runs, other threads' registrations go to it.
        self._registrar: tuple[int, Callable[[list[ValidPathInfo]], None]] | None = None

    @classmethod
    def open(cls, config: LocalStoreConfig, settings=None) -> "LocalStore":
        """Open the store, creating Nix's layout and database if missing.

        Raises:
            SchemaError: the schema is newer (or much older) than Nix 2.8's.
            SQLiteError: the database cannot be opened (e.g. truncated).
        """
        store = cls(config, settings)
        try:
            store.layout.create()
            store.layout.open_database()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Close every connection, release the big-lock and remove our temp roots file."""
        if self._closed:
            return
        self._closed = True
        with self._dbs_lock:
            dbs, self._dbs = self._dbs, []
        for db in dbs:
            db.close()
        self.temp_roots.close()
        self.layout.close()

    def __enter__(self) -> "LocalStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections ------------------------------------------------------------------------

    def db(self) -> StoreDB:
        """This thread's connection (opened on first use)."""
        db = getattr(self._local, "db", None)
        if db is None:
            if self._closed:
                raise StoreError("the store has been closed")
            db = self.layout.connect()
            self._local.db = db
            with self._dbs_lock:
                self._dbs.append(db)
        return db

    def release_thread_db(self) -> None:
        """Close this thread's connection (before the thread ends, e.g. an actor's on_stop)."""
        db = getattr(self._local, "db", None)
        if db is None:
            return
        self._local.db = None
        with self._dbs_lock:
            if db in self._dbs:
                self._dbs.remove(db)
        db.close()

    @contextlib.contextmanager
    def using_db(self, db: StoreDB):
        """Run this thread's queries on `db` for a while (a connection shared under a lock).

        Thousands of goal threads each opening their own connection would exhaust
        file descriptors; they share one reader instead.
        """
        previous = getattr(self._local, "db", None)
        self._local.db = db
        try:
            yield self
        finally:
            self._local.db = previous

    def transaction(self, what: str = "updating the database"):
        """A write transaction on this thread's connection."""
        return self.db().transaction(what)

    def to_real_path(self, logical: str) -> str:
        return self.config.to_real_path(logical)

    def real_path(self, path: StorePath) -> str:
        return self.config.to_real_path(self.store_dir.print(path))

    def print(self, path: StorePath) -> str:
        return self.store_dir.print(path)

    def follow_links_to_store(self, path: str) -> str:
        """`followLinksToStore`: make `path` absolute and follow symlinks until it is inside the store.

        Raises:
            StoreError: a link in the chain does not exist.
            BadStorePath: it never leads into the store.
        """
        path = _abs_path(path)
        while not self.store_dir.is_in_store(path):
            try:
                st = os.lstat(path)
            except OSError as err:
                raise StoreError(f"getting status of '{path}': {err.strerror}") from err
            if not stat.S_ISLNK(st.st_mode):
                break
            path = _abs_path(os.readlink(path), os.path.dirname(path))
        if not self.store_dir.is_in_store(path):
            raise BadStorePath(f"path '{path}' is not in the Nix store")
        return path

    def follow_links_to_store_path(self, path: str) -> StorePath:
        """`followLinksToStorePath`: the store path a (possibly linked, possibly sub-) path lies in."""
        return self.store_dir.to_store_path(self.follow_links_to_store(path))[0]

    # -- queries ----------------------------------------------------------------------------

    @map_sqlite_errors("querying")
    def is_valid_path(self, path: StorePath) -> bool:
        return vp.is_valid_path(self.db(), self.store_dir, path)

    @map_sqlite_errors("querying")
    def query_path_info(self, path: StorePath) -> ValidPathInfo | None:
        return vp.query_path_info(self.db(), self.store_dir, path)

    def require_path_info(self, path: StorePath) -> ValidPathInfo:
        """`queryPathInfo` as Nix's callers see it: an error for an invalid path."""
        info = self.query_path_info(path)
        if info is None:
            raise InvalidPath(f"path '{self.print(path)}' is not valid")
        return info

    @map_sqlite_errors("querying")
    def query_referrers(self, path: StorePath) -> set[StorePath]:
        return vp.query_referrers(self.db(), self.store_dir, path)

    @map_sqlite_errors("querying")
    def query_valid_derivers(self, path: StorePath) -> set[StorePath]:
        return vp.query_valid_derivers(self.db(), self.store_dir, path)

    @map_sqlite_errors("querying")
    def query_partial_derivation_output_map(self, drv_path: StorePath) -> dict[str, StorePath | None]:
        """Every output of a valid drv, with its path where the store knows one."""
        known: dict[str, StorePath | None] = dict(vp.query_derivation_outputs(self.db(), self.store_dir, drv_path))
        if self.layout.ca_derivations:
            from .realisations import static_output_realisations

            for name, realised in static_output_realisations(self, drv_path).items():
                known[name] = realised
        return known

    def query_derivation_output_map(self, drv_path: StorePath) -> dict[str, StorePath]:
        """Like the partial map, but every output must have a known path."""
        result = {}
        for name, path in self.query_partial_derivation_output_map(drv_path).items():
            if path is None:
                raise StoreError(
                    f"output '{name}' of derivation '{self.print(drv_path)}' has no known path"
                )
            result[name] = path
        return result

    @map_sqlite_errors("querying")
    def query_path_from_hash_part(self, hash_part: str) -> StorePath | None:
        return vp.query_path_from_hash_part(self.db(), self.store_dir, hash_part)

    @map_sqlite_errors("querying")
    def query_all_valid_paths(self) -> set[StorePath]:
        return vp.query_all_valid_paths(self.db(), self.store_dir)

    @map_sqlite_errors("querying")
    def compute_fs_closure(
        self,
        paths: Iterable[StorePath] | StorePath,
        flip_direction: bool = False,
        include_outputs: bool = False,
        include_derivers: bool = False,
    ) -> set[StorePath]:
        """`computeFSClosure` (see `closure.compute_fs_closure`)."""
        if not (flip_direction or include_outputs or include_derivers):
            return vp.query_closure(self.db(), self.store_dir, [paths] if isinstance(paths, StorePath) else list(paths))
        return compute_fs_closure(self, paths, flip_direction, include_outputs, include_derivers)

    def topo_sort_paths(self, paths: Iterable[StorePath]) -> list[StorePath]:
        """`topoSortPaths`: referrers before their references."""
        from .topo_sort import topo_sort

        def children(path: StorePath):
            info = self.query_path_info(path)
            return info.references if info is not None else ()

        return topo_sort(
            set(paths),
            children,
            lambda p, parent: vp.ReferenceCycle(
                f"cycle detected in the references of '{self.print(p)}' from '{self.print(parent)}'"
            ),
        )

    # -- derivations ------------------------------------------------------------------------

    def read_derivation(self, drv_path: StorePath) -> Derivation:
        """`readInvalidDerivation`: parse the .drv file (it need not be valid yet).

        A goal reads its .drv and the goal above it reads it too, to hash it as an input:
        the parse is kept (a few per goal cost more than the rest of its bookkeeping) and
        handed out again while the file is the same one, unchanged (inode, size, ctime).
        """
        real = self.real_path(drv_path)
        features = self.layout.experimental_features
        cached = self._parsed_drvs.get(drv_path)
        if cached is not None and cached[1] == features:
            try:
                st = os.stat(real)
            except OSError:
                pass  # read below, for Nix's error
            else:
                if cached[0] == (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns):
                    return cached[2]
        try:
            with open(real, "rb") as f:
                st = os.fstat(f.fileno())
                identity = (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns)
                text = f.read()
        except OSError as err:
            raise StoreError(f"cannot read derivation '{self.print(drv_path)}': {err.strerror}") from err
        drv = Derivation.parse(text, drv_path.derivation_name(), self.store_dir, features, self.print(drv_path))
        if len(self._parsed_drvs) >= _PARSED_DRVS_MAX:
            self._parsed_drvs = {}  # a new dict, not clear(): another thread may be reading this one
        self._parsed_drvs[drv_path] = (identity, features, drv)
        return drv

    def derivation_known_outputs(self, drv_path: StorePath,
                                 read: Callable[[StorePath], Derivation] | None = None) -> dict[str, StorePath]:
        drv = (read or self.read_derivation)(drv_path)
        return {name: path for name, (_, path) in drv.outputs_and_opt_paths(self.store_dir).items() if path}

    def check_derivation_outputs(self, drv_path: StorePath,
                                 read: Callable[[StorePath], Derivation] | None = None) -> None:
        from .drv_outputs import check_derivation_outputs

        read = read or self.read_derivation
        check_derivation_outputs(self.store_dir, drv_path, read(drv_path), read, self.drv_hash_cache())

    def drv_hash_cache(self) -> DrvHashCache:
        """The memo of derivation hashes that every caller of hash_derivation_modulo shares.

        Bounded for a long-lived store by starting a new dict, never by clearing this one:
        a caller on another thread may be between filling an entry and reading it back.
        """
        if len(self._drv_hash_cache) > _DRV_HASH_CACHE_MAX:
            self._drv_hash_cache = {}
        return self._drv_hash_cache

    # -- registration -----------------------------------------------------------------------

    def register_in_transaction(self, db: StoreDB, infos: Sequence[ValidPathInfo]) -> None:
        """`registerValidPaths`' body on `db`, inside a transaction the caller owns (the store actor's batch)."""
        parsed: dict[StorePath, Derivation] = {}  # each .drv is read once per registration

        def read(drv_path: StorePath) -> Derivation:
            drv = parsed.get(drv_path)
            if drv is None:
                drv = parsed[drv_path] = self.read_derivation(drv_path)
            return drv

        vp.register_valid_paths(db, self.store_dir, infos,
                                lambda p: self.derivation_known_outputs(p, read),
                                lambda p: self.check_derivation_outputs(p, read))

    def set_registrar(self, fn: Callable[[list[ValidPathInfo]], None] | None, owner_thread: int = 0) -> None:
        """Route `register_valid_paths` of every thread but `owner_thread` through `fn` (the store actor).

        `add_to_store` and friends then write files and hold path locks in the
        caller's thread, and only the registration itself goes to the actor.
        """
        self._registrar = None if fn is None else (owner_thread, fn)

    def register_valid_paths(self, infos: Iterable[ValidPathInfo]) -> None:
        """`registerValidPaths`: one transaction; all or nothing."""
        infos = list(infos)
        if not infos:
            return
        registrar = self._registrar
        if registrar is not None and registrar[0] != threading.get_ident():
            registrar[1](infos)
            return
        if self.layout.sync_before_registering:
            os.sync()

        def attempt() -> None:
            with self.transaction("registering valid paths") as db:
                self.register_in_transaction(db, infos)

        retry_busy(attempt)

    def register_valid_path(self, info: ValidPathInfo) -> None:
        self.register_valid_paths([info])

    def invalidate_path(self, path: StorePath) -> None:
        def attempt() -> None:
            with self.transaction("invalidating a path") as db:
                vp.invalidate_path(db, self.store_dir, path)

        retry_busy(attempt)

    def update_path_info(self, info: ValidPathInfo) -> None:
        def attempt() -> None:
            with self.transaction("updating path info") as db:
                vp.update_path_info(db, self.store_dir, info)

        retry_busy(attempt)

    def add_temp_root(self, path: StorePath) -> None:
        """`addTempRoot`: keep `path` from real Nix's garbage collector while this process lives."""
        self.temp_roots.add(self.print(path))

    # -- adding paths -----------------------------------------------------------------------

    def add_to_store(
        self,
        name: str,
        src_path: str,
        method: str = "recursive",
        algo: str = "sha256",
        references: Iterable[StorePath] = (),
        repair: bool = False,
    ) -> StorePath:
        """`addToStore` from a file or tree: `method` is "recursive" (NAR) or "flat" (one regular file).

        Raises:
            BadStorePath: an invalid name.
            StoreError: the source is missing, not a regular file for "flat", or changed while added.
        """
        references = frozenset(references)
        if method not in ("recursive", "flat"):
            raise StoreError(f"unknown ingestion method '{method}'")
        if not os.path.lexists(src_path):
            raise StoreError(f"getting status of '{os.path.abspath(src_path)}': No such file or directory")
        if method == "flat":
            if not os.path.isfile(src_path):
                raise StoreError(f"'{os.path.abspath(src_path)}' is not a regular file; flat ingestion needs one")
            content_hash = hash_flat(src_path, algo)
        else:
            content_hash, _ = hash_path(src_path, algo)
        ca = ContentAddress(method, content_hash)
        dst = self.store_dir.make_fixed_output_path(method == "recursive", content_hash, name, references)
        self.add_temp_root(dst)
        if not repair and self.is_valid_path(dst):
            return dst

        def write(temp: str) -> None:
            if method == "flat":
                with open(src_path, "rb") as src, open(temp, "xb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
            else:
                _copy_via_nar(src_path, temp)

        def check(temp: str) -> tuple | None:
            """Verify the copy; return its (narHash, narSize) when that is what was computed."""
            nar = None
            if method == "flat":
                actual = hash_flat(temp, algo)
            else:
                actual, size = hash_path(temp, algo)
                if algo == "sha256":
                    nar = (actual, size)  # the content hash is the NAR hash: don't hash twice
            if actual != content_hash:
                raise StoreError(f"'{src_path}' changed while it was being added to the store")
            return nar

        return self._add_contents(dst, name, write, check, references, ca, repair)

    def add_text_to_store(
        self, name: str, text: bytes | str, references: Iterable[StorePath] = (), repair: bool = False
    ) -> StorePath:
        """`addTextToStore`: a text path (`.drv`, `builtins.toFile`); ca `text:sha256:…`, no deriver."""
        if isinstance(text, str):
            text = text.encode()
        references = frozenset(references)
        digest = hash_bytes("sha256", text)
        dst = self.store_dir.make_text_path(name, digest, references)
        self.add_temp_root(dst)
        if not repair and self.is_valid_path(dst):
            return dst

        def write(temp: str) -> None:
            with open(temp, "xb") as out:
                out.write(text)

        return self._add_contents(dst, name, write, None, references, ContentAddress("text", digest), repair)

    def _add_contents(self, dst, name, write, check, references, ca: ContentAddress, repair: bool) -> StorePath:
        real = self.real_path(dst)
        with PathLocks([real]) as lock:
            if repair or not self.is_valid_path(dst):
                temp = self._temp_path(name)
                try:
                    write(temp)
                    canonicalise_path_metadata(temp)
                    nar = check(temp) if check is not None else None
                    nar_hash, nar_size = nar if nar is not None else hash_path(temp, "sha256")
                    # An invalid leftover (a crash between rename and register) goes first.
                    delete_path(real)
                    os.rename(temp, real)
                except BaseException:
                    delete_path(temp)
                    raise
                try:
                    if self.layout.auto_optimise_store:
                        from .optimise import optimise_path

                        optimise_path(self, real)
                    self.register_valid_path(
                        ValidPathInfo(path=dst, nar_hash=nar_hash, nar_size=nar_size, references=references, ca=ca)
                    )
                except BaseException:
                    # Refused (e.g. a reference is not valid): leave the store as it was.
                    delete_path(real)
                    raise
                finally:
                    # Waiters see the deletion token and retry on a fresh lock file.
                    lock.set_deletion(True)
            else:
                lock.set_deletion(True)
        return dst

    def _temp_path(self, name: str) -> str:
        # A name that is not a store path: real Nix's GC treats a leftover as garbage.
        return os.path.join(self.config.real_store_dir, f".gk-add-{os.getpid()}-{next(_temp_counter)}-{name}")

    def delete_invalid_path(self, path: StorePath) -> bool:
        """Delete the files of `path` if it is not valid, holding its lock; True if something was deleted.

        Raises:
            StoreError: the path is valid.
        """
        real = self.real_path(path)
        with PathLocks([real]) as lock:
            if self.is_valid_path(path):
                raise StoreError(f"cannot delete path '{self.print(path)}' since it is still valid")
            existed = os.path.lexists(real)
            delete_path(real)
            lock.set_deletion(True)
        return existed

    # -- realisations (ca-derivations) ------------------------------------------------------

    def register_drv_output(self, realisation) -> None:
        from .realisations import register_drv_output

        self.layout.require_ca_derivations()

        def attempt() -> None:
            with self.transaction("registering a realisation") as db:
                register_drv_output(db, self.store_dir, realisation)

        retry_busy(attempt)

    def query_realisation(self, drv_output):
        from .realisations import query_realisation

        self.layout.require_ca_derivations()
        return query_realisation(self.db(), self.store_dir, drv_output)


def _abs_path(path: str, base: str | None = None) -> str:
    """`absPath` + `canonPath`: absolute, without `.`/`..`/`//`, symlinks untouched."""
    if not path.startswith("/"):
        path = os.path.join(base if base is not None else os.getcwd(), path)
    path = os.path.normpath(path)
    return path[1:] if path.startswith("//") else path


def _copy_via_nar(src: str, dst: str) -> None:
    """Recreate `src` at `dst` through its NAR, so the copy holds exactly what a NAR can express."""
    restore_path(dst, _IterReader(dump_path(src)))


class _IterReader:
    """A binary reader over an iterator of chunks (restore_path reads it in small pieces)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buf = b""
        self._pos = 0

    def read(self, n: int) -> bytes:
        if self._pos >= len(self._buf):
            self._buf = next(self._chunks, b"")
            self._pos = 0
        out = self._buf[self._pos : self._pos + n]
        self._pos += len(out)
        return out
