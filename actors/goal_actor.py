"""What both goal actors share: a few shared threads instead of one each, and no registry.

A goal is a Pykka actor: it is sent messages through its `ActorRef`, handles them one at
a time and in order, and stops like any actor. Only the threads differ. A ThreadingActor
owns a thread for its whole life, and goals spend nearly all of theirs waiting (for
their inputs, a build slot, a builder). Thousands of goal threads asleep cost:

- the kernel: every futex wake-up walks a hash bucket holding the sleepers that hash
  there, so each of the ~120 lock hand-overs a goal's creation takes grew with the
  number of goals alive: `futex_wake` was 38% of all CPU time creating a wide graph of
  10,000 goals (2% at 1,000), and its time per goal grew x1.6 from 1k to 10k;
- starting one: a thread start (clone, an 8 MiB stack mapped) per goal.

So a goal with messages is queued on a dispatcher whose few threads run whichever goal
is ready, one goal per thread at a time, until its inbox is empty: the actor model of
Akka's dispatchers. Goal handlers never wait for other goals (only, briefly, for the store
actor), so a small pool cannot deadlock. Store calls that use a thread's own connection
(an output moved into place) use the dispatcher thread's, opened once and kept.
"""

from __future__ import annotations

import _thread
import collections
import os
import sys
import threading
from typing import Any

import pykka
from pykka import ActorDeadError, messages

# Threads running goals. The GIL runs one at a time; more than one lets a goal's file
# system and SQLite work (which release it) overlap with another goal's Python, and keeps
# goals going while one waits for the store actor's reply.
DISPATCHER_THREADS = 4


class _Dispatcher:
    """Threads that run ready goal actors, started as needed up to DISPATCHER_THREADS."""

    def __init__(self, size: int):
        self._ready: collections.deque[GoalActor] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._size = size
        self._threads = 0
        self._idle = 0

    def schedule(self, actor: GoalActor) -> None:
        with self._cond:
            self._ready.append(actor)
            if self._idle:
                self._cond.notify()
                return
            if self._threads >= self._size:
                return
            self._threads += 1
        # A plain thread: the interpreter does not wait for it at exit (Engine.close stops
        # every goal first); pool threads live as long as the process.
        _thread.start_new_thread(self._run, ())

    def _run(self) -> None:
        cond, ready = self._cond, self._ready
        while True:
            with cond:
                while not ready:
                    self._idle += 1
                    cond.wait()
                    self._idle -= 1
                actor = ready.popleft()
            actor._run_ready()


_dispatcher = _Dispatcher(DISPATCHER_THREADS)


def _reset_after_fork() -> None:
    # A forked child has none of the parent's dispatcher threads (nor its goals): a
    # dispatcher that counted them would never start one (tests fork; the engine never does).
    global _dispatcher
    _dispatcher = _Dispatcher(DISPATCHER_THREADS)


os.register_at_fork(after_in_child=_reset_after_fork)


class _Inbox:
    """A goal's inbox (what pykka calls `actor_inbox`): a message makes the goal ready."""

    __slots__ = ("_actor", "_lock", "_messages", "_scheduled")

    def __init__(self, actor: GoalActor):
        self._actor = actor
        self._lock = threading.Lock()
        self._messages: collections.deque = collections.deque()
        self._scheduled = False  # queued on, or being run by, the dispatcher

    def put(self, envelope: Any) -> None:
        with self._lock:
            self._messages.append(envelope)
            if self._scheduled:
                return
            self._scheduled = True
        _dispatcher.schedule(self._actor)

    def take(self) -> Any:
        """The next message, or None (and the goal is no longer scheduled) if there is none."""
        with self._lock:
            if self._messages:
                return self._messages.popleft()
            self._scheduled = False
            return None


class GoalActor(pykka.ThreadingActor):
    """A goal's Pykka actor, run by the goals' dispatcher threads rather than a thread of its own."""

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> pykka.ActorRef:
        """`pykka.Actor.start` without registering the actor in `pykka.ActorRegistry`.

        The registry is a list: each actor's stop removes itself with a linear search,
        0.46 ms with 10,000 goals alive, paid once per goal (quadratic in a wide graph).
        Goals are found through the worker, never through the registry.
        """
        actor = cls(*args, **kwargs)
        actor._start_actor_loop()
        return actor.actor_ref

    def _create_actor_inbox(self) -> _Inbox:  # type: ignore[override]
        return _Inbox(self)

    def _start_actor_loop(self) -> None:
        # Nothing to start: the first message makes the goal ready; on_start runs then.
        self._on_start_done = False

    def _run_ready(self) -> None:
        """On a dispatcher thread: handle the inbox's messages until it is empty or the goal stopped."""
        if not self._on_start_done:
            self._on_start_done = True
            self._actor_loop_setup()
        inbox: _Inbox = self.actor_inbox  # type: ignore[assignment]
        while not self.actor_stopped.is_set():
            envelope = inbox.take()
            if envelope is None:
                return
            self._handle_envelope(envelope)
        # pykka's teardown: asks still queued get an answer. Taking until empty unschedules
        # the goal, so a message racing with the stop schedules it again and is answered too.
        while (envelope := inbox.take()) is not None:
            if envelope.reply_to is None:
                continue
            if isinstance(envelope.message, messages._ActorStop):
                envelope.reply_to.set(None)
            else:
                error = ActorDeadError(f"{self.actor_ref} stopped before handling the message")
                envelope.reply_to.set_exception(exc_info=(ActorDeadError, error, None))

    def _handle_envelope(self, envelope: Any) -> None:
        """One message, as pykka's `_actor_loop_running` handles it."""
        try:
            response = self._handle_receive(envelope.message)
            if envelope.reply_to is not None:
                envelope.reply_to.set(response)
        except Exception:
            if envelope.reply_to is not None:
                envelope.reply_to.set_exception()
            else:
                self._handle_failure(*sys.exc_info())
                try:
                    self.on_failure(*sys.exc_info())
                except Exception:
                    self._handle_failure(*sys.exc_info())
        except BaseException:
            self._stop()
            pykka.ActorRegistry.stop_all()
            raise

    # handling an activation alone in its round (worker_messages.Alone): wake-ups run at once
    _alone = False

    def _handle_alone(self, event: Any) -> None:
        """Handle `event` (with the subclass's `_handle`), the only activation of its round."""
        self._alone = True
        try:
            self._handle(event)
        finally:
            self._alone = False

