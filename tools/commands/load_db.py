"""`goalkeeper load-db`: `nix-store --load-db`, register the `--dump-db` text on stdin in one transaction.

As in Nix, every path is (re)registered with the given hash and size, without
touching its files; references must be valid or in the input. Nothing is
registered if any entry is malformed.
"""

from __future__ import annotations

import argparse
import io

from goalkeeper.store.dump_db import decode_valid_path_infos

NAME = "load-db"
HELP = "register the validity registration read from stdin (the 'nix-store --dump-db' format)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", metavar="FILE", help="read from FILE instead of stdin")


def run(args: argparse.Namespace, ctx) -> int:
    store = ctx.open_store()
    if args.input:
        with open(args.input, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
            infos = list(decode_valid_path_infos(f, store.store_dir, source=args.input))
    else:
        stdin = io.TextIOWrapper(ctx.stdin, encoding="utf-8", errors="surrogateescape", newline="\n")
        infos = list(decode_valid_path_infos(stdin, store.store_dir))
        stdin.detach()
    store.register_valid_paths(infos)
    return 0
