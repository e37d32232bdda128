"""Reference scanning and hash rewriting over NAR streams (libstore/references.cc, libutil/util.cc).

Nix's `RefScanSink` slides over the byte stream looking for 32-byte windows of
base-32 characters that equal a candidate hash part (spec §4.1). Every candidate
is itself 32 base-32 characters, so that is exactly "the candidate occurs as a
substring of the stream": we find those with C-speed searches instead of a
Python loop over bytes, keeping the last 31 bytes of each chunk so that a hash
split across two chunks is still found.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator

from . import nixbase32
from .hashes import Hash, new_hasher
from .nar import dump_path_to
from .paths import HASH_PART_LEN, StorePath

Write = Callable[[bytes], object]

_OVERLAP = HASH_PART_LEN - 1  # a match spanning a boundary has at most 31 bytes before it
# To find runs of base-32 characters at C speed, map them to 1 and every other byte to 0,
# then look for 32 ones in a row with `bytes.find`.
_BASE32_MASK = bytes(1 if chr(b) in nixbase32.ALPHABET else 0 for b in range(256))
_RUN = b"\1" * HASH_PART_LEN
# With few candidates, one `find` per candidate beats a regex pass over the chunk.
_FIND_LIMIT = 4


class RefScanSink:
    """A sink that records which candidate hash parts occur in the bytes written to it.

    Call it (or `.write`) with successive chunks; `found` holds the hash parts seen.
    """

    def __init__(self, hash_parts: Iterable[str]):
        self.pending: set[bytes] = {h.encode() for h in hash_parts}
        self.found: set[str] = set()
        self.tail = b""

    def __call__(self, data) -> None:
        if not self.pending:
            return
        data = bytes(data)
        if self.tail:
            # Only windows that start in the tail and end in `data` are new here.
            self._search(self.tail + data[:_OVERLAP])
        self._search(data)
        self.tail = (self.tail + data)[-_OVERLAP:] if len(data) < _OVERLAP else data[-_OVERLAP:]

    write = __call__

    def _search(self, data: bytes) -> None:
        if len(self.pending) <= _FIND_LIMIT:
            hits = {h for h in self.pending if h in data}
        else:
            hits = set()
            for run in _base32_runs(data):
                if len(run) == HASH_PART_LEN:
                    if run in self.pending:
                        hits.add(run)
                elif len(run) - HASH_PART_LEN < len(self.pending):
                    for i in range(len(run) - HASH_PART_LEN + 1):
                        window = run[i : i + HASH_PART_LEN]
                        if window in self.pending:
                            hits.add(window)
                else:
                    hits.update(h for h in self.pending if h in run)
        if hits:
            self.pending -= hits
            self.found.update(h.decode() for h in hits)


def _base32_runs(data: bytes) -> Iterator[bytes]:
    """The maximal runs of base-32 characters in `data` that are at least 32 long."""
    mask = data.translate(_BASE32_MASK)
    start = mask.find(_RUN)
    while start != -1:
        end = mask.find(b"\0", start + HASH_PART_LEN)
        if end == -1:
            end = len(mask)
        yield data[start:end]
        start = mask.find(_RUN, end)


def scan_for_references(source, candidates: Iterable[StorePath]) -> set[StorePath]:
    """`scanForReferences`: the candidates whose hash part occurs in a NAR.

    Args:
        source: a path (its NAR is dumped and scanned) or an iterable of byte chunks
            (an already serialised NAR).
        candidates: the store paths that may be referenced.
    """
    by_hash = {p.hash_part: p for p in candidates}
    sink = RefScanSink(by_hash)
    if isinstance(source, (str, bytes, os.PathLike)):
        dump_path_to(source, sink)
    else:
        for chunk in source:
            sink(chunk)
    return {by_hash[h] for h in sink.found}


def rewrite_strings(data: bytes, rewrites: dict[str | bytes, str | bytes]) -> bytes:
    """`rewriteStrings`: apply each rewrite in turn to the whole of `data`.

    Like Nix, searching resumes at the start of each replacement, so results match
    Nix even for self-overlapping patterns.
    """
    # Most strings (a builder's environment: one call per variable) contain no pattern:
    # they are returned as they are, without a copy.
    buf: bytes | bytearray = data
    for frm, to in rewrites.items():
        frm, to = _b(frm), _b(to)
        if frm == to:
            continue
        j = buf.find(frm)
        if j == -1:
            continue
        if buf is data:
            buf = bytearray(data)
        while j != -1:
            buf[j : j + len(frm)] = to
            j = buf.find(frm, j)
    return data if buf is data else bytes(buf)


def _b(s: str | bytes) -> bytes:
    return s.encode() if isinstance(s, str) else s


class _RewriteStage:
    """Nix's `RewritingSink` for one equal-length `from -> to` rewrite, streaming into `next`."""

    def __init__(self, frm: bytes, to: bytes, next_sink: Write):
        if len(frm) != len(to) or not frm:
            raise ValueError("rewrites must be non-empty and of equal length")
        self.frm, self.to, self.next = frm, to, next_sink
        self.prev = b""
        self.pos = 0  # stream offset of the first byte of `prev`
        self.matches: list[int] = []

    def __call__(self, data) -> None:
        s = bytearray(self.prev)
        s += data
        n = len(self.frm)
        j = s.find(self.frm)
        while j != -1:
            self.matches.append(self.pos + j)
            s[j : j + n] = self.to
            j = s.find(self.frm, j)
        # Keep n-1 bytes back: a match may start in them and end in the next chunk.
        keep = len(s) if len(s) < n else n - 1
        consumed = len(s) - keep
        self.prev = bytes(s[consumed:])
        self.pos += consumed
        if consumed:
            self.next(bytes(s[:consumed]))

    def flush(self) -> None:
        if self.prev:
            self.pos += len(self.prev)
            self.next(self.prev)
            self.prev = b""


class RewritingSink:
    """Stream bytes into `next_sink` with equal-length rewrites applied, across chunk boundaries.

    Several rewrites apply one after another, as `rewrite_strings` does. Call `flush()`
    at the end. `matches` lists the stream offsets of the first rewrite's occurrences.
    """

    def __init__(self, rewrites: dict[str | bytes, str | bytes], next_sink: Write):
        sink = next_sink
        self._stages: list[_RewriteStage] = []
        for frm, to in reversed([(_b(f), _b(t)) for f, t in rewrites.items() if _b(f) != _b(t)]):
            sink = _RewriteStage(frm, to, sink)
            self._stages.insert(0, sink)
        self._first = sink

    def __call__(self, data) -> None:
        self._first(data)

    write = __call__

    def flush(self) -> None:
        for stage in self._stages:
            stage.flush()

    @property
    def matches(self) -> list[int]:
        return self._stages[0].matches if self._stages else []


class HashModuloSink:
    """`HashModuloSink`: the CA hash "modulo self" of a serialisation (spec §2.7).

    Every occurrence of `modulus` (a 32-character scratch hash part) is replaced by
    NUL bytes, then "|<offset>" is hashed for each occurrence, in order.
    """

    def __init__(self, algo: str, modulus: str | bytes):
        self.hasher = new_hasher(algo)
        self.algo = algo
        modulus = _b(modulus)
        self._rewriter = _RewriteStage(modulus, bytes(len(modulus)), self.hasher.update)

    def __call__(self, data) -> None:
        self._rewriter(data)

    write = __call__

    def finish(self) -> tuple[Hash, int]:
        """Return (hash, size of the serialisation); the sink is spent afterwards."""
        self._rewriter.flush()
        for pos in self._rewriter.matches:
            self.hasher.update(b"|%d" % pos)
        return Hash(self.algo, self.hasher.digest()), self._rewriter.pos
