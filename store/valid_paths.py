"""The statements of Nix 2.8's local store (local-store.cc `Stmts`) over one `StoreDB`.

Functions here take an open `StoreDB` and never open, lock or commit
anything themselves: `LocalStore` and the store actor decide the transaction
boundaries (one per call, or one per batch). Column conventions are Nix's:
`hash` is `sha256:<base16>`, `ultimate` is 1 or NULL, `sigs`/`ca`/`deriver`/
`narSize` are NULL when empty, and a self reference is a `Refs` row (id, id).
"""

from __future__ import annotations

import json
import time
from typing import Callable, Iterable, Mapping, Sequence

from .content_address import ContentAddress
from .db import StoreDB
from .errors import BadHash, BadStorePath, InvalidPath, StoreError
from .hashes import Base, Hash
from .path_info import ValidPathInfo
from .paths import StoreDir, StorePath
from .topo_sort import topo_sort


class RegistrationError(StoreError):
    """A registration Nix would refuse (bad content address, cycle, wrong drv outputs); nothing was changed."""


class ReferenceCycle(RegistrationError):
    """`cycle detected in the references of '…' from '…'`."""


#: drv path -> {output name: known output path}; reads the .drv from the store's files.
DerivationOutputs = Callable[[StorePath], Mapping[str, StorePath]]


def _parse_nar_hash(text: str) -> Hash:
    # What we (and Nix) write, "sha256:<64 lowercase hex digits>", without the general parser.
    if len(text) == 71 and text.startswith("sha256:"):
        try:
            digest = bytes.fromhex(text[7:])
        except ValueError:
            digest = None
        if digest is not None and digest.hex() == text[7:]:
            return Hash("sha256", digest)
    return Hash.parse_any(text, "sha256")


def _info_from_row(store_dir: StoreDir, path: StorePath, row: tuple, references: Iterable[StorePath]) -> ValidPathInfo:
    _, hash_text, registration_time, deriver, nar_size, ultimate, sigs, ca = row
    return ValidPathInfo(
        path=path,
        nar_hash=_parse_nar_hash(hash_text),
        nar_size=nar_size or 0,
        references=frozenset(references),
        # Nix tests the column for NULL only; an empty string (old Nix wrote those) means none too.
        deriver=store_dir.parse(deriver) if deriver else None,
        registration_time=registration_time,
        ultimate=ultimate == 1,
        sigs=frozenset(sigs.split()) if sigs else frozenset(),
        ca=ContentAddress.parse(ca) if ca else None,
    )


# -- queries ---------------------------------------------------------------------------------


def query_valid_path_id(db: StoreDB, store_dir: StoreDir, path: StorePath) -> int | None:
    row = db.execute("select id from ValidPaths where path = ?", (store_dir.print(path),)).fetchone()
    return row[0] if row else None


def is_valid_path(db: StoreDB, store_dir: StoreDir, path: StorePath) -> bool:
    return query_valid_path_id(db, store_dir, path) is not None


def query_path_info(db: StoreDB, store_dir: StoreDir, path: StorePath) -> ValidPathInfo | None:
    """`queryPathInfoUncached`: the row and its references, or None if the path is not valid."""
    row = db.execute(
        "select id, hash, registrationTime, deriver, narSize, ultimate, sigs, ca from ValidPaths where path = ?",
        (store_dir.print(path),),
    ).fetchone()
    if row is None:
        return None
    refs = db.execute(
        "select path from Refs join ValidPaths on reference = id where referrer = ?", (row[0],)
    ).fetchall()
    try:
        return _info_from_row(store_dir, path, row, (store_dir.parse(r[0]) for r in refs))
    except (BadHash, BadStorePath) as err:
        raise StoreError(f"database entry of '{store_dir.print(path)}' is corrupt: {err}") from err


def query_closure(db: StoreDB, store_dir: StoreDir, paths: Sequence[StorePath]) -> set[StorePath]:
    """`computeFSClosure` forwards (no outputs, no derivers): every path reachable by references.

    One recursive query instead of a `queryPathInfo` per path; a reference is always
    valid (a foreign key), so only the roots need checking. (Roots are looked up one by
    one: `path in (select value from json_each(?))` costs ~6x more after a commit.)

    Raises:
        InvalidPath: a root is not valid (the last one first, as the path-by-path walk finds it).
    """
    if len(paths) == 1:  # an input closure often starts at one path: one statement
        printed = store_dir.print(paths[0])
        rows = db.execute(
            f"with recursive closure(id) as (select id from ValidPaths where path = ? {_CLOSURE_STEP}",
            (printed,),
        ).fetchall()
        if not rows:
            raise InvalidPath(f"path '{printed}' is not valid")
        return {store_dir.parse(r[0]) for r in rows}
    ids = []
    for path in reversed(paths):
        row = db.execute("select id from ValidPaths where path = ?", (store_dir.print(path),)).fetchone()
        if row is None:
            raise InvalidPath(f"path '{store_dir.print(path)}' is not valid")
        ids.append(row[0])
    if not ids:
        return set()
    rows = db.execute(f"with recursive closure(id) as (select value from json_each(?) {_CLOSURE_STEP}",
                      (json.dumps(ids),))
    return {store_dir.parse(r[0]) for r in rows}


_CLOSURE_STEP = ("union select reference from Refs join closure on referrer = closure.id) "
                 "select path from ValidPaths join closure using (id)")


def query_referrers(db: StoreDB, store_dir: StoreDir, path: StorePath) -> set[StorePath]:
    rows = db.execute(
        "select path from Refs join ValidPaths on referrer = id "
        "where reference = (select id from ValidPaths where path = ?)",
        (store_dir.print(path),),
    )
    return {store_dir.parse(r[0]) for r in rows}


def query_valid_derivers(db: StoreDB, store_dir: StoreDir, path: StorePath) -> set[StorePath]:
    rows = db.execute(
        "select v.id, v.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where d.path = ?",
        (store_dir.print(path),),
    )
    return {store_dir.parse(r[1]) for r in rows}


def query_derivation_outputs(db: StoreDB, store_dir: StoreDir, drv_path: StorePath) -> dict[str, StorePath]:
    """The `DerivationOutputs` rows of a valid drv.

    Raises:
        InvalidPath: the drv is not valid.
    """
    rows = db.execute(
        "select d.id, d.path from ValidPaths v left join DerivationOutputs d on d.drv = v.id where v.path = ?",
        (store_dir.print(drv_path),),
    ).fetchall()
    if not rows:
        raise InvalidPath(f"path '{store_dir.print(drv_path)}' is not valid")
    return {name: store_dir.parse(path) for name, path in rows if name is not None}


def query_path_from_hash_part(db: StoreDB, store_dir: StoreDir, hash_part: str) -> StorePath | None:
    prefix = f"{store_dir.path}/{hash_part}"
    row = db.execute("select path from ValidPaths where path >= ? limit 1", (prefix,)).fetchone()
    if row is None or not row[0].startswith(prefix):
        return None
    return store_dir.parse(row[0])


def query_all_valid_paths(db: StoreDB, store_dir: StoreDir) -> set[StorePath]:
    return {store_dir.parse(r[0]) for r in db.execute("select path from ValidPaths")}


# -- writes ----------------------------------------------------------------------------------


def _nullable(value, present: bool):
    return value if present else None


def _check_content_address(store_dir: StoreDir, info: ValidPathInfo) -> None:
    if info.ca is None:
        return
    try:
        ok = info.is_content_addressed(store_dir)
    except BadStorePath:
        ok = False
    if not ok:
        raise RegistrationError(
            f"cannot add path '{store_dir.print(info.path)}' to the Nix store because it claims "
            "to be content-addressed but isn't"
        )


def add_valid_path(
    db: StoreDB,
    store_dir: StoreDir,
    info: ValidPathInfo,
    derivation_outputs: DerivationOutputs | None,
    now: int | None = None,
) -> int:
    """`addValidPath`: insert the row (and a drv's known outputs); return its id. References come later."""
    _check_content_address(store_dir, info)
    if info.nar_hash.algo != "sha256":
        raise RegistrationError(f"narHash of '{store_dir.print(info.path)}' must be sha256")
    cursor = db.execute(
        "insert into ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) "
        "values (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            store_dir.print(info.path),
            info.nar_hash.to_string(Base.BASE16, True),
            info.registration_time or (now if now is not None else int(time.time())),
            _nullable(info.deriver and store_dir.print(info.deriver), info.deriver is not None),
            _nullable(info.nar_size, info.nar_size != 0),
            _nullable(1, info.ultimate),
            _nullable(" ".join(sorted(info.sigs)), bool(info.sigs)),
            _nullable(info.ca and info.ca.render(), info.ca is not None),
        ),
    )
    path_id = cursor.lastrowid
    if info.path.is_derivation() and derivation_outputs is not None:
        # Rows for every output with a known path, for queryValidDerivers and the GC.
        db.executemany(
            "insert or replace into DerivationOutputs (drv, id, path) values (?, ?, ?)",
            [(path_id, name, store_dir.print(out)) for name, out in derivation_outputs(info.path).items()],
        )
    return path_id


def update_path_info(db: StoreDB, store_dir: StoreDir, info: ValidPathInfo) -> None:
    """`updatePathInfo`: the mutable columns of an already valid path (not deriver or time)."""
    db.execute(
        "update ValidPaths set narSize = ?, hash = ?, ultimate = ?, sigs = ?, ca = ? where path = ?",
        (
            _nullable(info.nar_size, info.nar_size != 0),
            info.nar_hash.to_string(Base.BASE16, True),
            _nullable(1, info.ultimate),
            _nullable(" ".join(sorted(info.sigs)), bool(info.sigs)),
            _nullable(info.ca and info.ca.render(), info.ca is not None),
            store_dir.print(info.path),
        ),
    )


def register_valid_paths(
    db: StoreDB,
    store_dir: StoreDir,
    infos: Sequence[ValidPathInfo],
    derivation_outputs: DerivationOutputs | None = None,
    check_derivation: Callable[[StorePath], None] | None = None,
) -> None:
    """`registerValidPaths`, inside the caller's transaction; any exception means roll back.

    Every reference must be valid already or be registered in the same call.
    A later info for the same path replaces an earlier one, as in Nix's map.

    Raises:
        InvalidPath: a reference is neither valid nor in `infos`.
        ReferenceCycle: the new paths' references form a cycle.
        RegistrationError: a false content address or a drv with wrong outputs.
    """
    by_path: dict[StorePath, ValidPathInfo] = {}
    for info in infos:
        by_path[info.path] = info
    ids: dict[StorePath, int] = {}
    now = int(time.time())
    for path, info in by_path.items():
        path_id = query_valid_path_id(db, store_dir, path)
        if path_id is not None:
            _check_content_address(store_dir, info)
            update_path_info(db, store_dir, info)
        else:
            path_id = add_valid_path(db, store_dir, info, derivation_outputs, now)
        ids[path] = path_id

    rows = []
    for path, info in by_path.items():
        referrer = ids[path]
        for ref in info.references:
            ref_id = ids.get(ref)
            if ref_id is None:
                ref_id = query_valid_path_id(db, store_dir, ref)
                if ref_id is None:
                    raise InvalidPath(f"path '{store_dir.print(ref)}' is not valid")
                ids[ref] = ref_id
            rows.append((referrer, ref_id))
    db.executemany("insert or replace into Refs (referrer, reference) values (?, ?)", rows)

    # Drv outputs are checked only now, once every reference is valid (as in Nix).
    if check_derivation is not None:
        for path in by_path:
            if path.is_derivation():
                check_derivation(path)

    if len(by_path) < 2:
        return  # a path's reference to itself is no cycle
    topo_sort(
        by_path,
        lambda p: by_path[p].references if p in by_path else (),
        lambda p, parent: ReferenceCycle(
            f"cycle detected in the references of '{store_dir.print(p)}' from '{store_dir.print(parent)}'"
        ),
    )


def invalidate_path(db: StoreDB, store_dir: StoreDir, path: StorePath) -> None:
    """`invalidatePath`: delete the row; foreign keys drop its Refs and refuse if others refer to it."""
    db.execute("delete from ValidPaths where path = ?", (store_dir.print(path),))
