"""The background deleter: one trash directory and one thread while discards keep coming."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from goalkeeper.actors import deferred_delete


def _deleter_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "goalkeeper-delete"]


@pytest.mark.timeout(30)
def test_a_run_of_discards_shares_one_trash_dir_and_thread_until_drained(tmp_path, monkeypatch):
    monkeypatch.setattr(deferred_delete, "LINGER_S", 60.0)  # nothing ends it but drain
    made: list[str] = []
    real_mkdir = os.mkdir
    monkeypatch.setattr(deferred_delete.os, "mkdir", lambda p, *a: (made.append(p), real_mkdir(p, *a)))
    threads = set()
    for i in range(5):
        (tmp_path / f"build-{i}").mkdir()
        (tmp_path / f"build-{i}" / "env-vars").write_text("x")
        deferred_delete.discard(str(tmp_path / f"build-{i}"))
        assert not (tmp_path / f"build-{i}").exists()
        threads.update(_deleter_threads())
        deadline = time.monotonic() + 10
        while len(os.listdir(tmp_path)) != 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # deleted in the background; the trash dir stays, idle
        assert [p.name for p in tmp_path.iterdir()] == [f".goalkeeper-trash-{os.getpid()}"]
    assert len([p for p in made if ".goalkeeper-trash-" in str(p)]) == 1 and len(threads) == 1
    deferred_delete.drain()  # ends the lingering at once
    assert os.listdir(tmp_path) == [] and _deleter_threads() == []


@pytest.mark.timeout(30)
def test_an_idle_thread_ends_by_itself_and_removes_its_trash_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(deferred_delete, "LINGER_S", 0.2)
    (tmp_path / "build").mkdir()
    deferred_delete.discard(str(tmp_path / "build"))
    deadline = time.monotonic() + 10
    while (_deleter_threads() or os.listdir(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert os.listdir(tmp_path) == [] and _deleter_threads() == []


@pytest.mark.timeout(60)
def test_an_exiting_interpreter_deletes_what_is_queued_without_waiting_for_the_lingering(tmp_path):
    tree = tmp_path / "tree"
    script = f"""
import os, time
from goalkeeper.actors import deferred_delete
deferred_delete.LINGER_S = 120
os.makedirs({str(tree)!r} + "/a/b")
open({str(tree)!r} + "/a/b/f", "w").close()
deferred_delete.discard({str(tree)!r})
"""
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=50)
    assert time.monotonic() - start < 30  # not the 120 s of lingering
    assert os.listdir(tmp_path) == []


@pytest.mark.timeout(60)
def test_a_forked_child_neither_waits_for_nor_touches_the_parents_deletions(tmp_path, monkeypatch):
    monkeypatch.setattr(deferred_delete, "LINGER_S", 60.0)
    (tmp_path / "build").mkdir()
    deferred_delete.discard(str(tmp_path / "build"))  # the parent's thread lingers
    pid = os.fork()
    if pid == 0:
        signal.alarm(10)  # a child waiting for its parent's thread would hang: end it instead
        code = 0 if _deleter_threads() == [] else 1
        try:
            deferred_delete.drain()  # returns at once: no thread of its own
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [p.name for p in tmp_path.iterdir()] == [f".goalkeeper-trash-{os.getpid()}"]
    deferred_delete.drain()
    assert os.listdir(tmp_path) == []
