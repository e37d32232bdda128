"""The stderr channel (spec §7.4): what the daemon sends after each request until LAST or ERROR.

Encoders return bytes (the daemon writes them under its connection lock);
`read_message` decodes one message for the client. Fields of activities and
results are ints or strings, as Nix's `Logger::Field`.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import version
from .errors import BadWireData, RemoteError
from .wire import WireReader, WireWriter

STDERR_NEXT = 0x6F6C6D67  # "gmlo": a log line
STDERR_READ = 0x64617461  # "atad": the daemon wants data from the client
STDERR_WRITE = 0x64617416  # data for the client's sink
STDERR_LAST = 0x616C7473  # "stla": the op's reply follows
STDERR_ERROR = 0x63787470  # "ptxc": the op failed
STDERR_START_ACTIVITY = 0x53545254  # "TRTS"
STDERR_STOP_ACTIVITY = 0x53544F50  # "POTS"
STDERR_RESULT = 0x52534C54  # "TLSR"

Field = int | str

# Activity types and result types (logging.hh); the ones the daemon sends.
ACT_UNKNOWN = 0
ACT_BUILD = 105
RES_BUILD_LOG_LINE = 101
RES_SET_PHASE = 104
RES_PROGRESS = 105
LVL_ERROR, LVL_WARN, LVL_NOTICE, LVL_INFO, LVL_TALKATIVE, LVL_CHATTY, LVL_DEBUG, LVL_VOMIT = range(8)


def _fields(w: WireWriter, fields: tuple[Field, ...]) -> None:
    w.u64(len(fields))
    for f in fields:
        if isinstance(f, int):
            w.u64(0).u64(f)
        else:
            w.u64(1).string(f)


def next_line(text: str) -> bytes:
    """STDERR_NEXT: a log line (the caller includes the trailing newline, as Nix does)."""
    return WireWriter().u64(STDERR_NEXT).string(text).take()


def last() -> bytes:
    return WireWriter().u64(STDERR_LAST).take()


def read_request(max_len: int) -> bytes:
    return WireWriter().u64(STDERR_READ).u64(max_len).take()


def write_data(data: bytes) -> bytes:
    return WireWriter().u64(STDERR_WRITE).bytes(data).take()


def start_activity(act: int, level: int, type_: int, text: str, fields: tuple[Field, ...] = (),
                   parent: int = 0) -> bytes:
    w = WireWriter().u64(STDERR_START_ACTIVITY).u64(act).u64(level).u64(type_).string(text)
    _fields(w, fields)
    return w.u64(parent).take()


def stop_activity(act: int) -> bytes:
    return WireWriter().u64(STDERR_STOP_ACTIVITY).u64(act).take()


def result(act: int, type_: int, fields: tuple[Field, ...] = ()) -> bytes:
    w = WireWriter().u64(STDERR_RESULT).u64(act).u64(type_)
    _fields(w, fields)
    return w.take()


def error(message: str, client_minor: int, *, status: int = 1, level: int = LVL_ERROR,
          traces: tuple[str, ...] = ()) -> bytes:
    """STDERR_ERROR formatted for the client's minor.

    ≥ 26: the structured form (`"Error"`, level, `"Error"`, msg, no position, traces);
    the client prints `error: ` before msg itself. Below: the full text and the exit status.
    """
    w = WireWriter().u64(STDERR_ERROR)
    if version.has_structured_errors(client_minor):
        w.string("Error").u64(level).string("Error").string(message).u64(0)
        w.u64(len(traces))
        for hint in traces:
            w.u64(0).string(hint)
    else:
        w.string(f"\x1b[31;1merror:\x1b[0m {message}").u64(status)
    return w.take()


# -- decoding (client side) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Next:
    text: str


@dataclass(frozen=True, slots=True)
class Read:
    max_len: int


@dataclass(frozen=True, slots=True)
class Write:
    data: bytes


@dataclass(frozen=True, slots=True)
class Last:
    pass


@dataclass(frozen=True, slots=True)
class StartActivity:
    id: int
    level: int
    type: int
    text: str
    fields: tuple[Field, ...]
    parent: int


@dataclass(frozen=True, slots=True)
class StopActivity:
    id: int


@dataclass(frozen=True, slots=True)
class Result:
    id: int
    type: int
    fields: tuple[Field, ...]


StderrMessage = Next | Read | Write | Last | StartActivity | StopActivity | Result


def _read_fields(r: WireReader) -> tuple[Field, ...]:
    out: list[Field] = []
    for _ in range(r.count("activity fields", 1 << 10)):
        kind = r.u64()
        if kind == 0:
            out.append(r.u64())
        elif kind == 1:
            out.append(r.string())
        else:
            raise BadWireData(f"unsupported logger field type {kind}")
    return tuple(out)


def read_error(r: WireReader, daemon_minor: int) -> RemoteError:
    """The payload of a STDERR_ERROR (after its tag) as an exception to raise."""
    if not version.has_structured_errors(daemon_minor):
        message = r.string()
        return RemoteError(message, status=r.u64())
    kind = r.string(1 << 10)
    if kind != "Error":
        raise BadWireData(f"expected 'Error' in STDERR_ERROR, got '{kind}'")
    level = r.u64()
    r.string(1 << 10)  # the error's name: "Error" again
    message = r.string()
    if r.u64() != 0:
        raise BadWireData("STDERR_ERROR with a position is not supported")
    traces = []
    for _ in range(r.count("error traces", 1 << 10)):
        if r.u64() != 0:
            raise BadWireData("an error trace with a position is not supported")
        traces.append(r.string())
    return RemoteError(message, level=level, traces=tuple(traces))


def read_message(r: WireReader, daemon_minor: int) -> StderrMessage:
    """One stderr message; a STDERR_ERROR is raised as `RemoteError`."""
    tag = r.u64()
    if tag == STDERR_NEXT:
        return Next(r.string())
    if tag == STDERR_LAST:
        return Last()
    if tag == STDERR_ERROR:
        raise read_error(r, daemon_minor)
    if tag == STDERR_READ:
        return Read(r.u64())
    if tag == STDERR_WRITE:
        return Write(r.bytes())
    if tag == STDERR_START_ACTIVITY:
        act, level, type_ = r.u64(), r.u64(), r.u64()
        text = r.string()
        fields = _read_fields(r)
        return StartActivity(act, level, type_, text, fields, r.u64())
    if tag == STDERR_STOP_ACTIVITY:
        return StopActivity(r.u64())
    if tag == STDERR_RESULT:
        act, type_ = r.u64(), r.u64()
        return Result(act, type_, _read_fields(r))
    raise BadWireData(f"got unknown message type {tag:#x} from the Nix daemon")
