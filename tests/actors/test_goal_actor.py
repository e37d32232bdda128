"""Goal actors on the shared dispatcher: still actors (one message at a time, in order,
asks answered, stops final), on a few threads however many goals there are."""

from __future__ import annotations

import os
import threading
import time

import pykka
import pytest

from goalkeeper.actors import goal_actor
from goalkeeper.actors.goal_actor import DISPATCHER_THREADS, GoalActor

pytestmark = pytest.mark.timeout(60)


class Recorder(GoalActor):
    """Records what it handles and checks nobody else handles its messages meanwhile."""

    def __init__(self, log: list, overlaps: list):
        super().__init__()
        self.log = log
        self.overlaps = overlaps
        self.inside = False

    def on_receive(self, message):
        if self.inside:
            self.overlaps.append(message)
        self.inside = True
        try:
            if message == "boom":
                raise ValueError("boom")
            if message == "slow":
                time.sleep(0.01)  # lets another dispatcher thread come in if it could
            self.log.append(message)
            return ("got", message)
        finally:
            self.inside = False

    def on_failure(self, exc_type, exc_value, tb):
        self.log.append(("failed", str(exc_value)))


def _tasks() -> int:
    return len(os.listdir("/proc/self/task"))


def test_messages_are_handled_in_order_one_at_a_time():
    overlaps: list = []
    logs = [[] for _ in range(20)]
    refs = [Recorder.start(log, overlaps) for log in logs]
    senders = []
    for ref in refs:
        t = threading.Thread(target=lambda r=ref: [r.tell(m) for m in ["slow", *range(50)]])
        senders.append(t)
        t.start()
    for t in senders:
        t.join()
    for ref in refs:
        assert ref.ask("last") == ("got", "last")  # after everything told before it
    assert overlaps == []
    for log in logs:
        assert log == ["slow", *range(50), "last"]
    for ref in refs:
        ref.stop()


def test_thousands_of_goals_use_a_few_threads():
    before = _tasks()
    refs = [Recorder.start([], []) for _ in range(2000)]
    for ref in refs:
        ref.tell("hello")
    assert all(ref.ask("x") == ("got", "x") for ref in refs)
    assert _tasks() - before <= DISPATCHER_THREADS
    for ref in refs:
        ref.stop()


def test_stop_is_final_and_answers_asks_queued_behind_it():
    log: list = []
    ref = Recorder.start(log, [])
    ref.tell("slow")
    stopped = ref.stop(block=False)
    late = ref.actor_inbox  # an ask queued behind the stop, as a racing sender would
    future = pykka.ThreadingFuture()
    late.put(pykka._envelope.Envelope("after", reply_to=future))
    stopped.get(timeout=5)
    with pytest.raises(pykka.ActorDeadError):
        future.get(timeout=5)
    assert log == ["slow"] and not ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("again")


def test_an_exception_in_a_tell_stops_the_goal_through_on_failure():
    log: list = []
    ref = Recorder.start(log, [])
    ref.tell("boom")
    deadline = time.monotonic() + 5
    while ref.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert log == [("failed", "boom")]
    other = Recorder.start([], [])  # the dispatcher thread lives on
    assert other.ask("y") == ("got", "y")
    other.stop()


def test_an_exception_in_an_ask_goes_to_the_asker():
    ref = Recorder.start([], [])
    with pytest.raises(ValueError, match="boom"):
        ref.ask("boom")
    assert ref.ask("z") == ("got", "z")
    ref.stop()


def test_a_forked_child_gets_a_dispatcher_of_its_own():
    Recorder.start([], []).ask("warm")  # the parent's dispatcher has threads
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's outcome is its exit status
        code = 1
        try:
            ref = Recorder.start([], [])
            done = threading.Event()
            threading.Thread(target=lambda: (ref.ask("in child", timeout=5), done.set())).start()
            code = 0 if done.wait(5) and goal_actor._dispatcher._threads >= 1 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
