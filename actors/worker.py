"""The Worker supervisor actor: a thin shell around `Scheduler`.

It starts goal actors, forwards their requests (waitees, build slots, polls)
to the scheduler and the scheduler's messages back to them, and calls the
callers' observers. It never blocks: everything slow happens in goal actors,
the build runner or the store actor.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import pykka

from goalkeeper.store.local import LocalStore
from goalkeeper.store.settings import Settings

from .goal_context import StoreReader
from .scheduler import GoalRecord, Scheduler
from .worker_messages import (AddWaitee, BuildDerivation, BuildLogLine, GoalFinished, GoalIdle, LogLine, Message,
                              RequestWake, WakeGoal, GoalSaid, GoalStarted, Realise, ReleaseBuildSlot,
                              RequestBuildSlot, WaitAWhile)

logger = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True, kw_only=True)
class GoalServices:
    """What every goal actor shares: the store, its reader and actor, settings, the build runner."""

    store: LocalStore
    reader: StoreReader
    settings: Settings
    store_ref: Any  # pykka.ActorRef of the StoreActor
    runner: Any  # BuildRunner
    substituters: tuple = ()
    substitution_pool: Any = None  # concurrent.futures.Executor for substitutions' copies
    public_keys: Any = None  # getPublicKeys(), read once per engine (None: by each goal)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Stop:
    error: str


class WorkerActor(pykka.ThreadingActor):
    def __init__(self, services: GoalServices, *, poll_interval: float | None = None):
        super().__init__()
        self.services = services
        # Nix's settings.pollInterval (`build-poll-interval`): how long a goal waiting for a
        # lock or a build user waits before trying again. None: the goal's own settings say.
        self.poll_interval = poll_interval
        max_jobs = services.settings.get("max-jobs")
        self.scheduler = Scheduler(services.store.store_dir, int(max_jobs), rounds=True,
                                   max_substitution_jobs=int(services.settings.get("max-substitution-jobs")),
                                   start_goal=self._start_goal,
                                   send=self._send, notify=self._notify)
        self._timers: set[threading.Timer] = set()
        self._early_log: dict = {}  # drv path -> log events held until its goal said "building"

    def _start_goal(self, goal: GoalRecord, params) -> pykka.ActorRef:
        # Imported here: the goal modules import this one for GoalServices.
        from .derivation_goal import DerivationGoalActor
        from .substitution_goal import SubstitutionGoalActor, drv_output_substitution, path_substitution

        services = self.services
        if goal.settings is not None:  # a caller's own settings (a daemon client's SetOptions)
            services = dataclasses.replace(services, settings=goal.settings)
        if goal.kind == "drv":
            wanted, build_mode = params
            return DerivationGoalActor.start(goal.id, goal.path, wanted, build_mode, goal.keep_going,
                                             services, self.actor_ref, basic_drv=goal.basic_drv)
        if goal.kind == "drvout":
            state = drv_output_substitution(services, goal.path, params, goal.keep_going)
        else:
            repair, ca = params
            state = path_substitution(services, goal.path, repair, ca, goal.keep_going)
        return SubstitutionGoalActor.start(goal.id, state, services, self.actor_ref)

    @staticmethod
    def _send(goal: GoalRecord, message: object) -> None:
        try:
            goal.ref.tell(message)
        except pykka.ActorDeadError:
            pass  # it finished (or crashed) and its last message is on its way to us

    @staticmethod
    def _notify(observer, event) -> None:
        try:
            observer(event)
        except Exception:  # an observer's bug must not stop the engine
            logger.exception("observer failed on %r", event)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Stop):
            # the goals' actors, for stop_worker to wait for once they were cancelled
            refs = [goal.ref for goal in self.scheduler.goals.values() if goal.ref is not None]
            self.scheduler.abort_all(message.error)
            return refs
        self._handle(message)
        # A round ends when every goal answered what it was sent: each goal's own messages
        # reach us before its GoalIdle, so nothing else in the inbox (build logs, builds
        # ending) belongs to this round and need not hold it up.
        self.scheduler.advance()

    def _handle(self, message: Any) -> None:
        s = self.scheduler
        match message:
            case AddWaitee(waiter=waiter, want=want, resolved=resolved):
                s.add_waitee(waiter, want, resolved)
            case RequestBuildSlot(goal=goal):
                s.request_build_slot(goal)
            case ReleaseBuildSlot(goal=goal):
                s.release_build_slot(goal)
            case GoalStarted(goal=goal, message=text):
                s.goal_started(goal, text)
                if goal in s.goals:
                    self._flush_early_log(s.goals[goal].path)
            case GoalSaid(goal=goal, message=text):
                s.goal_said(goal, text)
            case GoalFinished(goal=goal, finished=finished, wanted_outputs=wanted):
                if goal in s.goals:
                    self._flush_early_log(s.goals[goal].path)
                s.goal_finished(goal, finished, wanted)
            case WaitAWhile(goal=goal):
                self._wait_a_while(goal)
            case GoalIdle(goal=goal, slot_unused=slot_unused):
                s.goal_idle(goal, slot_unused)
            case WakeGoal(goal=goal) | RequestWake(goal=goal):
                s.wake(goal)
            case Realise():
                if not s.requests:
                    self.services.reader.forget_contents_checks()  # a new "Worker" in Nix's terms
                s.realise(message.targets, message.build_mode, message.keep_going, message.observer,
                          message.done.set_result, message.settings)
            case BuildDerivation():
                if not s.requests:
                    self.services.reader.forget_contents_checks()
                s.build_derivation(message.drv_path, message.drv, message.build_mode, message.keep_going,
                                   message.observer, message.done.set_result, message.settings)
            case BuildLogLine(drv_path=drv_path, line=line, is_message=is_message):
                event = Message(text=line) if is_message else LogLine(drv_path=drv_path, line=line)
                goals = s.derivation_goals.get(drv_path, ())
                if goals and not any(g.id in s.started for g in goals):
                    # The builder spoke before its goal's "building '…'" reached us (they come
                    # from different threads); Nix prints that line first, so do we.
                    self._early_log.setdefault(drv_path, []).append(event)
                    return
                self._tell_observers(drv_path, event)
            case _:
                raise TypeError(f"WorkerActor cannot handle {type(message).__name__}")

    def _tell_observers(self, drv_path, event) -> None:
        s = self.scheduler
        observers = {id(o): o for goal in s.derivation_goals.get(drv_path, ()) for o in s.observers_of(goal)}
        for observer in observers.values():
            self._notify(observer, event)

    def _flush_early_log(self, drv_path) -> None:
        for event in self._early_log.pop(drv_path, ()):
            self._tell_observers(drv_path, event)

    def _wait_a_while(self, goal_id: int) -> None:
        goal = self.scheduler.goals.get(goal_id)
        if goal is None:
            return
        me = self.actor_ref
        interval = self.poll_interval
        if interval is None:
            interval = float((goal.settings or self.services.settings).get("build-poll-interval"))

        def wake() -> None:
            self._timers.discard(timer)
            try:
                me.tell(WakeGoal(goal=goal_id))
            except pykka.ActorDeadError:
                pass

        timer = threading.Timer(interval, wake)
        timer.daemon = True
        self._timers.add(timer)
        timer.start()

    def on_failure(self, exc_type, exc_value, tb) -> None:
        # A bug in the worker: end every request with it rather than leave callers waiting.
        logger.error("the worker crashed", exc_info=(exc_type, exc_value, tb))
        for timer in list(self._timers):
            timer.cancel()
        self.scheduler.abort_all(f"internal error: {exc_value}")

    def on_stop(self) -> None:
        for timer in list(self._timers):
            timer.cancel()
        self.scheduler.abort_all("the build engine was stopped")


def tell_worker(worker_ref: pykka.ActorRef, message: object) -> None:
    """A goal's message to the worker; dropped once the engine is shutting down."""
    try:
        worker_ref.tell(message)
    except pykka.ActorDeadError:
        pass


def stop_worker(worker_ref: pykka.ActorRef, timeout: float = 30.0) -> None:
    """End every request with an error, cancel every goal, wait for the goals' actors to
    have stopped (a goal still at work would use the build runner after it stopped), and
    stop the worker."""
    try:
        refs = worker_ref.ask(_Stop(error="the build engine was stopped"))
    except pykka.ActorDeadError:
        return
    stopping = []
    for ref in refs:
        try:
            stopping.append(ref.stop(block=False))  # queued after the Cancel it was sent
        except pykka.ActorDeadError:
            pass  # it had finished
    deadline = time.monotonic() + timeout
    for future in stopping:
        try:
            future.get(timeout=max(0.0, deadline - time.monotonic()))
        except (pykka.ActorDeadError, pykka.Timeout):
            pass  # gone already, or stuck: the engine closes regardless
    try:
        worker_ref.stop()
    except pykka.ActorDeadError:
        pass
