"""Build users: Nix 2.8's `UserLock` (libstore/lock.cc).

Run as root with `build-users-group` set, Nix builds each derivation as one member of
that group, chosen as the first member whose lock file ``<state dir>/userpool/<uid>``
it can lock (flock, exclusive, without waiting: the same lock Nix takes, so goalkeeper
and Nix share one pool).  The lock is held from `tryLocalBuild` until `buildDone` has
registered the outputs, so no other build can take the uid and touch them meanwhile.
Before and after the build every process of the uid is killed (`kill_user.py`).
"""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
from dataclasses import dataclass

from goalkeeper.store.errors import StoreError
from goalkeeper.store.store_config import Environment

_MAX_GROUPS = 10  # Nix sizes getgrouplist's buffer for 10 groups; more is its error


class UserLockError(StoreError):
    """A plain Nix `Error` from UserLock/killUser: it ends the whole run (exit 1)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildUser:
    """The build user a build runs as (what startBuilder reads of `buildUser`)."""

    user: str
    uid: int
    gid: int  # the build users group's gid, not the user's primary group
    supplementary_gids: tuple[int, ...]  # getgrouplist(user, its primary gid)


def build_users_enabled(build_users_group: str) -> bool:
    """Nix's `settings.buildUsersGroup != "" && getuid() == 0`."""
    return build_users_group != "" and os.getuid() == 0


def nix_state_dir() -> str:
    """`settings.nixStateDir`: ``$NIX_STATE_DIR`` or /nix/var/nix (not a store's state dir)."""
    return os.path.normpath(Environment.from_environ().state_dir)


class UserLock:
    """One goal's `buildUser`: `find_free_user` until it returns True, `release` at the end.

    Not thread-safe; it belongs to one goal.
    """

    def __init__(self, group: str, state_dir: str | None = None):
        """`UserLock::UserLock`: creates ``<state dir>/userpool``.

        Raises:
            UserLockError: the directory cannot be created.
        """
        assert group != ""
        self.group = group
        self.userpool = os.path.join(state_dir if state_dir is not None else nix_state_dir(), "userpool")
        try:
            os.makedirs(self.userpool, exist_ok=True)  # createDirs: 0777 under the umask
        except OSError as e:
            raise UserLockError(f"creating directory '{e.filename or self.userpool}': {e.strerror}") from e
        self._fd = -1
        self.build_user: BuildUser | None = None

    @property
    def enabled(self) -> bool:
        return self.build_user is not None

    def find_free_user(self) -> bool:
        """`findFreeUser`: lock the first free member of the group; False if none is free.

        Raises:
            UserLockError: with Nix's message (group missing or empty, a member without
                an account, the caller a member, a failing system call).
        """
        if self.enabled:
            return True
        group = self.group
        try:
            gr = grp.getgrnam(group)
        except KeyError:
            raise UserLockError(f"the group '{group}' specified in 'build-users-group' does not exist") from None
        if not gr.gr_mem:
            raise UserLockError(f"the build users group '{group}' has no members")
        for name in gr.gr_mem:  # in /etc/group's order, as getgrnam lists them
            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                raise UserLockError(f"the user '{name}' in the group '{group}' does not exist") from None
            path = f"{self.userpool}/{pw.pw_uid}"
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise UserLockError(f"opening user lock '{path}': {e.strerror}") from e
            if not _try_lock(fd):
                os.close(fd)
                continue
            self._fd = fd
            if pw.pw_uid in (os.getuid(), os.geteuid()):
                raise UserLockError(f"the Nix user should not be a member of '{group}'")
            # Usually empty or a group such as "kvm"; Nix passes the user's primary group,
            # so it is the first of the list.
            groups = os.getgrouplist(pw.pw_name, pw.pw_gid)
            if len(groups) > _MAX_GROUPS:
                raise UserLockError(f"failed to get list of supplementary groups for '{pw.pw_name}'")
            self.build_user = BuildUser(user=name, uid=pw.pw_uid, gid=gr.gr_gid, supplementary_gids=tuple(groups))
            return True
        return False

    def release(self) -> None:
        """`buildUser.reset()`: unlock the uid (closing the lock file)."""
        fd, self._fd = self._fd, -1
        self.build_user = None
        if fd != -1:
            os.close(fd)


def _try_lock(fd: int) -> bool:
    """`lockFile(fd, ltWrite, false)`: flock, as Nix (not fcntl: Nix would not see it)."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except InterruptedError:
            continue
        except OSError as e:
            os.close(fd)
            raise UserLockError(f"acquiring/releasing lock: {e.strerror}") from e

