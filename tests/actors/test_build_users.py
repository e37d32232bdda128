"""UserLock and killUser on their own: the group's members in order, the userpool locks
(flock, shared with any other process), Nix's error texts.  The account database is faked,
so these run without root; killUser itself needs root and a spare uid."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from goalkeeper.actors import user_lock
from goalkeeper.actors import kill_user as killer
from goalkeeper.actors.kill_user import kill_user
from goalkeeper.actors.user_lock import BuildUser, UserLock, UserLockError, build_users_enabled

pytestmark = pytest.mark.timeout(30)

GROUP_GID = 30000
MEMBERS = {"bu1": 30001, "bu2": 30002, "bu3": 30003}


@pytest.fixture
def accounts(monkeypatch):
    """A fake group database: `groups` name -> members; users as in MEMBERS (primary gid
    = uid), each also in an extra group 40000."""
    groups = {"builders": ["bu1", "bu2", "bu3"], "nobody-in-it": []}
    users = dict(MEMBERS)

    def getgrnam(name):
        if name not in groups:
            raise KeyError(name)
        return SimpleNamespace(gr_name=name, gr_gid=GROUP_GID, gr_mem=list(groups[name]))

    def getpwnam(name):
        if name not in users:
            raise KeyError(name)
        return SimpleNamespace(pw_name=name, pw_uid=users[name], pw_gid=users[name])

    monkeypatch.setattr(user_lock, "grp", SimpleNamespace(getgrnam=getgrnam))
    monkeypatch.setattr(user_lock, "pwd", SimpleNamespace(getpwnam=getpwnam))
    monkeypatch.setattr(os, "getgrouplist", lambda name, gid: [gid, GROUP_GID, 40000])
    return SimpleNamespace(groups=groups, users=users)


def test_first_free_member_in_order_and_released(accounts, tmp_path):
    first, second = UserLock("builders", str(tmp_path)), UserLock("builders", str(tmp_path))
    assert (tmp_path / "userpool").is_dir()
    assert first.find_free_user() and first.find_free_user()  # enabled: stays with its user
    assert first.build_user == BuildUser(user="bu1", uid=30001, gid=GROUP_GID,
                                         supplementary_gids=(30001, GROUP_GID, 40000))
    assert second.find_free_user() and second.build_user.user == "bu2"
    assert (tmp_path / "userpool" / "30001").stat().st_mode & 0o777 == 0o600
    first.release()
    assert first.build_user is None and not first.enabled
    third = UserLock("builders", str(tmp_path))
    assert third.find_free_user() and third.build_user.user == "bu1"


def test_none_free_while_another_process_holds_every_lock(accounts, tmp_path):
    pool = tmp_path / "userpool"
    pool.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys\n"
         f"fds = [os.open('{pool}/' + str(u), os.O_RDWR | os.O_CREAT) for u in {list(MEMBERS.values())}]\n"
         "[fcntl.flock(fd, fcntl.LOCK_EX) for fd in fds]\n"
         "print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        lock = UserLock("builders", str(tmp_path))
        assert not lock.find_free_user() and not lock.enabled
    finally:
        holder.stdin.close()
        holder.wait()
    assert lock.find_free_user() and lock.build_user.uid == 30001


def test_lock_is_an_flock_as_nix_takes_it(accounts, tmp_path):
    """Nix's lockFile is flock(LOCK_EX|LOCK_NB): a lock of ours must stop a flock elsewhere."""
    lock = UserLock("builders", str(tmp_path))
    assert lock.find_free_user()
    fd = os.open(tmp_path / "userpool" / "30001", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.release()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


@pytest.mark.parametrize("group, change, message", [
    ("nogroup-here", None, "the group 'nogroup-here' specified in 'build-users-group' does not exist"),
    ("nobody-in-it", None, "the build users group 'nobody-in-it' has no members"),
    ("builders", "ghost", "the user 'ghost' in the group 'builders' does not exist"),
    ("builders", "self", "the Nix user should not be a member of 'builders'"),
])
def test_nix_errors(accounts, tmp_path, group, change, message):
    if change == "ghost":
        accounts.groups["builders"].insert(0, "ghost")
    if change == "self":
        accounts.users["bu1"] = os.getuid()
    with pytest.raises(UserLockError) as e:
        UserLock(group, str(tmp_path)).find_free_user()
    assert str(e.value) == message


def test_more_than_ten_groups_is_nixs_error(accounts, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "getgrouplist", lambda name, gid: list(range(gid, gid + 11)))
    with pytest.raises(UserLockError, match="failed to get list of supplementary groups for 'bu1'"):
        UserLock("builders", str(tmp_path)).find_free_user()


def test_userpool_under_nix_state_dir(accounts, tmp_path, monkeypatch):
    monkeypatch.setenv("NIX_STATE_DIR", str(tmp_path / "state/"))
    assert UserLock("builders").userpool == f"{tmp_path}/state/userpool"


def test_enabled_only_as_root_with_a_group():
    assert not build_users_enabled("")
    assert build_users_enabled("nixbld") == (os.getuid() == 0)


@pytest.mark.skipif(os.getuid() != 0, reason="killUser needs root")
def test_kill_user_kills_every_process_of_the_uid_and_nothing_else():
    uid = 64000 + os.getpid() % 1000  # an unused uid: nobody else runs as it
    victims = [subprocess.Popen(["sleep", "60"], user=uid, group=uid, extra_groups=[], start_new_session=s)
               for s in (False, True)]
    bystander = subprocess.Popen(["sleep", "60"], user=uid + 1, group=uid + 1, extra_groups=[])
    try:
        kill_user(uid)
        for proc in victims:
            assert proc.wait(timeout=5) == -9
        time.sleep(0.05)
        assert bystander.poll() is None
    finally:
        for proc in (*victims, bystander):
            proc.kill()
            proc.wait()


@pytest.mark.skipif(os.getuid() != 0, reason="killUser needs root")
def test_submitted_kill_reports_back():
    uid = 65000 + os.getpid() % 400
    victim = subprocess.Popen(["sleep", "60"], user=uid, group=uid, extra_groups=[])
    reported = []
    try:
        killer.submit_kill_user(uid, reported.append)
        assert victim.wait(timeout=5) == -9
        deadline = time.monotonic() + 5
        while not reported and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reported == [None]
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.skipif(os.getuid() != 0, reason="killUser needs root")
def test_kill_helper_started_again_when_it_died():
    uid = 63000 + os.getpid() % 900
    kill_user(uid)
    helper = killer._killer._proc
    helper.kill()
    helper.wait()
    victim = subprocess.Popen(["sleep", "60"], user=uid, group=uid, extra_groups=[])
    try:
        kill_user(uid)
        assert victim.wait(timeout=5) == -9 and killer._killer._proc is not helper
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.skipif(os.getuid() != 0, reason="killUser needs root")
def test_kill_helper_refuses_uid_zero():
    # Nix asserts uid != 0; the helper, reached some other way, answers a failure instead.
    assert killer._killer.kill(0) != 0
