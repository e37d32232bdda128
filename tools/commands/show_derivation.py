"""`goalkeeper show-derivation DRV...`: the JSON of `nix show-derivation` (Nix 2.8), byte for byte.

Like 2.8, the derivations are printed once each, sorted by path whatever the
argument order, and `--recursive` adds every derivation in the closure. A path
inside a store path (`/nix/store/…-x.drv/foo`) means that store path; an output
path means its deriver.
"""

from __future__ import annotations

import argparse

from goalkeeper.store.derivation import Derivation
from goalkeeper.store.derivation_json import show_derivations
from goalkeeper.store.errors import BadStorePath, InvalidPath, StoreError
from goalkeeper.store.paths import StoreDir, StorePath

NAME = "show-derivation"
HELP = "show the contents of store derivations as JSON (like 'nix show-derivation')"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="DRV", help="store derivations (.drv paths)")
    parser.add_argument("-r", "--recursive", action="store_true",
                        help="include the dependencies of the specified derivations")


def run(args, ctx) -> int:
    store_dir: StoreDir = ctx.store_dir
    drv_paths = {_drv_path(ctx, arg) for arg in args.paths}
    if args.recursive:
        # Nix takes the closure over the store's references (inputSrcs ∪ inputDrvs of each drv).
        drv_paths = {p for p in ctx.open_store().compute_fs_closure(drv_paths) if p.is_derivation()}
    store = ctx.open_store()
    drvs = [(p, read_valid_derivation(store, p)) for p in drv_paths]
    ctx.stdout.write(show_derivations(store_dir, drvs))
    return 0


def _drv_path(ctx, arg: str) -> StorePath:
    """The derivation an argument names: itself if a `.drv`, else its deriver (`getDeriver`)."""
    try:
        path, _ = ctx.store_dir.to_store_path(arg)
    except BadStorePath:
        raise BadStorePath(f"path '{arg}' is not in the Nix store") from None
    if path.is_derivation():
        return path
    derivers = ctx.open_store().query_valid_derivers(path)
    if not derivers:
        raise StoreError(f"'{arg}' does not have a known deriver")
    return min(derivers)  # *derivers.begin() of a std::set


def read_valid_derivation(store, path: StorePath) -> Derivation:
    """`readDerivation`: the path must be valid (`requireValidPath`), then its file is parsed.

    Raises:
        InvalidPath: not registered as valid (whether or not a file is there), as in Nix.
        BadDerivation: the file is malformed (names the path and the byte offset).
    """
    if not store.is_valid_path(path):
        raise InvalidPath(f"path '{store.print(path)}' is not a valid store path")
    return store.read_derivation(path)
