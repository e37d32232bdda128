"""`goalkeeper realise`: build or check paths as `nix-store -r` does (nix-store.cc opRealise).

    goalkeeper realise DRV|PATH[!OUTPUTS]... [-j N] [--cores N] [-k] [--check] [--repair] [--dry-run] [--json]

What it prints, in Nix's order: on stderr the missing paths (`printMissing`),
then the engine's messages and builder log lines as they arrive, then, on
failure, `error: <message>`; on stdout, per argument, the sorted output paths
(`realisePath`), preceded once by the "--add-root" warning on stderr. The exit
status is the worker's (0; 1; or 100 plus the failure bits).

With `--json`, stdout has instead one JSON array with an object per argument:
Nix 2.8's `nix build --json` shape (`drvPath` and `outputs`, or `path`) plus the
BuildResult fields as later Nix versions serialise them (`status`, `errorMsg`,
`timesBuilt`, `isNonDeterministic`, `startTime`, `stopTime`; zero/empty ones left
out). It is printed whether or not the build failed.
"""

from __future__ import annotations

import argparse
import json
import threading

from goalkeeper.store.errors import StoreError

NAME = "realise"
HELP = "build derivations or ensure paths are valid, like 'nix-store -r'"

GC_WARNING = "warning: you did not specify '--add-root'; the result might be removed by the garbage collector"
MIB = 1024 * 1024
ERROR_INDENT = "\n       "  # Nix indents an error's continuation lines under the text after "error: "


class BadTarget(StoreError):
    """An argument that names nothing buildable (a path outside the store, outputs of a non-derivation)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="DRV|PATH[!OUTPUTS]",
                        help="derivations (all outputs, or those after '!', comma-separated) or store paths")
    parser.add_argument("-j", "--max-jobs", metavar="N", help="how many builds may run at once ('auto': one per core)")
    parser.add_argument("--cores", metavar="N", help="the value of NIX_BUILD_CORES for builders (0: all cores)")
    parser.add_argument("-k", "--keep-going", action="store_true",
                        help="keep building other derivations after one fails")
    parser.add_argument("-K", "--keep-failed", action="store_true",
                        help="keep the build directory of a failed build (setting 'keep-failed')")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="rebuild and compare with the existing valid outputs")
    mode.add_argument("--repair", action="store_true", help="check the closure's contents and rebuild what is corrupt")
    parser.add_argument("--dry-run", action="store_true", help="only print what would be built")
    parser.add_argument("--json", action="store_true", help="print the build results as JSON instead of the paths")
    parser.add_argument("--fallback", action="store_true",
                        help="build from source when substituting a path fails (setting 'fallback')")


def run(args: argparse.Namespace, ctx) -> int:
    # Imported here: the engine pulls in Pykka and the sandbox, which other commands don't need.
    from goalkeeper.actors.derivation_goal_state import BuildMode
    from goalkeeper.actors.engine import Engine

    settings = ctx.settings
    # As Nix's `-j`, `--cores` and `-k`: plain settings, set before the worker exists.
    for name, value in (("max-jobs", args.max_jobs), ("cores", args.cores)):
        if value is not None:
            settings.set(name, value)
    if args.keep_going:
        settings.set("keep-going", "true")
    if args.keep_failed:
        settings.set("keep-failed", "true")
    if args.fallback:
        settings.set("fallback", "true")

    store = ctx.open_store()
    targets = [parse_target(store, text) for text in args.paths]
    if not targets:
        return 0
    build_mode = BuildMode.Check if args.check else BuildMode.Repair if args.repair else BuildMode.Normal
    printer = _Printer(ctx.stderr)

    # Binary caches from `substituters` (`--option substituters …` included), in priority order.
    # nix-store's logger shows every build log line, so Nix leaves the log tail out of build errors.
    engine = Engine(store, settings, substituters=None, logger_is_verbose=True, warn=printer.line)
    try:
        # queryMissing asks the caches (in parallel) what they can fetch instead of building
        missing = engine.query_missing(targets, on_error=printer.line)
        if settings.print_missing:
            print_missing(store, missing, printer.line)
        if args.dry_run:
            return 0
        # Nix finds unknown output names in the goal, after printing what is missing and before building.
        for target in targets:
            check_wanted_outputs(store, target)
        realised = engine.realise(targets, build_mode=build_mode, observer=printer.event)
    finally:
        engine.close()

    if args.json:
        results = [result_json(store, target, realised.results.get(target)) for target in targets]
        ctx.stdout.write(json.dumps(results, separators=(",", ":")).encode() + b"\n")
    if realised.exit_status != 0 or realised.error is not None:
        if realised.error is not None:
            printer.line(indent_continuation("error: " + realised.error))
        return realised.exit_status or 1
    if not args.json:
        warned = False
        for target in targets:
            paths = realised_paths(store, target)
            if not warned:
                # printGCWarning: once, for the first path realisePath returns from a local store.
                printer.line(GC_WARNING)
                warned = True
            for path in paths:
                ctx.stdout.write(path.encode() + b"\n")
    return 0


def parse_target(store, text: str):
    """`followLinksToStorePathWithOutputs` + `toDerivedPath`: `PATH[!OUT1,OUT2]` -> DerivedPath.

    A derivation without `!` (or with nothing after it) means all its outputs; another store
    path is opaque. Symlinks to the store are followed as Nix does.
    """
    from goalkeeper.actors.engine import DerivedPath

    path_text, bang, outputs_text = text.partition("!")
    path = store.follow_links_to_store_path(path_text)
    outputs = frozenset(o for o in outputs_text.split(",") if o)  # tokenizeString drops empty tokens
    if path.is_derivation():
        return DerivedPath(path, outputs)
    if outputs:
        # Nix 2.8 hits an assertion (SIGABRT) here; we refuse the argument instead.
        raise BadTarget(f"cannot select outputs of '{store.print(path)}' in '{text}': it is not a derivation")
    return DerivedPath(path)


def check_wanted_outputs(store, target) -> None:
    """The goal's `checkPathValidity` check: wanted outputs the (valid) derivation lacks are an error."""
    if not target.outputs or not store.is_valid_path(target.path):
        return  # a missing derivation is the engine's "cannot build missing derivation"
    unknown = target.outputs - store.read_derivation(target.path).outputs.keys()
    if unknown:
        names = ", ".join(f"'{name}'" for name in sorted(unknown))
        raise StoreError(f"derivation '{store.print(target.path)}' does not have wanted outputs {names}")


def print_missing(store, missing, line) -> None:
    """`printMissing`: what will be built (dependencies first), fetched, and what cannot be made."""
    will_build = missing.will_build
    if will_build:
        if len(will_build) == 1:
            line("this derivation will be built:")
        else:
            line(f"these {len(will_build)} derivations will be built:")
        for path in reversed(store.topo_sort_paths(will_build)):
            line(f"  {store.print(path)}")
    will_substitute = missing.will_substitute
    if will_substitute:
        sizes = (f"({getattr(missing, 'download_size', 0) / MIB:.2f} MiB download, "
                 f"{getattr(missing, 'nar_size', 0) / MIB:.2f} MiB unpacked)")
        if len(will_substitute) == 1:
            line(f"this path will be fetched {sizes}:")
        else:
            line(f"these {len(will_substitute)} paths will be fetched {sizes}:")
        for path in sorted(will_substitute):
            line(f"  {store.print(path)}")
    if missing.unknown:
        line("don't know how to build these paths:")
        for path in sorted(missing.unknown):
            line(f"  {store.print(path)}")


def realised_paths(store, target) -> list[str]:
    """`realisePath` after a successful build: an argument's output paths, sorted as printed strings."""
    if target.outputs is None:
        if not store.is_valid_path(target.path):
            raise StoreError(f"path '{store.print(target.path)}' does not exist and cannot be created")
        return [store.print(target.path)]
    output_paths = store.query_derivation_output_map(target.path)
    wanted = target.outputs or output_paths.keys()
    printed = set()
    for name in wanted:
        if name not in output_paths:
            raise StoreError(f"derivation '{store.print(target.path)}' does not have an output named '{name}'")
        printed.add(store.print(output_paths[name]))
    return sorted(printed)


def indent_continuation(text: str) -> str:
    """Nix's logger prints an error's or warning's further lines under the text after the prefix."""
    if text.startswith(("error: ", "warning: ")):
        return text.replace("\n", ERROR_INDENT)
    return text


def result_json(store, target, result) -> dict:
    """One argument's BuildResult in Nix's JSON vocabulary."""
    if target.outputs is None:
        entry: dict = {"path": store.print(target.path)}
    else:
        built = dict(result.built_outputs) if result is not None else {}
        if target.outputs:
            built = {name: path for name, path in built.items() if name in target.outputs}
        entry = {"drvPath": store.print(target.path), "outputs": dict(sorted(built.items()))}
    if result is None:  # the worker stopped before this goal finished (a failure without keep-going)
        return entry
    entry["status"] = result.status.name
    if result.error_msg:
        entry["errorMsg"] = result.error_msg
    if result.times_built:
        entry["timesBuilt"] = result.times_built
    if result.is_non_deterministic:
        entry["isNonDeterministic"] = True
    if result.start_time:
        entry["startTime"] = result.start_time
    if result.stop_time:
        entry["stopTime"] = result.stop_time
    return entry


class _Printer:
    """Writes lines to stderr; the engine's observer calls come from its threads, so one lock."""

    def __init__(self, stream):
        self._stream = stream
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        data = text.encode(errors="surrogateescape") + b"\n"
        with self._lock:
            self._stream.write(data)
            self._stream.flush()

    def event(self, event) -> None:
        from goalkeeper.actors.worker_messages import LogLine, Message

        if isinstance(event, Message):
            self.line(indent_continuation(event.text))
        elif isinstance(event, LogLine):
            self.line(event.line)
        # Progress: nix-store's plain logger shows no progress bar.
