"""Hard-link deduplication through `<store>/.links` (libstore/optimise-store.cc).

Each regular file or symlink is named in `.links` by the Nix base-32 sha256 of
its NAR serialisation (so the executable bit is part of the identity); a file
whose twin is already there is atomically replaced by a hard link to it, via
a temporary link `.tmp-link-<pid>-<random>` and rename, exactly as Nix does,
so a crash never leaves a store file missing.
"""

from __future__ import annotations

import errno
import os
import random
import stat
import sys
from dataclasses import dataclass

from .canonicalise import canonicalise_timestamp_and_permissions
from .nar import hash_path


@dataclass
class OptimiseStats:
    files_linked: int = 0
    bytes_freed: int = 0


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def load_inode_hash(links_dir: str) -> set[int]:
    """`loadInodeHash`: inodes already in `.links` (files that are deduplicated already)."""
    inodes = set()
    with os.scandir(links_dir) as it:
        for entry in it:
            inodes.add(entry.inode())
    return inodes


def optimise_path(store, path: str, inode_hash: set[int] | None = None, stats: OptimiseStats | None = None,
                  repair: bool = False) -> OptimiseStats:
    """`optimisePath_` over the tree at real path `path`."""
    links_dir = store.layout.links_dir
    real_store = store.config.real_store_dir
    inode_hash = load_inode_hash(links_dir) if inode_hash is None else inode_hash
    stats = stats or OptimiseStats()
    todo = [path]
    while todo:
        current = todo.pop()
        st = os.lstat(current)
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(current) as it:
                # readDirectoryIgnoringInodes: entries already linked are skipped.
                todo.extend(e.path for e in it if e.inode() not in inode_hash)
            continue
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IWUSR:
            _warn(f"skipping suspicious writable file '{current}'")
            continue
        if st.st_nlink > 1 and st.st_ino in inode_hash:
            continue  # already linked
        _link_one(current, st, links_dir, real_store, inode_hash, stats, repair)
    return stats


def _link_one(path: str, st: os.stat_result, links_dir: str, real_store: str, inode_hash: set[int],
              stats: OptimiseStats, repair: bool) -> None:
    digest = hash_path(path)[0]
    link_path = os.path.join(links_dir, digest.base32())
    if os.path.lexists(link_path):
        st_link = os.lstat(link_path)
        if st.st_size != st_link.st_size or (repair and digest != hash_path(link_path)[0]):
            _warn(f"removing corrupted link '{link_path}'")
            os.unlink(link_path)
    if not os.path.lexists(link_path):
        try:
            os.link(path, link_path, follow_symlinks=False)
            inode_hash.add(st.st_ino)
            return
        except FileExistsError:
            pass  # another process created it first: link to theirs
        except OSError as err:
            if err.errno == errno.ENOSPC:
                return  # a full directory index just disables deduplication of this file
            raise
    st_link = os.lstat(link_path)
    if st.st_ino == st_link.st_ino:
        return
    parent = os.path.dirname(path)
    must_toggle = parent != real_store
    if must_toggle:
        os.chmod(parent, 0o755)
    try:
        temp_link = os.path.join(real_store, f".tmp-link-{os.getpid()}-{random.getrandbits(31)}")
        try:
            os.link(link_path, temp_link, follow_symlinks=False)
        except OSError as err:
            if err.errno == errno.EMLINK:
                return  # too many links to one (probably empty) file
            raise
        try:
            os.rename(temp_link, path)
        except OSError as err:
            os.unlink(temp_link)
            if err.errno == errno.EMLINK:
                return
            raise
    finally:
        if must_toggle:
            # MakeReadOnly: back to 0555 and mtime 1.
            canonicalise_timestamp_and_permissions(parent)
    stats.files_linked += 1
    stats.bytes_freed += st.st_size


def optimise_store(store) -> OptimiseStats:
    """`optimiseStore`: deduplicate every valid path."""
    stats = OptimiseStats()
    inode_hash = load_inode_hash(store.layout.links_dir)
    for path in sorted(store.query_all_valid_paths()):
        store.add_temp_root(path)
        if not store.is_valid_path(path):
            continue  # collected meanwhile
        real = store.real_path(path)
        if os.path.lexists(real):
            optimise_path(store, real, inode_hash, stats)
    return stats


def show_bytes(n: int) -> str:
    """`showBytes`: MiB with two decimals."""
    return f"{n / (1024.0 * 1024.0):.2f} MiB"
