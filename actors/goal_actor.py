"""What both goal actors share: a thread started without waiting for it."""

from __future__ import annotations

import _thread

import pykka


class GoalActor(pykka.ThreadingActor):
    """A goal's Pykka actor, whose thread the worker starts without waiting for it to run.

    `threading.Thread.start()` blocks until the new thread has run its first lines:
    the worker, which starts every goal, paid a thread hand-over per goal for it
    (0.2 ms on a quiet machine, more under load; in a chain of 1,000 the goals are
    made one after another). Nothing needs it: messages wait in the actor's inbox
    until its loop runs. The thread is a plain one, so the interpreter does not wait
    for it at exit; `Engine.close` stops every goal first.
    """

    def _start_actor_loop(self) -> None:
        _thread.start_new_thread(self._actor_loop, ())
