"""Binary caches in Nix's layout, over `file://` and `http(s)://` (libstore/binary-cache-store.cc).

    cache = BinaryCache.open("file:///srv/cache?priority=30")
    cache.init()                                  # nix-cache-info: StoreDir, WantMassQuery, Priority
    narinfo = cache.query_nar_info(path)          # <hashPart>.narinfo, or None
    reader = cache.nar_reader(narinfo)            # the NAR, decompressed and verified as it streams
    nar.restore_path(dest, reader); reader.finish()

A transport moves files: `FileTransport` for a directory, `HttpTransport` for a
server (one keep-alive connection per thread, so parallel narinfo queries run
on parallel connections). Failures to reach a cache are `TransferError`s with
curl's wording, as Nix's messages have it ("unable to download '…': Couldn't
resolve host name (6)"); a file the cache lacks is None, or
`NoSuchBinaryCacheFile` where the caller needs it.

Writing (`add_to_store`) is for `file://` caches, as `nix copy --to file://…`.
"""

from __future__ import annotations

import functools
import http.client
import itertools
import json
import os
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from . import compression, narinfo as narinfo_mod
from .errors import StoreError
from .hashes import Base, Hash, new_hasher
from .narinfo import NarInfo
from .path_info import ValidPathInfo
from .paths import StoreDir, StorePath
from .signatures import SecretKey

CACHE_INFO_FILE = "nix-cache-info"
CHUNK_SIZE = 1 << 16
_temp_counter = itertools.count()


class TransferError(StoreError):
    """The cache could not be reached or answered with an error (not "file not found")."""


class NoSuchBinaryCacheFile(StoreError):
    """A file the cache should have is missing (Nix turns this into SubstituteGone)."""


class CorruptNar(StoreError):
    """A downloaded NAR that does not match its narinfo (hash, size, compression)."""


# -- transports -------------------------------------------------------------------------------


class FileTransport:
    """A binary cache in a local directory (`file:///dir`)."""

    def __init__(self, root: str):
        self.root = root

    def _full(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def get(self, rel: str) -> bytes | None:
        try:
            with open(self._full(rel), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise TransferError(f"reading file '{self._full(rel)}': {err.strerror}") from err

    def exists(self, rel: str) -> bool:
        return os.path.exists(self._full(rel))

    def stream(self, rel: str) -> Iterator[bytes]:
        """The file's bytes in chunks; NoSuchBinaryCacheFile if it is missing (raised at once)."""
        try:
            f = open(self._full(rel), "rb")
        except FileNotFoundError:
            raise NoSuchBinaryCacheFile(f"file '{rel}' does not exist in binary cache") from None
        except OSError as err:
            raise TransferError(f"opening file '{self._full(rel)}': {err.strerror}") from err
        return _file_chunks(f)

    def put(self, rel: str, chunks: Iterable[bytes]) -> None:
        """Write atomically (temp file, then rename): readers never see half a file."""
        full = self._full(rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        temp = f"{full}.tmp-{os.getpid()}-{next(_temp_counter)}"
        try:
            with open(temp, "xb") as f:
                for chunk in chunks:
                    f.write(chunk)
            os.rename(temp, full)
        except BaseException:
            if os.path.exists(temp):
                os.unlink(temp)
            raise


def _file_chunks(f) -> Iterator[bytes]:
    with f:
        while chunk := f.read(CHUNK_SIZE):
            yield chunk


def _connect_nodelay(conn: http.client.HTTPConnection) -> None:
    """Connect with TCP_NODELAY, as curl does: small requests must not wait for delayed ACKs."""
    type(conn).connect(conn)
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# curl's texts and codes for what Python reports, so messages read as Nix's do
def curl_reason(err: BaseException) -> str:
    """curl's wording (and code) for a failed transfer, as Nix's messages quote it."""
    if isinstance(err, socket.gaierror):
        return "Couldn't resolve host name (6)"
    if isinstance(err, ConnectionRefusedError):
        return "Couldn't connect to server (7)"
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "Timeout was reached (28)"
    if isinstance(err, ssl.SSLError):
        return f"SSL connect error (35): {err}"
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror} (7)"
    return f"{err} (56)"  # CURLE_RECV_ERROR


class HttpTransport:
    """A binary cache on a web server; one persistent connection per thread.

    Connecting fails fast (no retries, unlike Nix's five tries with back-off): an
    unreachable cache should cost one resolver or connect error, not seconds.
    """

    def __init__(self, base_url: str, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        parsed = urllib.parse.urlsplit(self.base_url)
        self.scheme = parsed.scheme
        self.host = parsed.hostname or ""
        self.port = parsed.port
        self.prefix = parsed.path
        self.timeout = timeout
        self._local = threading.local()
        self._ssl = ssl.create_default_context() if self.scheme == "https" else None

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.scheme == "https":
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._ssl)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            conn.connect = functools.partial(_connect_nodelay, conn)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def url(self, rel: str) -> str:
        return f"{self.base_url}/{rel}"

    def _request(self, method: str, rel: str) -> http.client.HTTPResponse:
        target = f"{self.prefix}/{urllib.parse.quote(rel, safe='/!:@')}"
        for attempt in (0, 1):
            reused = getattr(self._local, "conn", None) is not None
            conn = self._connection()
            try:
                conn.request(method, target, headers={"Accept-Encoding": "identity"})
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as err:
                self._drop_connection()
                if reused and attempt == 0:
                    continue  # the server closed an idle keep-alive connection: once more, afresh
                raise TransferError(f"unable to download '{self.url(rel)}': {curl_reason(err)}") from err
            except (OSError, http.client.HTTPException) as err:
                self._drop_connection()
                raise TransferError(f"unable to download '{self.url(rel)}': {curl_reason(err)}") from err
        raise AssertionError("unreachable")

    def _status_error(self, rel: str, response: http.client.HTTPResponse) -> TransferError:
        response.read()
        return TransferError(f"unable to download '{self.url(rel)}': HTTP error {response.status}")

    def get(self, rel: str) -> bytes | None:
        response = self._request("GET", rel)
        if response.status in (403, 404):  # Nix: NotFound and Forbidden both mean "absent"
            response.read()
            return None
        if response.status != 200:
            raise self._status_error(rel, response)
        try:
            return response.read()
        except (OSError, http.client.HTTPException) as err:
            self._drop_connection()
            raise TransferError(f"unable to download '{self.url(rel)}': {curl_reason(err)}") from err

    def exists(self, rel: str) -> bool:
        response = self._request("HEAD", rel)
        response.read()
        if response.status in (403, 404):
            return False
        if response.status != 200:
            raise TransferError(f"unable to download '{self.url(rel)}': HTTP error {response.status}")
        return True

    def stream(self, rel: str) -> Iterator[bytes]:
        response = self._request("GET", rel)
        if response.status in (403, 404):
            response.read()
            raise NoSuchBinaryCacheFile(f"file '{rel}' does not exist in binary cache '{self.base_url}'")
        if response.status != 200:
            raise self._status_error(rel, response)
        return self._chunks(rel, response)

    def _chunks(self, rel: str, response: http.client.HTTPResponse) -> Iterator[bytes]:
        complete = False
        try:
            while chunk := response.read(CHUNK_SIZE):
                yield chunk
            complete = True
        except (OSError, http.client.HTTPException) as err:
            raise TransferError(f"unable to download '{self.url(rel)}': {curl_reason(err)}") from err
        finally:
            if not complete:  # abandoned mid-body: the connection can't be reused
                self._drop_connection()

    def put(self, rel: str, chunks: Iterable[bytes]) -> None:
        raise StoreError(f"uploading to '{self.base_url}' is not supported; use a file:// cache")


# -- the cache ---------------------------------------------------------------------------------


@dataclass
class CacheParams:
    """Store URI parameters (`?priority=…&trusted=1&compression=zstd&secret-key=…`)."""

    priority: int | None = None
    want_mass_query: bool | None = None
    trusted: bool = False
    compression: str = "xz"
    secret_key: str | None = None
    store_dir: str = "/nix/store"
    extra: dict[str, str] = field(default_factory=dict)


def _parse_bool(name: str, value: str) -> bool:
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise StoreError(f"invalid value '{value}' for store parameter '{name}'")


def parse_cache_uri(uri: str) -> tuple[str, CacheParams]:
    """Split `scheme://where?params` into the base URI and its parameters."""
    base, _, query = uri.partition("?")
    params = CacheParams()
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name == "priority":
            try:
                params.priority = int(value)
            except ValueError:
                raise StoreError(f"invalid value '{value}' for store parameter 'priority'") from None
        elif name == "want-mass-query":
            params.want_mass_query = _parse_bool(name, value)
        elif name == "trusted":
            params.trusted = _parse_bool(name, value)
        elif name == "compression":
            params.compression = value
        elif name == "secret-key":
            params.secret_key = value
        elif name == "store":
            params.store_dir = value
        else:
            params.extra[name] = value
    return base, params


class BinaryCache:
    """One binary cache: reading narinfos, NARs and realisations; writing to `file://`.

    Attributes:
        uri: the cache's URI without parameters (what messages name).
        store_dir: the store dir its paths belong to.
        priority, want_mass_query: from nix-cache-info unless the URI sets them.
    """

    def __init__(self, uri: str, transport, params: CacheParams | None = None):
        self.uri = uri
        self.transport = transport
        self.params = params or CacheParams()
        self.store_dir = StoreDir(self.params.store_dir)
        # StoreConfig's `priority` defaults to 0 (cache.nixos.org says 40 in its nix-cache-info)
        self.priority = self.params.priority if self.params.priority is not None else 0
        self.want_mass_query = bool(self.params.want_mass_query)
        self.is_trusted = self.params.trusted

    @classmethod
    def open(cls, uri: str, *, timeout: float = 30.0) -> "BinaryCache":
        """A cache for a `file://` or `http(s)://` URI; nothing is read until `init`."""
        base, params = parse_cache_uri(uri)
        scheme = base.partition("://")[0]
        if scheme == "file":
            transport = FileTransport(urllib.parse.unquote(base[len("file://"):]) or "/")
        elif scheme in ("http", "https"):
            transport = HttpTransport(base, timeout=timeout)
        else:
            raise StoreError(f"don't know how to open Nix store '{uri}'")
        return cls(base, transport, params)

    def init(self, *, create: bool = False) -> None:
        """`BinaryCacheStore::init`: read nix-cache-info (written when `create` and absent).

        Raises:
            TransferError: the cache cannot be reached.
            StoreError: it is for another store dir.
        """
        data = self.transport.get(CACHE_INFO_FILE)
        if data is None:
            if create:
                self.transport.put(CACHE_INFO_FILE, [f"StoreDir: {self.store_dir.path}\n".encode()])
            return
        self.apply_cache_info(data.decode(errors="replace"))

    def apply_cache_info(self, text: str) -> None:
        for line in text.split("\n"):
            name, colon, value = line.partition(":")
            if not colon:
                continue
            value = value.strip()
            if name == "StoreDir":
                if value != self.store_dir.path:
                    raise StoreError(f"binary cache '{self.uri}' is for Nix stores with prefix '{value}', "
                                     f"not '{self.store_dir.path}'")
            elif name == "WantMassQuery" and self.params.want_mass_query is None:
                self.want_mass_query = value == "1"
            elif name == "Priority" and self.params.priority is None:
                try:
                    self.priority = int(value)
                except ValueError:
                    pass  # Nix would refuse the setting; an odd value should not lose the whole cache

    # -- reading ------------------------------------------------------------------------------

    @staticmethod
    def narinfo_file(path: StorePath) -> str:
        return f"{path.hash_part}.narinfo"

    def query_nar_info(self, path: StorePath) -> NarInfo | None:
        """`queryPathInfoUncached`: the narinfo for `path`'s hash part, or None.

        A narinfo for a different path with the same hash part counts as absent
        (Nix's goodStorePath check).
        """
        rel = self.narinfo_file(path)
        data = self.transport.get(rel)
        if data is None:
            return None
        info = narinfo_mod.parse(data, self.store_dir, self.transport_url(rel))
        return info if info.path == path else None

    def transport_url(self, rel: str) -> str:
        return f"{self.uri}/{rel}"

    def nar_reader(self, narinfo: NarInfo) -> "VerifyingNarReader":
        """The NAR of `narinfo`, decompressed; `finish()` after reading it checks every hash and size.

        Raises:
            NoSuchBinaryCacheFile: the NAR file is missing.
        """
        chunks = self.transport.stream(narinfo.url)
        return VerifyingNarReader(narinfo, chunks, self.store_dir, self.transport_url(narinfo.url))

    def query_realisation(self, drv_output_id: str) -> dict | None:
        """`realisations/<id>.doi` as JSON (`id`, `outPath`, `signatures`, `dependentRealisations`)."""
        rel = f"realisations/{drv_output_id}.doi"
        data = self.transport.get(rel)
        if data is None:
            return None
        try:
            doc = json.loads(data)
        except ValueError as err:
            raise StoreError(f"realisation file '{self.transport_url(rel)}' is not valid JSON: {err}") from err
        if not isinstance(doc, dict) or "outPath" not in doc or "id" not in doc:
            raise StoreError(f"realisation file '{self.transport_url(rel)}' lacks 'id' or 'outPath'")
        return doc

    # -- writing ------------------------------------------------------------------------------

    def has_path(self, path: StorePath) -> bool:
        return self.transport.exists(self.narinfo_file(path))

    def add_to_store(self, info: ValidPathInfo, nar_chunks: Iterable[bytes], *,
                     secret_key: SecretKey | None = None) -> NarInfo:
        """`BinaryCacheStore::addToStoreCommon`: compress, name by file hash, write NAR then narinfo.

        The NAR is checked against `info` as it is written, so a corrupt source path
        never reaches the cache ("refusing to copy corrupted path").
        """
        if not isinstance(self.transport, FileTransport):
            raise StoreError(f"writing to binary cache '{self.uri}' is not supported; use a file:// cache")
        method = self.params.compression
        codec = compression.make_compressor(method)
        nar_hasher, file_hasher = new_hasher("sha256"), new_hasher("sha256")
        sizes = [0, 0]
        temp_rel = f"nar/.tmp-{os.getpid()}-{next(_temp_counter)}"

        def compressed() -> Iterator[bytes]:
            for piece in compression.stream(codec, _tee(nar_chunks, nar_hasher, sizes, 0)):
                file_hasher.update(piece)
                sizes[1] += len(piece)
                yield piece

        self.transport.put(temp_rel, compressed())
        temp_full = self.transport._full(temp_rel)
        nar_hash = Hash("sha256", nar_hasher.digest())
        if nar_hash != info.nar_hash or sizes[0] != info.nar_size:
            os.unlink(temp_full)
            raise CorruptNar(f"refusing to copy corrupted path '{self.store_dir.print(info.path)}' to binary cache")
        file_hash = Hash("sha256", file_hasher.digest())
        url = f"nar/{file_hash.to_string(Base.BASE32, False)}.nar{compression.EXTENSIONS[method]}"
        final = self.transport._full(url)
        if os.path.exists(final):
            os.unlink(temp_full)
        else:
            os.rename(temp_full, final)
        info = info.replace(registration_time=0, ultimate=False)
        if secret_key is not None:
            from .signatures import sign_path_info

            info = sign_path_info(info, self.store_dir, secret_key)
        result = NarInfo(info=info, url=url, compression=method, file_hash=file_hash, file_size=sizes[1])
        self.transport.put(self.narinfo_file(info.path), [narinfo_mod.render(result, self.store_dir).encode()])
        return result

    def upsert_realisation(self, doc: dict) -> None:
        rel = f"realisations/{doc['id']}.doi"
        self.transport.put(rel, [json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()])


def _tee(chunks: Iterable[bytes], hasher, sizes: list[int], index: int) -> Iterator[bytes]:
    for chunk in chunks:
        hasher.update(chunk)
        sizes[index] += len(chunk)
        yield chunk


class VerifyingNarReader:
    """A binary reader of a NAR download: decompresses, hashes and counts as it goes.

    `read(n)` serves `nar.restore_path`; `finish()` drains the rest and raises
    CorruptNar unless FileHash/FileSize (when given) and NarHash/NarSize all match.
    """

    def __init__(self, narinfo: NarInfo, chunks: Iterator[bytes], store_dir: StoreDir, url: str):
        self.narinfo = narinfo
        self._chunks = chunks
        self._printed = store_dir.print(narinfo.path)
        self._url = url
        self._codec = compression.make_decompressor(narinfo.compression)
        algo = narinfo.info.nar_hash.algo
        self._nar_hasher = new_hasher(algo)
        self._file_hasher = new_hasher(narinfo.file_hash.algo) if narinfo.file_hash is not None else None
        self.nar_size = 0
        self.file_size = 0
        self._buf = b""
        self._pos = 0
        self._eof = False

    def _fill(self) -> bool:
        """Decompress more into the buffer; False at the end of the stream."""
        while not self._eof:
            chunk = next(self._chunks, None)
            try:
                if chunk is None:
                    self._eof = True
                    out = self._codec.finish()
                else:
                    self.file_size += len(chunk)
                    if self._file_hasher is not None:
                        self._file_hasher.update(chunk)
                    out = self._codec.feed(chunk)
            except compression.CompressionError as err:
                raise CorruptNar(f"NAR '{self._url}' for '{self._printed}' is corrupt: {err}") from err
            if out:
                self._nar_hasher.update(out)
                self.nar_size += len(out)
                self._buf = out
                self._pos = 0
                return True
        return False

    def read(self, n: int) -> bytes:
        if self._pos >= len(self._buf) and not self._fill():
            return b""
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def finish(self) -> None:
        """Check everything once the NAR was read; the stream must hold nothing after it."""
        leftover = len(self._buf) - self._pos
        while self._fill():
            leftover += len(self._buf)
        self._pos = len(self._buf)
        info = self.narinfo.info
        if self.narinfo.file_hash is not None:
            got = Hash(self.narinfo.file_hash.algo, self._file_hasher.digest())
            if got != self.narinfo.file_hash:
                raise CorruptNar(f"file hash mismatch in '{self._url}' for '{self._printed}';\n"
                                 f"  specified: {self.narinfo.file_hash.to_string(Base.BASE32, True)}\n"
                                 f"  got:       {got.to_string(Base.BASE32, True)}")
        if self.narinfo.file_size and self.file_size != self.narinfo.file_size:
            raise CorruptNar(f"file size mismatch in '{self._url}' for '{self._printed}';\n"
                             f"  specified: {self.narinfo.file_size}\n  got:       {self.file_size}")
        got_hash = Hash(info.nar_hash.algo, self._nar_hasher.digest())
        if got_hash != info.nar_hash:
            raise CorruptNar(f"hash mismatch importing path '{self._printed}';\n"
                             f"  specified: {info.nar_hash.to_string(Base.BASE32, True)}\n"
                             f"  got:       {got_hash.to_string(Base.BASE32, True)}")
        if self.nar_size != info.nar_size:
            raise CorruptNar(f"size mismatch importing path '{self._printed}';\n"
                             f"  specified: {info.nar_size}\n  got:       {self.nar_size}")
        if leftover:
            raise CorruptNar(f"NAR '{self._url}' for '{self._printed}' has {leftover} bytes after the archive")
