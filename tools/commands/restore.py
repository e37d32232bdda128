"""`goalkeeper restore PATH`: recreate PATH from a NAR on stdin (`nix-store --restore`)."""

from __future__ import annotations

import argparse

from goalkeeper.store.errors import BadArchive
from goalkeeper.store.nar import restore_path

NAME = "restore"
HELP = (
    "create PATH from the NAR on standard input (like 'nix-store --restore'); "
    "PATH must not exist, and is removed again if the NAR is malformed"
)
SOURCE_NAME = "<stdin>"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="where to create the file, directory or symlink")


def run(args: argparse.Namespace, ctx) -> int:
    stdin = ctx.stdin
    try:
        restore_path(args.path, stdin)
    except BadArchive as err:
        raise err.with_source(SOURCE_NAME) from err
    return 0
