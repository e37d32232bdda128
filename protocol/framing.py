"""Framed streams (protocol ≥ 23, spec §7.1): `u64 len` + `len` raw bytes (no padding), ending with `u64 0`.

AddToStore, AddToStoreNar, AddMultipleToStore and AddBuildLog carry their
data this way, so the receiver need not parse the NAR to find its end.
`FramedSource` is a file-like reader over the frames (what `nar.parse` and
`restore_path` read from); `write_framed` cuts bytes into frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .errors import BadWireData, LimitExceeded
from .wire import WireReader

MAX_FRAME_LEN = 16 << 20  # Nix sends frames of at most 32 KiB; anything huge is a broken peer
FRAME_LEN = 32 << 10  # what we send per frame, as Nix's FramedSink does


class FramedSource:
    """Reads the payload of one framed stream; `read(n)` returns b"" once the `u64 0` was seen.

    `drain()` consumes whatever the reader did not, so the connection stays in sync
    when a handler stops early (Nix's FramedSource destructor does the same).
    """

    def __init__(self, reader: WireReader):
        self._reader = reader
        self._pending = b""
        self._pos = 0
        self.eof = False

    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._pending):
            if self.eof:
                return b""
            size = self._reader.u64()
            if size == 0:
                self.eof = True
                return b""
            if size > MAX_FRAME_LEN:
                raise LimitExceeded("frame", size, MAX_FRAME_LEN)
            self._pending = self._reader.read_exact(size)
            self._pos = 0
        end = len(self._pending) if n is None or n < 0 else self._pos + n
        out = self._pending[self._pos : end]
        self._pos += len(out)
        return out

    def read_all(self, limit: int) -> bytes:
        """The whole remaining payload, at most `limit` bytes."""
        chunks = []
        total = 0
        while chunk := self.read(1 << 20):
            total += len(chunk)
            if total > limit:
                raise LimitExceeded("framed data", total, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


class ExactSource:
    """A reader that ends after exactly `size` bytes of the underlying stream (unframed data of known length)."""

    def __init__(self, reader: WireReader, size: int):
        self._reader = reader
        self._left = size

    def read(self, n: int = -1) -> bytes:
        if self._left == 0:
            return b""
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._reader.read_exact(n)
        self._left -= len(data)
        return data


class PulledSource:
    """Data the server pulls with STDERR_READ (AddToStoreNar for clients 21–22): `request(n)` sends the
    READ and returns the client's answer string."""

    def __init__(self, request: Callable[[int], bytes]):
        self._request = request
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        n = FRAME_LEN if n is None or n < 0 else n
        if not self._buf:
            self._buf = self._request(max(n, 1))
            if not self._buf:
                raise BadWireData("the client answered STDERR_READ with no data")
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


def frames(chunks: Iterable[bytes]) -> Iterable[bytes]:
    """Encode chunks as frames followed by the terminator (empty chunks are skipped: a 0 would end the stream)."""
    for chunk in chunks:
        for start in range(0, len(chunk), FRAME_LEN):
            piece = chunk[start : start + FRAME_LEN]
            yield len(piece).to_bytes(8, "little") + bytes(piece)
    yield b"\0" * 8


def write_framed(write: Callable[[bytes], object], chunks: Iterable[bytes]) -> None:
    for frame in frames(chunks):
        write(frame)
