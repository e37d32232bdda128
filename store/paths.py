"""Store paths (libstore/path.cc, store-api.cc): syntax, and how Nix computes them.

`StorePath` is the base name (`<hash>-<name>`) as in Nix; the store directory is
always a parameter (`StoreDir`), never a constant, because a store under a test
directory or `NIX_STORE_DIR` changes every hash.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable

from . import nixbase32
from .errors import BadStorePath
from .hashes import Hash, compress_hash, sha256

HASH_PART_LEN = 32  # 20 bytes of compressed sha256 in Nix base-32
MAX_NAME_LEN = 211  # Nix 2.8: a 212-character name is rejected [verified]
DRV_EXTENSION = ".drv"
_NAME_RE = re.compile(r"[A-Za-z0-9+\-._?=]+\Z")
DEFAULT_STORE_DIR = "/nix/store"


def check_name(name: str, base: str | None = None) -> str:
    """Validate a store path name as Nix's `checkName` does; return it.

    `base` is the base name used in messages (Nix names the whole `<hash>-<name>`).
    """
    shown = base if base is not None else name
    if not name:
        raise BadStorePath(f"store path '{shown}' has an empty name")
    if len(name) > MAX_NAME_LEN:
        raise BadStorePath(f"store path '{shown}' has a name longer than {MAX_NAME_LEN} characters")
    if not _NAME_RE.match(name):
        bad = next(c for c in name if not _NAME_RE.match(c))
        raise BadStorePath(f"store path '{shown}' contains illegal character '{bad}'")
    return name


@dataclass(frozen=True, slots=True, order=True)
class StorePath:
    """A store path's base name, `<32-char hash part>-<name>` (Nix's `StorePath`)."""

    base: str

    def __post_init__(self) -> None:
        base = self.base
        if len(base) < HASH_PART_LEN + 1:
            raise BadStorePath(f"'{base}' is too short to be a valid store path")
        for c in base[:HASH_PART_LEN]:
            if c not in nixbase32.ALPHABET:
                raise BadStorePath(f"store path '{base}' contains illegal base-32 character '{c}'")
        if base[HASH_PART_LEN] != "-":
            raise BadStorePath(f"store path '{base}' has no '-' after its hash part")
        check_name(base[HASH_PART_LEN + 1 :], base)

    @classmethod
    def from_parts(cls, hash_part: str, name: str) -> "StorePath":
        return cls(f"{hash_part}-{name}")

    @property
    def hash_part(self) -> str:
        return self.base[:HASH_PART_LEN]

    @property
    def name(self) -> str:
        return self.base[HASH_PART_LEN + 1 :]

    def is_derivation(self) -> bool:
        return self.base.endswith(DRV_EXTENSION)

    def derivation_name(self) -> str:
        """The derivation name of a `.drv` path (its name without `.drv`)."""
        if not self.is_derivation():
            raise BadStorePath(f"path '{self.base}' is not a derivation")
        return self.name[: -len(DRV_EXTENSION)]

    def __str__(self) -> str:
        return self.base


def output_path_name(drv_name: str, output_name: str) -> str:
    """`outputPathName`: `name` for `out`, else `name-output`."""
    return drv_name if output_name == "out" else f"{drv_name}-{output_name}"


@dataclass(frozen=True, slots=True)
class StoreDir:
    """A logical store directory (`Store::storeDir`) and the path computations that depend on it."""

    path: str = DEFAULT_STORE_DIR

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise BadStorePath(f"store directory '{self.path}' is not absolute")
        canon = os.path.normpath(self.path)
        if canon.startswith("//"):
            canon = canon[1:]
        object.__setattr__(self, "path", canon)

    # -- parsing and printing ---------------------------------------------------------------

    def parse(self, text: str) -> StorePath:
        """`parseStorePath`: a full path directly inside this store (no sub-path)."""
        canon = os.path.normpath(text) if text.startswith("/") else text
        if canon.startswith("//"):
            canon = canon[1:]
        directory, _, base = canon.rpartition("/")
        if not text.startswith("/") or directory != self.path:
            raise BadStorePath(f"path '{text}' is not in the Nix store")
        return StorePath(base)

    def print(self, path: StorePath) -> str:
        """`printStorePath`."""
        return f"{self.path}/{path.base}"

    def print_set(self, paths: Iterable[StorePath]) -> list[str]:
        return sorted(self.print(p) for p in paths)

    def is_store_path(self, text: str) -> bool:
        try:
            self.parse(text)
        except BadStorePath:
            return False
        return True

    def is_in_store(self, text: str) -> bool:
        """`isInStore`: the path is below the store directory (possibly a sub-path)."""
        return text.startswith(self.path + "/") and len(text) > len(self.path) + 1

    def to_store_path(self, text: str) -> tuple[StorePath, str]:
        """`toStorePath`: split `/store/<base>/sub/path` into the store path and `/sub/path`."""
        if not self.is_in_store(text):
            raise BadStorePath(f"path '{text}' is not in the Nix store")
        rest = text[len(self.path) + 1 :]
        base, slash, sub = rest.partition("/")
        return StorePath(base), (slash + sub)

    # -- computing paths --------------------------------------------------------------------

    def make_store_path(self, type_: str, digest: Hash, name: str) -> StorePath:
        """`makeStorePath`: `<type>:sha256:<base16>:<storeDir>:<name>`, sha256, XOR-folded to 20 bytes."""
        fingerprint = f"{type_}:{digest.algo}:{digest.base16()}:{self.path}:{name}"
        compressed = compress_hash(sha256(fingerprint.encode()).digest, 20)
        return StorePath.from_parts(nixbase32.encode(compressed), name)  # validates the name

    def make_output_path(self, output_name: str, drv_hash: Hash, drv_name: str) -> StorePath:
        """`makeOutputPath` for input-addressed outputs: type `output:<name>`."""
        return self.make_store_path(f"output:{output_name}", drv_hash, output_path_name(drv_name, output_name))

    def _make_type(self, type_: str, references: Iterable[StorePath], has_self: bool) -> str:
        parts = [type_]
        parts.extend(sorted(self.print(r) for r in references))
        if has_self:
            parts.append("self")
        return ":".join(parts)

    def make_text_path(self, name: str, digest: Hash, references: Iterable[StorePath] = ()) -> StorePath:
        """`makeTextPath`: `text` + sorted references; the hash is sha256 of the contents."""
        if digest.algo != "sha256":
            raise BadStorePath("text paths must use sha256")
        return self.make_store_path(self._make_type("text", references, False), digest, name)

    def make_fixed_output_path(
        self,
        recursive: bool,
        digest: Hash,
        name: str,
        references: Iterable[StorePath] = (),
        has_self: bool = False,
    ) -> StorePath:
        """`makeFixedOutputPath`: `source` for recursive sha256, else `output:out` over an inner hash."""
        references = list(references)
        if recursive and digest.algo == "sha256":
            return self.make_store_path(self._make_type("source", references, has_self), digest, name)
        # Nix asserts there are no references here and ignores a self reference.
        if references:
            raise BadStorePath(
                f"fixed-output path '{name}' with references must be recursive sha256"
            )
        inner = f"fixed:out:{'r:' if recursive else ''}{digest.algo}:{digest.base16()}:"
        return self.make_store_path("output:out", sha256(inner.encode()), name)

    def make_fixed_output_path_from_ca(self, name: str, ca, references: Iterable[StorePath] = (), has_self: bool = False) -> StorePath:
        """`makeFixedOutputPathFromCA` for a `ContentAddress` (see content_address.py)."""
        if ca.method == "text":
            if has_self:
                raise BadStorePath(f"text path '{name}' cannot refer to itself")
            return self.make_text_path(name, ca.hash, references)
        return self.make_fixed_output_path(ca.method == "recursive", ca.hash, name, references, has_self)
