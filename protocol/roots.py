"""GC roots as the daemon sees them (gc.cc `addIndirectRoot`, `findRoots`), without a collector.

An indirect root is `<state>/gcroots/auto/<base32 sha1 of the link>` -> the link
(e.g. `/home/u/result`), which points into the store.
"""

from __future__ import annotations

import os

from goalkeeper.store.errors import StoreError
from goalkeeper.store.hashes import Base, hash_bytes
from goalkeeper.store.paths import StorePath


def add_indirect_root(store, link: str) -> None:
    """`LocalFSStore::addIndirectRoot`: register `link` (absolute) as a root."""
    if not link.startswith("/"):
        raise StoreError(f"not an absolute path: '{link}'")
    digest = hash_bytes("sha1", link.encode()).to_string(Base.BASE32, False)
    auto = os.path.join(store.config.state_dir, "gcroots", "auto")
    os.makedirs(auto, exist_ok=True)
    real_root = os.path.join(auto, digest)
    temp = f"{real_root}.tmp-{os.getpid()}"
    try:
        os.unlink(temp)
    except FileNotFoundError:
        pass
    os.symlink(link, temp)
    os.rename(temp, real_root)  # replaceSymlink: atomically, an existing root is overwritten


def find_roots(store) -> list[tuple[str, StorePath]]:
    """(link, store path) for every root under `gcroots` and `profiles`, then the temp roots.

    Runtime roots (open files of running processes) are not scanned.
    """
    found: list[tuple[str, StorePath]] = []
    state = store.config.state_dir
    for top in ("gcroots", "profiles"):
        _scan(store, os.path.join(state, top), os.path.join(state, "gcroots", "auto"), found)
    return sorted(found)


def _scan(store, path: str, auto_dir: str, found: list) -> None:
    try:
        if os.path.islink(path):
            target = _abs(os.readlink(path), path)
            if store.store_dir.is_in_store(target):
                _found(store, path, target, found)
            elif not os.path.lexists(target):
                if os.path.dirname(path) == auto_dir:
                    os.unlink(path)  # a stale indirect root, removed as Nix does
            elif os.path.islink(target):
                # one level of indirection (auto roots, profile generations), no more
                inner = _abs(os.readlink(target), target)
                if store.store_dir.is_in_store(inner):
                    _found(store, target, inner, found)
        elif os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                _scan(store, os.path.join(path, name), auto_dir, found)
    except OSError:
        pass  # a root that vanished or cannot be read is no root (Nix ignores ENOENT and EACCES)


def _found(store, link: str, target: str, found: list) -> None:
    try:
        path = store.store_dir.to_store_path(target)[0]
    except StoreError:
        return
    if store.is_valid_path(path):
        found.append((link, path))


def _abs(target: str, link: str) -> str:
    return os.path.normpath(os.path.join(os.path.dirname(link), target))
