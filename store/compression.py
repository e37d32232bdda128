"""Streaming (de)compression of NARs in binary caches (libutil/compression.cc).

A binary cache names its compression in each narinfo (`Compression: xz`); the
NAR file then ends in the matching extension. Everything streams: callers feed
chunks and get chunks back, so neither a compressed file nor a NAR is ever
held whole in memory.

Methods: `none`, `xz` (Nix's default), `bzip2`, `zstd` (via the `zstandard`
package), and `gzip`, which Nix reads through libarchive. A narinfo without a
`Compression` line means `bzip2` (Nix's historical default); that default is
the narinfo parser's business, not this module's.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from typing import Iterable, Iterator, Protocol

from .errors import StoreError

# `nar/<filehash>.nar<ext>` (binary-cache-store.cc); none and gzip get no extension.
EXTENSIONS = {"none": "", "xz": ".xz", "bzip2": ".bz2", "zstd": ".zst", "lzip": ".lzip", "lz4": ".lz4",
              "br": ".br", "gzip": ""}
METHODS = ("none", "xz", "bzip2", "zstd", "gzip")


class CompressionError(StoreError):
    """Compressed data that does not decompress, or an unsupported method."""


class Codec(Protocol):
    def feed(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


def _check(method: str) -> str:
    if method == "":
        return "none"
    if method not in METHODS:
        raise CompressionError(f"unknown compression method '{method}'")
    return method


class _Identity:
    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class _StdlibDecompressor:
    """lzma/bz2/zlib decompressors: they end at their stream's end and keep what follows."""

    def __init__(self, method: str, decompressor):
        self.method = method
        self._d = decompressor

    def feed(self, data: bytes) -> bytes:
        if self._d.eof:
            if data:
                raise CompressionError(f"trailing data after the end of the {self.method} stream")
            return b""
        try:
            out = self._d.decompress(data)
        except (lzma.LZMAError, OSError, EOFError, zlib.error) as err:
            raise CompressionError(f"error while decompressing {self.method} data: {err}") from err
        if self._d.eof and self._d.unused_data:
            raise CompressionError(f"trailing data after the end of the {self.method} stream")
        return out

    def finish(self) -> bytes:
        if not self._d.eof:
            raise CompressionError(f"truncated {self.method} data")
        return b""


class _ZstdDecompressor:
    def __init__(self):
        import zstandard

        self._error = zstandard.ZstdError
        self._d = zstandard.ZstdDecompressor().decompressobj()
        self._done = False

    def feed(self, data: bytes) -> bytes:
        try:
            out = self._d.decompress(data) if data else b""
        except self._error as err:
            raise CompressionError(f"error while decompressing zstd data: {err}") from err
        self._done = self._d.eof
        if self._done and self._d.unused_data:
            raise CompressionError("trailing data after the end of the zstd stream")
        return out

    def finish(self) -> bytes:
        if not self._done:
            raise CompressionError("truncated zstd data")
        return b""


class _Compressor:
    def __init__(self, c):
        self._c = c

    def feed(self, data: bytes) -> bytes:
        return self._c.compress(data)

    def finish(self) -> bytes:
        return self._c.flush()


def make_decompressor(method: str) -> Codec:
    """`makeDecompressionSink`: a codec fed compressed chunks, returning plain ones."""
    method = _check(method)
    if method == "none":
        return _Identity()
    if method == "xz":
        return _StdlibDecompressor("xz", lzma.LZMADecompressor(format=lzma.FORMAT_XZ))
    if method == "bzip2":
        return _StdlibDecompressor("bzip2", bz2.BZ2Decompressor())
    if method == "gzip":
        return _StdlibDecompressor("gzip", zlib.decompressobj(wbits=16 + zlib.MAX_WBITS))
    return _ZstdDecompressor()


def make_compressor(method: str, level: int | None = None) -> Codec:
    """`makeCompressionSink`: a codec fed plain chunks, returning compressed ones."""
    method = _check(method)
    if method == "none":
        return _Identity()
    if method == "xz":
        # CHECK_CRC64 is what liblzma's easy encoder (and so Nix) writes.
        return _Compressor(lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                                               preset=6 if level is None else level))
    if method == "bzip2":
        return _Compressor(bz2.BZ2Compressor(9 if level is None else level))
    if method == "gzip":
        return _Compressor(zlib.compressobj(6 if level is None else level, zlib.DEFLATED, 16 + zlib.MAX_WBITS))
    import zstandard

    return _Compressor(zstandard.ZstdCompressor(level=3 if level is None else level).compressobj())


def stream(codec: Codec, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Run `chunks` through `codec`, yielding non-empty output pieces, then the codec's tail."""
    for chunk in chunks:
        out = codec.feed(chunk)
        if out:
            yield out
    tail = codec.finish()
    if tail:
        yield tail


def compress(method: str, data: bytes) -> bytes:
    return b"".join(stream(make_compressor(method), [data]))


def decompress(method: str, data: bytes) -> bytes:
    return b"".join(stream(make_decompressor(method), [data]))
