"""What both goal actors share: a thread started without waiting for it, and no registry."""

from __future__ import annotations

import _thread
from typing import Any

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

    def _start_actor_loop(self) -> None:
        _thread.start_new_thread(self._actor_loop, ())

    # handling an activation alone in its round (worker_messages.Alone): wake-ups run at once
    _alone = False

    def _handle_alone(self, event: Any) -> None:
        """Handle `event` (with the subclass's `_handle`), the only activation of its round."""
        self._alone = True
        try:
            self._handle(event)
        finally:
            self._alone = False
