"""The DerivationGoal actor: `DerivationGoalState` plus the effects it asks for.

The state machine decides; this actor carries out its effects: asking the
worker for waitees and build slots, starting the builder through the build
runner (which answers with events, so this thread never waits on a child or a
pipe), registering outputs, and CA resolution. It stops itself as soon as the
goal is finished or cancelled.
"""

from __future__ import annotations

import logging
import os
import traceback
from dataclasses import dataclass
from functools import partial
from typing import Any

import pykka

from goalkeeper.store.derivation import BasicDerivation, Derivation, write_derivation
from goalkeeper.store.derivation_hash import static_output_hashes, try_resolve
from goalkeeper.store.errors import StoreError
from goalkeeper.store.paths import StorePath
from goalkeeper.store.realisations import DrvOutput, Realisation

from .derivation_goal_state import (BuildExited, BuildKilled, BuildMode, BuildSetupFailed, BuildUserKilled,
                                    DerivationGoalState, GiveBackBuildSlot, KillBuildUser,
                                    Finished, OutputsRegistered, PostBuildHookFinished, PrintError, RegisterOutputs,
                                    RegisterResolvedRealisations, ResolveAndBuild, ResolvedFinished,
                                    RunPostBuildHook, Started,
                                    StartBuild, Wake, WaiteeDone, WaitForAWhile, WaitForBuildSlot, WakeUp,
                                    WantDerivation, WantDrvOutputSubstitution, WantSubstitution)
from .build_hooks import run_diff_hook, run_post_build_hook, submit
from .goal_actor import GoalActor
from .goal_context import LocalGoalContext
from .kill_user import submit_kill_user
from .results import BuildResult, ExitCode, FailureKind, Status
from .store_messages import RegisterDrvOutput, RegisterValidPaths
from .substitution_goal import drv_output_substitution, path_substitution
from .user_lock import BuildUser, UserLock, UserLockError, build_users_enabled
from .worker import GoalServices, tell_worker
from .worker_messages import (AddWaitee, AddWantedOutputs, Alone, BuildLogLine, Cancel, GoalFinished, GoalIdle,
                              GoalSaid, GoalStarted, ReleaseBuildSlot, RequestBuildSlot, RequestWake, WaitAWhile)

logger = logging.getLogger(__name__)

# what the worker sends to make a goal work; answered with GoalIdle once handled
_ACTIVATIONS = (Wake, WaiteeDone, ResolvedFinished)

_BUILD_ENDED = (BuildExited, BuildKilled, BuildSetupFailed)


@dataclass(frozen=True, slots=True, kw_only=True)
class _HookEnded:
    """A hook ran on the hook pool: say what it printed, then go on with `event` (the
    post-build hook) or with the registration's `outcome` (the diff hook)."""

    messages: tuple[str, ...]
    event: PostBuildHookFinished | None = None
    outcome: Any = None  # register_outputs.OutputsOutcome


class DerivationGoalActor(GoalActor):
    def __init__(self, goal_id: int, drv_path: StorePath, wanted_outputs: frozenset[str], build_mode: BuildMode,
                 keep_going: bool, services: GoalServices, worker_ref: pykka.ActorRef, *,
                 basic_drv: BasicDerivation | None = None):
        """`basic_drv`: the derivation given in memory (`makeBasicDerivationGoal`); None: read
        the `.drv` from the store."""
        super().__init__()
        self.goal_id = goal_id
        self.drv_path = drv_path
        self.initial_wanted = wanted_outputs  # the goal's name (in timeout messages) keeps these
        self.services = services
        self.worker_ref = worker_ref
        self.ctx = LocalGoalContext(services.reader, services.settings, drv_path, keep_going=keep_going,
                                    on_wait=self._say)
        group = str(services.settings.build_users_group or "")
        new_user_lock = partial(UserLock, group) if build_users_enabled(group) else None
        if basic_drv is None:
            self.state = DerivationGoalState(drv_path, wanted_outputs, build_mode, self.ctx,
                                             new_user_lock=new_user_lock)
        else:
            self.state = DerivationGoalState.for_basic_derivation(drv_path, basic_drv, build_mode, self.ctx,
                                                                  new_user_lock=new_user_lock)
        self.plan = None  # the running build's BuildPlan
        self.build_id: int | None = None
        self.resolved_drv_path: StorePath | None = None
        self.prev_infos: dict | None = None  # the previous round's outputs (build-repeat)
        self.recursive = None  # the running build's recursive-nix daemon (recursive_daemon.py)
        self.added_paths: frozenset[StorePath] = frozenset()  # what it added or built (addedPaths)

    # -- messages --------------------------------------------------------------------------

    def _tell_worker(self, message: object) -> None:
        tell_worker(self.worker_ref, message)

    def on_receive(self, message: Any) -> None:
        match message:
            case AddWantedOutputs(outputs=outputs):
                self.state.add_wanted_outputs(outputs)
            case Cancel():
                self._cancel()
            case Alone(event=event, slot_lent=lent):
                took = lent and self.state.lend_build_slot()
                self._handle_alone(event)
                unused = lent and (not took or self.state.return_unused_slot())
                self._tell_worker(GoalIdle(goal=self.goal_id, slot_unused=unused))
            case _HookEnded(messages=messages, event=event, outcome=outcome):
                for text in messages:
                    self._say(text)
                self._handle(event if event is not None else self._registered(outcome))
            case _:
                ended = isinstance(message, _BUILD_ENDED)
                if ended:
                    self.build_id = None
                    self._stop_recursive()
                self._handle(message)
                if ended:
                    # after buildDone, as Nix frees the slot for goals of the next round: a
                    # failure is reported (and may stop the run) before another build starts
                    self._tell_worker(ReleaseBuildSlot(goal=self.goal_id))
                if isinstance(message, _ACTIVATIONS):
                    self._tell_worker(GoalIdle(goal=self.goal_id))

    def on_failure(self, exc_type, exc_value, tb) -> None:
        # A bug, not an expected failure: report the goal failed so nothing waits forever.
        logger.error("derivation goal for %s crashed:\n%s", self.ctx.printed_drv_path,
                     "".join(traceback.format_exception(exc_type, exc_value, tb)))
        result = BuildResult(status=Status.MiscFailure, error_msg=f"internal error: {exc_value}")
        # reported first: nothing may keep the run waiting for this goal
        self._tell_worker(GoalFinished(goal=self.goal_id, finished=Finished(exit_code=ExitCode.FAILED,
                                                                                result=result)))
        self._kill_build()
        self._give_up_build_user()
        self.ctx.unlock_outputs(delete=False)

    def _handle(self, event) -> None:
        pending = [event]
        while pending:
            for effect in self.state.handle(pending.pop(0)):
                self._apply(effect, pending)

    def _apply(self, effect, pending: list) -> None:
        match effect:
            case WantSubstitution() | WantDrvOutputSubstitution() if (not self.services.substituters
                                                                      and self._substituted_here(effect, pending)):
                pass
            case WantDerivation() | WantSubstitution() | WantDrvOutputSubstitution():
                self._tell_worker(AddWaitee(waiter=self.goal_id, want=effect))
            case WakeUp() if self._alone:
                pending.append(Wake())  # the next round is this goal's alone (see Alone)
            case WakeUp():
                self._tell_worker(RequestWake(goal=self.goal_id))
            case WaitForBuildSlot():
                self._tell_worker(RequestBuildSlot(goal=self.goal_id))
            case GiveBackBuildSlot():
                self._tell_worker(ReleaseBuildSlot(goal=self.goal_id))
            case WaitForAWhile(reason=reason, announce=announce):
                if announce:  # Nix's actLock activity starts
                    self._say(reason + "...")  # printed as Nix's logger starts an activity
                self._tell_worker(WaitAWhile(goal=self.goal_id))
            case KillBuildUser(uid=uid):
                me = self.actor_ref

                def killed(error: str | None) -> None:
                    try:
                        me.tell(BuildUserKilled(error=error))
                    except pykka.ActorDeadError:
                        pass  # cancelled meanwhile

                submit_kill_user(uid, killed)
            case StartBuild(build_user=build_user):
                self._start_build(pending, build_user)
            case Started(message=message):
                if self.build_id is not None:  # not when startBuilder refused: Nix prints nothing then
                    self._tell_worker(GoalStarted(goal=self.goal_id, message=message))
            case RegisterOutputs():
                registered = self._register_outputs()
                if registered is not None:  # else the diff hook runs first
                    pending.append(registered)
            case RunPostBuildHook(hook=hook, drv_path=drv_path, out_paths=out_paths):
                self._run_hook(partial(run_post_build_hook, hook, drv_path, list(out_paths)),
                               lambda outcome: _HookEnded(messages=outcome.messages,
                                                          event=PostBuildHookFinished(error=outcome.error)))
            case ResolveAndBuild():
                self._resolve_and_build()
            case RegisterResolvedRealisations(wanted_outputs=wanted):
                self._register_resolved_realisations(wanted)
            case PrintError(message=message):
                self._say(message)
            case Finished():
                self._finish(effect)
            case _:
                raise TypeError(f"unexpected effect {effect!r}")

    def _say(self, message: str) -> None:
        self._tell_worker(GoalSaid(goal=self.goal_id, message=message))

    def _substituted_here(self, want: WantSubstitution | WantDrvOutputSubstitution, pending: list) -> bool:
        """With no substituters, run the substitution goal's state machine on this thread.

        Its init and tryNext then end at once (AlreadyValid, or NoSubstituters: "the
        calling derivation should just do a build"), so a goal of its own would cost an
        actor and two rounds of messages per output for nothing. Its answer reaches the
        state machine as the WaiteeDone the worker would have sent. Anything else (a
        thrown error) goes the ordinary way, through the worker.
        """
        if isinstance(want, WantSubstitution):
            state = path_substitution(self.services, want.path, want.repair, want.ca, self.ctx.keep_going)
        else:
            state = drv_output_substitution(self.services, want.drv_output, want.repair, self.ctx.keep_going)
        match state.handle(Wake()):
            case [Finished(thrown=False, exit_code=code)]:
                pending.append(WaiteeDone(exit_code=code))
                return True
        return False

    # -- the build -------------------------------------------------------------------------

    def _start_build(self, pending: list, build_user: BuildUser | None) -> None:
        from .start_builder import BuildSetupError, start_builder

        state = self.state
        assert state.drv is not None
        try:
            self.plan = start_builder(
                self.services.store, self.services.settings, drv=state.drv, drv_path=self.drv_path,
                initial_outputs={name: out.known for name, out in state.initial_outputs.items()},
                build_mode=state.build_mode, input_paths=state.input_paths, build_user=build_user)
            if self.plan.recursive:
                self._start_recursive(state.input_paths)
                if build_user is not None:  # chownToBuilder(socketPath)
                    _chown_to_builder(self.recursive.socket_path, build_user)
        except BuildSetupError as err:
            self._tell_worker(ReleaseBuildSlot(goal=self.goal_id))
            pending.append(BuildSetupFailed(message=err.message, input_rejected=err.is_build_error))
            return
        except StoreError as err:
            self._stop_recursive()
            self._tell_worker(ReleaseBuildSlot(goal=self.goal_id))
            pending.append(BuildSetupFailed(message=str(err), input_rejected=False))
            return
        worker = self.worker_ref  # the log goes to this goal's worker (a recursive build's, maybe)
        self.build_id = self.services.runner.run_build(
            drv_path=self.drv_path, printed_drv_path=self.ctx.printed_drv_path, spec=self.plan.spec,
            reply=self.actor_ref.tell, goal_name=self._goal_name(), settings=self.services.settings,
            on_log_line=lambda drv, line: tell_worker(worker, BuildLogLine(drv_path=drv, line=line)),
            on_message=lambda drv, level, text: tell_worker(
                worker, BuildLogLine(drv_path=drv, line=text, is_message=True)))
        if self.recursive is not None:
            self.recursive.build_id = self.build_id

    def _goal_name(self) -> str:
        """`getName()`; a goal given its derivation in memory names all its outputs."""
        from .build_runner import derivation_goal_name

        if self.state.use_derivation:
            return derivation_goal_name(self.ctx.printed_drv_path, self.initial_wanted)
        outputs = ",".join(sorted(self.state.drv.outputs))
        return f"building of '{self.ctx.printed_drv_path}!{outputs}' from in-memory derivation"

    def _run_hook(self, job, reply) -> None:
        """Run a hook on the hook pool; its end comes back to this actor as a message."""
        me = self.actor_ref

        def done(outcome) -> None:
            try:
                me.tell(reply(outcome))
            except pykka.ActorDeadError:
                pass  # cancelled meanwhile

        submit(job, done)

    def _register_outputs(self) -> OutputsRegistered | None:
        from .register_outputs import register_outputs

        state = self.state
        assert state.drv is not None and self.plan is not None
        store_ref = self.services.store_ref

        def register(infos) -> None:
            store_ref.ask(RegisterValidPaths(infos=tuple(infos)))

        def register_realisation(realisation: Realisation) -> None:
            store_ref.ask(RegisterDrvOutput(realisation=realisation))

        try:
            outcome = register_outputs(
                self.services.store, self.services.settings, drv=state.drv, drv_path=self.drv_path, plan=self.plan,
                initial_outputs={name: out.known for name, out in state.initial_outputs.items()},
                static_output_hashes={name: out.output_hash for name, out in state.initial_outputs.items()},
                input_paths=state.input_paths | self.added_paths, build_mode=state.build_mode,
                register=register, register_realisation=register_realisation,
                cur_round=state.cur_round, nr_rounds=state.nr_rounds, prev_infos=self.prev_infos)
        except StoreError as err:
            return OutputsRegistered(failure=FailureKind.BUILD_ERROR, message=str(err))
        if outcome.diff_hook is not None:
            # Nix runs it inside registerOutputs, before reporting anything; the build
            # directory (its fourth argument) stays until it ended.
            diff_hook, request = str(self.services.settings.diff_hook), outcome.diff_hook
            self._run_hook(partial(run_diff_hook, diff_hook, request),
                           lambda hook: _HookEnded(messages=hook.messages, outcome=outcome))
            return None
        return self._registered(outcome)

    def _registered(self, outcome) -> OutputsRegistered:
        """What registerOutputs reports once its diff hook (if any) ended."""
        for text in outcome.messages:
            self._say(text)
        self.prev_infos = dict(outcome.output_infos) if outcome.more_rounds else None
        if outcome.failure is None:
            self._delete_build_dir(keep=False)
        printed = self.services.store.print
        return OutputsRegistered(
            failure=outcome.failure, message=outcome.message,
            built_outputs={name: printed(path) for name, path in outcome.built_outputs.items()},
            is_non_deterministic=outcome.is_non_deterministic,
            more_rounds=outcome.more_rounds,
            post_build_hook=str(self.services.settings.post_build_hook or ""))

    def _delete_build_dir(self, keep: bool) -> None:
        from .start_builder import delete_build_dir

        if self.plan is None:
            return
        plan, self.plan = self.plan, None
        note = delete_build_dir(plan, keep=keep)
        if note:
            self._say(note)

    def _kill_build(self) -> None:
        if self.build_id is not None:
            self.services.runner.kill(self.build_id)
            self.build_id = None
        self._stop_recursive()

    def _give_up_build_user(self) -> None:
        """killChild's `buildUser->kill()`, then the lock's release, off this thread: the
        uid is free again only once nothing of this build runs under it."""
        lock = self.state.take_build_user()
        if lock is None:
            return
        if lock.build_user is None:
            lock.release()
            return
        submit_kill_user(lock.build_user.uid, lambda _error: lock.release())

    def _start_recursive(self, input_paths: frozenset[StorePath]) -> None:
        from .recursive_daemon import start_recursive_daemon

        self.added_paths = frozenset()
        self.recursive = start_recursive_daemon(self.services, self.plan, input_paths, say=self._say)

    def _stop_recursive(self) -> None:
        # stopDaemon; the paths the build added stay referenceable by its outputs
        if self.recursive is not None:
            daemon, self.recursive = self.recursive, None
            self.added_paths = daemon.stop()

    # -- CA derivations --------------------------------------------------------------------

    def _resolve_and_build(self) -> None:
        """inputsRealised for CA: write the resolved derivation and wait for its goal."""
        store = self.services.store
        drv = self.state.drv
        assert isinstance(drv, Derivation)

        def input_output_path(input_drv: StorePath, output: str) -> StorePath | None:
            return self.services.reader.query_partial_derivation_output_map(input_drv).get(output)

        resolved = try_resolve(store.store_dir, drv, input_output_path)
        if resolved is None:
            raise StoreError(f"derivation '{self.ctx.printed_drv_path}' cannot be resolved")
        # writeDerivation of the resolved BasicDerivation: a Derivation without inputDrvs
        path = write_derivation(store, Derivation.from_basic(resolved))
        self.resolved_drv_path = path
        self._say(f"resolved derivation: '{self.ctx.printed_drv_path}' -> '{store.print(path)}'...")
        self._tell_worker(AddWaitee(
            waiter=self.goal_id, resolved=True,
            want=WantDerivation(drv_path=path, wanted_outputs=frozenset(self.state.wanted_outputs),
                                build_mode=self.state.build_mode)))

    def _register_resolved_realisations(self, wanted: frozenset[str]) -> None:
        """resolvedFinished: the resolved drv's realisations, registered for the original's ids too."""
        store, reader = self.services.store, self.services.reader
        assert self.resolved_drv_path is not None and self.state.drv is not None
        resolved = store.read_derivation(self.resolved_drv_path)
        resolved_hashes = static_output_hashes(store.store_dir, resolved, store.read_derivation,
                                               store.drv_hash_cache())
        for name in sorted(wanted or resolved.outputs):
            out_path = reader.query_realisation(resolved_hashes[name], name)
            if out_path is None:
                raise StoreError(f"resolved derivation '{store.print(self.resolved_drv_path)}' did not realise "
                                 f"output '{name}'")
            original = self.state.initial_outputs[name].output_hash
            self.services.store_ref.ask(RegisterDrvOutput(
                realisation=Realisation(id=DrvOutput(original, name), out_path=out_path)))

    # -- the end ---------------------------------------------------------------------------

    def _finish(self, finished: Finished) -> None:
        if finished.exit_code is not ExitCode.SUCCESS:
            self._delete_build_dir(keep=bool(self.services.settings.get("keep-failed")))
        self._tell_worker(GoalFinished(goal=self.goal_id, finished=finished,
                                       wanted_outputs=frozenset(self.state.wanted_outputs)))
        self.stop()

    def _cancel(self) -> None:
        """Nobody waits for this goal any more (~DerivationGoal): kill the builder, keep nothing locked."""
        self._kill_build()
        self._give_up_build_user()
        self.ctx.unlock_outputs(delete=False)
        self._delete_build_dir(keep=bool(self.services.settings.get("keep-failed")))
        self.stop()


def _chown_to_builder(path: str, build_user: BuildUser) -> None:
    """`chownToBuilder`: the build user owns `path` (a plain Nix Error if it cannot)."""
    try:
        os.chown(path, build_user.uid, build_user.gid)
    except OSError as e:
        raise UserLockError(f"cannot change ownership of '{path}': {e.strerror}") from e
