"""Hashing derivations modulo fixed outputs, output paths, and resolution (spec §2.4–§2.7).

`hash_derivation_modulo` is Nix's, with one difference in shape: Nix recurses
and memoises in a process-global `drvHashes`; here the memo is a mapping the
caller passes in (`DrvHashCache`, keyed by drv path, holding the *unmasked*
hash as Nix's does), and inputs are visited with an explicit stack, so a
10,000-deep chain neither recurses nor hashes any node twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, MutableMapping

from .derivation import (
    BasicDerivation,
    Deferred,
    Derivation,
    DerivationError,
    DerivationType,
    InputAddressed,
    downstream_placeholder,
    hash_placeholder,
)
from .hashes import Hash, sha256
from .paths import StoreDir, StorePath

REGULAR = "regular"
DEFERRED = "deferred"
IMPURE_OUTPUT_HASH = sha256(b"impure")  # `impureOutputHash`

ReadDrv = Callable[[StorePath], Derivation]


@dataclass(frozen=True, slots=True)
class DrvHash:
    """`DrvHash`: one hash per output, and whether it is final (`regular`) or `deferred`."""

    hashes: dict[str, Hash]
    kind: str


DrvHashCache = MutableMapping[StorePath, DrvHash]


def hash_derivation_modulo(
    store_dir: StoreDir,
    drv: Derivation,
    mask_outputs: bool,
    read_drv: ReadDrv,
    cache: DrvHashCache | None = None,
) -> DrvHash:
    """`hashDerivationModulo` (spec §2.5).

    Args:
        read_drv: reads an input derivation by path (Nix's `readInvalidDerivation`).
        cache: memo of unmasked hashes by drv path, shared across calls; filled
            for every input derivation reached.
    """
    cache = {} if cache is None else cache
    if drv.input_drvs:
        _hash_inputs(store_dir, drv, read_drv, cache)
    return _hash_one(store_dir, drv, mask_outputs, cache)


def _hash_inputs(store_dir: StoreDir, drv: Derivation, read_drv: ReadDrv, cache: DrvHashCache) -> None:
    """Put every (transitive) input of `drv` into `cache`, children before parents."""
    pending: dict[StorePath, Derivation] = {}  # read, waiting for their inputs
    stack: list[tuple[StorePath, bool]] = [(p, False) for p in drv.input_drvs if p not in cache]
    while stack:
        path, inputs_done = stack.pop()
        if path in cache:
            continue
        if inputs_done:
            cache[path] = _hash_one(store_dir, pending.pop(path), False, cache)
            continue
        if path in pending:
            # Everything above its "inputs_done" marker descends from it.
            raise DerivationError(f"derivation '{store_dir.print(path)}' depends on itself")
        input_drv = read_drv(path)
        pending[path] = input_drv
        stack.append((path, True))
        stack.extend((p, False) for p in input_drv.input_drvs if p not in cache)


def _hash_one(store_dir: StoreDir, drv: Derivation, mask_outputs: bool, cache: DrvHashCache) -> DrvHash:
    """One step of `hashDerivationModulo`, every input already in `cache`."""
    kind = drv.type()
    if kind is DerivationType.CA_FIXED:
        hashes = {}
        for name, output in drv.outputs.items():
            path = store_dir.print(output.path(store_dir, drv.name, name))
            text = f"fixed:out:{output.print_method_algo()}:{output.hash.base16()}:{path}"
            hashes[name] = sha256(text.encode())
        return DrvHash(hashes, REGULAR)
    if kind is DerivationType.IMPURE:
        return DrvHash({name: IMPURE_OUTPUT_HASH for name in drv.outputs}, DEFERRED)

    # Input-addressed (deferred too) start Regular: they are only "tainted" by their inputs.
    result_kind = DEFERRED if kind is DerivationType.CA_FLOATING else REGULAR
    inputs2: dict[str, set[str]] = {}
    for path, wanted in drv.input_drvs.items():
        res = cache[path]
        if res.kind == DEFERRED:
            result_kind = DEFERRED
        for output_name in wanted:
            try:
                h = res.hashes[output_name]
            except KeyError:
                raise DerivationError(
                    f"derivation '{store_dir.print(path)}' has no output '{output_name}'"
                ) from None
            inputs2.setdefault(h.base16(), set()).add(output_name)
    digest = sha256(drv.unparse(store_dir, mask_outputs, inputs2))
    return DrvHash({name: digest for name in drv.outputs}, result_kind)


def static_output_hashes(
    store_dir: StoreDir, drv: Derivation, read_drv: ReadDrv, cache: DrvHashCache | None = None
) -> dict[str, Hash]:
    """`staticOutputHashes`: the masked modulo hashes (output paths and `DrvOutput` ids use these)."""
    return hash_derivation_modulo(store_dir, drv, True, read_drv, cache).hashes


def fill_in_outputs(
    store_dir: StoreDir, drv: Derivation, read_drv: ReadDrv, cache: DrvHashCache | None = None
) -> Derivation:
    """What `derivationStrict` does after collecting attributes (spec §2.4).

    The kinds of `drv.outputs` say what the evaluator was asked for; paths and
    the output env vars in `drv` are ignored and recomputed:
    - one CAFixed `out`: `env.out` = its fixed path;
    - CAFloating or Impure outputs: `env[o]` = `hash_placeholder(o)`;
    - InputAddressed or Deferred: all Deferred with `env[o] = ""`, hash masked, and
      if the hash is Regular make them InputAddressed with `env[o]` = the path.
    """
    kind = drv.type()
    env = dict(drv.env)
    if kind is DerivationType.CA_FIXED:
        env["out"] = store_dir.print(drv.outputs["out"].path(store_dir, drv.name, "out"))
        return replace(drv, env=env)
    if kind in (DerivationType.CA_FLOATING, DerivationType.IMPURE):
        for name in drv.outputs:
            env[name] = hash_placeholder(name)
        return replace(drv, env=env)
    for name in drv.outputs:
        env[name] = ""
    deferred = replace(drv, outputs={name: Deferred() for name in drv.outputs}, env=env)
    modulo = hash_derivation_modulo(store_dir, deferred, True, read_drv, cache)
    if modulo.kind == DEFERRED:
        return deferred
    outputs = {}
    for name in drv.outputs:
        path = store_dir.make_output_path(name, modulo.hashes[name], drv.name)
        env[name] = store_dir.print(path)
        outputs[name] = InputAddressed(path)
    return replace(deferred, outputs=outputs, env=env)


def _rewrite(s: str, rewrites: list[tuple[str, str]]) -> str:
    """`rewriteStrings`: apply each rewrite in turn (map order), every occurrence."""
    for old, new in rewrites:
        if old != new and old in s:
            s = s.replace(old, new)
    return s


def try_resolve(
    store_dir: StoreDir,
    drv: Derivation,
    input_output_path: Callable[[StorePath, str], StorePath | None],
) -> BasicDerivation | None:
    """`Derivation::tryResolve` (spec §2.7): replace input placeholders by realised paths.

    Args:
        input_output_path: (input drv path, output name) -> its realised path, or None.

    Returns:
        The resolved derivation (no inputDrvs; Deferred outputs made input-addressed),
        or None if some input output is not realised (Nix warns and gives up).
    """
    input_srcs = set(drv.input_srcs)
    rewrites: dict[str, str] = {}
    for input_drv, wanted in drv.input_drvs.items():
        for output_name in sorted(wanted):
            actual = input_output_path(input_drv, output_name)
            if actual is None:
                return None
            rewrites[downstream_placeholder(input_drv, output_name)] = store_dir.print(actual)
            input_srcs.add(actual)
    ordered = sorted(rewrites.items())  # StringMap iterates in key order
    env: dict[str, str] = {}
    for key, value in drv.env.items():
        env.setdefault(_rewrite(key, ordered), _rewrite(value, ordered))  # emplace: the first wins
    resolved = Derivation(
        name=drv.name,
        outputs=dict(drv.outputs),
        input_srcs=frozenset(input_srcs),
        platform=drv.platform,
        builder=_rewrite(drv.builder, ordered),
        args=tuple(_rewrite(a, ordered) for a in drv.args),
        env=env,
    )
    # No inputDrvs remain, so this reads nothing.
    modulo = hash_derivation_modulo(store_dir, resolved, True, _no_inputs)
    outputs = dict(resolved.outputs)
    env = dict(env)
    for name, output in resolved.outputs.items():
        if isinstance(output, Deferred):
            path = store_dir.make_output_path(name, modulo.hashes[name], drv.name)
            env[name] = store_dir.print(path)
            outputs[name] = InputAddressed(path)
    return BasicDerivation(
        name=drv.name,
        outputs=outputs,
        input_srcs=resolved.input_srcs,
        platform=resolved.platform,
        builder=resolved.builder,
        args=resolved.args,
        env=env,
    )


def _no_inputs(path: StorePath) -> Derivation:
    raise AssertionError(f"resolved derivation has an input derivation {path}")

