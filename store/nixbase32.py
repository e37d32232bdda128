"""Nix's base-32 encoding (libutil/hash.cc `printHash32` / `parseHash32`).

Not RFC 4648: the alphabet omits `e o u t`, and the bytes are read as one
little-endian integer printed most-significant digit first. So the first
character of a sha256 carries only the top 4 bits and is always 0 or 1.
"""

from __future__ import annotations

from .errors import BadHash

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_DIGIT = {c: i for i, c in enumerate(ALPHABET)}
_ALPHABET_BYTES = frozenset(ALPHABET.encode())


def encoded_length(nbytes: int) -> int:
    """Characters needed for `nbytes` bytes: ceil(8 * n / 5)."""
    return (nbytes * 8 - 1) // 5 + 1 if nbytes else 0


def decoded_length(nchars: int) -> int:
    """Bytes encoded by `nchars` characters (floor(5 * n / 8))."""
    return nchars * 5 // 8


def encode(data: bytes) -> str:
    """Encode bytes in Nix base-32."""
    n = int.from_bytes(data, "little")
    length = encoded_length(len(data))
    out = []
    for _ in range(length):
        out.append(ALPHABET[n & 31])
        n >>= 5
    return "".join(reversed(out))


def decode(text: str, nbytes: int | None = None) -> bytes:
    """Decode Nix base-32 into `nbytes` bytes (by default, as many as the length encodes).

    Raises:
        BadHash: on a character outside the alphabet, or bits beyond `nbytes`.
    """
    if nbytes is None:
        nbytes = decoded_length(len(text))
    n = 0
    for c in text:
        d = _DIGIT.get(c)
        if d is None:
            raise BadHash(f"invalid base-32 character '{c}' in '{text}'")
        n = (n << 5) | d
    if n >> (8 * nbytes):
        # Nix: "invalid base-32 hash" when the high digit overflows the hash size.
        raise BadHash(f"invalid base-32 hash '{text}'")
    return n.to_bytes(nbytes, "little")


def is_valid(text: str | bytes) -> bool:
    """True if every character is in the alphabet (no length check)."""
    if isinstance(text, str):
        return all(c in _DIGIT for c in text)
    return all(b in _ALPHABET_BYTES for b in text)
