"""`Engine.build_derivation` (Store::buildDerivation): a derivation given in memory.

Its `.drv` is never written; the goal is the caller's alone (Nix makes a Worker per
call), so an ordinary goal for the same path in another request is not shared with
it: the two only meet at the output locks.
"""

from __future__ import annotations

import threading

import pytest

from goalkeeper.actors.engine import DerivedPath, Engine
from goalkeeper.actors.results import Status
from goalkeeper.actors.worker_messages import Message
from goalkeeper.store.derivation import BasicDerivation, Derivation, InputAddressed, write_derivation
from goalkeeper.store.derivation_hash import fill_in_outputs
from goalkeeper.store.local import LocalStore
from goalkeeper.store.settings import Settings
from goalkeeper.store.store_config import parse_store_uri

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store_settings(local_store, tmp_path):
    settings = Settings.load(conf_dir=str(tmp_path), environ={"NIX_USER_CONF_FILES": ""}, overrides=[
        ("sandbox", "false"), ("build-users-group", ""), ("substituters", ""), ("max-jobs", "2")])
    store = LocalStore.open(parse_store_uri(local_store.uri, {}, print), settings)
    yield store, settings
    store.close()


def _drv(store, name: str, script: str, input_srcs=(), outputs=("out",)) -> tuple:
    """(drv path, the Derivation with its input-addressed output paths filled in)."""
    drv = Derivation(name=name, outputs={o: InputAddressed(None) for o in outputs}, input_srcs=frozenset(input_srcs),
                     platform="x86_64-linux", builder="/bin/sh",
                     args=("-c", "export PATH=/usr/bin:/bin; " + script), env={"name": name})
    drv = fill_in_outputs(store.store_dir, drv, store.read_derivation)
    return drv.drv_path(store.store_dir), drv


def _basic(drv: Derivation) -> BasicDerivation:
    return BasicDerivation(name=drv.name, outputs=drv.outputs, input_srcs=drv.input_srcs, platform=drv.platform,
                           builder=drv.builder, args=drv.args, env=drv.env)


def test_builds_a_derivation_whose_drv_is_not_in_the_store(store_settings):
    store, settings = store_settings
    drv_path, drv = _drv(store, "mem", "echo from memory > $out")
    events = []
    with Engine(store, settings) as engine:
        result = engine.build_derivation(drv_path, _basic(drv), observer=events.append)
        again = engine.build_derivation(drv_path, _basic(drv))
    out = drv.outputs["out"].path
    assert result.status is Status.Built and result.times_built == 1
    assert result.built_outputs == {"out": store.print(out)}
    assert open(store.real_path(out)).read() == "from memory\n"
    assert store.query_path_info(out).deriver == drv_path and not store.is_valid_path(drv_path)
    assert Message(text=f"building '{store.print(drv_path)}'...") in events
    assert again.status is Status.AlreadyValid and again.built_outputs == result.built_outputs


def test_a_missing_input_source_is_thrown_as_a_misc_failure(store_settings):
    store, settings = store_settings
    src = store.add_text_to_store("src", b"x")
    drv_path, drv = _drv(store, "needs-src", f"cat {store.print(src)} > $out", input_srcs=[src])
    # the same derivation, but its source is gone (a path nobody can substitute)
    gone = store.store_dir.parse(store.print(src).replace(src.hash_part, "1" * 32))
    basic = BasicDerivation(name=drv.name, outputs=drv.outputs, input_srcs=frozenset({gone}),
                            platform=drv.platform, builder=drv.builder, args=drv.args, env=drv.env)
    with Engine(store, settings) as engine:
        result = engine.build_derivation(drv_path, basic)
    assert result.status is Status.MiscFailure and result.times_built == 0
    assert result.error_msg == f"error: some dependencies of '{store.print(drv_path)}' are missing"


def test_not_shared_with_an_ordinary_goal_for_the_same_path(store_settings, tmp_path):
    store, settings = store_settings
    counter = tmp_path / "runs"
    drv_path, drv = _drv(store, "both", f"echo run >> {counter}; sleep 0.5; echo both > $out")
    assert write_derivation(store, drv) == drv_path  # the ordinary goal reads it from the store
    results = {}
    with Engine(store, settings, poll_interval=0.1) as engine:
        threads = [
            threading.Thread(target=lambda: results.__setitem__("basic", engine.build_derivation(drv_path,
                                                                                                  _basic(drv)))),
            threading.Thread(target=lambda: results.__setitem__("realise", engine.realise(
                [DerivedPath(drv_path, frozenset())]).results[DerivedPath(drv_path, frozenset())])),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    # two goals: one built, the other waited for the output lock and found the output valid
    assert sorted(r.status.name for r in results.values()) == ["AlreadyValid", "Built"]
    assert counter.read_text() == "run\n"


def test_its_goal_is_named_as_an_in_memory_derivation_in_timeouts(local_store, tmp_path):
    # nix-daemon (probed): "building of '…-sl.drv!lib,out' from in-memory derivation timed
    # out after 1 seconds" -- every output named, where a goal from a .drv says "!*"
    settings = Settings.load(conf_dir=str(tmp_path), environ={"NIX_USER_CONF_FILES": ""}, overrides=[
        ("sandbox", "false"), ("build-users-group", ""), ("substituters", ""), ("timeout", "1")])
    store = LocalStore.open(parse_store_uri(local_store.uri, {}, print), settings)
    try:
        drv_path, drv = _drv(store, "slow", "sleep 10", outputs=("out", "lib"))
        with Engine(store, settings) as engine:
            result = engine.build_derivation(drv_path, _basic(drv))
    finally:
        store.close()
    assert result.status is Status.TimedOut and result.times_built == 0
    assert result.error_msg == (f"building of '{store.print(drv_path)}!lib,out' from in-memory derivation "
                                "timed out after 1 seconds")
