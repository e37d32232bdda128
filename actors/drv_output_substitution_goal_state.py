"""Nix 2.8's `DrvOutputSubstitutionGoal` as a pure state machine.

A floating content-addressed output has no path until it is realised, so a
derivation goal cannot substitute it by path. It asks for the output's
*realisation* (`DrvOutput` -> output path) instead: this goal finds one at a
substituter (`realisations/<id>.doi` in a binary cache), substitutes the
realisations it depends on and the output path itself through their own goals,
and then registers the realisation locally, so the derivation goal finds the
output valid (`checkPathValidity` reads realisations). As `PathSubstitutionGoal`,
it ends in `ecNoSubstituters` when nobody has it, so the derivation is built.

States: init, tryNext, realisationFetched, outPathValid, finished. Nix's
realisationFetched runs once the substituter's asynchronous query answered; here
the query runs inline on the goal's own thread, as the path substitution goal's
queries do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from goalkeeper.store.errors import StoreError
from goalkeeper.store.paths import StoreDir
from goalkeeper.store.realisations import DrvOutput, Realisation

from .derivation_goal_state import PrintError, WantDrvOutputSubstitution, WantSubstitution
from .results import ExitCode, Status
from .substitution_goal_state import SubstituterDisabled, SubstitutionGoalBase, Warn


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterRealisation:
    """`worker.store.registerDrvOutput(info)` (unchecked: Nix 2.8 does not ask for signatures here)."""

    realisation: Realisation


class DrvOutputSubstitutionContext(Protocol):
    store_dir: StoreDir
    keep_going: bool
    use_substitutes: bool
    try_fallback: bool
    substituters: tuple

    def query_realisation(self, id: DrvOutput) -> Realisation | None: ...


class DrvOutputSubstitutionGoalState(SubstitutionGoalBase):
    """One realisation substitution; `handle(event)` runs the current state and returns effects."""

    def __init__(self, id: DrvOutput, repair: bool, ctx: DrvOutputSubstitutionContext):
        self.id = id
        self.repair = repair  # kept for the goal's identity; Nix 2.8 does not pass it on
        super().__init__(ctx)
        self.output_info: Realisation | None = None

    def key(self) -> str:
        """`DrvOutputSubstitutionGoal::key`: "a$" sorts substitutions before builds."""
        return f"a${self.id}"

    def init(self) -> None:
        if self.ctx.query_realisation(self.id) is not None:  # "If the derivation already exists, we're done"
            self._done(ExitCode.SUCCESS, Status.AlreadyValid)
            return
        self.subs = list(self.ctx.substituters) if self.ctx.use_substitutes else []
        self.try_next()

    def try_next(self) -> None:
        self.sub = self.output_info = None
        if not self.subs:
            # "Hack: don't indicate failure if there were no substituters. In that case
            # the calling derivation should just do a build."
            self._done(ExitCode.FAILED if self.substituter_failed else ExitCode.NO_SUBSTITUTERS,
                       Status.NoSubstituters,
                       f"derivation output '{self.id}' is required, but there is no substituter that can "
                       "provide it")
            return
        self.sub = self.subs.pop(0)
        self.realisation_fetched()

    def realisation_fetched(self) -> None:
        sub = self.sub
        assert sub is not None
        try:
            self.output_info = sub.query_realisation(self.id)
        except SubstituterDisabled:
            self.substituter_failed = True
        except StoreError as e:
            self._emit(PrintError(message=f"error: {e}"))
            self.substituter_failed = True
        info = self.output_info
        if info is None:
            self.try_next()
            return
        wants = []
        for dep_id, dep_path in sorted(info.dependent_realisations.items(), key=lambda kv: str(kv[0])):
            if dep_id == self.id:
                continue
            local = self.ctx.query_realisation(dep_id)
            if local is not None and local.out_path != dep_path:
                printed = self.ctx.store_dir.print
                self._emit(Warn(message=f"substituter '{sub.uri}' has an incompatible realisation for "
                                        f"'{dep_id}', ignoring.\nLocal:  {printed(local.out_path)}\n"
                                        f"Remote: {printed(dep_path)}"))
                # Nix adds the earlier dependencies' goals before it finds this one and
                # tries the next substituter with them still pending; none are added here.
                self.try_next()
                return
            wants.append(WantDrvOutputSubstitution(drv_output=dep_id))
        for want in wants + [WantSubstitution(path=info.out_path)]:
            self.waitees += 1
            self._emit(want)
        self.state = self.out_path_valid

    def out_path_valid(self) -> None:
        info = self.output_info
        assert info is not None
        if self.nr_failed > 0:
            # "The output path of the derivation output could not be substituted"
            code = (ExitCode.INCOMPLETE_CLOSURE if self.nr_no_substituters > 0 or self.nr_incomplete_closure > 0
                    else ExitCode.FAILED)
            self._done(code, Status.DependencyFailed,
                       f"some references of derivation output '{self.id}' could not be realised")
            return
        self._emit(RegisterRealisation(realisation=info))
        self._done(ExitCode.SUCCESS, Status.Substituted)
