"""Path locks, the big-lock and temp roots behave as Nix's do, across threads and processes."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time

import pytest

from goalkeeper.store.locks import BigLock, PathLocks, TempRoots, lock_file, open_lock_file


@pytest.mark.timeout(30)
def test_two_threads_exclude_each_other(tmp_path):
    target = str(tmp_path / "p")
    first = PathLocks([target])
    acquired = threading.Event()

    def second():
        with PathLocks([target]):
            acquired.set()

    t = threading.Thread(target=second)
    t.start()
    assert not acquired.wait(0.3)  # blocked on the same lock file through its own descriptor
    first.unlock()
    assert acquired.wait(10)
    t.join(10)


@pytest.mark.timeout(30)
def test_deletion_token_makes_waiters_retry_on_a_fresh_file(tmp_path):
    target = str(tmp_path / "p")
    first = PathLocks([target])
    first.set_deletion(True)
    got = []

    def waiter():
        with PathLocks([target]) as lock:
            got.append(os.fstat(lock._fds[0][0]).st_size)
            got.append(os.path.exists(target + ".lock"))

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    first.unlock()  # unlink + write "d": the waiter must not keep the stale file
    t.join(10)
    assert got == [0, True]


def test_release_with_deletion_writes_d_and_unlinks(tmp_path):
    target = str(tmp_path / "p")
    lock = PathLocks([target])
    fd = os.dup(lock._fds[0][0])
    lock.set_deletion(True)
    lock.unlock()
    assert not os.path.exists(target + ".lock")
    assert os.pread(fd, 10, 0) == b"d"
    os.close(fd)


def test_locks_are_taken_in_sorted_order_and_nonblocking_fails_cleanly(tmp_path):
    paths = [str(tmp_path / n) for n in ("c", "a", "b")]
    lock = PathLocks(paths)
    assert lock.held == sorted(p + ".lock" for p in paths)
    other = PathLocks()
    assert not other.lock_paths([str(tmp_path / "a0"), str(tmp_path / "b")], wait=False)
    assert other.held == []
    # a0 was locked and then released again when b was busy
    probe = PathLocks()
    assert probe.lock_paths([str(tmp_path / "a0")], wait=False)
    probe.unlock()
    lock.unlock()


@pytest.mark.timeout(60)
def test_lock_excludes_real_flock_from_another_process(tmp_path):
    """A `flock` taken by another process (as Nix's lockFile does) blocks us, and vice versa."""
    target = str(tmp_path / "p")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl,os,sys,time; fd=os.open(sys.argv[1]+'.lock', os.O_RDWR|os.O_CREAT, 0o600);"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.readline()", target],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert not PathLocks().lock_paths([target], wait=False)
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(10)
        with PathLocks([target]) as lock:
            assert lock.held == [target + ".lock"]
    finally:
        holder.kill()
        holder.wait()


def test_big_lock_is_shared(tmp_path):
    path = str(tmp_path / "big-lock")
    a, b = BigLock(path), BigLock(path)  # two holders at once, as two Nix processes
    fd = open_lock_file(path)
    assert not lock_file(fd, "write", False)  # a schema upgrade would have to wait
    a.close()
    b.close()
    assert lock_file(fd, "write", False)
    os.close(fd)


def test_temp_roots_file_and_gc_lock(tmp_path):
    state = tmp_path / "state"
    (state / "temproots").mkdir(parents=True)
    roots = TempRoots(str(state))
    roots.add("/nix/store/aaaa-x")
    roots.add("/nix/store/bbbb-y")
    path = state / "temproots" / str(os.getpid())
    assert path.read_bytes() == b"/nix/store/aaaa-x\0/nix/store/bbbb-y\0"
    # The file is locked for our lifetime: the collector treats a lockable file as stale.
    fd = os.open(path, os.O_RDWR)
    with pytest.raises(BlockingIOError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
    # While adding, gc.lock is only taken shared and released again, so a collector can start.
    gc = os.open(state / "gc.lock", os.O_RDWR)
    fcntl.flock(gc, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.flock(gc, fcntl.LOCK_UN)
    os.close(gc)
    roots.close()
    assert not path.exists()


@pytest.mark.timeout(30)
def test_temp_root_goes_through_the_gc_socket_while_gc_runs(tmp_path):
    import socket

    state = tmp_path / "state"
    (state / "temproots").mkdir(parents=True)
    (state / "gc-socket").mkdir()
    gc = os.open(state / "gc.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(gc, fcntl.LOCK_EX)  # a collector is running
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(state / "gc-socket" / "socket"))
    server.listen(1)
    received = []

    def collector():
        conn, _ = server.accept()
        received.append(conn.recv(100))
        conn.sendall(b"1")
        conn.close()

    t = threading.Thread(target=collector)
    t.start()
    roots = TempRoots(str(state))
    roots.add("/nix/store/cccc-z")
    t.join(10)
    assert received == [b"/nix/store/cccc-z\n"]
    assert (state / "temproots" / str(os.getpid())).read_bytes() == b"/nix/store/cccc-z\0"
    roots.close()
    server.close()
    os.close(gc)
