"""`Store::queryMissing`: what realising some paths would build, substitute, or cannot get.

Without substituters (until binary caches exist) nothing is substitutable: a
derivation with an invalid wanted output must be built, and so, recursively,
must its inputs that are not valid; an invalid opaque path is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from goalkeeper.store.paths import StorePath

from .goal_context import StoreReader
from .worker_messages import DerivedPath


@dataclass(slots=True)
class Missing:
    will_build: set[StorePath] = field(default_factory=set)
    will_substitute: set[StorePath] = field(default_factory=set)
    unknown: set[StorePath] = field(default_factory=set)
    download_size: int = 0
    nar_size: int = 0


def query_missing(reader: StoreReader, targets: list[DerivedPath]) -> Missing:
    store = reader.store
    missing = Missing()
    done: set[DerivedPath] = set()
    todo = list(targets)
    while todo:
        target = todo.pop()
        if target in done:
            continue
        done.add(target)
        if not target.is_built:
            if not reader.is_valid_path(target.path):
                missing.unknown.add(target.path)
            continue
        if not reader.is_valid_path(target.path):
            missing.unknown.add(target.path)  # "FIXME: we could try to substitute the derivation"
            continue
        outputs = reader.query_partial_derivation_output_map(target.path)
        known = all(path is not None for path in outputs.values())
        invalid = [path for name, path in outputs.items()
                   if path is not None and (not target.outputs or name in target.outputs)
                   and not reader.is_valid_path(path)]
        if known and not invalid:
            continue
        # mustBuildDrv: no substituter has the outputs
        missing.will_build.add(target.path)
        drv = store.read_derivation(target.path)
        for input_drv, wanted in drv.input_drvs.items():
            todo.append(DerivedPath(input_drv, frozenset(wanted)))
    return missing
