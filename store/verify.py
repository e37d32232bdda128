"""`verifyStore` (local-store.cc): every valid path exists and, optionally, still has its NAR hash.

Messages and their order are Nix 2.8's. What `--repair` can do without
substituters or the builder is limited to what the store itself can fix:
corrupt `.links` entries are removed, missing hashes and sizes filled in,
disappeared paths without valid referrers invalidated. A modified or missing
path that others still need is reported as not repairable.
"""

from __future__ import annotations

import os
from typing import Callable

from .errors import StoreError
from .hashes import Hash
from .locks import lock_file, open_lock_file
from .nar import hash_path
from .paths import StorePath

Log = Callable[[str], None]
NULL_HASH = Hash("sha256", bytes(32))


def verify_store(store, check_contents: bool = False, repair: bool = False, *, log: Log) -> bool:
    """Check the store; return True if errors remain (Nix then warns and exits 1)."""
    errors = False
    # A shared GC lock: the collector cannot delete paths under us, so existence checks are stable.
    gc_fd = open_lock_file(os.path.join(store.config.state_dir, "gc.lock"))
    assert gc_fd is not None
    try:
        if not lock_file(gc_fd, "read", False):
            log("waiting for the big garbage collector lock...")
            lock_file(gc_fd, "read", True)
        log("reading the Nix store...")
        names = set(os.listdir(store.config.real_store_dir))
        log("checking path existence...")
        valid: set[StorePath] = set()
        done: set[str] = set()
        rows = [r[0] for r in store.db().execute("select path from ValidPaths")]
        for printed in sorted(rows):
            errors |= _verify_path(store, printed, names, done, valid, repair, log)
        if check_contents:
            errors |= _check_links(store, repair, log)
            errors |= _check_hashes(store, sorted(valid), repair, log)
    finally:
        os.close(gc_fd)
    return errors


def _verify_path(store, printed: str, names: set[str], done: set[str], valid: set[StorePath],
                 repair: bool, log: Log) -> bool:
    """`verifyPath`: True if it leaves an error behind."""
    if printed in done:
        return False
    done.add(printed)
    if not store.store_dir.is_store_path(printed):
        log(f"path '{printed}' is not in the Nix store")
        return False
    path = store.store_dir.parse(printed)
    if path.base in names:
        valid.add(path)
        return False
    # Check any referrers first: if they can be invalidated, so can this path.
    errors = False
    can_invalidate = True
    for referrer in sorted(store.query_referrers(path)):
        if referrer != path:
            errors |= _verify_path(store, store.print(referrer), names, done, valid, repair, log)
            if referrer in valid:
                can_invalidate = False
    if can_invalidate:
        log(f"path '{printed}' disappeared, removing from database...")
        store.invalidate_path(path)
        return errors
    log(f"path '{printed}' disappeared, but it still has valid referrers!")
    if repair:
        log(f"warning: cannot repair path '{printed}': goalkeeper has no substituter or builder here")
    return True


def _check_links(store, repair: bool, log: Log) -> bool:
    log("checking link hashes...")
    errors = False
    links_dir = store.layout.links_dir
    for name in sorted(os.listdir(links_dir)):
        link = os.path.join(links_dir, name)
        current = hash_path(link)[0].base32()
        if current != name:
            log(f"link '{link}' was modified! expected hash '{name}', got '{current}'")
            if repair:
                os.unlink(link)
                log(f"removed link '{link}'")
            else:
                errors = True
    return errors


def _check_hashes(store, paths: list[StorePath], repair: bool, log: Log) -> bool:
    log("checking store hashes...")
    errors = False
    for path in paths:
        try:
            info = store.query_path_info(path)
            if info is None:
                continue  # collected since the existence check
            current, size = hash_path(store.real_path(path), info.nar_hash.algo)
            if info.nar_hash != NULL_HASH and info.nar_hash != current:
                log(f"path '{store.print(path)}' was modified! expected hash '{info.nar_hash}', got '{current}'")
                if repair:
                    log(f"warning: cannot repair path '{store.print(path)}': goalkeeper has no substituter "
                        "or builder here")
                errors = True
                continue
            update = {}
            if info.nar_hash == NULL_HASH:
                log(f"fixing missing hash on '{store.print(path)}'")
                update["nar_hash"] = current
            if info.nar_size == 0:
                log(f"updating size field on '{store.print(path)}' to {size}")
                update["nar_size"] = size
            if update:
                store.update_path_info(info.replace(**update))
        except (StoreError, OSError) as err:
            log(f"error: {err}" if store.is_valid_path(path) else f"warning: {err}")
            errors = True
    return errors
