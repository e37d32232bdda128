"""`<hashPart>.narinfo` files of binary caches (libstore/nar-info.cc; spec §6).

One `Key: value` per line, written in this order: StorePath, URL, Compression,
FileHash, FileSize, NarHash, NarSize, References (always, even empty), Deriver
(if known), System (if set), one Sig per signature (sorted), CA (if set).

Reading follows Nix 2.8: unknown keys are ignored; a missing Compression means
`bzip2`; `Deriver: unknown-deriver` means none; StorePath, NarHash, URL and a
non-zero NarSize are required. Errors name the file and the line.
"""

from __future__ import annotations

from dataclasses import dataclass

from .content_address import ContentAddress
from .errors import FormatError, StoreError
from .hashes import Base, Hash
from .path_info import ValidPathInfo
from .paths import StoreDir, StorePath


class BadNarInfo(FormatError):
    """A narinfo that Nix 2.8 would reject (`NAR info file '…' is corrupt`)."""

    kind = "NAR info"

    def _format(self) -> str:
        where = f" at line {self.position}" if self.position is not None else ""
        return f"NAR info file '{self.source}' is corrupt: {self.reason}{where}"


@dataclass(frozen=True, slots=True)
class NarInfo:
    """A path's info as a binary cache describes it (Nix's `NarInfo`).

    Attributes:
        info: the ValidPathInfo it implies (registration_time 0, not ultimate).
        url: the NAR file, relative to the cache (`nar/<fileHash>.nar.xz`).
        compression: `none`, `xz`, `bzip2`, `zstd`, ...
        file_hash, file_size: of the compressed file, if given.
        system: the optional `System:` field (nix copy never writes it).
    """

    info: ValidPathInfo
    url: str
    compression: str = "bzip2"
    file_hash: Hash | None = None
    file_size: int = 0
    system: str | None = None

    @property
    def path(self) -> StorePath:
        return self.info.path


def parse(text: str | bytes, store_dir: StoreDir, whence: str) -> NarInfo:
    """`NarInfo::NarInfo(store, s, whence)`.

    Raises:
        BadNarInfo: naming `whence` and the line.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError as err:
            raise BadNarInfo(f"not UTF-8 ({err.reason})", source=whence) from err
    fields: dict = {"refs": None, "sigs": set(), "ca": None, "deriver": None}
    url, compression, file_hash, file_size, nar_size, system = "", "", None, 0, 0, None
    path = nar_hash = None
    line_no = 0

    def corrupt(reason: str, line: int | None = None) -> BadNarInfo:
        return BadNarInfo(reason, source=whence, position=line_no if line is None else line)

    def hash_field(value: str) -> Hash:
        try:
            return Hash.parse_any_prefixed(value)
        except StoreError as err:
            raise corrupt(f"bad hash ({err})") from err

    def size_field(name: str, value: str) -> int:
        if not value.isascii() or not value.isdigit() or int(value) >= 2**64:
            raise corrupt(f"invalid {name} '{value}'")
        return int(value)

    def store_path(name: str, value: str) -> StorePath:
        try:
            return StorePath(value)
        except StoreError as err:
            raise corrupt(f"bad {name} ({err})") from err

    pos = 0
    while pos < len(text):
        line_no += 1
        eol = text.find("\n", pos)
        if eol < 0:
            raise corrupt("expecting '\\n'")
        line = text[pos:eol]
        pos = eol + 1
        name, sep, value = line.partition(": ")
        if not sep:
            if line.endswith(":") and ":" not in line[:-1]:
                name, value = line[:-1], ""  # `References:` without its trailing space
            else:
                raise corrupt("expecting ':'")
        if name == "StorePath":
            try:
                path = store_dir.parse(value)
            except StoreError as err:
                raise corrupt(f"bad StorePath ({err})") from err
        elif name == "URL":
            url = value
        elif name == "Compression":
            compression = value
        elif name == "FileHash":
            file_hash = hash_field(value)
        elif name == "FileSize":
            file_size = size_field("FileSize", value)
        elif name == "NarHash":
            nar_hash = hash_field(value)
        elif name == "NarSize":
            nar_size = size_field("NarSize", value)
        elif name == "References":
            if fields["refs"]:
                raise corrupt("extra References")
            fields["refs"] = {store_path("reference", r) for r in value.split(" ") if r}
        elif name == "Deriver":
            if value != "unknown-deriver":
                fields["deriver"] = store_path("Deriver", value)
        elif name == "System":
            system = value
        elif name == "Sig":
            fields["sigs"].add(value)
        elif name == "CA":
            if fields["ca"] is not None:
                raise corrupt("extra CA")
            try:
                fields["ca"] = ContentAddress.parse(value) if value else None
            except StoreError as err:
                raise corrupt(f"bad CA ({err})") from err
        # other keys (e.g. later Nix versions' fields) are ignored, as Nix does

    missing = ("StorePath missing" if path is None else "NarHash missing" if nar_hash is None
               else "URL missing" if not url else "NarSize missing or zero" if nar_size == 0 else None)
    if missing:
        raise BadNarInfo(missing, source=whence)
    info = ValidPathInfo(path=path, nar_hash=nar_hash, nar_size=nar_size, references=fields["refs"] or (),
                         deriver=fields["deriver"], sigs=fields["sigs"], ca=fields["ca"])
    return NarInfo(info=info, url=url, compression=compression or "bzip2", file_hash=file_hash,
                   file_size=file_size, system=system)


def render(narinfo: NarInfo, store_dir: StoreDir) -> str:
    """`NarInfo::to_string`: the file as `nix copy --to file://…` writes it."""
    info = narinfo.info
    lines = [f"StorePath: {store_dir.print(info.path)}", f"URL: {narinfo.url}",
             f"Compression: {narinfo.compression}"]
    if narinfo.file_hash is not None:
        lines.append(f"FileHash: {narinfo.file_hash.to_string(Base.BASE32, True)}")
        lines.append(f"FileSize: {narinfo.file_size}")
    lines.append(f"NarHash: {info.nar_hash.to_string(Base.BASE32, True)}")
    lines.append(f"NarSize: {info.nar_size}")
    lines.append("References: " + " ".join(sorted(r.base for r in info.references)))
    if info.deriver is not None:
        lines.append(f"Deriver: {info.deriver.base}")
    if narinfo.system:
        lines.append(f"System: {narinfo.system}")
    lines.extend(f"Sig: {sig}" for sig in sorted(info.sigs))
    if info.ca is not None:
        lines.append(f"CA: {info.ca.render()}")
    return "\n".join(lines) + "\n"
