"""The Worker's bookkeeping without threads: goal sharing, waitees, slots, requests, cancellation."""

from __future__ import annotations

import pytest

from goalkeeper.actors.derivation_goal_state import (BuildMode, Finished, ResolvedFinished, Wake, WaiteeDone,
                                                     WantDerivation, WantSubstitution)
from goalkeeper.actors.results import BuildResult, ExitCode, FailureKind, Status
from goalkeeper.actors.scheduler import NO_BUILD_SLOTS, Scheduler
from goalkeeper.actors.worker_messages import AddWantedOutputs, Alone, Cancel, DerivedPath, Message
from goalkeeper.store.paths import StoreDir, StorePath

pytestmark = pytest.mark.timeout(10)

SD = StoreDir("/nix/store")


def _hash(name: str, filler: str) -> str:
    # a distinct, valid base-32 hash part per name
    return (filler * 32 + "".join(c for c in name if c in "0123456789abcdfghijklmnpqrsvwxyz"))[-32:]


def drv(name: str) -> StorePath:
    return StorePath(_hash(name, "a") + f"-{name}.drv")


def path(name: str) -> StorePath:
    return StorePath(_hash(name, "b") + f"-{name}")


class Harness:
    def __init__(self, max_jobs: int = 1, rounds: bool = False):
        self.sent: list[tuple[int, object]] = []
        self.events: list[object] = []
        self.results = []
        self.s = Scheduler(SD, max_jobs, start_goal=lambda g, p: g.id, send=lambda g, m: self.sent.append((g.id, m)),
                           notify=lambda obs, ev: obs(ev), rounds=rounds)

    def realise(self, *targets, keep_going=False):
        self.s.realise(targets, BuildMode.Normal, keep_going, self.events.append, self.results.append)

    def goal(self, p: StorePath):
        return (self.s.goals_for(p) or [None])[0]

    def to(self, gid: int) -> list[object]:
        return [m for g, m in self.sent if g == gid]

    def finish(self, gid: int, status: Status, msg: str = "", failure=None):
        code = ExitCode.SUCCESS if status.success else (
            ExitCode.NO_SUBSTITUTERS if status is Status.NoSubstituters else ExitCode.FAILED)
        self.s.goal_finished(gid, Finished(exit_code=code, result=BuildResult(status=status, error_msg=msg),
                                           failure=failure))


def test_one_goal_per_derivation_however_many_want_it():
    h = Harness()
    h.realise(DerivedPath(drv("top"), frozenset()))
    top = h.goal(drv("top"))
    assert h.to(top.id) == [Wake()]
    h.s.add_waitee(top.id, WantDerivation(drv_path=drv("dep"), wanted_outputs=frozenset({"out"}),
                                          build_mode=BuildMode.Normal), False)
    h.realise(DerivedPath(drv("dep"), frozenset({"dev"})))
    dep = h.goal(drv("dep"))
    assert len(h.s.goals) == 2
    assert AddWantedOutputs(outputs=frozenset({"dev"})) in h.to(dep.id)
    assert dep.requests == frozenset(h.s.requests) and len(h.s.requests) == 2


def test_waitee_done_goes_to_waiters_and_request_completes():
    h = Harness()
    h.realise(DerivedPath(drv("top"), frozenset()))
    top = h.goal(drv("top"))
    h.s.add_waitee(top.id, WantSubstitution(path=path("src")), False)
    src = h.goal(path("src"))
    assert src.key.startswith("a$src$/nix/store/")
    h.finish(src.id, Status.NoSubstituters)
    assert h.to(top.id)[-1] == WaiteeDone(exit_code=ExitCode.NO_SUBSTITUTERS)
    assert not h.results
    h.finish(top.id, Status.Built)
    [realised] = h.results
    assert realised.exit_status == 0 and realised.error is None
    assert realised.results[DerivedPath(drv("top"), frozenset())].status is Status.Built


def test_resolved_waitee_gets_resolved_finished():
    h = Harness()
    h.realise(DerivedPath(drv("ca"), frozenset()))
    ca = h.goal(drv("ca"))
    h.s.add_waitee(ca.id, WantDerivation(drv_path=drv("res"), wanted_outputs=frozenset(),
                                         build_mode=BuildMode.Normal), True)
    h.finish(h.goal(drv("res")).id, Status.Built)
    assert h.to(ca.id)[-1] == ResolvedFinished(exit_code=ExitCode.SUCCESS)


def _graph(h: Harness, keep_going: bool):
    h.realise(DerivedPath(drv("top"), frozenset()), keep_going=keep_going)
    top = h.goal(drv("top"))
    for name in ("bad", "slow"):
        h.s.add_waitee(top.id, WantDerivation(drv_path=drv(name), wanted_outputs=frozenset({"out"}),
                                              build_mode=BuildMode.Normal), False)
    return top, h.goal(drv("bad")), h.goal(drv("slow"))


def test_failure_without_keep_going_cancels_the_rest():
    h = Harness()
    top, bad, slow = _graph(h, keep_going=False)
    h.finish(bad.id, Status.PermanentFailure, "builder for 'x' failed with exit code 1")
    assert Message(text="error: builder for 'x' failed with exit code 1") in h.events
    assert h.to(top.id)[-1] == WaiteeDone(exit_code=ExitCode.FAILED)
    assert Cancel() in h.to(slow.id)  # nobody needs it any more
    assert slow.id not in h.s.goals
    h.finish(top.id, Status.DependencyFailed, "1 dependencies of derivation 'top' failed to build")
    [realised] = h.results
    assert realised.error == "1 dependencies of derivation 'top' failed to build"
    assert realised.exit_status == 100


def test_dropped_waitees_go_with_what_only_they_wanted():
    """Without keep-going, a failure makes its waiter drop its other waitees: those nobody else
    wants are cancelled, and so in turn are their waitees, but not a goal another request wants."""
    h = Harness()
    top, bad, slow = _graph(h, keep_going=False)
    want = lambda name: WantDerivation(drv_path=drv(name), wanted_outputs=frozenset({"out"}),
                                       build_mode=BuildMode.Normal)
    h.s.add_waitee(slow.id, want("deep"), False)
    h.s.add_waitee(slow.id, want("shared"), False)
    deep, shared = h.goal(drv("deep")), h.goal(drv("shared"))
    h.realise(DerivedPath(drv("shared"), frozenset()))  # another request wants it too
    h.s.add_waitee(deep.id, want("deeper"), False)
    deeper = h.goal(drv("deeper"))
    h.finish(bad.id, Status.PermanentFailure, "boom")
    for gone in (slow, deep, deeper):
        assert Cancel() in h.to(gone.id) and gone.id not in h.s.goals
    assert Cancel() not in h.to(shared.id) and shared.id in h.s.goals
    assert top.id in h.s.goals


def test_failure_with_keep_going_lets_the_others_finish():
    h = Harness()
    top, bad, slow = _graph(h, keep_going=True)
    h.finish(bad.id, Status.PermanentFailure, "boom")
    assert Cancel() not in h.to(slow.id)
    h.finish(slow.id, Status.Built)
    h.finish(top.id, Status.DependencyFailed, "1 dependencies of derivation 'top' failed to build")
    assert h.results[0].exit_status == 100


def test_top_failure_without_keep_going_ends_the_request_at_once():
    h = Harness()
    h.realise(DerivedPath(drv("one"), frozenset()), DerivedPath(drv("two"), frozenset()))
    one, two = h.goal(drv("one")), h.goal(drv("two"))
    h.finish(one.id, Status.TimedOut, "timed out")
    [realised] = h.results
    # the busy top goal counts as failed: "build of … failed", exit 101
    assert realised.error == f"build of '{SD.print(drv('one'))}', '{SD.print(drv('two'))}' failed"
    assert realised.exit_status == 101
    assert Message(text="error: timed out") in h.events
    assert Cancel() in h.to(two.id)


def test_shared_goal_survives_another_requests_cancellation():
    h = Harness()
    h.realise(DerivedPath(drv("one"), frozenset()), DerivedPath(drv("shared"), frozenset()))
    h.realise(DerivedPath(drv("shared"), frozenset()))
    shared = h.goal(drv("shared"))
    h.finish(h.goal(drv("one")).id, Status.PermanentFailure, "x")
    assert len(h.results) == 1
    assert Cancel() not in h.to(shared.id)
    h.finish(shared.id, Status.Built)
    assert h.results[1].exit_status == 0


@pytest.mark.parametrize("failure,status,code", [
    (FailureKind.HASH_MISMATCH, Status.OutputRejected, 102),
    (FailureKind.NOT_DETERMINISTIC, Status.NotDeterministic, 104),
    (FailureKind.BUILD_ERROR, Status.OutputRejected, 1),
])
def test_exit_status_bits(failure, status, code):
    h = Harness()
    h.realise(DerivedPath(drv("x"), frozenset()))
    h.finish(h.goal(drv("x")).id, status, "m", failure)
    assert h.results[0].exit_status == code
    assert h.results[0].error == "m"


def test_build_slots_are_granted_in_key_order():
    h = Harness(max_jobs=1)
    h.realise(*(DerivedPath(drv(n), frozenset()) for n in ("c", "a", "b")), keep_going=True)
    ids = {n: h.goal(drv(n)).id for n in "abc"}
    h.sent.clear()
    for n in "cab":
        h.s.request_build_slot(ids[n])
    assert h.sent == [(ids["c"], Wake())]  # free slot: granted at once
    h.s.release_build_slot(ids["c"])
    h.s.release_build_slot(ids["c"])  # twice is harmless
    assert h.sent[1:] == [(ids["a"], Wake())]
    h.finish(ids["a"], Status.Built)  # finishing releases the slot
    assert h.sent[2:] == [(ids["b"], Wake())]


def test_no_build_slots_fails_the_request():
    h = Harness(max_jobs=0)
    h.realise(DerivedPath(drv("x"), frozenset()))
    h.s.request_build_slot(h.goal(drv("x")).id)
    assert h.results[0].error == NO_BUILD_SLOTS and h.results[0].exit_status == 1
    assert not h.s.goals


def test_substitutions_run_even_with_max_jobs_zero():
    h = Harness(max_jobs=0)
    h.realise(DerivedPath(path("p")))
    g = h.goal(path("p"))
    h.sent.clear()
    h.s.request_build_slot(g.id)
    assert h.sent == [(g.id, Wake())]


def test_message_from_cancelled_goal_is_ignored():
    h = Harness()
    h.s.add_waitee(12345, WantSubstitution(path=path("p")), False)
    h.s.goal_finished(12345, Finished(exit_code=ExitCode.SUCCESS, result=BuildResult(status=Status.Built)))
    assert not h.s.goals and not h.results


def test_already_valid_opaque_path():
    h = Harness()
    h.realise(DerivedPath(path("p")))
    h.finish(h.goal(path("p")).id, Status.AlreadyValid)
    assert h.results[0].exit_status == 0


def test_missing_opaque_path_fails_with_build_of():
    h = Harness()
    h.realise(DerivedPath(path("p")))
    h.finish(h.goal(path("p")).id, Status.NoSubstituters, "no substituter")
    # a substitution goal's message is in its result only: Nix throws "build of … failed"
    assert h.results[0].error == f"build of '{SD.print(path('p'))}' failed"
    assert h.results[0].exit_status == 1


def test_an_error_printed_when_its_goal_finished_is_not_printed_again_at_the_end():
    h = Harness()
    h.realise(DerivedPath(drv("bad"), frozenset()), DerivedPath(drv("top"), frozenset()), keep_going=True)
    bad, top = h.goal(drv("bad")), h.goal(drv("top"))
    h.s.add_waitee(top.id, WantDerivation(drv_path=drv("bad"), wanted_outputs=frozenset({"out"}),
                                          build_mode=BuildMode.Normal), False)
    h.finish(bad.id, Status.PermanentFailure, "builder failed")
    h.finish(top.id, Status.DependencyFailed, "1 dependencies of derivation 'top' failed to build")
    messages = [e.text for e in h.events if isinstance(e, Message)]
    # Nix: amDone logs bad's error (it has a waiter), so bad keeps no `ex`; top's is thrown
    assert messages.count("error: builder failed") == 1
    assert h.results[0].error == "build of " + ", ".join(f"'{SD.print(d)}'" for d in sorted(
        [drv("bad"), drv("top")], key=SD.print)) + " failed"
    assert messages[-1] == "error: 1 dependencies of derivation 'top' failed to build"


def test_concurrent_requests_share_a_goal_only_when_they_want_the_same():
    h = Harness()
    target = DerivedPath(drv("top"), frozenset())
    h.s.realise([target], BuildMode.Normal, False, None, h.results.append)
    h.s.realise([target], BuildMode.Normal, False, None, h.results.append)
    assert len(h.s.goals) == 1  # the same thing wanted twice: built once
    h.s.realise([target], BuildMode.Check, False, None, h.results.append)
    h.s.realise([target], BuildMode.Normal, True, None, h.results.append)
    assert len(h.s.goals) == 3  # a check, and a keep-going run, are goals of their own
    assert sorted((g.build_mode.name, g.keep_going) for g in h.s.goals.values()) == [
        ("Check", False), ("Normal", False), ("Normal", True)]
    # Within one request any goal for the path will do, as in Nix's one Worker.
    check = next(g for g in h.s.goals.values() if g.build_mode is BuildMode.Check)
    h.s.add_waitee(check.id, WantDerivation(drv_path=drv("top"), wanted_outputs=frozenset(),
                                            build_mode=BuildMode.Normal), False)
    assert len(h.s.goals) == 3


def test_outputs_asked_of_a_goal_that_already_finished_get_a_new_goal():
    h = Harness()
    h.realise(DerivedPath(drv("top"), frozenset()))
    top = h.goal(drv("top"))
    h.s.add_waitee(top.id, WantDerivation(drv_path=drv("dep"), wanted_outputs=frozenset({"out"}),
                                          build_mode=BuildMode.Normal), False)
    dep = h.goal(drv("dep"))
    # another request wants "dev" while dep's GoalFinished (built "out" only) is in flight
    h.realise(DerivedPath(drv("dep"), frozenset({"dev"})))
    h.s.goal_finished(dep.id, Finished(exit_code=ExitCode.SUCCESS, result=BuildResult(status=Status.Built)),
                      frozenset({"out"}))
    again = h.goal(drv("dep"))
    assert again is not None and again.id != dep.id and again.asked == frozenset({"out", "dev"})
    assert again.waiters == [(top.id, False)] and top.waitees == {again.id}
    assert not any(isinstance(m, WaiteeDone) for m in h.to(top.id))  # not told yet
    assert len(h.results) == 0
    h.finish(again.id, Status.Built)
    assert h.to(top.id)[-1] == WaiteeDone(exit_code=ExitCode.SUCCESS)
    assert len(h.results) == 1  # the second request, whose top goal it was


def test_a_goal_that_built_what_was_asked_is_not_restarted():
    h = Harness()
    h.realise(DerivedPath(drv("dep"), frozenset({"out"})))
    dep = h.goal(drv("dep"))
    h.s.goal_finished(dep.id, Finished(exit_code=ExitCode.SUCCESS, result=BuildResult(status=Status.Built)),
                      frozenset({"out"}))
    assert h.goal(drv("dep")) is None and len(h.results) == 1


def test_substitutions_have_slots_of_their_own():
    h = Harness(max_jobs=1)
    h.s.max_substitution_jobs = 2
    h.realise(DerivedPath(drv("x"), frozenset()), DerivedPath(path("p")), DerivedPath(path("q")),
              DerivedPath(path("r")))
    x, p, q, r = (h.goal(drv("x")), h.goal(path("p")), h.goal(path("q")), h.goal(path("r")))
    h.sent.clear()
    for g in (x, p, q, r):
        h.s.request_build_slot(g.id)
    # the build and two substitutions run at once; the third substitution waits for one
    assert h.sent == [(x.id, Wake()), (p.id, Wake()), (q.id, Wake())]
    h.s.release_build_slot(x.id)
    assert h.sent[-1] == (q.id, Wake())  # a free build slot is no substitution slot
    h.s.release_build_slot(p.id)
    assert h.sent[-1] == (r.id, Wake())


def test_progress_counts_as_nix_updateProgress():
    from goalkeeper.actors.worker_messages import Progress

    h = Harness()
    h.realise(DerivedPath(drv("top"), frozenset()))
    top = h.goal(drv("top"))
    # every derivation goal is an expected build from its creation (mcExpectedBuilds)
    assert h.events[-1] == Progress(expected_builds=1, running_builds=0, done_builds=0, failed_builds=0)
    h.s.add_waitee(top.id, WantDerivation(drv_path=drv("dep"), wanted_outputs=frozenset(),
                                          build_mode=BuildMode.Normal), False)
    assert h.events[-1].expected_builds == 2
    h.finish(h.goal(drv("dep")).id, Status.AlreadyValid)  # nothing built: no longer expected
    assert h.events[-1] == Progress(expected_builds=1, running_builds=0, done_builds=0, failed_builds=0)
    h.finish(top.id, Status.Built)  # done, and still counted in "expected" (expected + done)
    assert [e for e in h.events if isinstance(e, Progress)][-1] == Progress(
        expected_builds=1, running_builds=0, done_builds=1, failed_builds=0)


# -- rounds (the worker's mode) ------------------------------------------------------------

def test_goal_alone_in_its_round_is_told_so_and_lent_a_free_slot():
    h = Harness(max_jobs=1, rounds=True)
    h.realise(DerivedPath(drv("top"), frozenset()))
    top = h.goal(drv("top"))
    h.s.advance()
    assert h.to(top.id) == [Alone(event=Wake(), slot_lent=True)]
    assert top.id in h.s.running  # lent: no other goal gets it meanwhile
    h.s.goal_idle(top.id, slot_unused=True)
    assert not h.s.running and not h.s.busy


def test_no_slot_lent_when_all_are_taken():
    h = Harness(max_jobs=1, rounds=True)
    h.realise(DerivedPath(drv("a"), frozenset()), DerivedPath(drv("b"), frozenset()))
    a, b = h.goal(drv("a")), h.goal(drv("b"))
    h.s.advance()
    assert h.to(a.id) == [Wake()] and h.to(b.id) == [Wake()]  # two goals: an ordinary round
    h.s.request_build_slot(a.id)
    h.s.goal_idle(a.id)
    h.s.goal_idle(b.id)
    h.s.advance()
    assert h.to(a.id)[-1] == Wake() and h.s.running == {a.id}  # granted in key() order
    h.s.wake(b.id)
    h.s.goal_idle(a.id)
    h.s.advance()
    assert h.to(b.id)[-1] == Alone(event=Wake(), slot_lent=False)
    h.s.goal_idle(b.id, slot_unused=False)
    assert h.s.running == {a.id}


def test_lent_slot_used_is_kept_until_released():
    h = Harness(max_jobs=1, rounds=True)
    h.realise(DerivedPath(drv("top"), frozenset()))
    top = h.goal(drv("top"))
    h.s.advance()
    h.s.goal_idle(top.id)  # it started its build in the lent slot
    assert h.s.running == {top.id}
    h.s.release_build_slot(top.id)
    assert not h.s.running
