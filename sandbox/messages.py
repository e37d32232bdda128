"""What the engine and the spawner say to each other, and how it is framed.

Over one Unix stream socketpair: requests go engine -> spawner, events spawner -> engine.
A frame is a 4-byte big-endian length and a pickle (dill's, for what the C pickler cannot
write).  The one file descriptor that
crosses (a build's pty master) rides as SCM_RIGHTS on the frame of its ``Spawned`` event;
the kernel delivers it with the first byte of that frame, so the receiver queues fds in
arrival order and hands the next one to each ``Spawned`` it decodes.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass

from . import child
from .spec import BuildSpec, ChildExited

MAX_FRAME = 64 << 20  # a spec carries the env; Linux caps argv+env far below this
_LENGTH = struct.Struct(">I")


# Requests (engine -> spawner): commands, imperative.

@dataclass(frozen=True, slots=True, kw_only=True)
class Spawn:
    """Start a build.  The spawner reads it as a `SpawnRequest` (see there)."""

    build_id: int
    spec: BuildSpec

    def __reduce__(self):
        spec = pickle.dumps(self.spec, protocol=pickle.HIGHEST_PROTOCOL)
        key = child.pool_key(self.spec)
        if key is not None:
            # Its repr: plain values and dataclasses, each shown by its fields, so equal
            # keys give equal bytes (a pickle's memo could tell apart equal keys whose
            # parts happen to be shared or not).
            key = repr(key).encode()
        return (SpawnRequest, (self.build_id, spec, key, self.spec.pty_owner))


class SpawnRequest:
    """A `Spawn` as the spawner receives it: the spec still pickled.

    A prepared child takes its build's spec as these very bytes, so the spawner reads
    only the build id, the pool key (`child.pool_key`, as bytes: equal bytes, equal
    keys) and the pty's owner (the spawner opens the pty) on the way -- no spec decoded
    and encoded again in a process whose every write after a fork copies a page (~0.7 ms
    a request).
    """

    __slots__ = ("build_id", "spec_pickle", "pool_key", "pty_owner")

    def __init__(self, build_id: int, spec_pickle: bytes, pool_key: bytes | None,
                 pty_owner: int | None = None):
        self.build_id, self.spec_pickle, self.pool_key = build_id, spec_pickle, pool_key
        self.pty_owner = pty_owner

    def spec(self) -> BuildSpec:
        return pickle.loads(self.spec_pickle)


@dataclass(frozen=True, slots=True, kw_only=True)
class Kill:
    """Signal the build's process group (the builder called setsid, so pgid == pid)."""

    build_id: int
    signal: int


# Events (spawner -> engine): past tense.  Every started build gets exactly one of
# Started / SetupFailed and then exactly one Exited; a failed spawn gets SetupFailed only.

@dataclass(frozen=True, slots=True, kw_only=True)
class Spawned:
    """The child exists; ``pty_master`` (filled in by the receiver) now belongs to it."""

    build_id: int
    pid: int
    pty_master: int = -1


@dataclass(frozen=True, slots=True, kw_only=True)
class Started:
    """The builder was exec'd (the setup channel closed without a report)."""

    build_id: int
    pid: int
    spawn_ns: int  # spawner time for the request: pty, fork/clone, id maps
    setup_ns: int  # from fork to exec, as the spawner saw it (prepared: from the hand-over)
    prepared: bool = False  # a pooled child, prepared before the request, took the build


@dataclass(frozen=True, slots=True, kw_only=True)
class SetupFailed:
    build_id: int
    step: str
    errno: int
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Exited:
    build_id: int
    result: ChildExited


Request = Spawn | Kill  # a Spawn arrives as a SpawnRequest
Event = Spawned | Started | SetupFailed | Exited


def encode(message: Request | Event) -> bytes:
    # Specs and events are plain dataclasses, which the C pickler writes ten times faster
    # than dill's pure-Python one (0.04 vs 0.47 ms a Spawn); its output is a pickle dill
    # reads. What it cannot carry (an error holding a closure, say) goes through dill.
    try:
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        import dill

        payload = dill.dumps(message, protocol=dill.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes as they come, ``frames()`` yields messages."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def frames(self):
        buf = self._buf
        while len(buf) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buf)
            if length > MAX_FRAME:
                raise ValueError(f"frame of {length} bytes exceeds {MAX_FRAME}")
            end = _LENGTH.size + length
            if len(buf) < end:
                return
            message = _decode(bytes(buf[_LENGTH.size:end]))
            del buf[:end]
            yield message


def _decode(payload: bytes):
    # The C unpickler reads what `encode` wrote, dill's pickles mostly too (it imports
    # dill's reconstructors by name); dill itself only for the rest.  So the spawner never
    # imports dill: 4 MB less heap for every forked child to copy and, at exec, to unmap.
    try:
        return pickle.loads(payload)
    except Exception:
        import dill

        return dill.loads(payload)
