"""The protocol package's errors: one root (`ProtocolError`), structured fields.

`ProtocolError` is a `StoreError`, so the CLI prints `error: <message>` for it
like any other store failure; the daemon maps it to STDERR_ERROR at one place.
"""

from __future__ import annotations

from goalkeeper.store.errors import StoreError


class ProtocolError(StoreError):
    """Root of every error raised by goalkeeper.protocol."""


class EndOfStream(ProtocolError):
    """The peer closed the connection in the middle of a message (or between messages)."""


class LimitExceeded(ProtocolError):
    """A length or count on the wire is larger than we accept (a malformed or hostile peer).

    Attributes:
        what: what was being read ("string", "set of strings", "frame", ...).
        size: the size the peer announced.
        limit: the largest we accept there.
    """

    def __init__(self, what: str, size: int, limit: int):
        self.what, self.size, self.limit = what, size, limit
        super().__init__(f"{what} of {size} bytes/items on the wire exceeds the limit of {limit}")


class BadWireData(ProtocolError):
    """Bytes that decode but do not mean anything (bad padding, a bool that is 7, a bad tag)."""


class UnsupportedVersion(ProtocolError):
    """The peer speaks a protocol version we cannot talk to."""


class UnknownOp(ProtocolError):
    """An opcode this daemon does not implement (Nix: `invalid operation N`)."""

    def __init__(self, op: int):
        self.op = op
        super().__init__(f"invalid operation {op}")


class RemoteError(ProtocolError):
    """An error the other side sent as STDERR_ERROR.

    Attributes:
        message: the formatted message (without `error: `; may carry ANSI colours).
        level: the verbosity level it was logged at (≥ 26), else 0.
        status: the exit status it carried (< 26 only; 1 otherwise).
        traces: the hints of its trace, innermost last.
    """

    def __init__(self, message: str, *, level: int = 0, status: int = 1, traces: tuple[str, ...] = ()):
        self.message, self.level, self.status, self.traces = message, level, status, traces
        self.exit_status = status
        super().__init__(message)
