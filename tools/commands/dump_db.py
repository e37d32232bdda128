"""`goalkeeper dump-db [PATH...]`: `nix-store --dump-db`, the validity registration of every (or each) path."""

from __future__ import annotations

import argparse

from goalkeeper.store.dump_db import make_validity_registration

NAME = "dump-db"
HELP = "print the validity registration of all valid paths (or of each PATH), like 'nix-store --dump-db'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH")


def run(args: argparse.Namespace, ctx) -> int:
    store = ctx.open_store()
    if args.paths:
        # Nix prints each argument's registration separately, in argument order.
        for arg in args.paths:
            for text in make_validity_registration(store, [store.follow_links_to_store_path(arg)]):
                ctx.stdout.write(text.encode())
    else:
        for text in make_validity_registration(store, store.query_all_valid_paths()):
            ctx.stdout.write(text.encode())
    return 0
