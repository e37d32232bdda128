"""The Worker's bookkeeping (Nix's `Worker`), without threads: goals, waitees, slots, requests.

One goal per derivation and one per substituted path, however many goals want
them (`makeDerivationGoal`, `makePathSubstitutionGoal`); the edges between
waiters and waitees; build slots granted in the order of the seed's goal
`key()`; and the requests of callers (`Store::buildPaths`), each with its top
goals and its failure flags. A long-lived engine serves many requests at once,
so where Nix has one worker per `buildPaths` call, here a request's
cancellation (a failure without keep-going: `topGoals.clear()`) stops only the
goals no other request still needs: goals are kept alive by reachability from
live top goals, as Nix keeps them by shared pointers.

Everything that leaves this class goes through three injected functions:
`start_goal` (make an actor), `send` (tell a goal) and `notify` (an observer).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from goalkeeper.store.paths import StoreDir, StorePath
from goalkeeper.store.realisations import DrvOutput

from .derivation_goal_state import (BuildMode, Finished, ResolvedFinished, Wake, WaiteeDone, WantDerivation,
                                    WantDrvOutputSubstitution, WantSubstitution)
from .results import BuildResult, ExitCode, FailureFlags, FailureKind, Status
from .worker_messages import AddWantedOutputs, Alone, Cancel, DerivedPath, Message, Progress, Realised

NO_BUILD_SLOTS = ("unable to start any build; either increase '--max-jobs' or enable remote builds.\n"
                  "https://nixos.org/manual/nix/stable/advanced-topics/distributed-builds.html")


@dataclass(eq=False, slots=True)
class GoalRecord:
    id: int
    kind: str  # "drv", "subst" (a path) or "drvout" (a CA derivation output's realisation)
    path: StorePath | DrvOutput
    key: str
    keep_going: bool
    build_mode: BuildMode = BuildMode.Normal
    # the outputs asked of a derivation goal so far (empty: all of them), to catch those
    # asked for while its GoalFinished was already on its way (see goal_finished)
    asked: frozenset[str] = frozenset()
    settings: Any = None  # its requests' settings (None: the engine's)
    # the BasicDerivation of a goal given its derivation in memory (buildDerivation); such a
    # goal is its caller's alone, as Nix makes a Worker per buildDerivation call
    basic_drv: Any = None
    ref: Any = None
    waiters: list[tuple[int, bool]] = field(default_factory=list)  # (waiter id, resolved)
    waitees: set[int] = field(default_factory=set)
    requests: frozenset[int] = frozenset()
    top_of: set[int] = field(default_factory=set)
    finished: Finished | None = None
    logged: bool = False  # its error was printed when it finished (it had waiters): no `ex`


@dataclass(eq=False, slots=True)
class RequestRecord:
    id: int
    targets: tuple[DerivedPath, ...]
    build_mode: BuildMode
    keep_going: bool
    observer: Callable[[object], None] | None
    on_done: Callable[[Realised], None]
    settings: Any = None
    top: list[tuple[DerivedPath, GoalRecord]] = field(default_factory=list)
    flags: FailureFlags = field(default_factory=FailureFlags)


class Scheduler:
    def __init__(self, store_dir: StoreDir, max_jobs: int, *, max_substitution_jobs: int = 16,
                 rounds: bool = False,
                 start_goal: Callable[[GoalRecord, Any], Any],
                 send: Callable[[GoalRecord, object], None],
                 notify: Callable[[Callable[[object], None], object], None]):
        self.store_dir = store_dir
        self.max_jobs = max_jobs
        # Substitutions have slots of their own (max-substitution-jobs, as Nix since 2.9;
        # 2.8 counted them as builds); at least one may always run: they cannot go to a
        # remote builder, so max-jobs = 0 must not stop them.
        self.max_substitution_jobs = max(1, max_substitution_jobs)
        # Nix's worker runs in rounds: every awake goal works, in key() order, before the
        # next round and before it waits for builds. With `rounds`, what would wake a goal
        # (a new goal, a finished waitee, `wakeUp`, a granted slot) is held back until every
        # goal has handled what it was sent (`goal_idle`) and the worker's inbox is empty
        # (`advance`); then slots go to waiting goals in key() order, and the held-back
        # wake-ups are sent as the next round. So builds start in Nix's order, which decides
        # what is left valid when a failure stops a run without keep-going.
        # Without `rounds` (unit tests) everything is sent at once.
        self.rounds = rounds
        self._next_round: list[tuple[str, int, int, object]] = []  # heap: (key, seq, goal id, message)
        self._seq = itertools.count()
        self._thrown: list[tuple[str, int, GoalRecord]] = []  # goals that threw this round
        self._start_goal = start_goal
        self._send = send
        self._notify = notify
        self._ids = itertools.count(1)
        self.goals: dict[int, GoalRecord] = {}
        # by path: usually one goal each, more when concurrent requests want different
        # build modes or keep-going (see _shared_goal)
        self.derivation_goals: dict[StorePath, list[GoalRecord]] = {}
        self.substitution_goals: dict[StorePath, list[GoalRecord]] = {}
        self.drv_output_goals: dict[DrvOutput, list[GoalRecord]] = {}
        self.requests: dict[int, RequestRecord] = {}
        # Goals sent a Wake/WaiteeDone/ResolvedFinished they have not yet answered with
        # `goal_idle`: Nix runs every awake goal before it starts the next build, so with
        # deferred grants no slot is given while any goal is still at work.
        self.busy: dict[int, int] = {}
        self.running: set[int] = set()  # goals holding a build slot
        self.substituting: set[int] = set()  # goals holding a substitution slot
        self.started: set[int] = set()  # derivation goals whose builder runs (progress)
        self._wanting_slot: list[tuple[str, int]] = []  # heap by key()
        self._wanting_substitution_slot: list[tuple[str, int]] = []
        self.expected_builds = self.done_builds = self.failed_builds = self.running_builds = 0

    # -- requests ------------------------------------------------------------------------

    def realise(self, targets, build_mode: BuildMode, keep_going: bool, observer, on_done,
                settings=None) -> None:
        request = RequestRecord(next(self._ids), tuple(targets), build_mode, keep_going, observer, on_done,
                                settings)
        self.requests[request.id] = request
        mine = frozenset({request.id})
        for target in request.targets:
            if target.is_built:
                goal = self._derivation_goal(target.path, target.outputs, build_mode, keep_going, mine,
                                             settings)
            else:
                goal = self._substitution_goal(target.path, build_mode is BuildMode.Repair, None, keep_going, mine,
                                               settings)
            goal.top_of.add(request.id)
            request.top.append((target, goal))
        if not request.top:
            self._finish_request(request)

    def build_derivation(self, drv_path: StorePath, drv, build_mode: BuildMode, keep_going: bool, observer,
                         on_done, settings=None) -> None:
        """`Store::buildDerivation`: a request whose one top goal builds `drv` held in memory
        (`makeBasicDerivationGoal`, every output wanted). The goal is never shared: no
        other request finds it, and it finds none (Nix's call has a Worker of its own)."""
        target = DerivedPath(drv_path, frozenset())
        request = RequestRecord(next(self._ids), (target,), build_mode, keep_going, observer, on_done, settings)
        self.requests[request.id] = request
        goal = self._new_goal("drv", drv_path, keep_going, frozenset({request.id}), (frozenset(), build_mode),
                              build_mode, settings, basic_drv=drv)
        goal.top_of.add(request.id)
        request.top.append((target, goal))

    def _finish_request(self, request: RequestRecord) -> None:
        """The end of `Store::buildPaths`: results, the error it would throw, the exit status."""
        if self.requests.pop(request.id, None) is None:
            return
        results: dict[DerivedPath, BuildResult] = {}
        failed: set[str] = set()
        errors: list[str] = []
        seen: set[int] = set()
        for target, goal in sorted(request.top, key=lambda tg: tg[1].key):
            goal.top_of.discard(request.id)
            finished = goal.finished
            # A top goal cut short (no keep-going) is still busy: Nix counts it as failed.
            results[target] = finished.result if finished is not None else BuildResult(status=Status.MiscFailure)
            if finished is not None and finished.exit_code is ExitCode.SUCCESS:
                continue
            failed.add(self.store_dir.print(goal.path))
            if finished is not None and goal.kind == "drv" and not goal.logged and goal.id not in seen:
                errors.append(finished.result.error_msg)
            seen.add(goal.id)
        error = None
        # buildPaths: the first error (in key order) is kept, later ones are logged at once
        for message in errors[1:]:
            self._tell_observer(request, Message(text=f"error: {message}"))
        if len(failed) == 1 and errors:
            error = errors[0]
        elif failed:
            if errors:
                self._tell_observer(request, Message(text=f"error: {errors[0]}"))
            error = "build of " + ", ".join(f"'{p}'" for p in sorted(failed)) + " failed"
        realised = Realised(results=results, exit_status=request.flags.exit_status() if failed else 0, error=error)
        self._collect_garbage()
        request.on_done(realised)

    def abort_all(self, error: str) -> None:
        """Stop everything (the engine is closing): every request ends with `error`."""
        for request in list(self.requests.values()):
            self.requests.pop(request.id)
            request.on_done(Realised(results={}, exit_status=1, error=error))
        self._collect_garbage()

    # -- goals ---------------------------------------------------------------------------

    def goals_for(self, path: StorePath) -> list[GoalRecord]:
        """The live goals for a derivation or a substituted path."""
        return self.derivation_goals.get(path, []) + self.substitution_goals.get(path, [])

    @staticmethod
    def _shared_goal(goals: list[GoalRecord], build_mode: BuildMode, keep_going: bool,
                     requests: frozenset[int], settings) -> GoalRecord | None:
        """The existing goal to use, as makeDerivationGoal finds one.

        Within one request any goal for the path will do, whatever its mode (Nix has one
        Worker per buildPaths and looks goals up by path alone). Another request shares it
        only if it wants the same: a --check or --repair request must not be answered by a
        normal build, nor a keep-going one be cut short by a goal that stops at a failure,
        nor a caller with settings of its own (a daemon client's) get a goal built with others.
        """
        for goal in goals:
            if goal.requests & requests:
                return goal
        for goal in goals:
            if goal.build_mode is build_mode and goal.keep_going == keep_going and goal.settings is settings:
                return goal
        return None

    def _derivation_goal(self, drv_path: StorePath, outputs, build_mode, keep_going, requests,
                         settings) -> GoalRecord:
        outputs = frozenset(outputs or ())
        goals = [g for g in self.derivation_goals.get(drv_path, []) if g.basic_drv is None]
        goal = self._shared_goal(goals, build_mode, keep_going, requests, settings)
        if goal is not None:
            goal.asked = frozenset() if not outputs or not goal.asked else goal.asked | outputs
            self._send(goal, AddWantedOutputs(outputs=outputs))
            self._add_requests(goal, requests)
            return goal
        return self._new_goal("drv", drv_path, keep_going, requests, (outputs, build_mode), build_mode, settings,
                              outputs)

    def _substitution_goal(self, path: StorePath, repair: bool, ca, keep_going, requests, settings) -> GoalRecord:
        mode = BuildMode.Repair if repair else BuildMode.Normal
        goal = self._shared_goal(self.substitution_goals.get(path, []), mode, keep_going, requests, settings)
        if goal is not None:
            self._add_requests(goal, requests)
            return goal
        return self._new_goal("subst", path, keep_going, requests, (repair, ca), mode, settings)

    def _drv_output_goal(self, id: DrvOutput, repair: bool, keep_going, requests, settings) -> GoalRecord:
        mode = BuildMode.Repair if repair else BuildMode.Normal
        goal = self._shared_goal(self.drv_output_goals.get(id, []), mode, keep_going, requests, settings)
        if goal is not None:
            self._add_requests(goal, requests)
            return goal
        return self._new_goal("drvout", id, keep_going, requests, repair, mode, settings)

    def _new_goal(self, kind: str, path: StorePath | DrvOutput, keep_going: bool, requests: frozenset[int],
                  params, build_mode: BuildMode, settings=None, asked: frozenset[str] = frozenset(), *,
                  basic_drv=None) -> GoalRecord:
        # key(): "a$" (substitutions) sorts before "b$" (derivations), then by name and path
        table = self._table(kind)
        if kind == "drvout":
            key = f"a${path}"
        else:
            key = f"{'b' if kind == 'drv' else 'a'}${path.name}${self.store_dir.print(path)}"
        goal = GoalRecord(next(self._ids), kind, path, key, keep_going, build_mode, asked, settings,
                          basic_drv=basic_drv, requests=requests)
        self.goals[goal.id] = goal
        table.setdefault(path, []).append(goal)
        goal.ref = self._start_goal(goal, params)
        self._activate(goal, Wake())
        if kind == "drv":
            # DerivationGoal's mcExpectedBuilds: counted from creation until the goal ends
            self.expected_builds += 1
            self._progress(goal)
        return goal

    def _add_requests(self, goal: GoalRecord, requests: frozenset[int]) -> None:
        todo = [goal]
        while todo:
            g = todo.pop()
            if requests <= g.requests:
                continue
            g.requests = g.requests | requests
            todo.extend(self.goals[w] for w in g.waitees if w in self.goals)

    def _table(self, kind: str) -> dict:
        return {"drv": self.derivation_goals, "subst": self.substitution_goals,
                "drvout": self.drv_output_goals}[kind]

    def add_waitee(self, waiter_id: int, want: WantDerivation | WantSubstitution | WantDrvOutputSubstitution,
                   resolved: bool) -> None:
        waiter = self.goals.get(waiter_id)
        if waiter is None:
            return  # cancelled while the message was on its way
        if isinstance(want, WantDerivation):
            goal = self._derivation_goal(want.drv_path, want.wanted_outputs, want.build_mode, waiter.keep_going,
                                         waiter.requests, waiter.settings)
        elif isinstance(want, WantDrvOutputSubstitution):
            goal = self._drv_output_goal(want.drv_output, want.repair, waiter.keep_going, waiter.requests,
                                         waiter.settings)
        else:
            goal = self._substitution_goal(want.path, want.repair, want.ca, waiter.keep_going, waiter.requests,
                                           waiter.settings)
        goal.waiters.append((waiter.id, resolved))
        waiter.waitees.add(goal.id)

    def goal_finished(self, goal_id: int, finished: Finished,
                      wanted_outputs: frozenset[str] | None = None) -> None:
        """`Goal::amDone` and `Worker::removeGoal`.

        `wanted_outputs`: what a derivation goal built (empty: every output).
        """
        goal = self.goals.pop(goal_id, None)
        if goal is None:
            return
        goal.finished = finished
        self._forget(goal)
        result = finished.result
        if (goal.kind == "drv" and result.success and wanted_outputs
                and (not goal.asked or goal.asked - wanted_outputs)):
            # More outputs were asked for while this goal's end was on its way to us
            # (addWantedOutputs came too late for its needRestart): a new goal does the rest.
            self._restart(goal)
            return
        if finished.thrown:
            if self.rounds:
                # Nix stops at the first goal (in key order) that throws in a round
                heapq.heappush(self._thrown, (goal.key, goal.id, goal))
            else:
                self._abort_requests_of(goal)
            return
        if goal.kind == "drv":
            if result.success:
                if result.status is Status.Built:
                    self.done_builds += 1
            elif result.status is not Status.DependencyFailed:
                self.failed_builds += 1
        for request in self._requests_of(goal):
            flags = request.flags
            if result.status is Status.TimedOut:
                flags.timed_out = True
            if result.status is Status.PermanentFailure:
                flags.permanent_failure = True
            if finished.failure is FailureKind.HASH_MISMATCH:
                flags.hash_mismatch = True
            if finished.failure is FailureKind.NOT_DETERMINISTIC:
                flags.check_mismatch = True
        live_waiters = [(self.goals[w], r) for w, r in goal.waiters if w in self.goals]
        if goal.kind == "drv" and not result.success and live_waiters:
            # amDone: a goal with waiters logs its error now; a top goal's is thrown at the end
            self._say(goal, f"error: {result.error_msg}")
            goal.logged = True
        dropped: list[int] = []
        for waiter, resolved in live_waiters:
            waiter.waitees.discard(goal.id)
            self._activate(waiter, ResolvedFinished(exit_code=finished.exit_code) if resolved
                           else WaiteeDone(exit_code=finished.exit_code))
            if finished.exit_code is ExitCode.FAILED and not waiter.keep_going:
                # waiteeDone without keep-going: the waiter drops its other waitees
                for other_id in waiter.waitees:
                    other = self.goals.get(other_id)
                    if other is not None:
                        other.waiters = [(w, r) for w, r in other.waiters if w != waiter.id]
                        dropped.append(other_id)
                waiter.waitees.clear()
        goal.waiters.clear()
        self._progress(goal)  # before a request it ends stops listening
        for request_id in sorted(goal.top_of):
            request = self.requests.get(request_id)
            if request is None:
                continue
            if finished.exit_code is ExitCode.FAILED and not request.keep_going:
                # removeGoal: topGoals.clear() -- for ecFailed only; a path nobody can
                # substitute (ecNoSubstituters) lets the other top goals go on
                self._finish_request(request)
            elif all(g.finished is not None for _, g in request.top):
                self._finish_request(request)
        if dropped:
            self._drop_unwanted(dropped)

    def _restart(self, goal: GoalRecord) -> None:
        """Hand `goal`'s waiters and requests to a new goal for the outputs asked of it."""
        new = self._new_goal("drv", goal.path, goal.keep_going, goal.requests,
                             (goal.asked, goal.build_mode), goal.build_mode, goal.settings, goal.asked)
        for waiter_id, resolved in goal.waiters:
            waiter = self.goals.get(waiter_id)
            if waiter is not None:
                waiter.waitees.discard(goal.id)
                waiter.waitees.add(new.id)
                new.waiters.append((waiter_id, resolved))
        goal.waiters.clear()
        for request_id in goal.top_of:
            request = self.requests.get(request_id)
            if request is not None:
                request.top = [(target, new if g is goal else g) for target, g in request.top]
                new.top_of.add(request_id)
        goal.top_of.clear()

    def goal_started(self, goal_id: int, message: str) -> None:
        goal = self.goals.get(goal_id)
        if goal is None:
            return
        if goal.kind == "drv":
            self.started.add(goal_id)
            self.running_builds = len(self.started)
        self._say(goal, message + "...")  # an activity: Nix's logger prints its start with "..."
        self._progress(goal)

    def goal_said(self, goal_id: int, message: str) -> None:
        goal = self.goals.get(goal_id)
        if goal is not None:
            self._say(goal, message)

    def _forget(self, goal: GoalRecord) -> None:
        self.busy.pop(goal.id, None)
        if goal.kind == "drv":
            self.expected_builds -= 1
        table = self._table(goal.kind)
        goals = table.get(goal.path, [])
        if goal in goals:
            goals.remove(goal)
            if not goals:
                del table[goal.path]
        if goal.id in self.running or goal.id in self.substituting:
            self.release_build_slot(goal.id)

    def _drop_unwanted(self, candidates: list[int]) -> None:
        """Cancel those of `candidates` no live goal waits for and no live request asked for,
        then in turn their waitees: Nix's goals going with their last shared pointer.

        Only the dropped goals are looked at, not every goal (`_collect_garbage`): a failure
        climbing a chain of N goals without keep-going drops one waitee per link, and a
        whole-graph walk per link made it quadratic.
        """
        todo = list(candidates)
        while todo:
            goal = self.goals.get(todo.pop())
            if goal is None:
                continue
            if (any(w in self.goals for w, _ in goal.waiters)
                    or any(r in self.requests for r in goal.top_of)):
                continue
            del self.goals[goal.id]
            self._forget(goal)
            self._send(goal, Cancel())
            todo.extend(goal.waitees)

    def _collect_garbage(self) -> None:
        """Cancel the goals no live top goal needs any more (Nix: their last shared pointer went)."""
        live: set[int] = set()
        todo = [g.id for r in self.requests.values() for _, g in r.top if g.id in self.goals]
        while todo:
            gid = todo.pop()
            if gid in live:
                continue
            live.add(gid)
            todo.extend(w for w in self.goals[gid].waitees if w in self.goals)
        for gid in [g for g in self.goals if g not in live]:
            goal = self.goals.pop(gid)
            self._forget(goal)
            self._send(goal, Cancel())

    # -- build slots ---------------------------------------------------------------------

    def _slots(self, goal: GoalRecord) -> tuple[set[int], list[tuple[str, int]], int]:
        """(holders, waiting heap, limit) of the kind of slot `goal` needs."""
        if goal.kind == "drv":
            return self.running, self._wanting_slot, self.max_jobs
        return self.substituting, self._wanting_substitution_slot, self.max_substitution_jobs

    def request_build_slot(self, goal_id: int) -> None:
        """`waitForBuildSlot`: a build (or substitution) slot; the goal is woken when it has one."""
        goal = self.goals.get(goal_id)
        if goal is None:
            return
        holders, wanting, limit = self._slots(goal)
        if limit == 0:
            for request in self._requests_of(goal):
                self._fail_request(request, NO_BUILD_SLOTS)
            return
        if not self.rounds and len(holders) < limit and not wanting:
            holders.add(goal_id)
            self._send_now(goal, Wake())
            return
        heapq.heappush(wanting, (goal.key, goal_id))
        if not self.rounds:
            self.grant_slots()

    def release_build_slot(self, goal_id: int) -> None:
        self.running.discard(goal_id)
        self.substituting.discard(goal_id)
        self.started.discard(goal_id)
        self.running_builds = len(self.started)
        if not self.rounds:
            self.grant_slots()

    def _abort_requests_of(self, goal: GoalRecord) -> None:
        for request in self._requests_of(goal):
            self._fail_request(request, goal.finished.result.error_msg)

    def advance(self) -> None:
        """Between rounds (nothing busy, the worker's inbox empty): grant slots, else start the next round."""
        if self.busy:
            return
        while self._thrown:
            self._abort_requests_of(heapq.heappop(self._thrown)[2])
        if self.grant_slots():
            return  # the granted goals start their builds first, as within Nix's round
        round_, self._next_round = self._next_round, []
        if len(round_) == 1:
            _, _, goal_id, message = round_[0]
            goal = self.goals.get(goal_id)
            if goal is not None:
                self._send_now(goal, self._alone(goal, message))
            return
        while round_:
            _, _, goal_id, message = heapq.heappop(round_)
            goal = self.goals.get(goal_id)
            if goal is not None:
                self._send_now(goal, message)

    def grant_slots(self) -> bool:
        """Give free slots to waiting goals in key() order; whether any was given."""
        granted = False
        for holders, wanting, limit in ((self.substituting, self._wanting_substitution_slot,
                                         self.max_substitution_jobs),
                                        (self.running, self._wanting_slot, self.max_jobs)):
            while wanting and len(holders) < limit:
                _, goal_id = heapq.heappop(wanting)
                goal = self.goals.get(goal_id)
                if goal is None:
                    continue
                holders.add(goal_id)
                self._send_now(goal, Wake())
                granted = True
        return granted

    def _alone(self, goal: GoalRecord, message: object) -> Alone:
        """`message` as the only activation of its round, lending a free build slot to a
        derivation goal (held in `running` until used, released, or given back idle)."""
        lend = (goal.kind == "drv" and len(self.running) < self.max_jobs and goal.id not in self.running
                and all(goal_id != goal.id for _, goal_id in self._wanting_slot))
        if lend:
            self.running.add(goal.id)
        return Alone(event=message, slot_lent=lend)

    def wake(self, goal_id: int) -> None:
        """`wakeUp`, or a `waitForAWhile` elapsed: run the goal's state in the next round."""
        goal = self.goals.get(goal_id)
        if goal is not None:
            self._activate(goal, Wake())

    def goal_idle(self, goal_id: int, slot_unused: bool = False) -> None:
        """The goal handled a Wake/WaiteeDone/ResolvedFinished (and gives back a lent slot)."""
        if slot_unused:
            self.running.discard(goal_id)
        count = self.busy.get(goal_id, 0) - 1
        if count > 0:
            self.busy[goal_id] = count
        else:
            self.busy.pop(goal_id, None)

    def _activate(self, goal: GoalRecord, message: object) -> None:
        if self.rounds:
            heapq.heappush(self._next_round, (goal.key, next(self._seq), goal.id, message))
        else:
            self._send_now(goal, message)

    def _send_now(self, goal: GoalRecord, message: object) -> None:
        self.busy[goal.id] = self.busy.get(goal.id, 0) + 1
        self._send(goal, message)

    def _fail_request(self, request: RequestRecord, error: str) -> None:
        """An error thrown out of `Worker::run`: the request ends with it, exit status 1."""
        if self.requests.pop(request.id, None) is None:
            return
        for _, goal in request.top:
            goal.top_of.discard(request.id)
        self._collect_garbage()
        request.on_done(Realised(results={}, exit_status=1, error=error))

    # -- observers -----------------------------------------------------------------------

    def _requests_of(self, goal: GoalRecord) -> list[RequestRecord]:
        return [self.requests[r] for r in goal.requests if r in self.requests]

    def observers_of(self, goal: GoalRecord) -> list:
        return [r.observer for r in self._requests_of(goal) if r.observer is not None]

    def _tell_observer(self, request: RequestRecord, event: object) -> None:
        if request.observer is not None:
            self._notify(request.observer, event)

    def _say(self, goal: GoalRecord, text: str) -> None:
        for observer in self.observers_of(goal):
            self._notify(observer, Message(text=text))

    def _progress(self, goal: GoalRecord) -> None:
        # updateProgress: actDerivations.progress(done, expected + done, running, failed)
        event = Progress(expected_builds=self.expected_builds + self.done_builds, running_builds=self.running_builds,
                         done_builds=self.done_builds, failed_builds=self.failed_builds)
        for observer in self.observers_of(goal):
            self._notify(observer, event)
