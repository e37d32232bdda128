"""The SubstitutionGoal actor: `SubstitutionGoalState` plus its effects.

Copying a path from a substituter runs on the engine's substitution pool (Nix
runs it on a thread of its own), so this actor's thread never waits on the
network; the copy's outcome comes back as a `SubstitutionFinished` message.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import pykka

from goalkeeper.store.content_address import ContentAddress
from goalkeeper.store.errors import StoreError
from goalkeeper.store.paths import StorePath
from goalkeeper.store.realisations import DrvOutput

from .derivation_goal_state import (Finished, PrintError, ResolvedFinished, Wake, WaiteeDone, WaitForBuildSlot,
                                    WakeUp, WantDrvOutputSubstitution, WantSubstitution)
from .drv_output_substitution_goal_state import DrvOutputSubstitutionGoalState, RegisterRealisation
from .goal_actor import GoalActor
from .goal_context import LocalSubstitutionContext
from .results import BuildResult, ExitCode, Status
from .store_messages import RegisterDrvOutput
from .substitution_goal_state import RunSubstitution, SubstitutionFinished, SubstitutionGoalState, Warn
from .worker import GoalServices, tell_worker
from .worker_messages import (AddWaitee, AddWantedOutputs, Alone, Cancel, GoalFinished, GoalIdle, GoalSaid,
                              ReleaseBuildSlot, RequestBuildSlot, RequestWake)

logger = logging.getLogger(__name__)

# what the worker sends to make a goal work; answered with GoalIdle once handled
_ACTIVATIONS = (Wake, WaiteeDone, ResolvedFinished)


def path_substitution(services: GoalServices, path: StorePath, repair: bool, ca: ContentAddress | None,
                      keep_going: bool) -> SubstitutionGoalState:
    """`makePathSubstitutionGoal`'s state machine."""
    ctx = LocalSubstitutionContext(services.reader, services.settings, services.substituters,
                                   keep_going=keep_going, public_keys=services.public_keys)
    return SubstitutionGoalState(path, repair, ca, ctx)


def drv_output_substitution(services: GoalServices, id: DrvOutput, repair: bool,
                            keep_going: bool) -> DrvOutputSubstitutionGoalState:
    """`makeDrvOutputSubstitutionGoal`'s state machine."""
    ctx = LocalSubstitutionContext(services.reader, services.settings, services.substituters,
                                   keep_going=keep_going, public_keys=services.public_keys)
    return DrvOutputSubstitutionGoalState(id, repair, ctx)


class SubstitutionGoalActor(GoalActor):
    """Either substitution goal: of a store path, or of a CA derivation output's realisation."""

    def __init__(self, goal_id: int, state: SubstitutionGoalState | DrvOutputSubstitutionGoalState,
                 services: GoalServices, worker_ref: pykka.ActorRef):
        super().__init__()
        self.goal_id = goal_id
        self.services = services
        self.worker_ref = worker_ref
        self.state = state
        self._cancelled = False

    def _tell_worker(self, message: object) -> None:
        tell_worker(self.worker_ref, message)

    def on_receive(self, message: Any) -> None:
        match message:
            case Cancel():
                self._cancelled = True
                self.stop()
            case AddWantedOutputs():
                pass  # only derivation goals have outputs
            case Alone(event=event):  # no slot is lent to a substitution
                self._handle_alone(event)
                self._tell_worker(GoalIdle(goal=self.goal_id))
            case _:
                if isinstance(message, SubstitutionFinished):
                    self._tell_worker(ReleaseBuildSlot(goal=self.goal_id))
                self._handle(message)
                if isinstance(message, _ACTIVATIONS):
                    self._tell_worker(GoalIdle(goal=self.goal_id))

    def on_failure(self, exc_type, exc_value, tb) -> None:
        logger.error("substitution goal crashed:\n%s", "".join(traceback.format_exception(exc_type, exc_value, tb)))
        result = BuildResult(status=Status.MiscFailure, error_msg=f"internal error: {exc_value}")
        self._tell_worker(GoalFinished(goal=self.goal_id,
                                          finished=Finished(exit_code=ExitCode.FAILED, result=result)))

    def _handle(self, event) -> None:
        pending = [event]
        while pending:
            for effect in self.state.handle(pending.pop(0)):
                match effect:
                    case WantSubstitution() | WantDrvOutputSubstitution():
                        self._tell_worker(AddWaitee(waiter=self.goal_id, want=effect))
                    case RegisterRealisation(realisation=realisation):
                        try:
                            self.services.store_ref.ask(RegisterDrvOutput(realisation=realisation))
                        except StoreError as err:  # registerDrvOutput threw: as a thrown Error in Nix
                            result = BuildResult(status=Status.MiscFailure, error_msg=str(err))
                            self._tell_worker(GoalFinished(goal=self.goal_id, finished=Finished(
                                exit_code=ExitCode.FAILED, result=result, thrown=True)))
                            self.stop()
                            return
                    case WakeUp() if self._alone:
                        pending.append(Wake())  # the next round is this goal's alone (see Alone)
                    case WakeUp():
                        self._tell_worker(RequestWake(goal=self.goal_id))
                    case WaitForBuildSlot():
                        self._tell_worker(RequestBuildSlot(goal=self.goal_id))
                    case RunSubstitution():
                        self._run(effect)
                    case PrintError(message=message):
                        self._tell_worker(GoalSaid(goal=self.goal_id, message=message))
                    case Warn(message=message):
                        self._tell_worker(GoalSaid(goal=self.goal_id, message=f"warning: {message}"))
                    case Finished():
                        self._tell_worker(GoalFinished(goal=self.goal_id, finished=effect))
                        self.stop()
                    case _:
                        raise TypeError(f"unexpected effect {effect!r}")

    def _run(self, effect: RunSubstitution) -> None:
        me = self.actor_ref
        pool = self.services.substitution_pool

        def copy() -> None:
            try:
                effect.substituter.copy_path(effect.sub_path, effect.info, effect.repair, effect.check_sigs)
            except StoreError as err:
                me.tell(SubstitutionFinished(error=err))
            except Exception as err:  # a bug in a substituter: fail this substitution, say why
                logger.exception("substituter %s failed", effect.substituter.uri)
                me.tell(SubstitutionFinished(error=StoreError(f"internal error: {err}")))
            else:
                me.tell(SubstitutionFinished())

        pool.submit(copy)
