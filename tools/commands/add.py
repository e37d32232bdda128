"""`goalkeeper add`: `nix-store --add` and `nix-store --add-fixed` (nix-store.cc opAdd, opAddFixed).

Without `--fixed` each PATH is added recursively (NAR, sha256), as `--add`
does; `--fixed ALGO` adds it flat (one regular file) or, with `--recursive`,
as a NAR hashed with ALGO, as `--add-fixed [--recursive] ALGO` does. The
store path of each is printed on its own line. The name is the PATH's base name.
"""

from __future__ import annotations

import argparse
import os

from goalkeeper.store.errors import StoreError
from goalkeeper.store.hashes import check_algo

NAME = "add"
HELP = "add files or trees to the store like 'nix-store --add' / '--add-fixed [--recursive] ALGO'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fixed", metavar="ALGO", help="add as a fixed-output path hashed with ALGO (flat by default)")
    parser.add_argument("--recursive", action="store_true", help="with --fixed: hash the NAR serialisation")
    parser.add_argument("paths", nargs="*", metavar="PATH")


def base_name_of(path: str) -> str:
    """`baseNameOf`: the last component, ignoring one trailing slash."""
    if path.endswith("/") and len(path) > 1:
        path = path[:-1]
    return path.rsplit("/", 1)[-1]


def run(args: argparse.Namespace, ctx) -> int:
    if args.recursive and not args.fixed:
        raise StoreError("'--recursive' needs '--fixed ALGO'")
    algo = check_algo(args.fixed) if args.fixed else "sha256"
    method = "recursive" if (args.recursive or not args.fixed) else "flat"
    store = ctx.open_store()
    for arg in args.paths:
        path = store.add_to_store(base_name_of(arg), os.path.abspath(arg), method, algo)
        ctx.stdout.write(store.print(path).encode() + b"\n")
    return 0
