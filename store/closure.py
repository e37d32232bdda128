"""`computeFSClosure` over any store with Nix's query methods (local or remote)."""

from __future__ import annotations

from collections.abc import Iterable

from .paths import StorePath


def compute_fs_closure(store, paths: Iterable[StorePath] | StorePath, flip_direction: bool = False,
                       include_outputs: bool = False, include_derivers: bool = False) -> set[StorePath]:
    """Everything reachable from `paths` by references (or by referrers, flipped).

    `store` needs query_referrers, query_valid_derivers, query_partial_derivation_output_map,
    require_path_info and is_valid_path, as Nix's Store does.

    Raises:
        InvalidPath: a path reached (not flipped) is not valid.
    """
    todo = [paths] if isinstance(paths, StorePath) else list(paths)
    closure: set[StorePath] = set()

    def valid_outputs(drv_path: StorePath) -> list[StorePath]:
        return [p for p in store.query_partial_derivation_output_map(drv_path).values()
                if p is not None and store.is_valid_path(p)]

    while todo:
        path = todo.pop()
        if path in closure:
            continue
        closure.add(path)
        if flip_direction:
            todo.extend(store.query_referrers(path))
            if include_outputs:
                todo.extend(store.query_valid_derivers(path))
            if include_derivers and path.is_derivation():
                todo.extend(valid_outputs(path))
            continue
        info = store.require_path_info(path)
        todo.extend(info.references)
        if include_outputs and path.is_derivation():
            todo.extend(valid_outputs(path))
        if include_derivers and info.deriver is not None and store.is_valid_path(info.deriver):
            todo.append(info.deriver)
    return closure
