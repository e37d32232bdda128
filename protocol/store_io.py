"""What a served connection reaches the store and the builds through: the `StoreIO`.

The op handlers (`query_ops`, `add_ops`, `build_ops`, `misc_ops`) read plain store
facts from `conn.store` (a `LocalStore`, or something answering like one) and do
everything else through `conn.io`, an object with this interface:

- ``store``: the store as the client sees it;
- ``realise(targets, mode, *, keep_going, observer)`` -> the engine's `Realised`;
  ``build_derivation(drv_path, basic_drv, mode, *, observer, settings)`` -> the engine's
  `BuildResult` (`Store::buildDerivation`: the derivation held in memory);
  ``query_missing(targets)`` -> `Missing`; ``engine_path(target)`` -> the key of a
  target in `Realised.results`;
- ``import_nar``, ``add_from_dump``: adding what the client sends;
- ``add_indirect_root``, ``find_roots``, ``collect_garbage``, ``optimise_store``,
  ``verify_store``: store maintenance.

`LocalStoreIO` implements the store half for a `LocalStore`; the build half needs an
engine, which this package never imports: goalkeeper's daemon supplies it
(`tools/daemon/generation.py`), and so does the restricted store of a recursive
build (`actors/restricted_store.py`).  That keeps protocol/ below actors/ while both
serve the same handlers.
"""

from __future__ import annotations

from collections.abc import Callable

from goalkeeper.store.errors import StoreError
from goalkeeper.store.paths import StorePath

from . import nar_import, roots


class LocalStoreIO:
    """The store half of a `StoreIO` over a `LocalStore` (what `LocalStore` itself does)."""

    def __init__(self, store):
        self.store = store

    def import_nar(self, info, source, *, repair: bool = False) -> None:
        """`addToStore(info, narSource)`: restore, verify and register one path."""
        nar_import.import_nar(self.store, info, source, repair=repair)

    def add_from_dump(self, name: str, method: str, algo: str, source, references,
                      repair: bool = False) -> StorePath:
        """`addToStoreFromDump`: content-address what the client sent, and add it."""
        return nar_import.add_from_dump(self.store, name, method, algo, source, references, repair)

    def add_indirect_root(self, link: str) -> None:
        roots.add_indirect_root(self.store, link)

    def find_roots(self) -> list[tuple[str, StorePath]]:
        return roots.find_roots(self.store)

    def collect_garbage(self) -> tuple[list[str], int]:
        raise StoreError("garbage collection is not supported by goalkeeper's daemon yet")

    def optimise_store(self, log: Callable[[str], None]) -> None:
        from goalkeeper.store.optimise import optimise_store, show_bytes

        stats = optimise_store(self.store)
        log(f"{show_bytes(stats.bytes_freed)} freed by hard-linking {stats.files_linked} files")

    def verify_store(self, check_contents: bool, repair: bool, log: Callable[[str], None]) -> bool:
        from goalkeeper.store.verify import verify_store

        return verify_store(self.store, check_contents, repair, log=log)
