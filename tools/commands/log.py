"""`goalkeeper log DRV|OUTPUT...`: print build logs (`nix-store --read-log`, `nix log`).

As Nix 2.8's `LocalFSStore::getBuildLog`: a path that is not a derivation is
replaced by its deriver (no deriver, or not valid: no log), then the log is looked
for at `<log dir>/drvs/XX/REST`, `…/REST.bz2`, `<log dir>/drvs/<base>`,
`…/<base>.bz2`, in that order.  A log that cannot be decompressed is skipped.
"""

from __future__ import annotations

import argparse
import bz2
import os

from goalkeeper.store.errors import StoreError
from goalkeeper.store.paths import StorePath

NAME = "log"
HELP = "print the build log of derivations or of the derivations that built paths (like 'nix-store -l')"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="DRV|OUTPUT", help="derivations or paths they built")


def run(args: argparse.Namespace, ctx) -> int:
    log_dir = getattr(ctx.store_config, "log_dir", None)
    if log_dir is None:
        raise StoreError("build logs can only be read from a local store")
    for arg in args.paths:
        path = _follow_links_to_store_path(ctx, arg)
        log = get_build_log(ctx.open_store(), log_dir, path)
        if log is None:
            raise StoreError(f"build log of derivation '{ctx.store_dir.print(path)}' is not available")
        ctx.stdout.write(log)
    return 0


def get_build_log(store, log_dir: str, path: StorePath) -> bytes | None:
    """`LocalFSStore::getBuildLog`: the log's bytes, or None when there is none."""
    if not path.is_derivation():
        info = store.query_path_info(path)
        if info is None or info.deriver is None:
            return None
        path = info.deriver
    base = path.base
    for log_path in (f"{log_dir}/drvs/{base[:2]}/{base[2:]}", f"{log_dir}/drvs/{base}"):
        if os.path.exists(log_path):
            with open(log_path, "rb") as f:
                return f.read()
        if os.path.exists(log_path + ".bz2"):
            try:
                with open(log_path + ".bz2", "rb") as f:
                    return bz2.decompress(f.read())
            except (OSError, ValueError, EOFError):
                continue  # Nix ignores a log it cannot decompress
    return None


def _follow_links_to_store_path(ctx, text: str) -> StorePath:
    """`followLinksToStorePath`: resolve symlinks (e.g. `result`) until inside the store."""
    path = os.path.abspath(text)
    while not ctx.store_dir.is_in_store(path) and os.path.islink(path):
        target = os.readlink(path)
        path = os.path.normpath(os.path.join(os.path.dirname(path), target))
    return ctx.store_dir.to_store_path(path)[0]
