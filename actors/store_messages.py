"""Messages to the store actor: frozen, slotted, keyword-only (Pykka passes them by reference).

Send them with `store_ref.ask(msg, timeout=...)`. Commands are imperative;
every reply is described on the message. A refused registration comes back
as the `StoreError` raised by `future.get()`, and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.paths import StorePath
from goalkeeper.store.realisations import DrvOutput, Realisation


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterValidPaths:
    """Make `infos` valid in one transaction (batched with others that arrive together). Reply: None."""

    infos: tuple[ValidPathInfo, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterDrvOutput:
    """Record a CA derivation output's realisation (ca-derivations). Reply: None."""

    realisation: Realisation


@dataclass(frozen=True, slots=True, kw_only=True)
class AddTextToStore:
    """`addTextToStore` (a .drv, a `toFile`). Reply: the StorePath."""

    name: str
    text: bytes
    references: frozenset[StorePath] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class AddToStore:
    """`addToStore` of a local file or tree; method "recursive" or "flat". Reply: the StorePath."""

    name: str
    src_path: str
    method: str = "recursive"
    algo: str = "sha256"
    references: frozenset[StorePath] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class IsValidPath:
    """Reply: bool (as of the last committed batch)."""

    path: StorePath


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryPathInfo:
    """Reply: ValidPathInfo or None."""

    path: StorePath


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryPartialDerivationOutputMap:
    """Reply: {output name: StorePath or None} of a valid drv."""

    drv_path: StorePath


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryRealisation:
    """Reply: Realisation or None."""

    drv_output: DrvOutput
