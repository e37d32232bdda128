"""Handlers of SetOptions and the query ops (daemon.cc `performOp`): they read, look up, answer.

Each handler reads its request, calls `conn.start_work()`, asks the store,
and ends with `conn.finish(reply)`; errors are mapped by the connection.
"""

from __future__ import annotations

from goalkeeper.protocol import version
from goalkeeper.protocol.client_settings import accept_overrides
from goalkeeper.protocol.ops import Op
from goalkeeper.protocol.serializers import read_derived_paths, read_path, read_paths, write_path_info, write_paths
from goalkeeper.protocol.wire import WireReader, WireWriter
from goalkeeper.store import nixbase32
from goalkeeper.store.errors import StoreError



def set_options(conn, r: WireReader) -> None:
    o = conn.options
    o.keep_failed = r.bool()
    o.keep_going = r.bool()
    o.try_fallback = r.bool()
    o.verbosity = r.u64()
    o.max_build_jobs = r.u64()
    o.max_silent_time = r.u64()
    r.u64()  # obsolete useBuildHook
    o.verbose_build = r.u64() == 0  # lvlError means "show build output"
    r.u64()  # obsolete logType
    r.u64()  # obsolete printBuildTrace
    o.build_cores = r.u64()
    o.use_substitutes = r.bool()
    overrides = r.string_map("settings overrides") if version.has_setting_overrides(conn.minor) else {}
    conn.start_work()
    o.overrides = accept_overrides(overrides, trusted=conn.trusted, settings=conn.daemon.settings, log=conn.log)
    conn.finish()


def is_valid_path(conn, r: WireReader) -> None:
    path = read_path(r, conn.store_dir)
    conn.start_work()
    valid = conn.store.is_valid_path(path)
    conn.finish(WireWriter().bool(valid))


def query_valid_paths(conn, r: WireReader) -> None:
    paths = read_paths(r, conn.store_dir)
    if version.has_substitute_flag(conn.minor):
        r.bool()  # substitute: goalkeeper has no substituters yet
    conn.start_work()
    store = conn.store
    valid = [p for p in paths if store.is_valid_path(p)]
    w = WireWriter()
    write_paths(w, conn.store_dir, valid)
    conn.finish(w)


def query_all_valid_paths(conn, r: WireReader) -> None:
    conn.start_work()
    w = WireWriter()
    write_paths(w, conn.store_dir, conn.store.query_all_valid_paths())
    conn.finish(w)


def query_path_info(conn, r: WireReader) -> None:
    path = read_path(r, conn.store_dir)
    conn.start_work()
    info = conn.store.query_path_info(path)
    w = WireWriter()
    if info is None:
        if not version.has_valid_flag_in_path_info(conn.minor):
            raise StoreError(f"path '{conn.store_dir.print(path)}' is not valid")
        w.bool(False)
    else:
        if version.has_valid_flag_in_path_info(conn.minor):
            w.bool(True)
        write_path_info(w, conn.store_dir, info, conn.minor, include_path=False)
    conn.finish(w)


def _path_set_query(method: str):
    def handler(conn, r: WireReader) -> None:
        path = read_path(r, conn.store_dir)
        conn.start_work()
        w = WireWriter()
        write_paths(w, conn.store_dir, getattr(conn.store, method)(path))
        conn.finish(w)

    handler.__name__ = method
    return handler


def query_derivation_output_map(conn, r: WireReader) -> None:
    path = read_path(r, conn.store_dir)
    conn.start_work()
    outputs = conn.store.query_partial_derivation_output_map(path)
    w = WireWriter().u64(len(outputs))
    for name in sorted(outputs):
        out = outputs[name]
        w.string(name).string(conn.store_dir.print(out) if out is not None else "")
    conn.finish(w)


def query_path_from_hash_part(conn, r: WireReader) -> None:
    hash_part = r.string(1 << 10, "hash part")
    conn.start_work()
    if len(hash_part) != 32:  # LocalStore::queryPathFromHashPart
        raise StoreError("invalid hash part")
    # Characters outside Nix's base-32 can name no path (and may not even be text).
    path = conn.store.query_path_from_hash_part(hash_part) if nixbase32.is_valid(hash_part) else None
    conn.finish(WireWriter().string(conn.store_dir.print(path) if path is not None else ""))


def query_substitutable_path_infos(conn, r: WireReader) -> None:
    if version.has_substitutable_ca_map(conn.minor):
        for _ in range(r.count("map of paths")):
            read_path(r, conn.store_dir)
            r.string(1 << 10, "content address")
    else:
        read_paths(r, conn.store_dir)
    conn.start_work()
    conn.finish(WireWriter().u64(0))  # no substituters yet: nothing is substitutable


def query_substitutable_paths(conn, r: WireReader) -> None:
    read_paths(r, conn.store_dir)
    conn.start_work()
    conn.finish(WireWriter().u64(0))


def has_substitutes(conn, r: WireReader) -> None:
    read_path(r, conn.store_dir)
    conn.start_work()
    conn.finish(WireWriter().bool(False))


def query_missing(conn, r: WireReader) -> None:
    targets = read_derived_paths(r, conn.store_dir, conn.minor)
    conn.start_work()
    missing = conn.io.query_missing(targets)
    w = WireWriter()
    for paths in (missing.will_build, missing.will_substitute, missing.unknown):
        write_paths(w, conn.store_dir, paths)
    w.u64(missing.download_size).u64(missing.nar_size)
    conn.finish(w)


def query_deriver(conn, r: WireReader) -> None:
    """Obsolete (clients < 1.17 era), still cheap to answer."""
    path = read_path(r, conn.store_dir)
    conn.start_work()
    info = conn.store.require_path_info(path)
    conn.finish(WireWriter().string(conn.store_dir.print(info.deriver) if info.deriver else ""))


HANDLERS = {
    Op.SetOptions: set_options,
    Op.IsValidPath: is_valid_path,
    Op.QueryValidPaths: query_valid_paths,
    Op.QueryAllValidPaths: query_all_valid_paths,
    Op.QueryPathInfo: query_path_info,
    Op.QueryReferrers: _path_set_query("query_referrers"),
    Op.QueryValidDerivers: _path_set_query("query_valid_derivers"),
    Op.QueryDerivationOutputMap: query_derivation_output_map,
    Op.QueryPathFromHashPart: query_path_from_hash_part,
    Op.QuerySubstitutablePathInfos: query_substitutable_path_infos,
    Op.QuerySubstitutablePaths: query_substitutable_paths,
    Op.HasSubstitutes: has_substitutes,
    Op.QueryMissing: query_missing,
    Op.QueryDeriver: query_deriver,
}
