"""Hashes as Nix prints and parses them (libutil/hash.cc).

Four algorithms, four encodings: base16, Nix base-32, base64, and SRI
(`sha256-<base64>`). Parsing follows `Hash::parseAny`: the length of the text
decides the encoding, so a 64-character sha256 is hex and a 52-character one is
base-32.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from enum import Enum

from . import nixbase32
from .errors import BadHash

HASH_SIZES = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}
ALGOS = tuple(HASH_SIZES)


class Base(Enum):
    """Nix's `Base` enum: the encodings a hash can be printed in."""

    BASE16 = "base16"
    BASE32 = "base32"
    BASE64 = "base64"
    SRI = "sri"


def check_algo(algo: str) -> str:
    """Return `algo` if Nix knows it, else raise BadHash("unknown hash algorithm")."""
    if algo not in HASH_SIZES:
        raise BadHash(f"unknown hash algorithm '{algo}'")
    return algo


def base16_len(algo: str) -> int:
    return HASH_SIZES[algo] * 2


def base32_len(algo: str) -> int:
    return nixbase32.encoded_length(HASH_SIZES[algo])


def base64_len(algo: str) -> int:
    return ((4 * HASH_SIZES[algo] // 3) + 3) & ~3


@dataclass(frozen=True, slots=True)
class Hash:
    """A digest together with its algorithm (Nix's `Hash`)."""

    algo: str
    digest: bytes

    def __post_init__(self) -> None:
        check_algo(self.algo)
        if len(self.digest) != HASH_SIZES[self.algo]:
            raise BadHash(f"{self.algo} digest must be {HASH_SIZES[self.algo]} bytes, got {len(self.digest)}")

    # -- printing ---------------------------------------------------------------------------

    def base16(self) -> str:
        return self.digest.hex()

    def base32(self) -> str:
        return nixbase32.encode(self.digest)

    def base64(self) -> str:
        return base64.b64encode(self.digest).decode()

    def sri(self) -> str:
        return f"{self.algo}-{self.base64()}"

    def to_string(self, base: Base = Base.BASE32, include_algo: bool = True) -> str:
        """Nix's `Hash::to_string(base, includeType)`; SRI always includes the algorithm."""
        if base is Base.SRI:
            return self.sri()
        text = {Base.BASE16: self.base16, Base.BASE32: self.base32, Base.BASE64: self.base64}[base]()
        return f"{self.algo}:{text}" if include_algo else text

    def __str__(self) -> str:  # the form Nix uses most: `sha256:<base32>`
        return self.to_string(Base.BASE32, True)

    # -- parsing ----------------------------------------------------------------------------

    @classmethod
    def parse_any(cls, text: str, algo: str | None = None) -> "Hash":
        """`Hash::parseAny`: optional `algo:` or SRI `algo-` prefix; `algo` supplies a missing type."""
        rest, prefixed, is_sri = _split_prefix(text)
        if prefixed is None:
            if algo is None:
                raise BadHash(
                    f"hash '{text}' does not include a type, nor is the type otherwise known from context"
                )
            prefixed = algo
        elif algo is not None and prefixed != algo:
            raise BadHash(f"hash '{text}' should have type '{algo}'")
        return cls._decode(rest, check_algo(prefixed), is_sri, text)

    @classmethod
    def parse_any_prefixed(cls, text: str) -> "Hash":
        """`Hash::parseAnyPrefixed`: the type must be given in the text."""
        rest, prefixed, is_sri = _split_prefix(text)
        if prefixed is None:
            raise BadHash(f"hash '{text}' does not include a type")
        return cls._decode(rest, check_algo(prefixed), is_sri, text)

    @classmethod
    def parse_sri(cls, text: str) -> "Hash":
        """`Hash::parseSRI`: exactly `algo-<base64>`."""
        algo, sep, rest = text.partition("-")
        if not sep:
            raise BadHash(f"hash '{text}' is not SRI")
        return cls._decode(rest, check_algo(algo), True, text)

    @classmethod
    def parse_non_sri_unprefixed(cls, text: str, algo: str) -> "Hash":
        """`Hash::parseNonSRIUnprefixed`: base16, base32 or base64 of a known type (drv output hashes)."""
        return cls._decode(text, check_algo(algo), False, text)

    @classmethod
    def _decode(cls, rest: str, algo: str, is_sri: bool, original: str) -> "Hash":
        size = HASH_SIZES[algo]
        if not is_sri and len(rest) == base16_len(algo):
            try:
                digest = bytes.fromhex(rest)  # accepts A-F, as parseHexDigit does
            except ValueError:
                raise BadHash(f"invalid base-16 hash '{original}'") from None
            if not all(c in "0123456789abcdefABCDEF" for c in rest):
                raise BadHash(f"invalid base-16 hash '{original}'")
            return cls(algo, digest)
        if not is_sri and len(rest) == base32_len(algo):
            try:
                return cls(algo, nixbase32.decode(rest, size))
            except BadHash:
                raise BadHash(f"invalid base-32 hash '{original}'") from None
        if is_sri or len(rest) == base64_len(algo):
            try:
                digest = base64.b64decode(rest, validate=True)
            except (binascii.Error, ValueError):
                raise BadHash(f"invalid base-64 hash '{original}'") from None
            if len(digest) != size:
                raise BadHash(f"invalid {'SRI' if is_sri else 'base-64'} hash '{original}'")
            return cls(algo, digest)
        raise BadHash(f"hash '{original}' has wrong length for hash type '{algo}'")


def _split_prefix(text: str) -> tuple[str, str | None, bool]:
    """Split `algo:rest` or SRI `algo-rest`; return (rest, algo or None, is_sri)."""
    algo, sep, rest = text.partition(":")
    if sep:
        return rest, algo, False
    algo, sep, rest = text.partition("-")
    if sep:
        return rest, algo, True
    return text, None, False


# -- computing ------------------------------------------------------------------------------


def new_hasher(algo: str):
    """A hashlib object for one of Nix's algorithms."""
    return hashlib.new(check_algo(algo))


def hash_bytes(algo: str, data: bytes) -> Hash:
    """`hashString`."""
    return Hash(algo, hashlib.new(check_algo(algo), data).digest())


def hash_file(algo: str, path: str, chunk: int = 1 << 20) -> Hash:
    """`hashFile`: the flat hash of a regular file's contents, streamed."""
    h = new_hasher(algo)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return Hash(algo, h.digest())


def sha256(data: bytes) -> Hash:
    return Hash("sha256", hashlib.sha256(data).digest())


def compress_hash(digest: bytes, size: int) -> bytes:
    """`compressHash`: XOR-fold `digest` into `size` bytes (store paths use 20)."""
    out = bytearray(size)
    for i, b in enumerate(digest):
        out[i % size] ^= b
    return bytes(out)
