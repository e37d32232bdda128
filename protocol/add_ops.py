"""Handlers of the ops that add to the store or read store contents out (daemon.cc `performOp`)."""

from __future__ import annotations

import bz2
import io
import os

from goalkeeper.protocol import version
from goalkeeper.protocol.framing import FramedSource, PulledSource
from goalkeeper.protocol.ops import Op
from goalkeeper.protocol.serializers import read_path, read_path_info, read_paths, write_path_info
from goalkeeper.protocol.wire import MAX_STRING_LEN, WireReader, WireWriter
from goalkeeper.store import nar
from goalkeeper.store.content_address import parse_method
from goalkeeper.store.errors import StoreError
from goalkeeper.store.hashes import check_algo
from goalkeeper.store.paths import StorePath
from goalkeeper.store.signatures import path_info_is_untrusted

from .nar_import import RegularFileSink

MAX_TEXT_LEN = MAX_STRING_LEN  # a .drv or builtins.toFile text sent in one piece
MAX_LOG_LEN = 1 << 30


def add_to_store(conn, r: WireReader) -> None:
    if not version.has_ca_add_to_store(conn.minor):
        return _add_to_store_legacy(conn, r)
    name = r.string(1 << 10, "name")
    cam = r.string(1 << 10, "content-address method")
    refs = read_paths(r, conn.store_dir)
    repair = r.bool()
    conn.start_work()
    store = conn.store
    source = FramedSource(r)
    try:
        method, algo = parse_method(cam)
        if method == "text":
            path = store.add_text_to_store(name, source.read_all(MAX_TEXT_LEN), refs, repair)
        else:
            path = conn.io.add_from_dump(name, method, algo, source, refs, repair)
    finally:
        source.drain()  # keep the connection in step even when the add failed
    info = store.require_path_info(path)
    w = WireWriter()
    write_path_info(w, conn.store_dir, info, conn.minor, include_path=True)
    conn.finish(w)


def _add_to_store_legacy(conn, r: WireReader) -> None:
    """AddToStore before 1.25: (name, fixed, recursive, algo) and an unframed NAR; the reply is the path."""
    name = r.string(1 << 10, "name")
    fixed = r.bool()
    recursive = r.u64()
    algo = r.string(1 << 10, "hash algorithm")
    if recursive > 1:
        raise StoreError(f"unsupported FileIngestionMethod with value of {recursive}; "
                         "you may need to upgrade nix-daemon")
    method = "recursive" if recursive or not fixed else "flat"
    algo = check_algo(algo if fixed else "sha256")
    saved = bytearray()
    if method == "recursive":
        nar.copy(_reader_file(r), saved.extend)
    else:
        sink = RegularFileSink()
        nar.parse(_reader_file(r), sink)
    conn.start_work()
    if method == "flat" and not sink.regular:
        raise StoreError("regular file expected")
    data = bytes(saved) if method == "recursive" else bytes(sink.data)
    path = conn.io.add_from_dump(name, method, algo, io.BytesIO(data), ())
    conn.finish(WireWriter().string(conn.store_dir.print(path)))


class _reader_file:
    """A file-like view of the connection (for NARs sent unframed, whose end is found by parsing)."""

    def __init__(self, r: WireReader):
        self._r = r

    def read(self, n: int) -> bytes:
        return self._r.read_exact(n)


def add_text_to_store(conn, r: WireReader) -> None:
    name = r.string(1 << 10, "name")
    text = r.bytes(MAX_TEXT_LEN, "text")
    refs = read_paths(r, conn.store_dir)
    conn.start_work()
    path = conn.store.add_text_to_store(name, text, refs)
    conn.finish(WireWriter().string(conn.store_dir.print(path)))


def _check_sigs(conn, info, dont_check_sigs: bool) -> None:
    """`LocalStore::addToStore`'s `checkSigs && pathInfoIsUntrusted(info)`: a path needs a
    signature by one of the trusted keys unless it is content-addressed (or sigs are off)."""
    if dont_check_sigs:
        return
    require_sigs = bool(conn.daemon.settings.get("require-sigs"))
    if path_info_is_untrusted(info, conn.store_dir, conn.public_keys(), require_sigs):
        raise StoreError(f"cannot add path '{conn.store_dir.print(info.path)}' because it lacks a valid signature")


def add_to_store_nar(conn, r: WireReader) -> None:
    info = read_path_info(r, conn.store_dir, 16 if version.has_path_info_ca(conn.minor) else conn.minor)
    repair = r.bool()
    dont_check_sigs = r.bool()
    if not conn.trusted:
        dont_check_sigs = False
        info = info.replace(ultimate=False)
    if version.has_framed_nar(conn.minor):
        conn.start_work()
        source = FramedSource(r)
        try:
            _check_sigs(conn, info, dont_check_sigs)
            conn.io.import_nar(info, source, repair=repair)
        finally:
            source.drain()
    elif version.has_read_pulled_nar(conn.minor):
        conn.start_work()
        _check_sigs(conn, info, dont_check_sigs)
        conn.io.import_nar(info, PulledSource(conn.request_data), repair=repair)
    else:
        saved = bytearray()
        nar.copy(_reader_file(r), saved.extend)
        conn.start_work()
        _check_sigs(conn, info, dont_check_sigs)
        conn.io.import_nar(info, io.BytesIO(bytes(saved)), repair=repair)
    conn.finish()


def add_multiple_to_store(conn, r: WireReader) -> None:
    repair = r.bool()
    dont_check_sigs = r.bool() and conn.trusted
    conn.start_work()
    source = FramedSource(r)
    try:
        inner = WireReader(source.read)
        count = inner.count("paths to add")
        for _ in range(count):
            info = read_path_info(inner, conn.store_dir, 16).replace(ultimate=False)
            _check_sigs(conn, info, dont_check_sigs)
            conn.io.import_nar(info, _reader_file(inner), repair=repair)
    finally:
        source.drain()
    conn.finish()


def add_build_log(conn, r: WireReader) -> None:
    base = r.path_string()
    drv_path = StorePath(base)
    conn.start_work()
    source = FramedSource(r)
    try:
        if not conn.trusted:
            raise StoreError("you are not privileged to add logs")
        log = source.read_all(MAX_LOG_LEN)
    finally:
        source.drain()
    if not drv_path.is_derivation():
        raise StoreError(f"path '{base}' is not a derivation")
    write_build_log(conn.store.config.log_dir, base, log)
    conn.finish(WireWriter().u64(1))


def write_build_log(log_dir: str, base: str, log: bytes) -> None:
    """`LocalFSStore::addBuildLog`: `<log dir>/drvs/<2 chars>/<rest>.bz2`, never overwritten."""
    path = os.path.join(log_dir, "drvs", base[:2], base[2:] + ".bz2")
    if os.path.exists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temp = f"{path}.tmp.{os.getpid()}"
    with open(temp, "wb") as f:
        f.write(bz2.compress(log))
    os.rename(temp, path)


def add_signatures(conn, r: WireReader) -> None:
    path = read_path(r, conn.store_dir)
    sigs = r.strings(1 << 16, "signature")
    conn.start_work()
    if not conn.trusted:
        raise StoreError("you are not privileged to add signatures")
    store = conn.store
    info = store.require_path_info(path)
    store.update_path_info(info.replace(sigs=info.sigs | frozenset(sigs)))
    conn.finish(WireWriter().u64(1))


def nar_from_path(conn, r: WireReader) -> None:
    """The NAR follows STDERR_LAST unframed; an error after LAST ends the connection (as in Nix)."""
    path = read_path(r, conn.store_dir)
    conn.start_work()
    conn.finish()
    real = conn.store.real_path(path)
    if not os.path.lexists(real):
        raise StoreError(f"getting status of '{real}': No such file or directory")
    for chunk in nar.dump_path(real):
        conn.send(bytes(chunk))


HANDLERS = {
    Op.AddToStore: add_to_store,
    Op.AddTextToStore: add_text_to_store,
    Op.AddToStoreNar: add_to_store_nar,
    Op.AddMultipleToStore: add_multiple_to_store,
    Op.AddBuildLog: add_build_log,
    Op.AddSignatures: add_signatures,
    Op.NarFromPath: nar_from_path,
}
