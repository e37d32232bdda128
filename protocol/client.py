"""A worker-protocol client: a store reached through a daemon socket (libstore/remote-store.cc).

`RemoteStore` answers the query methods of `LocalStore` (`is_valid_path`,
`query_path_info`, `require_path_info`, `query_referrers`, ...) over one
connection to goalkeeper's daemon or the real `nix-daemon`, so commands can
use either kind of store. Like Nix's `UDSRemoteStore` it is also a "local
FS store": `.drv` files are read straight from the store directory, which
for `unix://PATH?root=R` is the chroot store's `R/nix/store` (`real=`,
`state=` and `log=` are honoured as in `LocalFSStoreConfig`).

Log lines, activities and results the daemon sends while an op runs go to
`log(text)` the way Nix's plain logger would print them.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterable

from goalkeeper.store import nar
from goalkeeper.store.content_address import render_method
from goalkeeper.store.errors import InvalidPath, StoreError
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.closure import compute_fs_closure
from goalkeeper.store.paths import StoreDir, StorePath
from goalkeeper.store.store_config import DEFAULT_LOG_DIR, DEFAULT_STATE_DIR, Environment

from . import stderr, version
from .errors import ProtocolError
from .framing import write_framed
from .handshake import client_handshake
from .ops import Op
from .serializers import (DerivedPath, WireBuildResult, read_build_result_body, read_derived_paths, read_path_info,
                          read_paths, write_basic_derivation, write_derived_paths, write_path_info, write_paths)
from .wire import WireReader, WireWriter
from goalkeeper.store import unix_socket

Log = Callable[[str], None]


class DaemonConnection:
    """One open connection after the hello: `op()` sends a request and runs the stderr loop."""

    def __init__(self, sock: socket.socket, log: Log, store_dir: StoreDir):
        self.sock = sock
        self.log = log
        self.store_dir = store_dir
        self.reader = WireReader(lambda n: sock.recv(min(n, 1 << 20)))
        hello = client_handshake(self.reader, sock.sendall)
        self.daemon_version = hello.version
        self.nix_version = hello.nix_version
        self.minor = min(hello.minor, version.minor(version.PROTOCOL_VERSION))
        self.process_stderr()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def process_stderr(self, sink: Callable[[bytes], object] | None = None,
                       source: Callable[[int], bytes] | None = None) -> None:
        """Handle stderr messages until STDERR_LAST; STDERR_ERROR raises `RemoteError`."""
        while True:
            msg = stderr.read_message(self.reader, self.minor)
            match msg:
                case stderr.Last():
                    return
                case stderr.Next(text=text):
                    self.log(text.rstrip("\n"))
                case stderr.StartActivity(level=level, text=text) if text and level <= stderr.LVL_INFO:
                    self.log(text + "...")
                case stderr.Result(type=stderr.RES_BUILD_LOG_LINE, fields=fields) if fields:
                    self.log(str(fields[0]))
                case stderr.Write(data=data):
                    if sink is None:
                        raise ProtocolError("the daemon sent data although none was expected")
                    sink(data)
                case stderr.Read(max_len=n):
                    if source is None:
                        raise ProtocolError("the daemon asked for data although there is none")
                    self.send(WireWriter().bytes(source(n)).take())
                case _:
                    pass

    def close(self) -> None:
        self.sock.close()


class RemoteStore:
    """A Nix store served by a daemon at `config.socket_path`.

    Args:
        config: a `DaemonStoreConfig`.
        settings: settings whose overridden values are sent with SetOptions.
        log: where the daemon's log lines go (default: stderr).
    """

    def __init__(self, config, settings=None, log: Log | None = None):
        self.config = config
        self.store_dir: StoreDir = config.store_dir
        self.root_dir, self.real_store_dir, self.state_dir, self.log_dir = local_fs_dirs(config)
        self.settings = settings
        self._log = log or _log_to_stderr
        self._lock = threading.RLock()
        self._conn: DaemonConnection | None = None

    # -- connection --------------------------------------------------------------------------

    def _connection(self) -> DaemonConnection:
        if self._conn is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                unix_socket.connect(sock, self.config.socket_path)
            except OSError as e:
                sock.close()
                raise StoreError(f"cannot connect to socket at '{self.config.socket_path}': "
                                 f"{e.strerror or e}") from e
            try:
                conn = DaemonConnection(sock, self._log, self.store_dir)
                self._set_options(conn)
            except BaseException:
                sock.close()
                raise
            self._conn = conn
        return self._conn

    def _set_options(self, conn: DaemonConnection) -> None:
        overrides = self.settings.overridden() if self.settings is not None else {}
        for name in ("show-trace", "experimental-features"):  # never forwarded by Nix's client
            overrides.pop(name, None)
        w = WireWriter().u64(Op.SetOptions)
        # keepFailed, keepGoing, tryFallback, verbosity, maxBuildJobs, maxSilentTime, useBuildHook,
        # verboseBuild (lvlError = show build output), logType, printBuildTrace, buildCores, useSubstitutes
        for value in (0, 0, 0, stderr.LVL_INFO, 1, 0, 1, 0, 0, 0, 0, 1):
            w.u64(value)
        if version.has_setting_overrides(conn.minor):
            w.u64(len(overrides))
            for name in sorted(overrides):
                w.string(name).string(str(overrides[name]))
        conn.send(w.take())
        conn.process_stderr()

    def _op(self, op: Op, request: WireWriter | None = None) -> DaemonConnection:
        """Send `op` with its request and wait for STDERR_LAST; the caller reads the reply (holding the lock)."""
        conn = self._connection()
        w = WireWriter().u64(op)
        if request is not None:
            w.raw(request.take())
        conn.send(w.take())
        conn.process_stderr()
        return conn

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> "RemoteStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def minor(self) -> int:
        with self._lock:
            return self._connection().minor

    # -- paths -------------------------------------------------------------------------------

    def print(self, path: StorePath) -> str:
        return self.store_dir.print(path)

    def real_path(self, path: StorePath) -> str:
        return self.to_real_path(self.store_dir.print(path))

    def to_real_path(self, logical: str) -> str:
        """`Store::toRealPath`: where this machine sees a logical store path (or sub-path)."""
        if self.real_store_dir == self.store_dir.path:
            return logical
        return self.real_store_dir + logical[len(self.store_dir.path):]

    def follow_links_to_store(self, path: str) -> str:
        """`followLinksToStore` on this machine's file system (a daemon store is a local FS store)."""
        from goalkeeper.store.local import LocalStore

        return LocalStore.follow_links_to_store(self, path)  # uses only store_dir and the file system

    def follow_links_to_store_path(self, path: str) -> StorePath:
        return self.store_dir.to_store_path(self.follow_links_to_store(path))[0]

    # -- queries -----------------------------------------------------------------------------

    def _path_request(self, path: StorePath) -> WireWriter:
        return WireWriter().string(self.print(path))

    def is_valid_path(self, path: StorePath) -> bool:
        with self._lock:
            return self._op(Op.IsValidPath, self._path_request(path)).reader.bool()

    def query_valid_paths(self, paths: Iterable[StorePath]) -> set[StorePath]:
        with self._lock:
            conn = self._connection()
            w = WireWriter()
            write_paths(w, self.store_dir, paths)
            if version.has_substitute_flag(conn.minor):
                w.bool(False)
            return set(read_paths(self._op(Op.QueryValidPaths, w).reader, self.store_dir))

    def query_path_info(self, path: StorePath) -> ValidPathInfo | None:
        with self._lock:
            conn = self._op(Op.QueryPathInfo, self._path_request(path))
            if version.has_valid_flag_in_path_info(conn.minor) and not conn.reader.bool():
                return None
            return read_path_info(conn.reader, self.store_dir, conn.minor, path)

    def require_path_info(self, path: StorePath) -> ValidPathInfo:
        info = self.query_path_info(path)
        if info is None:
            raise InvalidPath(f"path '{self.print(path)}' is not valid")
        return info

    def _path_set(self, op: Op, path: StorePath) -> set[StorePath]:
        with self._lock:
            return set(read_paths(self._op(op, self._path_request(path)).reader, self.store_dir))

    def query_referrers(self, path: StorePath) -> set[StorePath]:
        return self._path_set(Op.QueryReferrers, path)

    def query_valid_derivers(self, path: StorePath) -> set[StorePath]:
        return self._path_set(Op.QueryValidDerivers, path)

    def query_all_valid_paths(self) -> set[StorePath]:
        with self._lock:
            return set(read_paths(self._op(Op.QueryAllValidPaths).reader, self.store_dir))

    def query_partial_derivation_output_map(self, drv_path: StorePath) -> dict[str, StorePath | None]:
        with self._lock:
            r = self._op(Op.QueryDerivationOutputMap, self._path_request(drv_path)).reader
            out: dict[str, StorePath | None] = {}
            for _ in range(r.count("derivation outputs")):
                name = r.string(1 << 10)
                printed = r.path_string()
                out[name] = self.store_dir.parse(printed) if printed else None
            return out

    def query_derivation_output_map(self, drv_path: StorePath) -> dict[str, StorePath]:
        result = {}
        for name, path in self.query_partial_derivation_output_map(drv_path).items():
            if path is None:
                raise StoreError(f"output '{name}' of derivation '{self.print(drv_path)}' has no known path")
            result[name] = path
        return result

    def query_path_from_hash_part(self, hash_part: str) -> StorePath | None:
        with self._lock:
            printed = self._op(Op.QueryPathFromHashPart, WireWriter().string(hash_part)).reader.path_string()
            return self.store_dir.parse(printed) if printed else None

    def query_missing(self, targets: Iterable[DerivedPath]):
        """(willBuild, willSubstitute, unknown, downloadSize, narSize)."""
        with self._lock:
            conn = self._connection()
            w = WireWriter()
            write_derived_paths(w, self.store_dir, targets, conn.minor)
            r = self._op(Op.QueryMissing, w).reader
            sets = [set(read_paths(r, self.store_dir)) for _ in range(3)]
            return (*sets, r.u64(), r.u64())

    def compute_fs_closure(self, paths, flip_direction: bool = False, include_outputs: bool = False,
                           include_derivers: bool = False) -> set[StorePath]:
        """`computeFSClosure` through queries."""
        return compute_fs_closure(self, paths, flip_direction, include_outputs, include_derivers)

    def topo_sort_paths(self, paths: Iterable[StorePath]) -> list[StorePath]:
        from goalkeeper.store.topo_sort import topo_sort
        from goalkeeper.store.valid_paths import ReferenceCycle

        def children(path: StorePath):
            info = self.query_path_info(path)
            return info.references if info is not None else ()

        return topo_sort(set(paths), children, lambda p, parent: ReferenceCycle(
            f"cycle detected in the references of '{self.print(p)}' from '{self.print(parent)}'"))

    def read_derivation(self, drv_path: StorePath):
        """Read the `.drv` from the store directory, as Nix's daemon client does."""
        from goalkeeper.store.derivation import Derivation

        printed = self.print(drv_path)
        try:
            with open(self.real_path(drv_path), "rb") as f:
                text = f.read()
        except OSError as err:
            raise StoreError(f"cannot read derivation '{printed}': {err.strerror}") from err
        return Derivation.parse(text, drv_path.derivation_name(), self.store_dir, None, printed)

    # -- adding ------------------------------------------------------------------------------

    def _add_ca(self, name: str, method: str, algo: str, references: Iterable[StorePath], repair: bool,
                chunks: Iterable[bytes]) -> StorePath:
        with self._lock:
            conn = self._connection()
            if not version.has_ca_add_to_store(conn.minor):
                raise ProtocolError("adding to a daemon older than protocol 1.25 is not supported")
            w = WireWriter().u64(Op.AddToStore).string(name).string(render_method(method, algo))
            write_paths(w, self.store_dir, references)
            w.bool(repair)
            conn.send(w.take())
            write_framed(conn.send, chunks)
            conn.process_stderr()
            return read_path_info(conn.reader, self.store_dir, conn.minor).path

    def add_to_store(self, name: str, src_path: str, method: str = "recursive", algo: str = "sha256",
                     references: Iterable[StorePath] = (), repair: bool = False) -> StorePath:
        """`addToStore` of a file or tree (AddToStore with the NAR or the file's bytes)."""
        if not os.path.lexists(src_path):
            raise StoreError(f"getting status of '{os.path.abspath(src_path)}': No such file or directory")
        if method == "flat":
            chunks: Iterable[bytes] = _file_chunks(src_path)
        else:
            chunks = (bytes(c) for c in nar.dump_path(src_path))
        return self._add_ca(name, method, algo, references, repair, chunks)

    def add_text_to_store(self, name: str, text: bytes | str, references: Iterable[StorePath] = (),
                          repair: bool = False) -> StorePath:
        data = text.encode() if isinstance(text, str) else text
        return self._add_ca(name, "text", "sha256", references, repair, [data])

    def add_to_store_nar(self, info: ValidPathInfo, nar_chunks: Iterable[bytes], *, repair: bool = False,
                         dont_check_sigs: bool = False) -> None:
        with self._lock:
            conn = self._connection()
            if not version.has_framed_nar(conn.minor):
                raise ProtocolError("AddToStoreNar to a daemon older than protocol 1.23 is not supported")
            w = WireWriter().u64(Op.AddToStoreNar)
            write_path_info(w, self.store_dir, info, conn.minor, include_path=True)
            w.bool(repair).bool(dont_check_sigs)
            conn.send(w.take())
            write_framed(conn.send, nar_chunks)
            conn.process_stderr()

    def add_temp_root(self, path: StorePath) -> None:
        with self._lock:
            self._op(Op.AddTempRoot, self._path_request(path)).reader.u64()

    def add_indirect_root(self, link: str) -> None:
        with self._lock:
            self._op(Op.AddIndirectRoot, WireWriter().string(link)).reader.u64()

    def nar_from_path(self, path: StorePath, write: Callable[[bytes], object]) -> int:
        """The path's NAR from the daemon (it follows STDERR_LAST unframed); returns its size."""
        with self._lock:
            conn = self._op(Op.NarFromPath, self._path_request(path))
            return nar.copy(_ReaderFile(conn.reader), write)

    def build_paths(self, targets: Iterable[DerivedPath], build_mode: int = 0) -> None:
        with self._lock:
            conn = self._connection()
            w = WireWriter()
            write_derived_paths(w, self.store_dir, targets, conn.minor)
            if version.has_build_mode(conn.minor):
                w.u64(build_mode)
            self._op(Op.BuildPaths, w).reader.u64()

    def ensure_path(self, path: StorePath) -> None:
        """`ensurePath`: make `path` valid (substituting or building it) or fail."""
        with self._lock:
            self._op(Op.EnsurePath, self._path_request(path)).reader.u64()

    def build_derivation(self, drv_path: StorePath, drv, build_mode: int = 0) -> WireBuildResult:
        """`buildDerivation`: build the BasicDerivation `drv` as `drv_path`; the daemon's result."""
        with self._lock:
            conn = self._connection()
            w = WireWriter().string(self.store_dir.print(drv_path))
            write_basic_derivation(w, self.store_dir, drv)
            w.u64(build_mode)
            return read_build_result_body(self._op(Op.BuildDerivation, w).reader, conn.minor)

    def find_roots(self) -> list[tuple[str, StorePath]]:
        with self._lock:
            r = self._op(Op.FindRoots).reader
            return [(r.string(1 << 12), self.store_dir.parse(r.path_string())) for _ in range(r.count("roots"))]


class _ReaderFile:
    def __init__(self, reader: WireReader):
        self._reader = reader

    def read(self, n: int) -> bytes:
        return self._reader.read_exact(n)


def local_fs_dirs(config) -> tuple[str, str, str, str]:
    """(root, real store dir, state dir, log dir) of a daemon store URI (`LocalFSStoreConfig`):
    under `root=R` the files are in `R/nix/store`, `R/nix/var/nix`, `R/nix/var/log/nix`."""
    query = getattr(config, "uri", "").partition("?")[2]
    params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    env = Environment.from_environ()
    root = os.path.normpath(params["root"]) if params.get("root") else ""
    real = params.get("real") or (root + "/nix/store" if root else config.store_dir.path)
    state = params.get("state") or (root + DEFAULT_STATE_DIR if root else env.state_dir)
    log = params.get("log") or (root + DEFAULT_LOG_DIR if root else env.log_dir)
    return root, os.path.normpath(real), os.path.normpath(state), os.path.normpath(log)


def _file_chunks(path: str) -> Iterable[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk


def _log_to_stderr(text: str) -> None:
    import sys

    sys.stderr.write(text + "\n")
    sys.stderr.flush()


__all__ = ["RemoteStore", "DaemonConnection", "DerivedPath", "read_derived_paths"]
