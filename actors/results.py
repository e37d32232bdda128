"""What goals end with: Nix's `Goal::ExitCode`, `BuildResult` and the CLI exit status.

Expected outcomes (a builder failed, timed out, produced a wrong hash) are values
of these types, never exceptions: they travel from goal to worker to caller.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ExitCode(enum.Enum):
    """`Goal::ExitCode`: how a goal ended, as its waiters see it."""

    BUSY = "busy"
    SUCCESS = "success"
    FAILED = "failed"
    NO_SUBSTITUTERS = "no-substituters"
    INCOMPLETE_CLOSURE = "incomplete-closure"


class Status(enum.IntEnum):
    """`BuildResult::Status`; the numbers are the worker protocol's (spec §9.1)."""

    Built = 0
    Substituted = 1
    AlreadyValid = 2
    PermanentFailure = 3
    InputRejected = 4
    OutputRejected = 5
    TransientFailure = 6
    CachedFailure = 7  # unused by Nix 2.8
    TimedOut = 8
    MiscFailure = 9
    DependencyFailed = 10
    LogLimitExceeded = 11
    NotDeterministic = 12
    ResolvesToAlreadyValid = 13
    NoSubstituters = 14

    @property
    def success(self) -> bool:
        return self in _SUCCESS


_SUCCESS = frozenset({Status.Built, Status.Substituted, Status.AlreadyValid, Status.ResolvesToAlreadyValid})


class FailureKind(enum.Enum):
    """Why a build's outputs were refused, for `buildDone`'s status choice and the exit bits."""

    BUILD_ERROR = "build-error"  # BuildError: output rejected, builder failed
    HASH_MISMATCH = "hash-mismatch"  # fixed-output hash mismatch (sets worker.hashMismatch)
    NOT_DETERMINISTIC = "not-deterministic"  # NotDeterministic (sets worker.checkMismatch)


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildResult:
    """`BuildResult` as Nix 2.8 reports it (op 46, `--json`)."""

    status: Status
    error_msg: str = ""
    times_built: int = 0
    is_non_deterministic: bool = False
    start_time: int = 0
    stop_time: int = 0
    # output name -> store path (full, printed) of what was built or found valid
    built_outputs: dict[str, str] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return self.status.success


@dataclass(slots=True)
class FailureFlags:
    """The worker's `permanentFailure`, `timedOut`, `hashMismatch`, `checkMismatch`."""

    permanent_failure: bool = False
    timed_out: bool = False
    hash_mismatch: bool = False
    check_mismatch: bool = False

    def exit_status(self) -> int:
        """`Worker::exitStatus` (spec §9.2): `0x60 | bits`, or 1 when no bit is set."""
        bits = 0
        if self.timed_out:
            bits |= 0x01
        if self.hash_mismatch:
            bits |= 0x02
        if self.check_mismatch:
            bits |= 0x08
        if self.permanent_failure or self.timed_out or self.hash_mismatch:
            # Nix 2.8: "failingBuilds" bit 0x04 is set for permanent failures,
            # timeouts and hash mismatches alike (100, 101, 102 observed).
            bits |= 0x04
        return 0x60 | bits if bits else 1
