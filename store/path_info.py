"""`ValidPathInfo` (libstore/path-info.hh): what the store knows about one valid path."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .content_address import ContentAddress
from .hashes import Hash
from .paths import StoreDir, StorePath


@dataclass(frozen=True, slots=True)
class ValidPathInfo:
    """One row of `ValidPaths` plus its references.

    Attributes:
        path: the store path.
        nar_hash: sha256 of the path's NAR serialisation.
        nar_size: length of that NAR (0 means unknown; stored as NULL).
        references: store paths it refers to, itself included if it does.
        deriver: the `.drv` that produced it (need not be valid), or None.
        registration_time: unix seconds; 0 means "now" when registering.
        ultimate: built locally (trusted without signatures); stored as 1 or NULL.
        sigs: `name:base64` signatures.
        ca: the content address it claims, or None.
    """

    path: StorePath
    nar_hash: Hash
    nar_size: int = 0
    references: frozenset[StorePath] = field(default_factory=frozenset)
    deriver: StorePath | None = None
    registration_time: int = 0
    ultimate: bool = False
    sigs: frozenset[str] = field(default_factory=frozenset)
    ca: ContentAddress | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.references, frozenset):
            object.__setattr__(self, "references", frozenset(self.references))
        if not isinstance(self.sigs, frozenset):
            object.__setattr__(self, "sigs", frozenset(self.sigs))

    def replace(self, **changes) -> "ValidPathInfo":
        return replace(self, **changes)

    @property
    def has_self_reference(self) -> bool:
        return self.path in self.references

    def references_without_self(self) -> frozenset[StorePath]:
        return self.references - {self.path}

    def content_address_path(self, store_dir: StoreDir) -> StorePath | None:
        """The path `ca` implies for this name and these references (None without `ca`)."""
        if self.ca is None:
            return None
        return store_dir.make_fixed_output_path_from_ca(
            self.path.name, self.ca, self.references_without_self(), self.has_self_reference
        )

    def is_content_addressed(self, store_dir: StoreDir) -> bool:
        """`isContentAddressed`: `ca` is set and really yields this path."""
        return self.ca is not None and self.content_address_path(store_dir) == self.path

    def fingerprint(self, store_dir: StoreDir) -> str:
        """`fingerprint`: what signatures sign, `1;<path>;<narHash b32>;<narSize>;<refs,>`."""
        refs = ",".join(store_dir.print_set(self.references))
        return f"1;{store_dir.print(self.path)};{self.nar_hash.to_string()};{self.nar_size};{refs}"
