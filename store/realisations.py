"""Realisations of content-addressed derivation outputs (realisation.hh; ca-derivations only).

A `DrvOutput` is (the drv's masked modulo hash, output name); the table's
`drvPath` column holds that hash as `sha256:<base16>`, not a path (spec §5.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .db import StoreDB
from .derivation_hash import static_output_hashes
from .errors import StoreError
from .hashes import Base, Hash
from .paths import StoreDir, StorePath

if TYPE_CHECKING:
    from .local import LocalStore


class RealisationError(StoreError):
    """A realisation Nix would refuse to register (conflicting, or depending on an unknown one)."""


@dataclass(frozen=True, slots=True, order=True)
class DrvOutput:
    """`DrvOutput`: which output of which (modulo-hashed) derivation."""

    drv_hash: Hash
    output_name: str

    def str_hash(self) -> str:
        return self.drv_hash.to_string(Base.BASE16, True)

    def __str__(self) -> str:
        return f"{self.str_hash()}!{self.output_name}"

    @classmethod
    def parse(cls, text: str) -> "DrvOutput":
        digest, sep, name = text.partition("!")
        if not sep:
            raise StoreError(f"invalid derivation output id {text}")
        return cls(Hash.parse_any_prefixed(digest), name)


@dataclass(frozen=True, slots=True)
class Realisation:
    """`Realisation`: a DrvOutput's path, signatures, and the realisations it depends on."""

    id: DrvOutput
    out_path: StorePath
    signatures: frozenset[str] = field(default_factory=frozenset)
    dependent_realisations: dict[DrvOutput, StorePath] = field(default_factory=dict)

    def is_compatible_with(self, other: "Realisation") -> bool:
        if self.out_path != other.out_path:
            return False
        if not self.dependent_realisations or not other.dependent_realisations:
            return True
        return self.dependent_realisations == other.dependent_realisations


def _query_core(db: StoreDB, store_dir: StoreDir, id: DrvOutput) -> tuple[int, Realisation] | None:
    row = db.execute(
        "select Realisations.id, Output.path, Realisations.signatures from Realisations "
        "inner join ValidPaths as Output on Output.id = Realisations.outputPath "
        "where drvPath = ? and outputName = ?",
        (id.str_hash(), id.output_name),
    ).fetchone()
    if row is None:
        return None
    return row[0], Realisation(id, store_dir.parse(row[1]), frozenset((row[2] or "").split()))


def query_realisation(db: StoreDB, store_dir: StoreDir, id: DrvOutput) -> Realisation | None:
    """`queryRealisation_`: the realisation with its dependent realisations, or None."""
    core = _query_core(db, store_dir, id)
    if core is None:
        return None
    row_id, realisation = core
    deps: dict[DrvOutput, StorePath] = {}
    for drv_hash, output_name in db.execute(
        "select drvPath, outputName from Realisations join RealisationsRefs "
        "on realisationReference = Realisations.id where referrer = ?",
        (row_id,),
    ):
        dep_id = DrvOutput(Hash.parse_any_prefixed(drv_hash), output_name)
        dep = _query_core(db, store_dir, dep_id)
        assert dep is not None, "enforced by the schema's foreign keys"
        deps[dep_id] = dep[1].out_path
    return Realisation(realisation.id, realisation.out_path, realisation.signatures, deps)


def register_drv_output(db: StoreDB, store_dir: StoreDir, info: Realisation) -> None:
    """`registerDrvOutput`, inside the caller's transaction."""
    old = query_realisation(db, store_dir, info.id)
    if old is not None:
        if not info.is_compatible_with(old):
            raise RealisationError(
                f"Trying to register a realisation of '{info.id}', but we already have another one locally.\n"
                f"Local:  {store_dir.print(old.out_path)}\nRemote: {store_dir.print(info.out_path)}"
            )
        db.execute(
            "update Realisations set signatures = ? where drvPath = ? and outputName = ?",
            (" ".join(sorted(old.signatures | info.signatures)), info.id.str_hash(), info.id.output_name),
        )
    else:
        out = store_dir.print(info.out_path)
        if db.execute("select 1 from ValidPaths where path = ?", (out,)).fetchone() is None:
            raise RealisationError(f"cannot register realisation '{info.id}': path '{out}' is not valid")
        db.execute(
            "insert into Realisations (drvPath, outputName, outputPath, signatures) "
            "values (?, ?, (select id from ValidPaths where path = ?), ?)",
            (info.id.str_hash(), info.id.output_name, out, " ".join(sorted(info.signatures))),
        )
    for dep_id, dep_path in sorted(info.dependent_realisations.items()):
        local = _query_core(db, store_dir, dep_id)
        if local is None:
            raise RealisationError(
                f"unable to register the derivation '{info.id}' as it depends on the non existent '{dep_id}'"
            )
        if local[1].out_path != dep_path:
            raise RealisationError(
                f"unable to register the derivation '{info.id}' as it depends on a realisation of "
                f"'{dep_id}' that doesn’t match what we have locally"
            )
        db.execute(
            "insert or replace into RealisationsRefs (referrer, realisationReference) values ("
            "(select id from Realisations where drvPath = ? and outputName = ?), "
            "(select id from Realisations where drvPath = ? and outputName = ?))",
            (info.id.str_hash(), info.id.output_name, dep_id.str_hash(), dep_id.output_name),
        )


def static_output_realisations(store: "LocalStore", drv_path: StorePath) -> dict[str, StorePath | None]:
    """For each output of `drv_path`, the path its realisation names (None if not realised)."""
    drv = store.read_derivation(drv_path)
    hashes = static_output_hashes(store.store_dir, drv, store.read_derivation, store.drv_hash_cache())
    result: dict[str, StorePath | None] = {}
    for name, digest in hashes.items():
        realisation = query_realisation(store.db(), store.store_dir, DrvOutput(digest, name))
        result[name] = realisation.out_path if realisation else None
    return result
