"""The embedding API: one long-lived Engine, many callers, events, cancellation and closing."""

from __future__ import annotations

import os
import threading
import time

import pytest

from goalkeeper.actors.engine import DerivedPath, Engine
from goalkeeper.actors.results import Status
from goalkeeper.actors.worker_messages import LogLine, Message, Progress
from goalkeeper.store.local import LocalStore
from goalkeeper.store.locks import PathLocks
from goalkeeper.store.settings import Settings
from goalkeeper.store.store_config import parse_store_uri

pytestmark = [pytest.mark.timeout(60), pytest.mark.nix]

MK = """let mk = name: script: derivation {{ inherit name; builder = "/bin/sh";
  args = ["-c" ("export PATH=/usr/bin:/bin; " + script)]; system = builtins.currentSystem; }};
in {expr}"""


@pytest.fixture
def env(local_store, run_nix, tmp_path):
    """(store, settings, instantiate(expr) -> drv paths) on a fresh local store."""
    settings = Settings.load(conf_dir=str(tmp_path), environ={"NIX_USER_CONF_FILES": ""}, overrides=[
        ("sandbox", "false"), ("build-users-group", ""), ("substituters", ""), ("max-jobs", "2")])
    store = LocalStore.open(parse_store_uri(local_store.uri, {}, print), settings)

    def instantiate(expr: str) -> list:
        proc = run_nix("nix-instantiate", "--store", local_store.uri, "-E", MK.format(expr=expr))
        return [store.store_dir.parse(line) for line in proc.stdout.decode().split()]

    yield store, settings, instantiate
    store.close()


def test_realise_builds_reports_events_and_results(env):
    store, settings, instantiate = env
    [drv] = instantiate('mk "hello" "echo hi; echo hello > $out"')
    events = []
    with Engine(store, settings) as engine:
        realised = engine.realise([DerivedPath(drv, frozenset())], observer=events.append)
    assert realised.error is None and realised.exit_status == 0
    result = realised.results[DerivedPath(drv, frozenset())]
    assert result.status is Status.Built and result.times_built == 1
    assert 0 < result.start_time <= result.stop_time
    out = store.query_derivation_output_map(drv)["out"]
    assert result.built_outputs == {"out": store.print(out)}
    assert open(store.real_path(out)).read() == "hello\n"
    assert Message(text=f"building '{store.print(drv)}'...") in events
    assert LogLine(drv_path=drv, line="hi") in events
    assert events[-1] == Progress(expected_builds=1, running_builds=0, done_builds=1, failed_builds=0)


def test_second_realise_is_already_valid_and_engine_is_reusable(env):
    store, settings, instantiate = env
    [drv] = instantiate('mk "x" "echo x > $out"')
    with Engine(store, settings) as engine:
        first = engine.realise([DerivedPath(drv, frozenset())])
        again = engine.realise([DerivedPath(drv, frozenset())])
    assert first.results[DerivedPath(drv, frozenset())].status is Status.Built
    assert again.results[DerivedPath(drv, frozenset())].status is Status.AlreadyValid


def test_concurrent_callers_share_one_build(env, tmp_path):
    store, settings, instantiate = env
    counter = tmp_path / "count"
    [drv] = instantiate(f'mk "shared" "echo run >> {counter}; sleep 0.5; echo s > $out"')
    results = []
    with Engine(store, settings) as engine:
        threads = [threading.Thread(target=lambda: results.append(engine.realise([DerivedPath(drv, frozenset())])))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [r.exit_status for r in results] == [0, 0, 0, 0]
    assert counter.read_text() == "run\n"  # one goal per derivation, however many callers want it


def test_failure_without_keep_going_kills_the_running_sibling(env, tmp_path):
    store, settings, instantiate = env
    marker = tmp_path / "slow-finished"
    drvs = instantiate(f'[ (mk "bad" "sleep 0.2; exit 3") (mk "slow" "sleep 5; touch {marker}; echo > $out") ]')
    with Engine(store, settings) as engine:
        began = time.monotonic()
        realised = engine.realise([DerivedPath(d, frozenset()) for d in drvs], keep_going=False)
        took = time.monotonic() - began
    assert realised.exit_status == 100
    assert realised.error == "build of " + ", ".join(f"'{store.print(d)}'" for d in sorted(drvs, key=str)) + " failed"
    assert took < 4
    time.sleep(0.2)
    assert not marker.exists()  # the sibling's builder was killed, not left running


def test_keep_going_finishes_the_others(env):
    store, settings, instantiate = env
    bad, good = instantiate('[ (mk "bad" "exit 3") (mk "good" "sleep 0.3; echo > $out") ]')
    with Engine(store, settings) as engine:
        realised = engine.realise([DerivedPath(bad, frozenset()), DerivedPath(good, frozenset())], keep_going=True)
    assert realised.exit_status == 100
    assert realised.results[DerivedPath(good, frozenset())].status is Status.Built
    assert realised.results[DerivedPath(bad, frozenset())].status is Status.PermanentFailure


def test_max_jobs_bounds_concurrent_builds(env, tmp_path):
    store, settings, instantiate = env
    log = tmp_path / "log"
    script = f"echo start >> {log}; sleep 0.3; echo stop >> {log}; echo > $out"
    drvs = instantiate("[ " + " ".join(f'(mk "j{i}" "{script}")' for i in range(5)) + " ]")
    with Engine(store, settings) as engine:
        assert engine.realise([DerivedPath(d, frozenset()) for d in drvs]).exit_status == 0
    running = peak = 0
    for line in log.read_text().split():
        running += 1 if line == "start" else -1
        peak = max(peak, running)
    assert peak == 2


def test_waits_for_an_output_lock_held_elsewhere(env):
    store, settings, instantiate = env
    [drv] = instantiate('mk "locked" "echo > $out"')
    out = store.derivation_known_outputs(drv)["out"]
    held = PathLocks([store.real_path(out)])
    events = []
    with Engine(store, settings, poll_interval=0.2) as engine:
        result: list = []
        t = threading.Thread(target=lambda: result.append(engine.realise([DerivedPath(drv, frozenset())],
                                                                         observer=events.append)))
        t.start()
        deadline = time.monotonic() + 10
        while Message(text=f"waiting for lock on '{store.print(out)}'...") not in events:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        held.unlock()
        t.join()
    assert result[0].exit_status == 0


def test_build_poll_interval_is_how_long_a_lock_wait_lasts(env):
    """Nix's settings.pollInterval: the goal tries the lock again after `build-poll-interval`
    seconds (default 5), not after a fixed time."""
    store, settings, instantiate = env
    settings.set("build-poll-interval", "1")
    [drv] = instantiate('mk "polled" "echo > $out"')
    out = store.derivation_known_outputs(drv)["out"]
    held = PathLocks([store.real_path(out)])
    waiting = threading.Event()
    with Engine(store, settings) as engine:
        result: list = []
        t = threading.Thread(target=lambda: result.append(engine.realise(
            [DerivedPath(drv, frozenset())],
            observer=lambda e: waiting.set() if getattr(e, "text", "").startswith("waiting for lock") else None)))
        t.start()
        assert waiting.wait(10)
        started = time.monotonic()
        held.unlock()
        t.join(10)
        waited = time.monotonic() - started
    assert result[0].exit_status == 0
    assert 0.5 < waited < 3, waited


def test_close_ends_pending_requests_and_kills_builds(env, tmp_path, caplog):
    store, settings, instantiate = env
    marker = tmp_path / "finished"
    [drv] = instantiate(f'mk "forever" "sleep 5; touch {marker}; echo > $out"')
    engine = Engine(store, settings)
    result: list = []
    t = threading.Thread(target=lambda: result.append(engine.realise([DerivedPath(drv, frozenset())])))
    t.start()
    time.sleep(0.5)
    engine.close()
    t.join(10)
    assert result and result[0].exit_status == 1 and "stopped" in result[0].error
    time.sleep(0.2)
    assert not marker.exists()
    assert not store.is_valid_path(store.derivation_known_outputs(drv)["out"])
    # close() waited for the cancelled goal: it did not use the stopped build runner
    assert not [r for r in caplog.records if "crashed" in r.getMessage()]
    assert not [t for t in threading.enumerate() if "DerivationGoalActor" in t.name]


def test_no_thread_or_fd_left_behind_after_many_realisations(env):
    store, settings, instantiate = env
    drvs = instantiate("[ " + " ".join(f'(mk "n{i}" "echo {i} > $out")' for i in range(20)) + " ]")
    with Engine(store, settings) as engine:
        engine.realise([DerivedPath(drvs[0], frozenset())])
        threads, fds = threading.active_count(), len(os.listdir("/proc/self/fd"))
        for d in drvs[1:]:
            assert engine.realise([DerivedPath(d, frozenset())]).exit_status == 0
        # goals that finished stopped their actors; builds closed their ptys and logs
        time.sleep(0.2)
        assert threading.active_count() <= threads
        assert len(os.listdir("/proc/self/fd")) <= fds


def test_a_caller_s_own_settings_reach_its_goals_only(env, tmp_path):
    store, settings, instantiate = env
    [drv] = instantiate('mk "fails" "echo oops; exit 1"')
    theirs = Settings.load(conf_dir=str(tmp_path), environ={"NIX_USER_CONF_FILES": ""},
                           overrides=[*((k, settings.to_string(k)) for k in ("build-users-group", "sandbox",
                                                                              "substituters")),
                                      ("keep-failed", "true")])
    with Engine(store, settings) as engine:
        events: list = []
        mine = engine.realise([DerivedPath(drv, frozenset())], observer=events.append)
        assert mine.exit_status == 100
        assert not any("keeping build directory" in getattr(e, "text", "") for e in events)
        events.clear()
        realised = engine.realise([DerivedPath(drv, frozenset())], observer=events.append, settings=theirs)
        assert realised.exit_status == 100
        [kept] = [e.text for e in events if "keeping build directory" in getattr(e, "text", "")]
        build_dir = kept.split("'")[1]
        assert os.path.isdir(build_dir)


def test_goals_reuse_their_threads_store_connections(env, monkeypatch):
    """Goals run on the dispatcher's few threads: store calls made on a goal's thread (a
    sandboxed output moved into place, say) use that thread's connection, opened once,
    not one per goal (0.5 ms each)."""
    store, settings, instantiate = env
    settings.set("sandbox", "true")
    settings.set("sandbox-paths", "/bin /lib /lib64 /usr")
    opened = []
    connect = store.layout.connect
    monkeypatch.setattr(store.layout, "connect", lambda *a, **k: opened.append(1) or connect(*a, **k))
    drvs = instantiate("[ " + " ".join(f'(mk "c{i}" "echo {i} > $out")' for i in range(8)) + " ]")
    with Engine(store, settings) as engine:
        assert engine.realise([DerivedPath(d, frozenset()) for d in drvs]).exit_status == 0
    assert len(opened) <= 4 + 2  # the dispatcher's threads, the engine's reader and store actor
