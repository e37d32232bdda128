"""Content addresses (libstore/content-address.cc): the `ca` column and narinfo `CA:` field.

Printed as `text:sha256:<base32>`, `fixed:<algo>:<base32>` (flat) or
`fixed:r:<algo>:<base32>` (recursive). A *method* string, as the worker
protocol's AddToStore sends it, is the same without the hash: `text:sha256`,
`fixed:r:sha256`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import BadHash
from .hashes import Base, Hash, check_algo

METHODS = ("text", "flat", "recursive")


@dataclass(frozen=True, slots=True)
class ContentAddress:
    """`method` is "text", "flat" or "recursive"; `hash` is the content hash."""

    method: str
    hash: Hash

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BadHash(f"unknown content-address method '{self.method}'")
        if self.method == "text" and self.hash.algo != "sha256":
            raise BadHash("text content addresses must use sha256")

    def render(self) -> str:
        """`renderContentAddress`."""
        return f"{render_method(self.method, self.hash.algo)}:{self.hash.to_string(Base.BASE32, False)}"

    def __str__(self) -> str:
        return self.render()

    @classmethod
    def parse(cls, text: str) -> "ContentAddress":
        """`parseContentAddress`."""
        method, algo, rest = parse_method_prefix(text)
        if not rest:
            raise BadHash(f"content address '{text}' has no hash")
        return cls(method, Hash.parse_non_sri_unprefixed(rest, algo))


def render_method(method: str, algo: str) -> str:
    """`renderContentAddressMethodAndHash`: `text:sha256`, `fixed:sha1`, `fixed:r:sha256`."""
    if method == "text":
        return "text:sha256"
    return f"fixed:{'r:' if method == 'recursive' else ''}{algo}"


def parse_method_prefix(text: str) -> tuple[str, str, str]:
    """Split `text:sha256[:hash]` / `fixed:[r:]algo[:hash]` into (method, algo, rest-or-"")."""
    kind, _, rest = text.partition(":")
    if kind == "text":
        algo, _, rest = rest.partition(":")
        if algo != "sha256":
            raise BadHash(f"text content address '{text}' must use sha256")
        return "text", algo, rest
    if kind == "fixed":
        method = "flat"
        if rest.startswith("r:"):
            method, rest = "recursive", rest[2:]
        algo, _, rest = rest.partition(":")
        return method, check_algo(algo), rest
    raise BadHash(f"content address '{text}' has an unknown prefix '{kind}'")


def parse_method(text: str) -> tuple[str, str]:
    """Parse a protocol method string (`fixed:r:sha256`) into (method, algo)."""
    method, algo, rest = parse_method_prefix(text)
    if rest:
        raise BadHash(f"content-address method '{text}' must not include a hash")
    return method, algo
