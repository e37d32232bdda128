"""Wire primitives (spec §7.1): u64 little-endian integers and padded byte strings.

Codecs here never touch a socket. A `WireReader` pulls bytes from any
`read(n) -> bytes` callable (a socket's, a `BytesIO`'s, a scripted transcript's)
and every read has a maximum: a peer announcing a 2^60-byte string gets a
`LimitExceeded`, never an allocation. A `WireWriter` appends to a buffer that
the owner hands to its sink in one piece.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

from .errors import BadWireData, EndOfStream, LimitExceeded

_U64 = struct.Struct("<Q")

# Limits for what a peer may announce. Store paths are short (Nix caps names at 211
# characters); other strings (settings, log lines, error messages, .drv text sent by
# the obsolete AddTextToStore) get more room.
MAX_PATH_LEN = 4096
MAX_STRING_LEN = 64 << 20
MAX_COLLECTION_LEN = 1 << 22  # items in one set, list or map


def _pad_len(n: int) -> int:
    return (8 - n % 8) % 8


class WireReader:
    """Decodes primitives from `read`, which returns up to n bytes (b"" at end of stream).

    Attributes:
        position: how many bytes were consumed (for messages).
    """

    def __init__(self, read: Callable[[int], bytes]):
        self._read = read
        self.position = 0

    def read_exact(self, n: int) -> bytes:
        """Exactly `n` bytes, or EndOfStream."""
        if n == 0:
            return b""
        chunks = []
        left = n
        while left:
            chunk = self._read(left)
            if not chunk:
                raise EndOfStream(f"unexpected end of stream after {self.position} bytes")
            chunks.append(chunk)
            left -= len(chunk)
            self.position += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def u64(self) -> int:
        return _U64.unpack(self.read_exact(8))[0]

    def bool(self) -> bool:
        # Nix reads a bool as `readInt() != 0`; we accept the same.
        return self.u64() != 0

    def bytes(self, limit: int = MAX_STRING_LEN, what: str = "string") -> bytes:
        """A length-prefixed, zero-padded byte string of at most `limit` bytes."""
        n = self.u64()
        if n > limit:
            raise LimitExceeded(what, n, limit)
        data = self.read_exact(n)
        pad = self.read_exact(_pad_len(n))
        if pad.strip(b"\0"):
            raise BadWireData(f"non-zero padding after a {what} at byte {self.position}")
        return data

    def string(self, limit: int = MAX_STRING_LEN, what: str = "string") -> str:
        """A wire string as text; bytes that are not UTF-8 survive as surrogate escapes."""
        return self.bytes(limit, what).decode("utf-8", "surrogateescape")

    def path_string(self) -> str:
        return self.string(MAX_PATH_LEN, "store path")

    def count(self, what: str, limit: int = MAX_COLLECTION_LEN) -> int:
        n = self.u64()
        if n > limit:
            raise LimitExceeded(what, n, limit)
        return n

    def strings(self, limit: int = MAX_STRING_LEN, what: str = "string") -> list[str]:
        """A string list or set: `u64 count` then the strings."""
        return [self.string(limit, what) for _ in range(self.count(f"list of {what}s"))]

    def string_map(self, what: str = "map") -> dict[str, str]:
        out: dict[str, str] = {}
        for _ in range(self.count(what)):
            key = self.string()
            out[key] = self.string()
        return out


class WireWriter:
    """Encodes primitives into a bytearray; `take()` hands the bytes over and resets."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def u64(self, n: int) -> "WireWriter":
        self.buffer += _U64.pack(n)
        return self

    def bool(self, b: bool) -> "WireWriter":
        return self.u64(1 if b else 0)

    def bytes(self, data: bytes | bytearray | memoryview) -> "WireWriter":
        n = len(data)
        self.buffer += _U64.pack(n)
        self.buffer += data
        self.buffer += b"\0" * _pad_len(n)
        return self

    def string(self, text: str) -> "WireWriter":
        return self.bytes(text.encode("utf-8", "surrogateescape"))

    def strings(self, items: Iterable[str]) -> "WireWriter":
        items = list(items)
        self.u64(len(items))
        for item in items:
            self.string(item)
        return self

    def string_set(self, items: Iterable[str]) -> "WireWriter":
        """A set as Nix's std::set sends it: sorted by bytes."""
        return self.strings(sorted(items, key=lambda s: s.encode("utf-8", "surrogateescape")))

    def raw(self, data: bytes | bytearray | memoryview) -> "WireWriter":
        self.buffer += data
        return self

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def __len__(self) -> int:
        return len(self.buffer)


def encode(*parts: int | str | bytes) -> bytes:
    """A small helper for tests and fixed messages: ints as u64, str/bytes as wire strings."""
    w = WireWriter()
    for part in parts:
        if isinstance(part, bool) or isinstance(part, int):
            w.u64(int(part))
        elif isinstance(part, str):
            w.string(part)
        else:
            w.bytes(part)
    return w.take()
