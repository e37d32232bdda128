"""The ATerm subset that `.drv` files use (libstore/derivations.cc): strings, lists, tuples.

Nix strings are byte strings. Here a derivation's strings are Python `str`
decoded from UTF-8 with `surrogateescape`, so every byte sequence Nix can write
(raw control bytes, invalid UTF-8) survives a parse/print round trip;
`encode_text`/`decode_text` are the two directions of that mapping.

Two ways of printing a string, as in Nix:
- `escaped` (`printString`): `"` and `\\` get a backslash; LF, CR, TAB become
  `\\n`, `\\r`, `\\t`; every other byte is copied raw. Used for the builder,
  args and env.
- `unescaped` (`printUnquotedString`): the bytes between quotes verbatim. Used
  for output names, paths, hash fields, platform.

Parsing (`ATermReader`) follows Nix's `parseString`/`endOfList` exactly,
including its leniencies: any `\\X` other than `\\n \\r \\t` decodes to X, and
list items may each be preceded by an optional `,` (so `[,"a""b"]` is the list
`a`, `b`). Unlike Nix, which loops forever on an unterminated string, every
error is a `BadDerivation` carrying the byte offset.
"""

from __future__ import annotations

import re
from typing import Iterable

from .errors import BadDerivation

# The "unrolled loop" form: linear, no backtracking, even over megabyte-long env values.
_ESCAPED_BODY = re.compile(rb'"([^"\\]*(?:\\.[^"\\]*)*)"', re.S)
_ESCAPE = re.compile(rb"\\(.)", re.S)
_UNESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t"}
_NEEDS_ESCAPE = re.compile(r'["\\\n\r\t]')


def encode_text(s: str) -> bytes:
    """A derivation string back to Nix's bytes."""
    return s.encode("utf-8", "surrogateescape")


def decode_text(b: bytes) -> str:
    """Nix's bytes to a derivation string (lossless, see module docstring)."""
    return b.decode("utf-8", "surrogateescape")


# -- printing --------------------------------------------------------------------------------


def escaped(s: str) -> str:
    """`printString`: the quoted, escaped form of `s`."""
    if _NEEDS_ESCAPE.search(s) is None:
        return f'"{s}"'
    s = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{s}"'


def unescaped(s: str) -> str:
    """`printUnquotedString`: `s` between quotes, verbatim."""
    return f'"{s}"'


def escaped_list(items: Iterable[str]) -> str:
    """`printStrings`: `[` escaped items joined by `,` `]`."""
    return "[" + ",".join([escaped(s) for s in items]) + "]"


def unescaped_list(items: Iterable[str]) -> str:
    """`printUnquotedStrings`."""
    return "[" + ",".join([f'"{s}"' for s in items]) + "]"


# -- parsing ---------------------------------------------------------------------------------


class ATermReader:
    """A cursor over `.drv` bytes with Nix's primitive readers.

    Attributes:
        data: the whole input.
        pos: the byte offset of the next unread byte.
        source: what is being read, for error messages (a path, or None).
    """

    __slots__ = ("data", "pos", "source")

    def __init__(self, data: bytes, source: str | None = None) -> None:
        self.data = data
        self.pos = 0
        self.source = source

    def fail(self, reason: str, position: int | None = None) -> BadDerivation:
        """Build (not raise) the error for `reason` at `position` (default: the cursor)."""
        return BadDerivation(reason, source=self.source, position=self.pos if position is None else position)

    def expect(self, literal: bytes) -> None:
        """Nix's `expect`: the next bytes must be exactly `literal`."""
        if not self.data.startswith(literal, self.pos):
            raise self.fail(f"expected '{literal.decode()}'")
        self.pos += len(literal)

    def string(self) -> str:
        """`parseString`: a `"`-quoted string; `\\n \\r \\t` decode, `\\X` is X."""
        start = self.pos
        if self.data[start : start + 1] != b'"':
            raise self.fail("expected '\"'")
        m = _ESCAPED_BODY.match(self.data, start)
        if m is None:
            raise self.fail("unterminated string", start)
        self.pos = m.end()
        body = m.group(1)
        if b"\\" in body:
            body = _ESCAPE.sub(lambda e: _UNESCAPES.get(e.group(1), e.group(1)), body)
        return decode_text(body)

    def path(self) -> str:
        """`parsePath`: a string that must be an absolute path."""
        start = self.pos
        s = self.string()
        if not s.startswith("/"):
            raise self.fail(f"bad path '{s}' in derivation", start)
        return s

    def end_of_list(self) -> bool:
        """Nix's `endOfList`: consume a `,` (more items) or a `]` (done)."""
        c = self.data[self.pos : self.pos + 1]
        if c == b",":
            self.pos += 1
            return False
        if c == b"]":
            self.pos += 1
            return True
        if not c:
            raise self.fail("unexpected end of input in list")
        return False

    def strings(self) -> list[str]:
        """The items of a string list whose `[` has been consumed."""
        items = []
        while not self.end_of_list():
            items.append(self.string())
        return items

    def paths(self) -> list[str]:
        """The items of a path list whose `[` has been consumed."""
        items = []
        while not self.end_of_list():
            items.append(self.path())
        return items
