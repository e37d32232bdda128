"""The Worker's bookkeeping of `buildDerivation` requests: a goal of its own per call."""

from __future__ import annotations

import pytest

from goalkeeper.actors.derivation_goal_state import BuildMode, Finished, Wake, WantDerivation
from goalkeeper.actors.results import BuildResult, ExitCode, Status
from goalkeeper.actors.scheduler import Scheduler
from goalkeeper.actors.worker_messages import AddWantedOutputs, DerivedPath
from goalkeeper.store.paths import StoreDir, StorePath

pytestmark = pytest.mark.timeout(10)

SD = StoreDir("/nix/store")
DRV = StorePath("a" * 32 + "-mem.drv")
TOP = StorePath("b" * 32 + "-top.drv")
BASIC = object()  # stands for the BasicDerivation: the scheduler only carries it to the goal


class Harness:
    def __init__(self):
        self.sent, self.started, self.done = [], [], []
        self.s = Scheduler(SD, 1, start_goal=lambda g, p: self.started.append((g.id, g.basic_drv, p)) or g.id,
                           send=lambda g, m: self.sent.append((g.id, m)), notify=lambda obs, ev: obs(ev))

    def build_derivation(self):
        self.s.build_derivation(DRV, BASIC, BuildMode.Normal, False, None, self.done.append)
        return self.started[-1][0]


def test_each_call_has_a_goal_of_its_own_given_the_derivation():
    h = Harness()
    first, second = h.build_derivation(), h.build_derivation()
    assert first != second
    assert h.started == [(first, BASIC, (frozenset(), BuildMode.Normal)),
                         (second, BASIC, (frozenset(), BuildMode.Normal))]
    assert (first, Wake()) in h.sent and (second, Wake()) in h.sent


def test_an_ordinary_request_does_not_join_it_nor_it_an_ordinary_goal():
    h = Harness()
    h.s.realise([DerivedPath(DRV, frozenset())], BuildMode.Normal, False, None, h.done.append)
    ordinary = h.started[-1][0]
    basic = h.build_derivation()
    h.s.realise([DerivedPath(DRV, frozenset())], BuildMode.Normal, False, None, h.done.append)
    assert basic != ordinary and len(h.started) == 2  # the second realise shares the ordinary goal
    assert (ordinary, AddWantedOutputs(outputs=frozenset())) in h.sent
    assert not any(isinstance(m, AddWantedOutputs) for g, m in h.sent if g == basic)
    # another goal wanting the derivation gets the ordinary goal too
    h.s.realise([DerivedPath(TOP, frozenset())], BuildMode.Normal, False, None, h.done.append)
    top = h.started[-1][0]
    h.s.add_waitee(top, WantDerivation(drv_path=DRV, wanted_outputs=frozenset(), build_mode=BuildMode.Normal),
                   False)
    assert len(h.started) == 3 and h.s.goals[ordinary].waiters == [(top, False)]
    assert h.s.goals[basic].waiters == []


def test_its_result_ends_its_request_alone():
    h = Harness()
    basic = h.build_derivation()
    result = BuildResult(status=Status.Built, times_built=1, built_outputs={"out": "/nix/store/x-mem"})
    h.s.goal_finished(basic, Finished(exit_code=ExitCode.SUCCESS, result=result), frozenset())
    [realised] = h.done
    assert realised.error is None and realised.results == {DerivedPath(DRV, frozenset()): result}
