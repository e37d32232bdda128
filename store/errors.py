"""The store package's errors: one root, structured fields, mapped to messages at the CLI.

Expected failures of bad input (a malformed hash, path, derivation, NAR) are
exceptions here because they abort the operation that met them; the CLI turns
every `StoreError` into `error: <message>` and exit status 1, never a traceback.
"""

from __future__ import annotations


class StoreError(Exception):
    """Root of every error raised by goalkeeper.store."""

    #: Exit status the CLI uses for this error (Nix uses 1 for everything but builds).
    exit_status = 1


class BadHash(StoreError):
    """A hash string that Nix would reject (wrong length, alphabet or type)."""


class BadStorePath(StoreError):
    """A string that is not a valid store path (outside the store, bad hash part or name)."""


class InvalidPath(StoreError):
    """A syntactically valid store path that is not valid in the store."""


class FormatError(StoreError):
    """Malformed input in one of Nix's formats, naming the source and the position.

    Attributes:
        source: what was being read (a file name, "<stdin>", a store path).
        position: byte offset (or other position description) where it went wrong.
        reason: what was wrong there.
    """

    kind = "input"

    def __init__(self, reason: str, *, source: str | None = None, position: int | None = None):
        self.reason = reason
        self.source = source
        self.position = position
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.source is not None:
            where.append(f"'{self.source}'")
        if self.position is not None:
            where.append(f"at byte {self.position}")
        prefix = f"malformed {self.kind}"
        if where:
            prefix += " " + " ".join(where)
        return f"{prefix}: {self.reason}"

    def with_source(self, source: str) -> "FormatError":
        """Return a copy of this error that names `source` (for errors raised below the file level)."""
        err = type(self)(self.reason, source=source, position=self.position)
        err.__cause__ = self.__cause__
        return err


class BadDerivation(FormatError):
    """A `.drv` file that is not a derivation Nix 2.8 would accept."""

    kind = "derivation"


class BadArchive(FormatError):
    """A NAR stream that Nix 2.8 would reject."""

    kind = "NAR"


class BadJSON(FormatError):
    """A JSON document (e.g. `nix show-derivation` output) that is not what we expect."""

    kind = "JSON"


class BadSetting(StoreError):
    """An invalid value for a Nix setting, naming the setting."""
