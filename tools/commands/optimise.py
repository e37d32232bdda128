"""`goalkeeper optimise`: `nix-store --optimise`, hard-link identical files through `.links`."""

from __future__ import annotations

import argparse

from goalkeeper.store.optimise import optimise_store, show_bytes

NAME = "optimise"
HELP = "replace identical files in the store by hard links, like 'nix-store --optimise'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, ctx) -> int:
    stats = optimise_store(ctx.open_store())
    ctx.stderr.write(f"{show_bytes(stats.bytes_freed)} freed by hard-linking {stats.files_linked} files\n".encode())
    return 0
