"""Adding paths from the bytes a client sends: a NAR for a known path, or a dump to content-address.

`LocalStore` adds paths from files on disk; the daemon receives them as a
stream, so these helpers put the stream on disk first. `import_nar` is
`LocalStore::addToStore(info, source)`: the NAR is restored under a temp name
inside the real store dir while its sha256 is computed, checked against the
claimed narHash, narSize and content address, and only then renamed into
place and registered (the same order as `LocalStore._add_contents`, so a
crash never leaves a valid path without its files).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile

from goalkeeper.store import nar
from goalkeeper.store.canonicalise import canonicalise_path_metadata
from goalkeeper.store.errors import StoreError
from goalkeeper.store.hashes import Hash, new_hasher
from goalkeeper.store.locks import PathLocks
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.paths import StorePath

_counter = itertools.count()


class HashingSource:
    """Passes reads through while hashing them (sha256) and counting bytes."""

    def __init__(self, source):
        self._source = source
        self._hasher = new_hasher("sha256")
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        self._hasher.update(data)
        self.size += len(data)
        return data

    def hash(self) -> Hash:
        return Hash("sha256", self._hasher.digest())


def skip_nar(source) -> None:
    """Consume exactly one NAR from `source` (the path was valid already)."""
    nar.copy(source, lambda _data: None)


def import_nar(store, info: ValidPathInfo, source, *, repair: bool = False) -> None:
    """`addToStore(info, narSource)`: restore, verify and register one path.

    Raises:
        StoreError: narHash, narSize or content-address mismatch; invalid references.
        BadArchive: a malformed NAR.
    """
    printed = store.print(info.path)
    store.add_temp_root(info.path)
    if not repair and store.is_valid_path(info.path):
        skip_nar(source)
        return
    real = store.real_path(info.path)
    with PathLocks([real]) as lock:
        if not repair and store.is_valid_path(info.path):
            skip_nar(source)
            return
        temp = os.path.join(store.config.real_store_dir, f".gk-import-{os.getpid()}-{next(_counter)}-{info.path.name}")
        try:
            hashing = HashingSource(source)
            nar.restore_path(temp, hashing)
            got = hashing.hash()
            if got != info.nar_hash:
                raise StoreError(f"hash mismatch importing path '{printed}';\n  specified: {info.nar_hash}\n"
                                 f"  got:       {got}")
            if info.nar_size and info.nar_size != hashing.size:
                raise StoreError(f"size mismatch importing path '{printed}';\n  specified: {info.nar_size}\n"
                                 f"  got:       {hashing.size}")
            _check_content_address(store, info, temp, got)
            canonicalise_path_metadata(temp)
            nar.delete_path(real)
            os.rename(temp, real)
        except BaseException:
            nar.delete_path(temp)
            raise
        try:
            store.register_valid_path(info.replace(nar_size=hashing.size))
        except BaseException:
            nar.delete_path(real)  # refused (e.g. a reference is invalid): leave the store as it was
            raise
        finally:
            lock.set_deletion(True)


def _check_content_address(store, info: ValidPathInfo, temp: str, nar_hash: Hash) -> None:
    ca = info.ca
    if ca is None or ca.method == "text":
        return
    if ca.method == "recursive":
        actual = nar_hash if ca.hash.algo == "sha256" else nar.hash_path(temp, ca.hash.algo)[0]
    else:
        actual = nar.hash_flat(temp, ca.hash.algo)
    if actual != ca.hash:
        raise StoreError(f"ca hash mismatch importing path '{store.print(info.path)}';\n  specified: {ca.hash}\n"
                         f"  got:       {actual}")


def add_from_dump(store, name: str, method: str, algo: str, source, references, repair: bool = False) -> StorePath:
    """`addToStoreFromDump`: content-address a NAR ("recursive") or a flat file's bytes and add it.

    The dump is unpacked in a private temp dir, then added with `LocalStore.add_to_store`,
    which copies, hashes, locks and registers it.
    """
    tmp = tempfile.mkdtemp(prefix="gk-dump-", dir=_temp_parent(store))
    try:
        target = os.path.join(tmp, "x")
        if method == "recursive":
            nar.restore_path(target, source)
        else:
            with open(target, "xb") as out:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
        return store.add_to_store(name, target, method, algo, references, repair)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _temp_parent(store) -> str | None:
    # Next to the store's state (usually the same file system as the store), else $TMPDIR.
    state = store.config.state_dir
    return state if os.access(state, os.W_OK) else None


class RegularFileSink:
    """A NAR parse sink that keeps the contents of a NAR holding one regular file
    (`RetrieveRegularNARSink`, for the obsolete AddToStore's flat form)."""

    def __init__(self) -> None:
        self.regular = True
        self.data = bytearray()

    def create_directory(self, path: bytes) -> None:
        self.regular = False

    def create_regular_file(self, path: bytes, executable: bool, size: int) -> None:
        if path:
            self.regular = False

    def receive_contents(self, data: bytes) -> None:
        self.data += data

    def close_regular_file(self) -> None:
        pass

    def create_symlink(self, path: bytes, target: bytes) -> None:
        self.regular = False
