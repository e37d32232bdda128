"""`goalkeeper verify [--check-contents] [--repair]`: `nix-store --verify` (messages on stderr, exit 1 if errors remain)."""

from __future__ import annotations

import argparse

from goalkeeper.store.verify import verify_store

NAME = "verify"
HELP = "check that every valid path exists (and with --check-contents, still has its hash), like 'nix-store --verify'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check-contents", action="store_true", help="recompute the NAR hash of every valid path")
    parser.add_argument("--repair", action="store_true", help="fix what can be fixed without substituters")


def run(args: argparse.Namespace, ctx) -> int:
    store = ctx.open_store()

    def log(message: str) -> None:
        ctx.stderr.write(message.encode() + b"\n")

    if verify_store(store, args.check_contents, args.repair, log=log):
        log("warning: not all store errors were fixed")
        return 1
    return 0
