"""Composite encodings (spec §7.5): ValidPathInfo, DerivedPath, BuildResult, Realisation, BasicDerivation.

Store paths travel printed (`/nix/store/<hash>-<name>`), so every codec takes
the `StoreDir` to parse and print them with. Version-dependent fields follow
the peer's minor through the predicates in `version`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from goalkeeper.store.content_address import ContentAddress
from goalkeeper.store.derivation import (BasicDerivation, CAFixed, CAFloating, Deferred, DerivationOutput,
                                         Impure, InputAddressed, parse_method_algo)
from goalkeeper.store.errors import BadStorePath, StoreError
from goalkeeper.store.hashes import Base, Hash
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.paths import StoreDir, StorePath

from . import version
from .errors import BadWireData
from .wire import WireReader, WireWriter

# -- store paths -----------------------------------------------------------------------------


def read_path(r: WireReader, store_dir: StoreDir) -> StorePath:
    """A printed store path (Nix's `parseStorePath`: `not an absolute path`, `path … is not in the Nix store`)."""
    text = r.path_string()
    return parse_path(store_dir, text)


def parse_path(store_dir: StoreDir, text: str) -> StorePath:
    if not text.startswith("/"):
        raise BadStorePath(f"not an absolute path: '{text}'")
    return store_dir.parse(text)


def read_optional_path(r: WireReader, store_dir: StoreDir) -> StorePath | None:
    text = r.path_string()
    return parse_path(store_dir, text) if text else None


def read_paths(r: WireReader, store_dir: StoreDir) -> list[StorePath]:
    return [parse_path(store_dir, r.path_string()) for _ in range(r.count("set of store paths"))]


def write_paths(w: WireWriter, store_dir: StoreDir, paths: Iterable[StorePath]) -> None:
    w.string_set(store_dir.print(p) for p in paths)


# -- ValidPathInfo ---------------------------------------------------------------------------


def write_path_info(w: WireWriter, store_dir: StoreDir, info: ValidPathInfo, minor: int, *,
                    include_path: bool) -> None:
    """ValidPathInfo in the order of spec §7.5 (the path first only where the op says so)."""
    if include_path:
        w.string(store_dir.print(info.path))
    w.string(store_dir.print(info.deriver) if info.deriver else "")
    w.string(info.nar_hash.to_string(Base.BASE16, False))
    write_paths(w, store_dir, info.references)
    w.u64(info.registration_time).u64(info.nar_size)
    if version.has_path_info_ca(minor):
        w.bool(info.ultimate).string_set(info.sigs).string(info.ca.render() if info.ca else "")


def read_path_info(r: WireReader, store_dir: StoreDir, minor: int, path: StorePath | None = None) -> ValidPathInfo:
    """The inverse of `write_path_info`; with `path=None` the path is read first."""
    if path is None:
        path = read_path(r, store_dir)
    deriver = read_optional_path(r, store_dir)
    nar_hash = Hash.parse_any(r.string(1 << 10, "narHash"), "sha256")
    references = read_paths(r, store_dir)
    registration_time = r.u64()
    nar_size = r.u64()
    ultimate, sigs, ca = False, [], None
    if version.has_path_info_ca(minor):
        ultimate = r.bool()
        sigs = r.strings(1 << 16, "signature")
        ca_text = r.string(1 << 10, "content address")
        ca = ContentAddress.parse(ca_text) if ca_text else None
    return ValidPathInfo(path=path, nar_hash=nar_hash, nar_size=nar_size, references=frozenset(references),
                         deriver=deriver, registration_time=registration_time, ultimate=ultimate,
                         sigs=frozenset(sigs), ca=ca)


# -- DerivedPath -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DerivedPath:
    """`DerivedPath` on the wire: opaque (`outputs is None`) or built (empty set: all outputs)."""

    path: StorePath
    outputs: frozenset[str] | None = None

    def render(self, store_dir: StoreDir) -> str:
        """`DerivedPath::to_string`: `path`, `drv!a,b` (sorted) or `drv!*`."""
        printed = store_dir.print(self.path)
        if self.outputs is None:
            return printed
        return printed + "!" + (",".join(sorted(self.outputs)) if self.outputs else "*")

    def render_legacy(self, store_dir: StoreDir) -> str:
        """`StorePathWithOutputs::to_string` (< 30): never `*`."""
        printed = store_dir.print(self.path)
        return printed + "!" + ",".join(sorted(self.outputs)) if self.outputs else printed


def parse_derived_path(store_dir: StoreDir, text: str, minor: int) -> DerivedPath:
    """A DerivedPath (≥ 30) or StorePathWithOutputs (< 30; a bare .drv means every output)."""
    path_text, bang, outputs_text = text.partition("!")
    path = parse_path(store_dir, path_text)
    if bang:
        if outputs_text == "*":
            return DerivedPath(path, frozenset())
        outputs = frozenset(o for o in outputs_text.split(",") if o)
        if not outputs:
            raise BadWireData(f"empty output list in '{text}'")
        return DerivedPath(path, outputs)
    if not version.has_derived_paths(minor) and path.is_derivation():
        return DerivedPath(path, frozenset())
    return DerivedPath(path)


def read_derived_paths(r: WireReader, store_dir: StoreDir, minor: int) -> list[DerivedPath]:
    return [parse_derived_path(store_dir, r.string(1 << 16, "derived path"), minor)
            for _ in range(r.count("list of derived paths"))]


def write_derived_paths(w: WireWriter, store_dir: StoreDir, paths: Iterable[DerivedPath], minor: int) -> None:
    paths = list(paths)
    w.u64(len(paths))
    for p in paths:
        w.string(p.render(store_dir) if version.has_derived_paths(minor) else p.render_legacy(store_dir))


# -- realisations ----------------------------------------------------------------------------


def realisation_json(id_: str, out_path: StorePath, signatures: Iterable[str] = (),
                     dependent: dict[str, StorePath] | None = None) -> str:
    """`Realisation::toJSON` dumped as the protocol sends it: sorted keys, outPath a base name."""
    doc = {
        "dependentRealisations": {k: str(v) for k, v in sorted((dependent or {}).items())},
        "id": id_,
        "outPath": str(out_path),
        "signatures": sorted(signatures),
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def parse_realisation_json(text: str) -> tuple[str, StorePath, frozenset[str], dict[str, StorePath]]:
    """(id, outPath, signatures, dependentRealisations) of a Realisation JSON document."""
    try:
        doc = json.loads(text)
        deps = {k: StorePath(v) for k, v in doc.get("dependentRealisations", {}).items()}
        return doc["id"], StorePath(doc["outPath"]), frozenset(doc.get("signatures", [])), deps
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BadWireData(f"malformed realisation: {e}") from e


# -- BuildResult -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WireBuildResult:
    """`BuildResult` as the protocol carries it; `built_outputs` maps DrvOutput id -> Realisation JSON."""

    status: int
    error_msg: str = ""
    times_built: int = 0
    is_non_deterministic: bool = False
    start_time: int = 0
    stop_time: int = 0
    built_outputs: dict[str, str] | None = None


def write_build_result_body(w: WireWriter, result: WireBuildResult, minor: int) -> None:
    """BuildDerivation's reply (and the tail of op 46's entries): fields by the client's minor."""
    w.u64(result.status).string(result.error_msg)
    if version.has_build_times(minor):
        w.u64(result.times_built).bool(result.is_non_deterministic).u64(result.start_time).u64(result.stop_time)
    if version.has_built_outputs(minor):
        outputs = result.built_outputs or {}
        w.u64(len(outputs))
        for key in sorted(outputs, key=_drv_output_order):
            w.string(key).string(outputs[key])


def _drv_output_order(key: str) -> tuple[str, str]:
    # std::map<DrvOutput, …> orders by (drvHash, outputName)
    digest, _, name = key.partition("!")
    return digest, name


def read_build_result_body(r: WireReader, minor: int) -> WireBuildResult:
    status = r.u64()
    error_msg = r.string()
    fields: dict = {}
    if version.has_build_times(minor):
        fields = dict(times_built=r.u64(), is_non_deterministic=r.bool(), start_time=r.u64(), stop_time=r.u64())
    built = None
    if version.has_built_outputs(minor):
        built = {}
        for _ in range(r.count("builtOutputs")):
            key = r.string(1 << 10)
            built[key] = r.string(1 << 16)
    return WireBuildResult(status=status, error_msg=error_msg, built_outputs=built, **fields)


# -- BasicDerivation (BuildDerivation, op 36) ------------------------------------------------


def _output(store_dir: StoreDir, path: str, algo: str, digest: str) -> DerivationOutput:
    """`parseDerivationOutput`, as readDerivation applies it to wire fields."""
    if algo:
        method, algo = parse_method_algo(algo)
        if digest == "impure":
            return Impure(method, algo)
        if digest:
            return CAFixed(method, Hash.parse_non_sri_unprefixed(digest, algo))
        return CAFloating(method, algo)
    if not path:
        return Deferred()
    return InputAddressed(parse_path(store_dir, path))


def read_basic_derivation(r: WireReader, store_dir: StoreDir, name: str) -> BasicDerivation:
    outputs: dict[str, DerivationOutput] = {}
    for _ in range(r.count("derivation outputs", 1 << 12)):
        out_name = r.string(1 << 10, "output name")
        path, algo, digest = r.path_string(), r.string(1 << 10), r.string(1 << 10)
        try:
            outputs[out_name] = _output(store_dir, path, algo, digest)
        except StoreError as e:
            raise BadWireData(f"bad output '{out_name}' of derivation '{name}': {e}") from e
    input_srcs = read_paths(r, store_dir)
    platform = r.string(1 << 10)
    builder = r.string(1 << 16)
    args = r.strings()
    env = r.string_map("derivation environment")
    return BasicDerivation(name=name, outputs=outputs, input_srcs=frozenset(input_srcs), platform=platform,
                           builder=builder, args=tuple(args), env=env)


def write_basic_derivation(w: WireWriter, store_dir: StoreDir, drv: BasicDerivation) -> None:
    from goalkeeper.store.derivation import _output_fields  # the ATerm's own column values

    w.u64(len(drv.outputs))
    for name in sorted(drv.outputs):
        path, algo, digest = _output_fields(drv.outputs[name], store_dir, drv.name, name, False)
        w.string(name).string(path).string(algo).string(digest)
    write_paths(w, store_dir, drv.input_srcs)
    w.string(drv.platform).string(drv.builder).strings(drv.args)
    w.u64(len(drv.env))
    for key in sorted(drv.env):
        w.string(key).string(drv.env[key])
