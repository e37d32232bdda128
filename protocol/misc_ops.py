"""Handlers of the GC-root, maintenance and realisation ops."""

from __future__ import annotations


from goalkeeper.protocol import version
from goalkeeper.protocol.ops import Op
from goalkeeper.protocol.serializers import parse_realisation_json, read_path, read_paths, realisation_json
from goalkeeper.protocol.wire import WireReader, WireWriter
from goalkeeper.store.errors import StoreError
from goalkeeper.store.realisations import DrvOutput, Realisation



def add_temp_root(conn, r: WireReader) -> None:
    path = read_path(r, conn.store_dir)
    conn.start_work()
    conn.store.add_temp_root(path)
    conn.finish(WireWriter().u64(1))


def add_indirect_root(conn, r: WireReader) -> None:
    link = r.string(1 << 12, "root path")
    conn.start_work()
    conn.io.add_indirect_root(link)
    conn.finish(WireWriter().u64(1))


def sync_with_gc(conn, r: WireReader) -> None:
    conn.start_work()  # there is no collector to wait for
    conn.finish(WireWriter().u64(1))


def find_roots(conn, r: WireReader) -> None:
    conn.start_work()
    found = conn.io.find_roots()
    w = WireWriter().u64(len(found))
    for link, target in found:
        w.string(link).string(conn.store_dir.print(target))
    conn.finish(w)


def collect_garbage(conn, r: WireReader) -> None:
    r.u64()  # action
    read_paths(r, conn.store_dir)
    ignore_liveness = r.bool()
    r.u64()  # maxFreed
    for _ in range(3):
        r.u64()  # obsolete fields
    conn.start_work()
    if ignore_liveness:
        raise StoreError("you are not allowed to ignore liveness")
    paths, bytes_freed = conn.io.collect_garbage()
    w = WireWriter()
    w.string_set(sorted(paths)).u64(bytes_freed).u64(0)  # the last: obsolete
    conn.finish(w)


def optimise_store(conn, r: WireReader) -> None:
    conn.start_work()
    conn.io.optimise_store(conn.log)
    conn.finish(WireWriter().u64(1))


def verify_store(conn, r: WireReader) -> None:
    check_contents = r.bool()
    repair = r.bool()
    conn.start_work()
    if repair and not conn.trusted:
        raise StoreError("you are not privileged to repair paths")
    errors = conn.io.verify_store(check_contents, repair, log=lambda text: conn.log(text, 0))
    conn.finish(WireWriter().bool(errors))


def _ca_enabled(store) -> bool:
    return bool(store.layout.ca_derivations)


def query_realisation(conn, r: WireReader) -> None:
    id_text = r.string(1 << 10, "derivation output id")
    drv_output = DrvOutput.parse(id_text)
    conn.start_work()
    store = conn.store
    realisation = store.query_realisation(drv_output) if _ca_enabled(store) else None
    w = WireWriter()
    if version.has_realisation_json(conn.minor):
        docs = [] if realisation is None else [realisation_json(
            id_text, realisation.out_path, realisation.signatures,
            {str(k): v for k, v in realisation.dependent_realisations.items()})]
        w.string_set(docs)
    else:
        w.string_set([] if realisation is None else [conn.store_dir.print(realisation.out_path)])
    conn.finish(w)


def register_drv_output(conn, r: WireReader) -> None:
    if version.has_realisation_json(conn.minor):
        id_text, out_path, sigs, deps = parse_realisation_json(r.string(1 << 20, "realisation"))
    else:
        id_text = r.string(1 << 10, "derivation output id")
        out_path, sigs, deps = read_path(r, conn.store_dir), frozenset(), {}
    conn.start_work()
    realisation = Realisation(DrvOutput.parse(id_text), out_path, sigs,
                              {DrvOutput.parse(k): v for k, v in deps.items()})
    conn.store.register_drv_output(realisation)
    conn.finish()


HANDLERS = {
    Op.AddTempRoot: add_temp_root,
    Op.AddIndirectRoot: add_indirect_root,
    Op.SyncWithGC: sync_with_gc,
    Op.FindRoots: find_roots,
    Op.CollectGarbage: collect_garbage,
    Op.OptimiseStore: optimise_store,
    Op.VerifyStore: verify_store,
    Op.QueryRealisation: query_realisation,
    Op.RegisterDrvOutput: register_drv_output,
}


