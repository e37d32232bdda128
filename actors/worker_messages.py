"""Messages between the Worker actor, the goal actors and the engine.

Commands are imperative, events past tense; all are frozen, so Pykka can pass
them by reference between threads. A goal names itself by the id the worker
gave it, so a message from a goal the worker already cancelled is recognised
and dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from goalkeeper.store.paths import StorePath

from .derivation_goal_state import BuildMode, Finished, WantDerivation, WantDrvOutputSubstitution, WantSubstitution
from .results import BuildResult


@dataclass(frozen=True, slots=True)
class DerivedPath:
    """Nix's `DerivedPath`: an opaque store path, or outputs of a derivation.

    `outputs` is None for an opaque path; an empty set means every output.
    """

    path: StorePath
    outputs: frozenset[str] | None = None

    @property
    def is_built(self) -> bool:
        return self.outputs is not None


# -- to the worker -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Realise:
    """`Store::buildPaths` for one caller: `done` gets the `Realised` when every top goal ended."""

    targets: tuple[DerivedPath, ...]
    build_mode: BuildMode
    keep_going: bool
    observer: Callable[[object], None] | None
    done: Future
    # this caller's settings (a daemon connection's SetOptions); None: the engine's
    settings: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildDerivation:
    """`Store::buildDerivation` for one caller: build `drv` (a `BasicDerivation` held in memory;
    its `.drv` need not exist) as `drv_path`, on a goal of its own; `done` gets the `Realised`."""

    drv_path: StorePath
    drv: Any  # goalkeeper.store.derivation.BasicDerivation
    build_mode: BuildMode
    keep_going: bool
    observer: Callable[[object], None] | None
    done: Future
    settings: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AddWaitee:
    """A goal waits for another goal (made or found by the worker); `resolved`: the CA resolved
    derivation of the waiter, answered with `ResolvedFinished` instead of `WaiteeDone`."""

    waiter: int
    want: WantDerivation | WantSubstitution | WantDrvOutputSubstitution
    resolved: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestBuildSlot:
    goal: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseBuildSlot:
    goal: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitAWhile:
    goal: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GoalIdle:
    """The goal handled a Wake, WaiteeDone or ResolvedFinished from the worker.

    `slot_unused`: the build slot lent with its `Alone` activation was not used: free it.
    """

    goal: int
    slot_unused: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Alone:
    """An activation (Wake, WaiteeDone, ResolvedFinished) that is the only one of its round.

    Nix's worker runs every awake goal of a round, then the goals those woke, and only when
    none is awake does it look at builds that ended. A goal alone in its round that calls
    `wakeUp` on itself is therefore alone in the next round too, and so on until it waits
    for something: it may run those rounds itself at once, without a message to the worker
    for each. `slot_lent`: a build slot was free as the round began, so Nix's tryLocalBuild
    would find `nrLocalBuilds < maxBuildJobs` in these rounds; the goal may start its build
    in it without asking, and gives it back with GoalIdle if it did not.
    """

    event: object
    slot_lent: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestWake:
    """`worker.wakeUp(goal)`: run the goal's next state in the worker's next round."""

    goal: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WakeGoal:
    """A goal's wait for a while elapsed (from a timer thread)."""

    goal: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GoalStarted:
    """A build (or substitution) started: its message for the user and the running counter."""

    goal: int
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GoalSaid:
    """A line for the user from a goal (printError, warnings, the keep-failed note)."""

    goal: int
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GoalFinished:
    goal: int
    finished: Finished
    # a derivation goal's wanted outputs when it finished (empty: all); None otherwise
    wanted_outputs: frozenset[str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildLogLine:
    """A line of a builder's output (or, `is_message`, its `@nix` msg), from the runner's thread."""

    drv_path: StorePath
    line: str
    is_message: bool = False


# -- to goals ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AddWantedOutputs:
    outputs: frozenset[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel:
    """Nobody needs this goal any more: kill its build, release its locks, stop."""


# -- to observers (the engine's callers) ---------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """A line for the user's terminal, as nix-store prints it on stderr."""

    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LogLine:
    """A line of a builder's output."""

    drv_path: StorePath
    line: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """The worker's counters after a change (Nix's `updateProgress`)."""

    expected_builds: int
    running_builds: int
    done_builds: int
    failed_builds: int


EngineEvent = Message | LogLine | Progress


@dataclass(frozen=True, slots=True, kw_only=True)
class Realised:
    """What one `Realise` came to, as `Store::buildPaths` and `nix-store -r` report it.

    `error` is the message Nix would throw (printed after "error: "), None on success;
    `exit_status` is `Worker::exitStatus()` when something failed, else 0.
    """

    results: dict[DerivedPath, BuildResult]
    exit_status: int
    error: str | None = None

    @property
    def success(self) -> bool:
        return self.error is None
