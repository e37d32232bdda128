"""Nix 2.8's `PathSubstitutionGoal` as a pure state machine (no threads, no I/O of its own).

States as in `substitution-goal.cc`: init, tryNext, referencesValid, tryToRun,
finished. Querying a substituter for a path's info is cheap and synchronous in
Nix ("FIXME: make async"), so it goes through the context here too; copying the
path is slow and runs outside the actor, as Nix runs it on its own thread: the
`RunSubstitution` effect, answered by `SubstitutionFinished`.

With no substituters configured, every goal ends in `NoSubstituters` with
`ecNoSubstituters`, which the derivation goal counts separately so that it
simply builds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from goalkeeper.store.content_address import ContentAddress
from goalkeeper.store.errors import StoreError
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.paths import StoreDir, StorePath
from goalkeeper.store.realisations import DrvOutput, Realisation

from .derivation_goal_state import (Finished, GoalBase, PrintError, Wake, WaiteeDone, WaitForBuildSlot, WakeUp,
                                    WantSubstitution)
from .results import BuildResult, ExitCode, Status


class Substituter(Protocol):
    """What a substitution goal needs of a substituter (a binary cache, another store)."""

    uri: str
    store_dir: StoreDir
    is_trusted: bool

    def query_path_info(self, path: StorePath) -> ValidPathInfo | None:
        """The path's info, or None if the substituter does not have it (Nix's InvalidPath)."""

    def copy_path(self, path: StorePath, info: ValidPathInfo, repair: bool, check_sigs: bool) -> None:
        """`copyStorePath` into the local store; raises StoreError (SubstituteGone if it vanished)."""

    def query_realisation(self, id: DrvOutput) -> Realisation | None:
        """The substituter's realisation of a CA derivation output, or None."""


class SubstituteGone(StoreError):
    """The substitute disappeared between the query and the copy: as if it never existed."""


class SubstituterDisabled(StoreError):
    """The substituter is unreachable and disabled itself."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSubstitution:
    """Copy `path` from `substituter` (on another thread): answer SubstitutionFinished."""

    substituter: Substituter
    sub_path: StorePath
    info: ValidPathInfo
    repair: bool
    check_sigs: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Warn:
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SubstitutionFinished:
    error: StoreError | None = None


class SubstitutionContext(Protocol):
    keep_going: bool
    use_substitutes: bool
    try_fallback: bool
    read_only: bool
    substituters: tuple[Substituter, ...]
    store_dir: StoreDir

    def is_valid_path(self, path: StorePath) -> bool: ...
    def add_temp_root(self, path: StorePath) -> None: ...
    def path_info_is_untrusted(self, info: ValidPathInfo) -> bool: ...
    def mark_contents_good(self, path: StorePath) -> None: ...


class SubstitutionGoalBase(GoalBase):
    """What both substitution goals share: driving states by events, and `done`.

    Subclasses define their first state, `init`, and may handle more events in `_other_event`.
    """

    def __init__(self, ctx):
        self.ctx = ctx
        self.state = self.init
        self.subs: list[Substituter] = []  # the substituters left to try
        self.sub: Substituter | None = None
        self.substituter_failed = False
        self.waitees = 0
        self.nr_failed = self.nr_no_substituters = self.nr_incomplete_closure = 0
        self.finished: Finished | None = None
        self._effects: list = []

    def handle(self, event) -> list:
        self._effects = []
        if self.finished is not None:
            return []
        try:
            match event:
                case Wake():
                    self.state()
                case WaiteeDone(exit_code=code):
                    self._waitee_done(code)
                case _:
                    self._other_event(event)
        except StoreError as e:
            # Nix lets these escape work() and end the run; here the goal fails with the message.
            self._done(ExitCode.FAILED, Status.MiscFailure, str(e), thrown=True)
        return self._effects

    def _other_event(self, event) -> None:
        raise TypeError(f"unexpected event {event!r}")

    def _emit(self, effect) -> None:
        self._effects.append(effect)

    def _done(self, code: ExitCode, status: Status, message: str = "", thrown: bool = False) -> None:
        """`done` / `amDone`: the message goes into the result, not to the user."""
        self.finished = Finished(exit_code=code, result=BuildResult(status=status, error_msg=message),
                                 thrown=thrown)
        self.state = self._after_done
        self._emit(self.finished)

    def _after_done(self) -> None:
        """A finished goal ignores wake-ups."""


class SubstitutionGoalState(SubstitutionGoalBase):
    """One substitution goal; `handle(event)` runs the current state and returns effects."""

    def __init__(self, path: StorePath, repair: bool, ca: ContentAddress | None, ctx: SubstitutionContext):
        self.path = path
        self.repair = repair
        self.ca = ca
        super().__init__(ctx)
        self.sub_path: StorePath | None = None
        self.info: ValidPathInfo | None = None

    def key(self) -> str:
        """`PathSubstitutionGoal::key`: "a$" sorts substitutions before builds."""
        return f"a${self.path.name}${self.ctx.store_dir.print(self.path)}"

    def _other_event(self, event) -> None:
        if not isinstance(event, SubstitutionFinished):
            super()._other_event(event)
        self.finished_state(event.error)

    def _printed(self) -> str:
        return self.ctx.store_dir.print(self.path)

    def init(self) -> None:
        self.ctx.add_temp_root(self.path)
        if not self.repair and self.ctx.is_valid_path(self.path):
            self._done(ExitCode.SUCCESS, Status.AlreadyValid)
            return
        if self.ctx.read_only:
            raise StoreError(f"cannot substitute path '{self._printed()}' - no write access to the Nix store")
        self.subs = list(self.ctx.substituters) if self.ctx.use_substitutes else []
        self.try_next()

    def try_next(self) -> None:
        self.sub = self.sub_path = self.info = None
        if not self.subs:
            # "Hack: don't indicate failure if there were no substituters. In that case
            # the calling derivation should just do a build."
            self._done(ExitCode.FAILED if self.substituter_failed else ExitCode.NO_SUBSTITUTERS,
                       Status.NoSubstituters,
                       f"path '{self._printed()}' is required, but there is no substituter that can build it")
            return
        sub = self.subs.pop(0)
        sub_path = None
        if self.ca is not None:
            sub_path = sub.store_dir.make_fixed_output_path_from_ca(self.path.name, self.ca)
        elif sub.store_dir.path != self.ctx.store_dir.path:
            self.try_next()
            return
        try:
            info = sub.query_path_info(sub_path or self.path)
        except SubstituterDisabled:
            if self.ctx.try_fallback:
                self.try_next()
                return
            raise
        except StoreError as e:
            if self.ctx.try_fallback:
                self._emit(PrintError(message=f"error: {e}"))
                self.try_next()
                return
            raise
        if info is None:
            self.try_next()
            return
        if info.path != self.path:
            if info.ca is not None and not info.references:
                info = _with_path(info, self.path)
            else:
                self._emit(PrintError(message=f"asked '{sub.uri}' for '{self._printed()}' but got "
                                              f"'{sub.store_dir.print(info.path)}'"))
                self.try_next()
                return
        if not sub.is_trusted and self.ctx.path_info_is_untrusted(info):
            self._emit(Warn(message=f"the substitute for '{self._printed()}' from '{sub.uri}' is not signed by "
                                    "any of the keys in 'trusted-public-keys'"))
            self.try_next()
            return
        self.sub, self.sub_path, self.info = sub, sub_path, info
        for ref in sorted(info.references):
            if ref != self.path:  # ignore self-references
                self.waitees += 1
                self._emit(WantSubstitution(path=ref))
        if self.waitees == 0:
            self.references_valid()
        else:
            self.state = self.references_valid

    def references_valid(self) -> None:
        if self.nr_failed > 0:
            code = (ExitCode.INCOMPLETE_CLOSURE if self.nr_no_substituters > 0 or self.nr_incomplete_closure > 0
                    else ExitCode.FAILED)
            self._done(code, Status.DependencyFailed,
                       f"some references of path '{self._printed()}' could not be realised")
            return
        self.state = self.try_to_run
        self._emit(WakeUp())

    def try_to_run(self) -> None:
        """Needs a build slot (Nix 2.8 counts substitutions as local builds): the worker wakes us."""
        self.state = self._start
        self._emit(WaitForBuildSlot())

    def _start(self) -> None:
        assert self.sub is not None and self.info is not None
        self.state = self._running
        self._emit(RunSubstitution(substituter=self.sub, sub_path=self.sub_path or self.path, info=self.info,
                                   repair=self.repair, check_sigs=not self.sub.is_trusted))

    def _running(self) -> None:
        """Spurious wake-ups while the copy runs are ignored."""

    def finished_state(self, error: StoreError | None) -> None:
        if error is not None:
            self._emit(PrintError(message=f"error: {error}"))
            if not isinstance(error, SubstituteGone):
                # Fail the parent build unless --fallback is given.
                self.substituter_failed = True
            self.state = self.try_next
            self._emit(WakeUp())
            return
        self.ctx.mark_contents_good(self.path)
        self._done(ExitCode.SUCCESS, Status.Substituted)


def _with_path(info: ValidPathInfo, path: StorePath) -> ValidPathInfo:
    return replace(info, path=path)
