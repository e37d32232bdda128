"""The seed's `DerivationGoal` as a pure state machine (no threads, no processes).

Each method named after a seed state does what that state does in
`derivation-goal.cc`, in the same order, so the two read side by side. What the
seed does synchronously and cheaply (validity queries, reading a `.drv`, trying a
non-blocking output lock) goes through `GoalContext`; everything slow or
concurrent (other goals, build slots, running the builder, registering outputs)
is returned as *effects* that the thin actor in `derivation_goal.py` carries out,
feeding the outcome back as an *event*. Tests drive it with a fake context.

Not here: the build itself (`startBuilder`, in the sandbox package and
`build_runner.py`) and `registerOutputs` (in the outputs module); both are
effects whose results come back as `BuildExited` / `OutputsRegistered`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from goalkeeper.store.content_address import ContentAddress
from goalkeeper.store.derivation import BasicDerivation, CAFixed, Derivation, DerivationType
from goalkeeper.store.errors import StoreError
from goalkeeper.store.hashes import Hash
from goalkeeper.store.paths import StorePath
from goalkeeper.store.realisations import DrvOutput
from goalkeeper.store.settings import MissingExperimentalFeature

from .results import BuildResult, ExitCode, FailureKind, Status
from .user_lock import BuildUser


class BuildMode(enum.IntEnum):
    """`BuildMode`; the numbers are the worker protocol's."""

    Normal = 0
    Repair = 1
    Check = 2


class PathStatus(enum.Enum):
    ABSENT = "absent"
    CORRUPT = "corrupt"
    VALID = "valid"


@dataclass(frozen=True, slots=True)
class KnownOutput:
    path: StorePath
    status: PathStatus

    def is_valid(self) -> bool:
        return self.status is PathStatus.VALID

    def is_present(self) -> bool:
        return self.status is not PathStatus.ABSENT


@dataclass(slots=True)
class InitialOutput:
    wanted: bool
    output_hash: Hash
    known: KnownOutput | None = None


class GoalError(Exception):
    """A condition the seed `throw`s (not a build failure): the goal ends in MiscFailure."""


# -- effects (what the actor must do) and events (what it reports back) --------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WantDerivation:
    """`addWaitee(worker.makeDerivationGoal(drv, outputs, mode))`; empty outputs = all."""

    drv_path: StorePath
    wanted_outputs: frozenset[str]
    build_mode: BuildMode


@dataclass(frozen=True, slots=True, kw_only=True)
class WantSubstitution:
    """`addWaitee(worker.makeSubstitutionGoal(path, repair, ca))`."""

    path: StorePath
    repair: bool = False
    ca: ContentAddress | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WantDrvOutputSubstitution:
    """`addWaitee(worker.makeDrvOutputSubstitutionGoal(id, repair))`: the realisation of a
    floating content-addressed output, and its output path, from a substituter."""

    drv_output: DrvOutput
    repair: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitForAWhile:
    """`worker.waitForAWhile`: wake again after a poll interval (locks, build users).

    `announce`: Nix's `actLock` activity starts now (the goal was not already waiting);
    it ends once the lock or the uid is taken, so a later wait is announced again.
    """

    reason: str
    announce: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitForBuildSlot:
    """`worker.waitForBuildSlot`: wake when a local build slot frees."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GiveBackBuildSlot:
    """The slot the worker granted is not used after all (the output locks are taken): free it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WakeUp:
    """`worker.wakeUp(this)`: run the next state on the next turn."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StartBuild:
    """Run the builder (`startBuilder`): the actor answers BuildStarted or BuildSetupFailed."""

    drv_path: StorePath
    input_paths: frozenset[StorePath]
    cur_round: int
    nr_rounds: int
    build_user: BuildUser | None = None  # run as this member of build-users-group


@dataclass(frozen=True, slots=True, kw_only=True)
class KillBuildUser:
    """`buildUser->kill()` off the goal's thread: the actor answers BuildUserKilled."""

    uid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterOutputs:
    """Run `registerOutputs` (and checkOutputs, post-build-hook): answer OutputsRegistered."""

    drv_path: StorePath
    cur_round: int
    nr_rounds: int
    build_mode: BuildMode


@dataclass(frozen=True, slots=True, kw_only=True)
class RunPostBuildHook:
    """Run the post-build hook off the goal's thread: the actor answers PostBuildHookFinished."""

    hook: str
    drv_path: str  # printed, for DRV_PATH
    out_paths: tuple[str, ...]  # printed, for OUT_PATHS


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolveAndBuild:
    """CA resolution: write the resolved derivation and want its goal (`inputsRealised`)."""

    drv_path: StorePath


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterResolvedRealisations:
    """`resolvedFinished`: copy the resolved drv's realisations to the original's ids."""

    wanted_outputs: frozenset[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Started:
    """`started()`: the user-facing "building '…'" message and the running-builds counter."""

    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished:
    """`done()` / `amDone()`: the goal's result for its waiters and the worker."""

    exit_code: ExitCode
    result: BuildResult
    failure: FailureKind | None = None
    # The seed threw an Error out of work(): Nix's Worker::run stops and buildPaths throws
    # it, so every run this goal belongs to ends with this message alone (exit 1).
    thrown: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PrintError:
    """`printError`: a message for the user that is not the goal's result."""

    message: str


Effect = (
    PrintError | WantDerivation | WantSubstitution | WaitForAWhile | WaitForBuildSlot | WakeUp | StartBuild
    | KillBuildUser | RegisterOutputs | RunPostBuildHook | ResolveAndBuild | RegisterResolvedRealisations
    | Started | Finished
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Wake:
    """Run the current state (after waitees finished, a wait elapsed, a slot freed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WaiteeDone:
    """`waiteeDone`: one goal this goal waits for has finished."""

    exit_code: ExitCode


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildStarted:
    start_time: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildSetupFailed:
    """startBuilder threw: a BuildError is the seed's InputRejected; any other error
    (`input_rejected` false) ends the goal as a MiscFailure."""

    message: str
    input_rejected: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildExited:
    """EOF on the builder's log and the builder reaped (`buildDone`)."""

    ok: bool
    message: str  # "builder for '…' failed with exit code 1;\nlast N log lines: …" when not ok
    stop_time: int
    disk_full: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildKilled:
    """The actor killed the builder: a timeout or the log limit (`timedOut`, handleChildOutput)."""

    status: Status  # TimedOut or LogLimitExceeded
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputsRegistered:
    """registerOutputs finished; `failure` and `message` are set when it threw a BuildError."""

    failure: FailureKind | None = None
    message: str = ""
    built_outputs: dict[str, str] = field(default_factory=dict)
    is_non_deterministic: bool = False
    more_rounds: bool = False  # curRound < nrRounds: build again
    post_build_hook: str = ""  # the setting (empty: none), run before the goal goes on


@dataclass(frozen=True, slots=True, kw_only=True)
class PostBuildHookFinished:
    """The post-build hook ended; `error` is Nix's ExecError text if it failed."""

    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedFinished:
    exit_code: ExitCode


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildUserKilled:
    """killUser ended; `error` is Nix's message if it failed (an Error: the run ends)."""

    error: str | None = None


Event = (
    Wake | WaiteeDone | BuildStarted | BuildSetupFailed | BuildExited | BuildKilled | OutputsRegistered
    | PostBuildHookFinished | ResolvedFinished | BuildUserKilled
)


class UserLockLike(Protocol):
    """What the goal uses of `user_lock.UserLock` (`buildUser`)."""

    build_user: BuildUser | None

    def find_free_user(self) -> bool: ...
    def release(self) -> None: ...


class GoalContext(Protocol):
    """Cheap synchronous reads (and non-blocking lock attempts) the seed does inline."""

    keep_going: bool
    use_substitutes: bool
    try_fallback: bool
    ca_derivations: bool
    build_repeat: int
    printed_drv_path: str

    def is_valid_path(self, path: StorePath) -> bool: ...
    def read_derivation(self, drv_path: StorePath) -> Derivation: ...
    def static_output_hashes(self, drv: Derivation) -> dict[str, Hash]: ...
    def known_output_paths(self, drv: Derivation) -> dict[str, StorePath | None]: ...
    def query_realisation(self, output_hash: Hash, output_name: str) -> StorePath | None: ...
    def path_contents_good(self, path: StorePath) -> bool: ...
    def compute_fs_closure(self, paths: list[StorePath]) -> set[StorePath]: ...
    def outputs_to_drv(self, drv_path: StorePath) -> dict[StorePath, StorePath]: ...
    def substitutes_allowed(self, drv: Derivation) -> bool: ...
    def input_closure(self, drv: Derivation) -> frozenset[StorePath]: ...
    def try_lock_outputs(self, paths: list[StorePath]) -> bool: ...
    def unlock_outputs(self, delete: bool) -> None: ...
    def delete_invalid_output(self, path: StorePath) -> None: ...
    def add_temp_root(self, path: StorePath) -> None: ...


class GoalBase:
    """What Nix's `Goal` gives both goal kinds: `waiteeDone`'s counting.

    Subclasses set `waitees`, `nr_failed`, `nr_no_substituters`, `nr_incomplete_closure`,
    `state` and a `ctx` with `keep_going`.
    """

    def _waitee_done(self, code: ExitCode) -> None:
        """`Goal::waiteeDone`: count failures; run the state when all are done (or on failure
        without keep-going, when the seed drops the remaining waitees)."""
        self.waitees -= 1
        if code in (ExitCode.FAILED, ExitCode.NO_SUBSTITUTERS, ExitCode.INCOMPLETE_CLOSURE):
            self.nr_failed += 1
        if code is ExitCode.NO_SUBSTITUTERS:
            self.nr_no_substituters += 1
        if code is ExitCode.INCOMPLETE_CLOSURE:
            self.nr_incomplete_closure += 1
        if self.waitees == 0 or (code is ExitCode.FAILED and not self.ctx.keep_going):
            self.waitees = 0
            self.state()


class DerivationGoalState(GoalBase):
    """One derivation goal; `handle(event)` runs the seed's state and returns effects."""

    def __init__(self, drv_path: StorePath, wanted_outputs: frozenset[str], build_mode: BuildMode,
                 ctx: GoalContext, *, new_user_lock: Callable[[], UserLockLike] | None = None):
        """`new_user_lock`: makes the goal's `buildUser` when build users are on (root and a
        non-empty build-users-group); None: builds run as the caller."""
        self.drv_path = drv_path
        self.wanted_outputs: set[str] = set(wanted_outputs)
        self.build_mode = build_mode
        self.ctx = ctx
        self.state = self.get_derivation
        self.drv: Derivation | None = None
        self.initial_outputs: dict[str, InitialOutput] = {}
        self.waitees = 0
        self.nr_failed = self.nr_no_substituters = self.nr_incomplete_closure = 0
        self.retry_substitution = False
        self.retried_substitution = False
        self._slot_asked = False  # a WaitForBuildSlot is pending: the next Wake grants it
        self._has_slot = False  # a build slot was granted and not yet used by a build
        self.need_restart = False
        self.input_paths: frozenset[StorePath] = frozenset()
        self.cur_round = 1
        self.nr_rounds = 1
        self.times_built = 0
        self.start_time = self.stop_time = 0
        self.derivation_type: DerivationType | None = None
        self.finished: Finished | None = None
        self._registered: OutputsRegistered | None = None  # while the post-build hook runs
        self._effects: list[Effect] = []
        # Nix's useDerivation: false for a goal given its derivation in memory (its .drv
        # need not exist): no input derivations, no resolution, no drv closure to consult
        self.use_derivation = True
        self.new_user_lock = new_user_lock
        self.build_user: UserLockLike | None = None  # Nix's buildUser
        self._act_lock = False  # Nix's actLock: a "waiting for ..." activity is going on
        self._after_kill: Callable[[], None] | None = None  # what follows the running killUser

    @classmethod
    def for_basic_derivation(cls, drv_path: StorePath, drv: BasicDerivation, build_mode: BuildMode,
                             ctx: GoalContext, *,
                             new_user_lock: Callable[[], UserLockLike] | None = None) -> "DerivationGoalState":
        """The goal `Worker::makeBasicDerivationGoal` makes (`Store::buildDerivation`).

        It wants every output and starts at `have_derivation` with `drv` (as a `Derivation`
        without input derivations); the `.drv` is never read, so it need not be valid.
        """
        goal = cls(drv_path, frozenset(), build_mode, ctx, new_user_lock=new_user_lock)
        goal.use_derivation = False
        goal.drv = Derivation.from_basic(drv)
        goal.state = goal.have_derivation
        # keeps the "<drv>.chroot" directory from the garbage collector (isActiveTempFile)
        ctx.add_temp_root(drv_path)
        return goal

    def lend_build_slot(self) -> bool:
        """Take a slot the worker lends for one activation (`Alone`); False if this goal
        already waits for one (it is granted in order) or holds one."""
        if self._slot_asked or self._has_slot:
            return False
        self._has_slot = True
        return True

    def return_unused_slot(self) -> bool:
        """After the activation: whether a lent slot went unused (it goes back to the worker)."""
        unused, self._has_slot = self._has_slot, False
        return unused

    def key(self) -> str:
        """`DerivationGoal::key`: build in name order; "b$" sorts after substitutions ("a$")."""
        return f"b${self.drv_path.name}${self.ctx.printed_drv_path}"

    # -- driving ---------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Effect]:
        """Apply one event; return the effects it produced (the last may be Finished)."""
        self._effects = []
        if self.finished is not None:
            return []
        try:
            match event:
                case WaiteeDone(exit_code=code):
                    self._waitee_done(code)
                case Wake():
                    self.state()
                case BuildStarted(start_time=t):
                    self.start_time = t
                case BuildSetupFailed(message=msg, input_rejected=rejected):
                    self.ctx.unlock_outputs(delete=False)
                    # a BuildError is InputRejected; a plain Error escapes work() and ends the run
                    status = Status.InputRejected if rejected else Status.MiscFailure
                    self._done(status, msg, thrown=not rejected)
                case BuildExited():
                    # buildDone: no process of the build user may outlive the build, or it
                    # could change the outputs after they were checked and chown'ed to us
                    self._kill_build_user_then(lambda: self.build_done(event))
                case BuildKilled(status=status, message=msg):
                    self._kill_build_user_then(lambda: self.build_killed(status, msg))
                case BuildUserKilled(error=error):
                    self.build_user_killed(error)
                case OutputsRegistered():
                    self.outputs_registered(event)
                case PostBuildHookFinished(error=error):
                    self.post_build_hook_finished(error)
                case ResolvedFinished(exit_code=code):
                    self.resolved_finished(code)
                case _:
                    raise TypeError(f"unexpected event {event!r}")
        except (GoalError, StoreError) as e:
            # The seed throws these out of work(): Nix then ends the whole run with the
            # message and exit 1 (`Finished.thrown`).
            self._done(Status.MiscFailure, str(e), thrown=True)
        return self._effects

    def _emit(self, effect: Effect) -> None:
        self._effects.append(effect)

    def _add_waitee(self, effect: WantDerivation | WantSubstitution) -> None:
        self.waitees += 1
        self._emit(effect)

    # -- the seed's states -----------------------------------------------------------------

    def get_derivation(self) -> None:
        if self.build_mode is BuildMode.Normal and self.ctx.is_valid_path(self.drv_path):
            self.load_derivation()
            return
        self._add_waitee(WantSubstitution(path=self.drv_path))
        self.state = self.load_derivation

    def load_derivation(self) -> None:
        if self.nr_failed != 0:
            self._done(Status.MiscFailure, f"cannot build missing derivation '{self.ctx.printed_drv_path}'")
            return
        self.ctx.add_temp_root(self.drv_path)
        self.drv = self.ctx.read_derivation(self.drv_path)
        self.have_derivation()

    def have_derivation(self) -> None:
        drv = self.drv
        assert drv is not None
        if drv.type() is DerivationType.CA_FLOATING and not self.ctx.ca_derivations:
            raise GoalError(str(MissingExperimentalFeature("ca-derivations")))
        self.retry_substitution = False
        for path in self.ctx.known_output_paths(drv).values():
            if path is not None:
                self.ctx.add_temp_root(path)
        for name, output_hash in self.ctx.static_output_hashes(drv).items():
            self.initial_outputs.setdefault(name, InitialOutput(wanted=True, output_hash=output_hash))

        self.check_path_validity()
        if self._all_wanted_valid() and self.build_mode is BuildMode.Normal:
            self._done(Status.AlreadyValid)
            return

        if self.ctx.use_substitutes and self.ctx.substitutes_allowed(drv):
            for name, status in self.initial_outputs.items():
                if not status.wanted:
                    continue
                if status.known is None:
                    # Nix 2.8 (the seed only warned "do not know how to query for unknown
                    # floating CA output yet" and built): substitute the output's realisation
                    self._add_waitee(WantDrvOutputSubstitution(
                        drv_output=DrvOutput(status.output_hash, name),
                        repair=self.build_mode is BuildMode.Repair))
                    continue
                self._add_waitee(WantSubstitution(
                    path=status.known.path,
                    repair=self.build_mode is BuildMode.Repair,
                    ca=_derivation_ca(drv),
                ))

        if self.waitees == 0:
            self.outputs_substitution_tried()
        else:
            self.state = self.outputs_substitution_tried

    def outputs_substitution_tried(self) -> None:
        if (self.nr_failed > 0 and self.nr_failed > self.nr_no_substituters + self.nr_incomplete_closure
                and not self.ctx.try_fallback):
            self._done(
                Status.TransientFailure,
                f"some substitutes for the outputs of derivation '{self.ctx.printed_drv_path}' failed "
                "(usually happens due to networking issues); try '--fallback' to build derivation from source ",
            )
            return
        if self.nr_incomplete_closure > 0 and self.nr_incomplete_closure == self.nr_failed:
            self.retry_substitution = True
        self.nr_failed = self.nr_no_substituters = self.nr_incomplete_closure = 0

        if self.need_restart:
            self.need_restart = False
            self.have_derivation()
            return

        self.check_path_validity()
        nr_invalid = sum(
            1 for s in self.initial_outputs.values() if s.wanted and (s.known is None or not s.known.is_valid())
        )
        if self.build_mode is BuildMode.Normal and nr_invalid == 0:
            self._done(Status.Substituted)
            return
        if self.build_mode is BuildMode.Repair and nr_invalid == 0:
            self.repair_closure()
            return
        if self.build_mode is BuildMode.Check and nr_invalid > 0:
            raise GoalError(
                f"some outputs of '{self.ctx.printed_drv_path}' are not valid, so checking is not possible"
            )
        self.gave_up_on_substitution()

    def gave_up_on_substitution(self) -> None:
        drv = self.drv
        assert drv is not None
        self.wanted_outputs.clear()  # from now on checkPathValidity checks all outputs
        input_mode = BuildMode.Repair if self.build_mode is BuildMode.Repair else BuildMode.Normal
        for input_drv, outputs in sorted(drv.input_drvs.items()):
            self._add_waitee(WantDerivation(drv_path=input_drv, wanted_outputs=frozenset(outputs),
                                            build_mode=input_mode))
        for src in sorted(drv.input_srcs):
            if self.ctx.is_valid_path(src):
                continue
            if not self.ctx.use_substitutes:
                raise GoalError(
                    f"dependency '{self._print(src)}' of '{self.ctx.printed_drv_path}' does not exist, "
                    "and substitution is disabled"
                )
            self._add_waitee(WantSubstitution(path=src))
        if self.waitees == 0:
            self.inputs_realised()
        else:
            self.state = self.inputs_realised

    def repair_closure(self) -> None:
        """Our outputs are valid; check the rest of their closure and repair what is corrupt."""
        drv = self.drv
        assert drv is not None
        outputs = self.ctx.known_output_paths(drv)
        wanted = [p for name, p in outputs.items()
                  if p is not None and (not self.wanted_outputs or name in self.wanted_outputs)]
        closure = set(self.ctx.compute_fs_closure(wanted))
        closure.difference_update(p for p in outputs.values() if p is not None)
        # which derivation in our input closure produced each path
        outputs_to_drv = self.ctx.outputs_to_drv(self.drv_path) if self.use_derivation else {}
        for path in sorted(closure):
            if self.ctx.path_contents_good(path):
                continue
            self._emit(PrintError(message=f"found corrupted or missing path '{self._print(path)}' "
                                          f"in the output closure of '{self.ctx.printed_drv_path}'"))
            producer = outputs_to_drv.get(path)
            if producer is None:
                self._add_waitee(WantSubstitution(path=path, repair=True))
            else:
                self._add_waitee(WantDerivation(drv_path=producer, wanted_outputs=frozenset(),
                                                build_mode=BuildMode.Repair))
        if self.waitees == 0:
            self._done(Status.AlreadyValid)
            return
        self.state = self.closure_repaired

    def closure_repaired(self) -> None:
        if self.nr_failed > 0:
            raise GoalError(
                f"some paths in the output closure of derivation '{self.ctx.printed_drv_path}' could not be repaired"
            )
        self._done(Status.AlreadyValid)

    def inputs_realised(self) -> None:
        drv = self.drv
        assert drv is not None
        if self.nr_failed != 0:
            if not self.use_derivation:
                raise GoalError(f"some dependencies of '{self.ctx.printed_drv_path}' are missing")
            self._done(
                Status.DependencyFailed,
                f"{self.nr_failed} dependencies of derivation '{self.ctx.printed_drv_path}' failed to build",
            )
            return
        if self.retry_substitution and not self.retried_substitution:
            # once only (Nix 2.8's retriedSubstitution; the seed retried for as long as the
            # closure stayed incomplete, forever when a cache lacks a path for good)
            self.retried_substitution = True
            self.have_derivation()
            return
        dtype = drv.type()
        if self.use_derivation and self.ctx.ca_derivations and (
            (drv.input_drvs and dtype.is_ca) or dtype is DerivationType.DEFERRED
        ):
            self._emit(ResolveAndBuild(drv_path=self.drv_path))
            self.state = self._await_resolved
            return
        self.input_paths = self.ctx.input_closure(drv)
        self.derivation_type = dtype
        # Don't repeat fixed-output derivations: their output hash verifies them.
        self.nr_rounds = 1 if dtype.is_fixed else self.ctx.build_repeat + 1
        self.state = self.try_to_build
        self._emit(WakeUp())

    def _await_resolved(self) -> None:
        """Spurious wake-ups while the resolved goal runs are ignored (it reports ResolvedFinished)."""

    def try_to_build(self) -> None:
        drv = self.drv
        assert drv is not None
        if self._slot_asked:  # this Wake is the worker granting the slot try_local_build asked for
            self._slot_asked = False
            self._has_slot = True
        lock_paths = sorted(p for p in self.ctx.known_output_paths(drv).values() if p is not None)
        if not self.ctx.try_lock_outputs(lock_paths):
            if self._has_slot:  # Nix counts only running builds: no slot is kept while waiting for a lock
                self._has_slot = False
                self._emit(GiveBackBuildSlot())
            self._wait_for_a_while("waiting for lock on " + ", ".join(f"'{self._print(p)}'" for p in lock_paths))
            return
        self._act_lock = False
        self.check_path_validity()
        if self.build_mode is not BuildMode.Check and self._all_wanted_valid():
            # "skipping build of derivation '…', someone beat us to it"
            self.ctx.unlock_outputs(delete=True)
            self._done(Status.AlreadyValid)
            return
        for status in self.initial_outputs.values():
            if status.known is None or status.known.is_valid():
                continue
            self.ctx.delete_invalid_output(status.known.path)
        # No build hook in goalkeeper (yet): every build is local.
        if self._has_slot:
            # Nix wakes up once more before tryLocalBuild; the slot is reserved for this
            # goal, so no other goal can come first, and going on now saves a round.
            self.try_local_build()
            return
        self.state = self.try_local_build
        self._emit(WakeUp())

    def try_local_build(self) -> None:
        if self._has_slot:
            if self.new_user_lock is not None:
                self._acquire_build_user()
                return
            self._start_builder()
            return
        # Nix 2.8's tryLocalBuild with every slot taken: give up the output locks while
        # waiting (another process may build the outputs meanwhile) and, once the worker
        # granted a slot, start again at tryToBuild (relock, "someone beat us to it").
        self.ctx.unlock_outputs(delete=False)
        self._slot_asked = True
        self.state = self.try_to_build
        self._emit(WaitForBuildSlot())

    def _acquire_build_user(self) -> None:
        """tryLocalBuild with build users: take a free uid and kill its processes, or wait.

        The slot stays with the goal while it waits: Nix counts running builds only, but
        every other build would wait for a uid as well.
        """
        if self.build_user is None:
            self.build_user = self.new_user_lock()
        if not self.build_user.find_free_user():
            self.state = self.try_local_build
            self._wait_for_a_while(f"waiting for UID to build '{self.ctx.printed_drv_path}'")
            return
        self._act_lock = False
        # Make sure that no other processes are executing under this uid.
        self._has_slot = False  # the build holds it now (the kill runs off this thread)
        self._kill_build_user_then(self._start_builder)

    def _kill_build_user_then(self, then: Callable[[], None]) -> None:
        """`buildUser->kill()`, then `then` (at once when there is no build user)."""
        if self.build_user is None or self.build_user.build_user is None:
            then()
            return
        self._after_kill = then
        self.state = self._killing_build_user
        self._emit(KillBuildUser(uid=self.build_user.build_user.uid))

    def _killing_build_user(self) -> None:
        """Spurious wake-ups while killUser runs are ignored (it reports BuildUserKilled)."""

    def build_user_killed(self, error: str | None) -> None:
        then, self._after_kill = self._after_kill, None
        assert then is not None
        if error is not None:
            # killUser throws an Error: it escapes work() and ends the run
            self.ctx.unlock_outputs(delete=False)
            raise GoalError(error)
        then()

    def _release_build_user(self) -> None:
        """`buildUser.reset()`: another build may take the uid now."""
        if self.build_user is not None:
            user, self.build_user = self.build_user, None
            user.release()

    def take_build_user(self) -> UserLockLike | None:
        """For a goal going away (cancelled, crashed): hand over its build user, which the
        actor kills and then releases, as ~DerivationGoal's killChild does."""
        user, self.build_user = self.build_user, None
        return user

    def _wait_for_a_while(self, reason: str) -> None:
        announce, self._act_lock = not self._act_lock, True
        self._emit(WaitForAWhile(reason=reason, announce=announce))

    def _start_builder(self) -> None:
        self._has_slot = False  # the build holds it now; the actor frees it when the build ends
        self.state = self._building
        build_user = self.build_user.build_user if self.build_user is not None else None
        self._emit(StartBuild(drv_path=self.drv_path, input_paths=self.input_paths,
                              cur_round=self.cur_round, nr_rounds=self.nr_rounds, build_user=build_user))
        self._emit(Started(message=self._started_message()))

    def _building(self) -> None:
        """Spurious wake-ups while the builder runs are ignored (the seed waits for EOF)."""

    def _started_message(self) -> str:
        p = self.ctx.printed_drv_path
        if self.build_mode is BuildMode.Repair:
            return f"repairing outputs of '{p}'"
        if self.build_mode is BuildMode.Check:
            return f"checking outputs of '{p}'"
        if self.nr_rounds > 1:
            return f"building '{p}' (round {self.cur_round}/{self.nr_rounds})"
        return f"building '{p}'"

    def build_killed(self, status: Status, message: str) -> None:
        """timedOut / the log limit: killChild (the build user's processes too), then done."""
        self.ctx.unlock_outputs(delete=False)
        self._done(status, message)

    def build_done(self, event: BuildExited) -> None:
        self.times_built += 1
        self.stop_time = event.stop_time
        if not event.ok:
            self.ctx.unlock_outputs(delete=False)
            # seed: statusOk(status) false -> TransientFailure if impure (FO) or disk full
            dtype = self.derivation_type
            transient = (dtype is not None and not dtype.is_sandboxed) or event.disk_full
            self._done(Status.TransientFailure if transient else Status.PermanentFailure, event.message,
                       FailureKind.BUILD_ERROR)
            return
        self.state = self._registering
        self._emit(RegisterOutputs(drv_path=self.drv_path, cur_round=self.cur_round,
                                   nr_rounds=self.nr_rounds, build_mode=self.build_mode))

    def _registering(self) -> None:
        """Spurious wake-ups while outputs are registered are ignored."""

    def outputs_registered(self, event: OutputsRegistered) -> None:
        if event.failure is not None:
            self.ctx.unlock_outputs(delete=False)
            # the builder exited 0, so a rejected output is OutputRejected (seed: statusOk)
            # NotDeterministic both from --check (which sets worker.checkMismatch: exit 104) and
            # from build-repeat's "differs from previous round" (which does not: exit 1)
            status = (Status.NotDeterministic
                      if event.failure is FailureKind.NOT_DETERMINISTIC or event.is_non_deterministic
                      else Status.OutputRejected)
            self._done(status, event.message, event.failure, event.is_non_deterministic)
            return
        if event.post_build_hook:
            # buildDone runs it after every successful registerOutputs, --check and rounds too
            self._registered = event
            self.state = self._running_post_build_hook
            self._emit(RunPostBuildHook(hook=event.post_build_hook, drv_path=self.ctx.printed_drv_path,
                                        out_paths=tuple(event.built_outputs.values())))
            return
        self._after_post_build_hook(event)

    def _running_post_build_hook(self) -> None:
        """Spurious wake-ups while the post-build hook runs are ignored."""

    def post_build_hook_finished(self, error: str | None) -> None:
        event, self._registered = self._registered, None
        assert event is not None
        if error is not None:
            # an ExecError, not a BuildError: it escapes buildDone and ends the whole run
            self.ctx.unlock_outputs(delete=False)
            self._done(Status.MiscFailure, error, thrown=True)
            return
        self._after_post_build_hook(event)

    def _after_post_build_hook(self, event: OutputsRegistered) -> None:
        if self.build_mode is BuildMode.Check:
            self._done(Status.Built, built_outputs=event.built_outputs)
            return
        if event.more_rounds:
            self.cur_round += 1
            self._release_build_user()  # buildDone ends; the next round takes a uid anew
            self.ctx.unlock_outputs(delete=False)
            self.state = self.try_to_build
            self._emit(WakeUp())
            return
        self.ctx.unlock_outputs(delete=True)
        self._done(Status.Built, built_outputs=event.built_outputs,
                   is_non_deterministic=event.is_non_deterministic)

    def resolved_finished(self, code: ExitCode) -> None:
        if code is ExitCode.SUCCESS:
            self._emit(RegisterResolvedRealisations(wanted_outputs=frozenset(self.wanted_outputs)))
        status = Status.Built if code is ExitCode.SUCCESS else Status.DependencyFailed
        self._finish(code if code is not ExitCode.BUSY else ExitCode.FAILED,
                     BuildResult(status=status))

    # -- helpers ---------------------------------------------------------------------------

    def add_wanted_outputs(self, outputs: frozenset[str]) -> None:
        """`addWantedOutputs`: another goal wants (more of) this derivation's outputs."""
        if not self.wanted_outputs:
            return  # already want all
        if not outputs:
            self.wanted_outputs.clear()
            self.need_restart = True
            return
        for o in outputs:
            if o not in self.wanted_outputs:
                self.wanted_outputs.add(o)
                self.need_restart = True

    def check_path_validity(self) -> None:
        drv = self.drv
        assert drv is not None
        check_hash = self.build_mode is BuildMode.Repair
        for name, path in self.ctx.known_output_paths(drv).items():
            info = self.initial_outputs[name]
            info.wanted = not self.wanted_outputs or name in self.wanted_outputs
            if path is not None:
                if not self.ctx.is_valid_path(path):
                    status = PathStatus.ABSENT
                elif not check_hash or self.ctx.path_contents_good(path):
                    status = PathStatus.VALID
                else:
                    status = PathStatus.CORRUPT
                info.known = KnownOutput(path, status)
            if self.ctx.ca_derivations:
                real = self.ctx.query_realisation(info.output_hash, name)
                if real is not None:
                    info.known = KnownOutput(real, PathStatus.VALID)

    def _all_wanted_valid(self) -> bool:
        return all(s.known is not None and s.known.is_valid() for s in self.initial_outputs.values() if s.wanted)

    def _print(self, path: StorePath) -> str:
        prefix = self.ctx.printed_drv_path[: -len(self.drv_path.base)]
        return prefix + path.base

    def _done(self, status: Status, message: str = "", failure: FailureKind | None = None,
              is_non_deterministic: bool = False, built_outputs: dict[str, str] | None = None,
              thrown: bool = False) -> None:
        """`DerivationGoal::done`."""
        if built_outputs is None and status.success and self.drv is not None:
            built_outputs = {name: self._print(s.known.path) for name, s in self.initial_outputs.items()
                             if s.known is not None and s.known.is_valid()}
        result = BuildResult(
            status=status, error_msg=message, times_built=self.times_built,
            is_non_deterministic=is_non_deterministic, start_time=self.start_time,
            stop_time=self.stop_time, built_outputs=built_outputs or {},
        )
        self._finish(ExitCode.SUCCESS if status.success else ExitCode.FAILED, result, failure, thrown)

    def _finish(self, code: ExitCode, result: BuildResult, failure: FailureKind | None = None,
                thrown: bool = False) -> None:
        # At the end of buildDone, after the outputs are registered (or when startBuilder
        # failed): not earlier, or another build could take the uid and touch them.
        self._release_build_user()
        self.finished = Finished(exit_code=code, result=result, failure=failure, thrown=thrown)
        self.state = self._after_done
        self._emit(self.finished)

    def _after_done(self) -> None:
        """A finished goal ignores wake-ups."""


def _derivation_ca(drv: Derivation) -> ContentAddress | None:
    """`getDerivationCA`: the fixed output's content address, for substitution."""
    out = drv.outputs.get("out")
    if isinstance(out, CAFixed):
        return ContentAddress(out.method, out.hash)
    return None
