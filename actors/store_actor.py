"""The store actor: the one writer of the store database, batching registrations into group commits.

Every goal's registration is a `RegisterValidPaths` asked of this actor. The
actor opens its SQLite connection in `on_start` (connections belong to their
thread) and, whenever it takes a registration from its inbox, also takes
every registration queued right behind it and commits them all in one
transaction, each in its own savepoint: one refused registration (a cycle, an
invalid reference) is rolled back alone and its caller alone gets the error.
So a burst of goals finishing together costs one fsync, and a quiet store
commits each registration at once: "accumulate while busy, commit when the
inbox has nothing more for the batch".

While the actor runs it is the store's registrar: `store.add_to_store` and
`add_text_to_store` called in any other thread write the files and hold the
path lock in that thread, and send only the registration here, so the actor
never waits on a path lock or copies a tree, and still is the only writer.

Messages other than registrations are never reordered: a batch stops at the
first one, so a query asked after a registration sees it committed.
Readers that need no ordering may use their own connections (`LocalStore`
gives every thread one). Nothing here grows with the number of messages
served, so one actor can serve an agent for days.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any

import pykka

from goalkeeper.store import valid_paths as vp
from goalkeeper.store.db import StoreDB, retry_busy
from goalkeeper.store.errors import StoreError
from goalkeeper.store.local import LocalStore
from goalkeeper.store.realisations import query_realisation, register_drv_output

from .store_messages import (
    AddTextToStore,
    AddToStore,
    IsValidPath,
    QueryPartialDerivationOutputMap,
    QueryPathInfo,
    QueryRealisation,
    RegisterDrvOutput,
    RegisterValidPaths,
)

logger = logging.getLogger(__name__)

MAX_BATCH = 1000  # registrations per transaction; bounds the time one commit holds the write lock
REGISTER_TIMEOUT_S = 60 * 60  # as long as SQLite's own busy timeout: a registration may queue behind others


class StoreActor(pykka.ThreadingActor):
    """Owns the write connection of one `LocalStore`.

    Args:
        store: the opened store (its files, layout and temp roots are shared; the
            database connection used here is the actor thread's own).
        max_batch: at most this many registrations go into one transaction.
    """

    def __init__(self, store: LocalStore, *, max_batch: int = MAX_BATCH):
        super().__init__()
        self.store = store
        self.max_batch = max_batch
        self._db: StoreDB | None = None
        #: Transactions committed and registrations served; for tests and monitoring.
        self.commits = 0
        self.registrations = 0
        # Route registrations to us from the moment `start()` returns, not only once our
        # thread runs `on_start`: until then no thread is the owner, so every caller's
        # registration queues in our inbox (served after on_start) instead of being
        # written by the caller itself.
        store.set_registrar(self._register_from_other_thread, owner_thread=0)

    def on_start(self) -> None:
        # Runs in the actor's thread: the store hands out this thread's own connection.
        self._db = self.store.db()
        # From now on `store.add_to_store` etc. in any other thread register through us.
        self.store.set_registrar(self._register_from_other_thread, threading.get_ident())

    def on_stop(self) -> None:
        self.store.set_registrar(None)
        # Close this thread's connection now: a restarted actor runs in a new thread.
        self._db = None
        self.store.release_thread_db()

    def _register_from_other_thread(self, infos: list) -> None:
        self.actor_ref.ask(RegisterValidPaths(infos=tuple(infos)), timeout=REGISTER_TIMEOUT_S)

    def on_receive(self, message: Any) -> Any:
        db = self._db
        assert db is not None
        store, store_dir = self.store, self.store.store_dir
        match message:
            case RegisterValidPaths():
                return self._register_batch(message)
            case RegisterDrvOutput(realisation=realisation):
                store.layout.require_ca_derivations()

                def attempt() -> None:
                    with db.transaction("registering a realisation"):
                        register_drv_output(db, store_dir, realisation)

                retry_busy(attempt)
                self.commits += 1
                return None
            case AddTextToStore(name=name, text=text, references=references):
                return store.add_text_to_store(name, text, references)
            case AddToStore(name=name, src_path=src, method=method, algo=algo, references=references):
                # Copies and hashes in this thread; for big trees prefer `store.add_to_store` in
                # the caller's thread, which registers through this actor all the same.
                return store.add_to_store(name, src, method, algo, references)
            case IsValidPath(path=path):
                return vp.is_valid_path(db, store_dir, path)
            case QueryPathInfo(path=path):
                return vp.query_path_info(db, store_dir, path)
            case QueryPartialDerivationOutputMap(drv_path=drv_path):
                return store.query_partial_derivation_output_map(drv_path)
            case QueryRealisation(drv_output=drv_output):
                store.layout.require_ca_derivations()
                return query_realisation(db, store_dir, drv_output)
        raise TypeError(f"StoreActor cannot handle {type(message).__name__}")

    # -- batching ---------------------------------------------------------------------------

    def _take_queued_registrations(self) -> list[Any]:
        """Take the registrations waiting at the head of the inbox, up to the batch size.

        Only this thread consumes the inbox, so an envelope seen at the head under
        the queue's mutex is the one `get_nowait` returns next.
        """
        inbox = self.actor_inbox
        assert isinstance(inbox, queue.Queue)
        taken = []
        while len(taken) + 1 < self.max_batch:
            with inbox.mutex:
                head = inbox.queue[0] if inbox.queue else None
            if head is None or not isinstance(head.message, RegisterValidPaths):
                break
            taken.append(inbox.get_nowait())
        return taken

    def _register_batch(self, first: RegisterValidPaths) -> None:
        envelopes = self._take_queued_registrations()
        messages = [first] + [e.message for e in envelopes]
        db = self._db
        assert db is not None
        store = self.store
        if store.layout.sync_before_registering:
            os.sync()
        outcomes: list[BaseException | None] = []

        def attempt() -> None:
            outcomes.clear()
            if len(messages) == 1:
                # Alone in its transaction: a refusal rolls back the transaction itself.
                with db.transaction("registering valid paths"):
                    store.register_in_transaction(db, messages[0].infos)
                outcomes.append(None)
                return
            with db.transaction("registering valid paths"):
                for message in messages:
                    try:
                        with db.savepoint("registration"):
                            store.register_in_transaction(db, message.infos)
                        outcomes.append(None)
                    except StoreError as err:
                        outcomes.append(err)

        try:
            retry_busy(attempt)
        except BaseException as err:
            # The commit itself failed: nobody's paths were registered.
            outcomes = [err] * len(messages)
        self.commits += 1
        self.registrations += len(messages)
        for envelope, outcome in zip(envelopes, outcomes[1:]):
            if envelope.reply_to is None:
                if outcome is not None:
                    logger.error("registration sent with tell failed: %s", outcome)
                continue
            if outcome is None:
                envelope.reply_to.set(None)
            else:
                envelope.reply_to.set_exception(exc_info=(type(outcome), outcome, outcome.__traceback__))
        if outcomes[0] is not None:
            raise outcomes[0]
        return None


def start_store_actor(store: LocalStore, *, max_batch: int = MAX_BATCH) -> pykka.ActorRef:
    """Start a `StoreActor` for `store`; stop it with `ref.stop()` before closing the store."""
    return StoreActor.start(store, max_batch=max_batch)


