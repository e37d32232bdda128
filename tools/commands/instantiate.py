"""`goalkeeper instantiate FILE.json`: write derivations described as show-derivation JSON.

Each entry is treated the way `derivationStrict` treats a derivation's
attributes: output paths, output env variables and the drv-path keys are
recomputed, so they may be missing or stale in the file. An `inputDrvs` key
naming another entry of the file means that entry (under its new path); any
other input must already be valid in the store. The `.drv` files are added in
dependency order and their paths printed one per line, in the file's order.
"""

from __future__ import annotations

import argparse

from goalkeeper.store.derivation import (
    CA_DERIVATIONS,
    IMPURE_DERIVATIONS,
    CAFloating,
    Derivation,
    Impure,
    require_feature,
    write_derivation,
)
from goalkeeper.store.derivation_json import read_show_derivation, recompute
from goalkeeper.store.errors import InvalidPath
from goalkeeper.store.paths import StorePath


NAME = "instantiate"
HELP = "add the derivations described by a 'nix show-derivation' JSON file to the store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE.json", help="derivations in 'nix show-derivation' format")


def run(args, ctx) -> int:
    with open(args.file, "rb") as f:
        data = f.read()
    store_dir = ctx.store_dir
    features = ctx.settings.experimental_features
    entries = read_show_derivation(data, store_dir, source=args.file)
    for entry in entries:
        # The evaluator refuses these attributes without the feature, as Nix does.
        kinds = {type(o) for o in entry.drv.outputs.values()}
        if CAFloating in kinds:
            require_feature(features, CA_DERIVATIONS)
        if Impure in kinds:
            require_feature(features, IMPURE_DERIVATIONS)

    store = ctx.open_store()
    # Check inputs from outside the file first, in a stable order, so the error names the first missing one.
    given = {entry.key for entry in entries}
    for entry in entries:
        for key in sorted(entry.input_drv_keys):
            if key not in given and store_dir.is_store_path(key) and not store.is_valid_path(store_dir.parse(key)):
                raise InvalidPath(f"input derivation '{key}' is not valid in the store")

    def read_input(path: StorePath) -> Derivation:
        if not store.is_valid_path(path):
            raise InvalidPath(f"input derivation '{store_dir.print(path)}' is not valid in the store")
        return store.read_derivation(path)

    results = recompute(entries, store_dir, read_input, source=args.file)
    written: dict[str, StorePath] = {}
    for entry, path, drv in results:
        for src in sorted(drv.input_srcs):
            if not store.is_valid_path(src):
                raise InvalidPath(
                    f"input path '{store_dir.print(src)}' of derivation '{entry.key}' is not valid in the store"
                )
        added = write_derivation(store, drv)
        if added != path:
            raise AssertionError(f"store wrote {added}, computed {path}")
        written[entry.key] = path
    for entry in entries:
        ctx.stdout.write(f"{store_dir.print(written[entry.key])}\n".encode())
    return 0
