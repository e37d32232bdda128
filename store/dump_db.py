"""The validity registration format of `nix-store --dump-db`, `--load-db` and `--register-validity`.

Per path, each line ending in `\\n`: the path; with hashes, the base-16 narHash
and the narSize; the deriver (or an empty line); the number of references;
each reference (store.cc `makeValidityRegistration`, `decodeValidPathInfo`).
"""

from __future__ import annotations

from typing import Iterable, Iterator, TextIO

from .errors import FormatError, StoreError
from .hashes import Base, Hash
from .path_info import ValidPathInfo
from .paths import StoreDir, StorePath


class BadRegistration(FormatError):
    """Malformed `--load-db` / `--register-validity` input."""

    kind = "validity registration"


def make_validity_registration(store, paths: Iterable[StorePath], show_derivers: bool = True,
                               show_hash: bool = True) -> Iterator[str]:
    """Yield the registration text of each path, in sorted order."""
    for path in sorted(set(paths)):
        info = store.require_path_info(path)
        lines = [store.print(path)]
        if show_hash:
            lines.append(info.nar_hash.to_string(Base.BASE16, False))
            lines.append(str(info.nar_size))
        lines.append(store.print(info.deriver) if show_derivers and info.deriver else "")
        lines.append(str(len(info.references)))
        lines.extend(store.print(r) for r in sorted(info.references))
        yield "".join(line + "\n" for line in lines)


def decode_valid_path_infos(stream: TextIO, store_dir: StoreDir, hash_given: bool = True,
                            source: str = "<stdin>") -> Iterator[ValidPathInfo]:
    """`decodeValidPathInfo` repeated until end of input; `hash_given` means hash and size lines are present.

    Without them the infos carry a null hash, to be filled in by hashing the files.

    Raises:
        BadRegistration: a missing line, a bad number, hash or store path.
    """
    line_no = 0

    def getline() -> str | None:
        nonlocal line_no
        line = stream.readline()
        if not line:
            return None
        line_no += 1
        return line[:-1] if line.endswith("\n") else line

    def bad(reason: str) -> BadRegistration:
        return BadRegistration(f"{reason} (line {line_no})", source=source)

    def number(text: str | None) -> int:
        if text is None:
            raise bad("missing input")
        if not text.isascii() or not text.isdigit():  # str.isdigit accepts '²'
            raise bad(f"number expected, got '{text}'")
        return int(text)

    def store_path(text: str | None) -> StorePath:
        if text is None:
            raise bad("missing input")
        try:
            return store_dir.parse(text)
        except StoreError as err:
            raise bad(str(err)) from err

    while True:
        first = getline()
        if first is None:
            return
        path = store_path(first)
        nar_hash, nar_size = Hash("sha256", bytes(32)), 0
        if hash_given:
            text = getline()
            if text is None:
                raise bad("missing input")
            try:
                nar_hash = Hash.parse_any(text, "sha256")
            except StoreError as err:
                raise bad(str(err)) from err
            nar_size = number(getline())
        deriver_text = getline()
        if deriver_text is None:
            raise bad("missing input")
        deriver = store_path(deriver_text) if deriver_text else None
        count = number(getline())
        references = frozenset(store_path(getline()) for _ in range(count))
        yield ValidPathInfo(path=path, nar_hash=nar_hash, nar_size=nar_size, references=references, deriver=deriver)
