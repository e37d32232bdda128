"""`checkOutputs` (Nix 2.8 LocalDerivationGoal::checkOutputs): a derivation's limits on its outputs.

Legacy derivations state `allowedReferences`, `allowedRequisites`,
`disallowedReferences` and `disallowedRequisites` in their env (whitespace
separated store paths or output names); with `__structuredAttrs`, per-output
`outputChecks.<name>` objects also carry `maxSize` and `maxClosureSize`. A
violation is a build error with Nix's message, raised as `RejectedOutput`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

from goalkeeper.store.errors import InvalidPath
from goalkeeper.store.parsed_derivation import BadDerivationAttr, ParsedDerivation
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.paths import StoreDir, StorePath

from .results import FailureKind


class RejectedOutput(Exception):
    """Nix's `BuildError` thrown by registerOutputs/checkOutputs: the build's outputs are refused.

    Attributes:
        message: Nix's error text.
        failure: which kind of refusal (decides the goal's status and the exit bits).
    """

    def __init__(self, message: str, failure: FailureKind = FailureKind.BUILD_ERROR):
        super().__init__(message)
        self.message = message
        self.failure = failure


_REF_ATTRS = ("allowedReferences", "allowedRequisites", "disallowedReferences", "disallowedRequisites")


@dataclass(slots=True)
class _Checks:
    ignore_self_refs: bool = False
    max_size: int | None = None
    max_closure_size: int | None = None
    lists: dict[str, list[str] | None] | None = None  # attribute name -> specifiers


def check_outputs(
    store_dir: StoreDir,
    parsed: ParsedDerivation,
    outputs: Mapping[str, ValidPathInfo],
    query_path_info: Callable[[StorePath], ValidPathInfo | None],
) -> None:
    """Apply the derivation's output checks to the outputs just built.

    Args:
        store_dir: for printing paths and parsing specifiers.
        parsed: the derivation's attributes.
        outputs: output name -> the info about to be registered (only outputs built now;
            as in Nix 2.8, an output name in a specifier must be one of these).
        query_path_info: for the closures of references that are already valid.

    Raises:
        RejectedOutput: a check failed (the first, outputs in name order).
        BadDerivationAttr: a structured `outputChecks` entry of the wrong type.
        InvalidPath: a reference outside `outputs` is not valid.
    """
    by_path = {info.path: info for info in outputs.values()}
    for name in sorted(outputs, key=lambda n: n.encode()):
        checks = _checks_for(parsed, store_dir.print(parsed.drv_path), name)
        if checks is not None:
            _apply(store_dir, checks, outputs[name], outputs, by_path, query_path_info)


def _checks_for(parsed: ParsedDerivation, printed_drv: str, output_name: str) -> _Checks | None:
    attrs = parsed.structured_attrs
    if attrs is None:
        # Legacy: self references never count against the *requisites* lists.
        return _Checks(ignore_self_refs=True, lists={a: parsed.get_strings_attr(a) for a in _REF_ATTRS})
    output_checks = attrs.get("outputChecks")
    if not isinstance(output_checks, dict) or output_name not in output_checks:
        return None
    spec = output_checks[output_name]
    if not isinstance(spec, dict):
        return None
    return _Checks(
        max_size=_size(spec, "maxSize"),
        max_closure_size=_size(spec, "maxClosureSize"),
        lists={a: _strings(printed_drv, spec, a) for a in _REF_ATTRS},
    )


def _size(spec: dict, key: str) -> int | None:
    if key not in spec:
        return None
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # nlohmann::json's get<uint64_t>, which Nix 2.8 lets through as the error text
        raise BadDerivationAttr(f"[json.exception.type_error.302] type must be number, but is {_json_type(value)}")
    return int(value) % (1 << 64)  # a negative limit wraps around, as a C++ cast does


def _json_type(value: Any) -> str:
    return ("null" if value is None else "boolean" if isinstance(value, bool) else "string" if isinstance(value, str)
            else "array" if isinstance(value, list) else "object")


def _strings(printed_drv: str, spec: dict, key: str) -> list[str] | None:
    if key not in spec:
        return None
    value: Any = spec[key]
    # nlohmann::json iterates an object's values, a scalar as itself and null as nothing.
    items = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) \
        else [] if value is None else [value]
    if not all(isinstance(i, str) for i in items):
        raise BadDerivationAttr(f"attribute '{key}' of derivation '{printed_drv}' must be a list of strings")
    return list(items)


def _closure(
    path: StorePath,
    by_path: Mapping[StorePath, ValidPathInfo],
    query_path_info: Callable[[StorePath], ValidPathInfo | None],
    store_dir: StoreDir,
) -> tuple[set[StorePath], int]:
    """The closure of `path` and its total NAR size; outputs not yet valid come from `by_path`."""
    done: set[StorePath] = set()
    size = 0
    todo = deque([path])
    while todo:
        p = todo.popleft()
        if p in done:
            continue
        done.add(p)
        info = by_path.get(p) or query_path_info(p)
        if info is None:
            raise InvalidPath(f"path '{store_dir.print(p)}' is not valid")
        size += info.nar_size
        todo.extend(info.references)
    return done, size


def _apply(
    store_dir: StoreDir,
    checks: _Checks,
    info: ValidPathInfo,
    outputs: Mapping[str, ValidPathInfo],
    by_path: Mapping[StorePath, ValidPathInfo],
    query_path_info: Callable[[StorePath], ValidPathInfo | None],
) -> None:
    printed = store_dir.print(info.path)
    if checks.max_size is not None and info.nar_size > checks.max_size:
        raise RejectedOutput(f"path '{printed}' is too large at {info.nar_size} bytes; "
                             f"limit is {checks.max_size} bytes")
    if checks.max_closure_size is not None:
        _, closure_size = _closure(info.path, by_path, query_path_info, store_dir)
        if closure_size > checks.max_closure_size:
            raise RejectedOutput(f"closure of path '{printed}' is too large at {closure_size} bytes; "
                                 f"limit is {checks.max_closure_size} bytes")
    for attr in _REF_ATTRS:
        value = (checks.lists or {}).get(attr)
        if value is None:
            continue
        allowed = attr.startswith("allowed")
        recursive = attr.endswith("Requisites")
        spec: set[StorePath] = set()
        for item in value:
            if store_dir.is_store_path(item):
                spec.add(store_dir.parse(item))
            elif item in outputs:
                spec.add(outputs[item].path)
            else:
                raise RejectedOutput(f"derivation contains an illegal reference specifier '{item}'")
        used = (_closure(info.path, by_path, query_path_info, store_dir)[0] if recursive
                else set(info.references))
        if recursive and checks.ignore_self_refs:
            used.discard(info.path)
        bad = sorted((p for p in used if (p not in spec) == allowed), key=lambda p: p.base)
        if bad:
            listing = "".join(f"\n  {store_dir.print(p)}" for p in bad)
            raise RejectedOutput(f"output '{printed}' is not allowed to refer to the following paths:{listing}")
