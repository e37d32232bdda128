"""`goalkeeper copy --to file:///DIR [--sign KEYFILE] PATH...`: `nix copy --to file://…` for a local store.

Copies the closure of each PATH into a binary cache in Nix's layout (spec §6):
references before their referrers, each NAR compressed (`?compression=`, xz by
default) and named by its file hash, its narinfo written last, so a reader
never sees a narinfo whose NAR is missing. Paths the cache already has are
skipped. With `--sign` (or `?secret-key=`) every narinfo carries a signature by
that key; real Nix substitutes from the result.

A derivation PATH stands for its outputs, as an installable does for `nix copy`:
they are copied (not the .drv), and in a store with CA derivations the
realisations of those outputs, with the realisations they depend on, go to
`realisations/<id>.doi` after the paths, so a floating CA derivation can be
substituted from the cache. Unlike `nix copy`, nothing is built here: an output
that is not valid is an error (`goalkeeper realise` it first).
"""

from __future__ import annotations

import argparse
import os

from goalkeeper.store.binary_cache import BinaryCache
from goalkeeper.store.derivation_hash import static_output_hashes
from goalkeeper.store.errors import StoreError
from goalkeeper.store.nar import dump_path
from goalkeeper.store.paths import StorePath
from goalkeeper.store.realisations import DrvOutput, Realisation
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

    roots, realisations = [], {}
    for text in args.paths:
        path = store.follow_links_to_store_path(text)
        if not path.is_derivation():
            roots.append(path)
            continue
        outputs, reals = _derivation_outputs(store, path)
        roots += outputs
        realisations.update(reals)
    closure = store.compute_fs_closure(roots)
    # topoSortPaths puts referrers first; a cache must get references first.
    todo = [p for p in reversed(store.topo_sort_paths(closure)) if not cache.has_path(p)]
    if todo:
        ctx.stderr.write(f"copying {len(todo)} paths...\n".encode())
    for path in todo:
        info = store.require_path_info(path)
        ctx.stderr.write(f"copying path '{store.print(path)}' to '{cache.uri}'...\n".encode())
        cache.add_to_store(info, dump_path(store.real_path(path)), secret_key=secret_key)
    for id in sorted(realisations, key=str):
        real = realisations[id]
        cache.upsert_realisation({
            "id": str(id), "outPath": str(real.out_path), "signatures": sorted(real.signatures),
            "dependentRealisations": {str(k): str(v) for k, v in real.dependent_realisations.items()},
        })
    return 0


def _derivation_outputs(store, drv_path: StorePath) -> tuple[list[StorePath], dict[DrvOutput, Realisation]]:
    """A derivation's output paths, and (CA derivations) its outputs' realisations with their dependencies."""
    if not store.is_valid_path(drv_path):
        raise StoreError(f"path '{store.print(drv_path)}' is not valid")
    outputs = []
    for name, path in sorted(store.query_partial_derivation_output_map(drv_path).items()):
        if path is None or not store.is_valid_path(path):
            raise StoreError(f"output '{name}' of derivation '{store.print(drv_path)}' is not valid; "
                             "build it first ('goalkeeper realise')")
        outputs.append(path)
    found: dict[DrvOutput, Realisation] = {}
    if store.layout.ca_derivations:
        drv = store.read_derivation(drv_path)
        hashes = static_output_hashes(store.store_dir, drv, store.read_derivation, store.drv_hash_cache())
        todo = [DrvOutput(h, name) for name, h in hashes.items()]
        while todo:
            id = todo.pop()
            if id in found:
                continue
            real = store.query_realisation(id)
            if real is not None:
                found[id] = real
                todo.extend(real.dependent_realisations)
    return outputs, found
