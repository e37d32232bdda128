"""`goalkeeper query`: what `nix-store -q` prints, byte for byte (nix-store.cc opQuery).

Order matters and is Nix's: `--outputs` prints each argument's set sorted by
store path; `--references`, `--referrers`, `--requisites` and
`--referrers-closure` collect one set over all arguments and print it in
reverse topological order (dependencies first); `--deriver`, `--hash` and
`--size` print one line per argument. `--valid-derivers` (not in Nix 2.8's
nix-store) prints the sorted union of the valid derivations that list each
path as an output.
"""

from __future__ import annotations

import argparse

from goalkeeper.store.errors import StoreError
from goalkeeper.store.hashes import Base
from goalkeeper.store.paths import StorePath

NAME = "query"
HELP = "query the store like 'nix-store -q': outputs, references, referrers, requisites, deriver, hash, size"

_QUERIES = {
    "outputs": "the output paths of each derivation (other paths print as themselves)",
    "references": "the immediate references",
    "referrers": "the paths that refer to each path",
    "referrers_closure": "the closure under the referrers relation",
    "requisites": "the closure under the references relation",
    "deriver": "the derivation that produced each path, or 'unknown-deriver'",
    "hash": "the NAR hash (sha256, base-32)",
    "size": "the NAR size",
    "valid_derivers": "the valid derivations that have each path as an output",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    for name, help_text in _QUERIES.items():
        flags = ["--" + name.replace("_", "-")]
        if name == "requisites":
            flags.append("-R")
        if name == "deriver":
            flags.append("-d")
        group.add_argument(*flags, dest="query", action="store_const", const=name, help=help_text)
    parser.add_argument("--use-output", "-u", action="store_true",
                        help="for a derivation, query its outputs instead of the .drv")
    parser.add_argument("--include-outputs", action="store_true",
                        help="with --requisites: include the valid outputs of derivations in the closure")
    parser.add_argument("paths", nargs="*", metavar="PATH")


def _ensure_valid(store, path: StorePath) -> None:
    # `ensurePath` with no substituters to try.
    if not store.is_valid_path(path):
        raise StoreError(f"path '{store.print(path)}' does not exist and cannot be created")


def maybe_use_outputs(store, path: StorePath, use_output: bool) -> list[StorePath]:
    """`maybeUseOutputs`: a derivation's known output paths (sorted), else the path itself."""
    if not (use_output and path.is_derivation()):
        return [path]
    _ensure_valid(store, path)
    outputs = []
    for _, out in store.read_derivation(path).outputs_and_opt_paths(store.store_dir).values():
        if out is None:
            raise StoreError(
                "Cannot use output path of floating content-addressed derivation until we know "
                "what it is (e.g. by building it)"
            )
        outputs.append(out)
    return sorted(set(outputs))


def run(args: argparse.Namespace, ctx) -> int:
    store = ctx.open_store()
    out = ctx.stdout
    query = args.query

    def line(text: str) -> None:
        out.write(text.encode() + b"\n")

    if query == "outputs":
        for arg in args.paths:
            for path in maybe_use_outputs(store, store.follow_links_to_store_path(arg), True):
                line(store.print(path))
    elif query in ("references", "referrers", "referrers_closure", "requisites"):
        paths: set[StorePath] = set()
        for arg in args.paths:
            for path in maybe_use_outputs(store, store.follow_links_to_store_path(arg), args.use_output):
                if query == "requisites":
                    paths |= store.compute_fs_closure(path, include_outputs=args.include_outputs)
                elif query == "references":
                    paths |= store.require_path_info(path).references
                elif query == "referrers":
                    paths |= store.query_referrers(path)
                else:
                    paths |= store.compute_fs_closure(path, flip_direction=True)
        for path in reversed(store.topo_sort_paths(paths)):
            line(store.print(path))
    elif query == "deriver":
        for arg in args.paths:
            info = store.require_path_info(store.follow_links_to_store_path(arg))
            line(store.print(info.deriver) if info.deriver else "unknown-deriver")
    elif query in ("hash", "size"):
        for arg in args.paths:
            for path in maybe_use_outputs(store, store.follow_links_to_store_path(arg), args.use_output):
                info = store.require_path_info(path)
                line(info.nar_hash.to_string(Base.BASE32, True) if query == "hash" else str(info.nar_size))
    elif query == "valid_derivers":
        derivers: set[StorePath] = set()
        for arg in args.paths:
            derivers |= store.query_valid_derivers(store.follow_links_to_store_path(arg))
        for path in sorted(derivers):
            line(store.print(path))
    return 0
