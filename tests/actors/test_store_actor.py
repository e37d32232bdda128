"""The store actor: registrations asked with a timeout, batched into group commits, errors to their callers only."""

from __future__ import annotations

import sqlite3
import threading

import pykka
import pytest

from goalkeeper.actors.store_actor import StoreActor
from goalkeeper.actors.store_messages import (
    AddTextToStore,
    IsValidPath,
    QueryPartialDerivationOutputMap,
    QueryPathInfo,
    RegisterValidPaths,
)
from goalkeeper.store.errors import InvalidPath
from goalkeeper.store.hashes import sha256
from goalkeeper.store.local import LocalStore
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.settings import Settings
from goalkeeper.store.store_config import parse_store_uri
from goalkeeper.store.valid_paths import ReferenceCycle

NAR = sha256(b"nar")
TIMEOUT = 20


@pytest.fixture
def store(tmp_path):
    with LocalStore.open(parse_store_uri(str(tmp_path / "st")), Settings.load(overrides=[("build-users-group", "")])) as s:
        yield s


@pytest.fixture
def actor(store):
    ref = StoreActor.start(store)
    yield ref
    ref.stop(timeout=TIMEOUT)


def sp(store, name):
    return store.store_dir.make_store_path("output:out", sha256(name.encode()), name)


@pytest.mark.timeout(60)
def test_register_and_query(store, actor):
    a, b = sp(store, "a"), sp(store, "b")
    infos = (ValidPathInfo(path=a, nar_hash=NAR), ValidPathInfo(path=b, nar_hash=NAR, references={a}))
    assert actor.ask(RegisterValidPaths(infos=infos), timeout=TIMEOUT) is None
    assert actor.ask(IsValidPath(path=b), timeout=TIMEOUT) is True
    assert actor.ask(QueryPathInfo(path=b), timeout=TIMEOUT).references == {a}
    assert actor.ask(QueryPathInfo(path=sp(store, "c")), timeout=TIMEOUT) is None
    # Another thread's own connection sees the commit too.
    seen = []
    t = threading.Thread(target=lambda: seen.append(store.is_valid_path(b)))
    t.start()
    t.join(TIMEOUT)
    assert seen == [True]


@pytest.mark.timeout(60)
def test_connection_is_opened_in_on_start_and_closed_on_stop(store):
    assert store._dbs == []
    ref = StoreActor.start(store)
    ref.ask(IsValidPath(path=sp(store, "x")), timeout=TIMEOUT)
    assert len(store._dbs) == 1
    ref.stop(timeout=TIMEOUT)
    assert store._dbs == []


@pytest.mark.timeout(60)
def test_registrations_arriving_together_share_a_transaction(store, actor, tmp_path):
    # Hold the write lock from outside so the actor's first commit waits while 49 more queue up.
    blocker = sqlite3.connect(store.layout.db_path, isolation_level=None)
    blocker.execute("begin immediate")
    paths = [sp(store, f"p{i}") for i in range(50)]
    futures = [actor.ask(RegisterValidPaths(infos=(ValidPathInfo(path=p, nar_hash=NAR),)), block=False)
               for p in paths]
    proxy = actor.proxy()
    blocker.execute("rollback")
    blocker.close()
    for f in futures:
        assert f.get(timeout=TIMEOUT) is None
    commits = proxy.commits.get(timeout=TIMEOUT)
    assert proxy.registrations.get(timeout=TIMEOUT) == 50
    assert commits <= 3, commits
    assert store.query_all_valid_paths() == set(paths)


@pytest.mark.timeout(60)
def test_a_lone_refused_registration_changes_nothing(store, actor):
    x, y = sp(store, "x"), sp(store, "y")
    with pytest.raises(ReferenceCycle):
        actor.ask(RegisterValidPaths(infos=(ValidPathInfo(path=x, nar_hash=NAR, references={y}),
                                            ValidPathInfo(path=y, nar_hash=NAR, references={x}))), timeout=TIMEOUT)
    with pytest.raises(InvalidPath):
        actor.ask(RegisterValidPaths(infos=(ValidPathInfo(path=x, nar_hash=NAR, references={sp(store, "nope")}),)),
                  timeout=TIMEOUT)
    assert store.query_all_valid_paths() == set()
    # alone, a path referring to itself is registered (no cycle)
    actor.ask(RegisterValidPaths(infos=(ValidPathInfo(path=x, nar_hash=NAR, references={x}),)), timeout=TIMEOUT)
    assert store.query_path_info(x).references == {x}
    assert actor.is_alive()


@pytest.mark.timeout(60)
def test_a_refused_registration_fails_only_its_caller(store, actor):
    blocker = sqlite3.connect(store.layout.db_path, isolation_level=None)
    blocker.execute("begin immediate")
    good1, good2 = sp(store, "good1"), sp(store, "good2")
    x, y = sp(store, "x"), sp(store, "y")
    f1 = actor.ask(RegisterValidPaths(infos=(ValidPathInfo(path=good1, nar_hash=NAR),)), block=False)
    bad_ref = actor.ask(RegisterValidPaths(infos=(ValidPathInfo(path=x, nar_hash=NAR, references={sp(store, "nope")}),)),
                        block=False)
    cycle = actor.ask(RegisterValidPaths(infos=(ValidPathInfo(path=x, nar_hash=NAR, references={y}),
                                                ValidPathInfo(path=y, nar_hash=NAR, references={x}))), block=False)
    f2 = actor.ask(RegisterValidPaths(infos=(ValidPathInfo(path=good2, nar_hash=NAR),)), block=False)
    blocker.execute("rollback")
    blocker.close()
    assert f1.get(timeout=TIMEOUT) is None and f2.get(timeout=TIMEOUT) is None
    with pytest.raises(InvalidPath):
        bad_ref.get(timeout=TIMEOUT)
    with pytest.raises(ReferenceCycle):
        cycle.get(timeout=TIMEOUT)
    assert store.query_all_valid_paths() == {good1, good2}
    assert actor.is_alive()


@pytest.mark.timeout(60)
def test_add_text_and_drv_outputs_through_the_actor(store, actor):
    text = ('Derive([("out","/nix/store/dcgxgfrhy8mb76rg8f1djpw23cl3fzmx-a","","")],[],[],"x86_64-linux",'
            '"/bin/sh",["-c","echo hello > $out"],[("builder","/bin/sh"),("name","a"),'
            '("out","/nix/store/dcgxgfrhy8mb76rg8f1djpw23cl3fzmx-a"),("system","x86_64-linux")])').encode()
    drv = actor.ask(AddTextToStore(name="a.drv", text=text), timeout=TIMEOUT)
    assert drv.base == "9kgc4kbilwricwa5g0y66zbnxkz66hkr-a.drv"
    outputs = actor.ask(QueryPartialDerivationOutputMap(drv_path=drv), timeout=TIMEOUT)
    assert {k: v.base for k, v in outputs.items()} == {"out": "dcgxgfrhy8mb76rg8f1djpw23cl3fzmx-a"}


@pytest.mark.timeout(120)
def test_many_client_threads(store, actor):
    errors = []

    def client(k):
        try:
            for i in range(25):
                p = sp(store, f"c{k}-{i}")
                actor.ask(RegisterValidPaths(infos=(ValidPathInfo(path=p, nar_hash=NAR),)), timeout=TIMEOUT)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 3)
    assert not errors
    assert len(store.query_all_valid_paths()) == 200
    assert store.db().execute("select count(*) from ValidPaths").fetchone() == (200,)


def teardown_module():
    pykka.ActorRegistry.stop_all()


@pytest.mark.timeout(60)
def test_other_threads_adds_register_through_the_actor(store, tmp_path):
    ref = StoreActor.start(store)
    try:
        proxy = ref.proxy()
        (tmp_path / "f").write_text("hello\n")
        path = store.add_to_store("hello.txt", str(tmp_path / "f"))  # files and lock here, registration there
        text = store.add_text_to_store("t", b"text", [path])
        assert proxy.registrations.get(timeout=TIMEOUT) == 2
        assert ref.ask(QueryPathInfo(path=text), timeout=TIMEOUT).references == {path}
        with pytest.raises(InvalidPath):
            store.add_text_to_store("u", b"x", [sp(store, "missing")])
    finally:
        ref.stop(timeout=TIMEOUT)
    store.add_text_to_store("after", b"direct again")  # no actor: the store registers itself
    assert store.is_valid_path(store.store_dir.make_text_path("after", sha256(b"direct again")))
