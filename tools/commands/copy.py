"""`goalkeeper copy --to file:///DIR [--sign KEYFILE] PATH...`: `nix copy --to file://…` for a local store.

Copies the closure of each PATH into a binary cache in Nix's layout (spec §6):
references before their referrers, each NAR compressed (`?compression=`, xz by
default) and named by its file hash, its narinfo written last, so a reader
never sees a narinfo whose NAR is missing. Paths the cache already has are
skipped. With `--sign` (or `?secret-key=`) every narinfo carries a signature by
that key; real Nix substitutes from the result.
"""

from __future__ import annotations

import argparse
import os

from goalkeeper.store.binary_cache import BinaryCache
from goalkeeper.store.errors import StoreError
from goalkeeper.store.nar import dump_path
from goalkeeper.store.signatures import read_secret_key_file

NAME = "copy"
HELP = "copy store paths and their closures to a file:// binary cache, like 'nix copy --to'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", required=True, metavar="URI",
                        help="the binary cache, file:///DIR[?compression=xz|bzip2|zstd|none&secret-key=FILE]")
    parser.add_argument("--sign", metavar="KEYFILE", help="sign the narinfos with this secret key file")
    parser.add_argument("paths", nargs="+", metavar="PATH")


def run(args: argparse.Namespace, ctx) -> int:
    store = ctx.open_store()
    cache = BinaryCache.open(args.to)
    if not cache.uri.startswith("file://"):
        raise StoreError(f"copying to '{cache.uri}' is not supported; only file:// binary caches can be written")
    # The cache holds paths of this store: its StoreDir is ours.
    cache.params.store_dir = store.store_dir.path
    cache.store_dir = store.store_dir
    key_file = args.sign or cache.params.secret_key
    secret_key = read_secret_key_file(key_file) if key_file else None
    os.makedirs(cache.transport.root, exist_ok=True)
    cache.init(create=True)

    roots = [store.follow_links_to_store_path(text) for text in args.paths]
    closure = store.compute_fs_closure(roots)
    # topoSortPaths puts referrers first; a cache must get references first.
    todo = [p for p in reversed(store.topo_sort_paths(closure)) if not cache.has_path(p)]
    if todo:
        ctx.stderr.write(f"copying {len(todo)} paths...\n".encode())
    for path in todo:
        info = store.require_path_info(path)
        ctx.stderr.write(f"copying path '{store.print(path)}' to '{cache.uri}'...\n".encode())
        cache.add_to_store(info, dump_path(store.real_path(path)), secret_key=secret_key)
    return 0
