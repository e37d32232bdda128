"""`goalkeeper dump PATH`: write the NAR serialisation of PATH to stdout (`nix-store --dump`)."""

from __future__ import annotations

import argparse

from goalkeeper.store.nar import dump_path

NAME = "dump"
HELP = "write the NAR serialisation of a path to standard output (like 'nix-store --dump')"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="file, directory or symlink to serialise (any path, not only store paths)")


def run(args: argparse.Namespace, ctx) -> int:
    for chunk in dump_path(args.path):
        ctx.stdout.write(chunk)
    return 0
