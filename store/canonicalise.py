"""`canonicalisePathMetaData` (libstore/local-store.cc): make a store path's metadata canonical.

After this, every non-symlink has mode 0444 or 0555, every entry has mtime 1
(1970-01-01 00:00:01), no extended attributes other than the ignored ACLs, and
belongs to us (spec §4.2). The NAR does not record any of these, so two stores
holding the same NAR hold identical-looking files.
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import StoreError
from .nar import UnsupportedFileType

MTIME_STORE = 1  # Nix's `mtimeStore`: 1970-01-01 00:00:01
DEFAULT_IGNORED_ACLS = frozenset({"security.selinux", "system.nfs4_acl"})  # setting `ignored-acls`


class InvalidOwnership(StoreError):
    """A build output contains a file that the build user does not own (e.g. a hard link to /etc/shadow)."""


class CanonicaliseError(StoreError):
    """A system call needed to canonicalise a path failed."""


def _fail(what: str, path: str, err: OSError) -> CanonicaliseError:
    exc = CanonicaliseError(f"{what} '{path}': {err.strerror}")
    exc.__cause__ = err
    return exc


def _canonicalise_timestamp_and_permissions(path: str, st: os.stat_result) -> None:
    if not stat.S_ISLNK(st.st_mode):
        mode = stat.S_IMODE(st.st_mode)
        if mode not in (0o444, 0o555):
            mode = 0o444 | (0o111 if st.st_mode & stat.S_IXUSR else 0)
            try:
                os.chmod(path, mode)
            except OSError as err:
                raise _fail(f"changing mode to {mode:o} of", path, err) from err
    if int(st.st_mtime) != MTIME_STORE:
        # Nix passes the old atime in whole seconds (tv_usec = 0) and uses lutimes,
        # so symlinks themselves get the timestamp.
        ns = 1_000_000_000
        try:
            os.utime(path, ns=(int(st.st_atime) * ns, MTIME_STORE * ns), follow_symlinks=False)
        except OSError as err:
            raise _fail("changing modification time of", path, err) from err


def canonicalise_timestamp_and_permissions(path: str) -> None:
    """`canonicaliseTimestampAndPermissions`: mode and mtime of one entry (no recursion)."""
    try:
        st = os.lstat(path)
    except OSError as err:
        raise _fail("getting status of", path, err) from err
    _canonicalise_timestamp_and_permissions(path, st)


def _remove_xattrs(path: str, ignored_acls: frozenset[str]) -> None:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.ENODATA):
            return
        raise _fail("querying extended attributes of", path, err) from err
    for name in names:
        if name in ignored_acls:
            continue
        try:
            os.removexattr(path, name, follow_symlinks=False)
        except OSError as err:
            raise _fail(f"removing extended attribute '{name}' from", path, err) from err


def canonicalise_path_metadata(
    path: str,
    from_uid: int | None = None,
    inodes_seen: set[tuple[int, int]] | None = None,
    *,
    ignored_acls: frozenset[str] = DEFAULT_IGNORED_ACLS,
) -> None:
    """`canonicalisePathMetaData`: canonicalise `path` and everything below it.

    Args:
        path: the top of the tree (a store path's real location).
        from_uid: the build user's uid; entries owned by anyone else are an error,
            except inodes in `inodes_seen` (hard links within this build's outputs).
        inodes_seen: (st_dev, st_ino) of entries already canonicalised; share one set
            across all outputs of a build.
        ignored_acls: extended attributes to keep (setting `ignored-acls`).

    Raises:
        InvalidOwnership, UnsupportedFileType, CanonicaliseError.
    """
    if inodes_seen is None:
        inodes_seen = set()
    euid, egid = os.geteuid(), os.getegid()
    # Depth-first with an explicit stack: store paths can nest deeper than Python recurses.
    todo = [path]
    while todo:
        current = todo.pop()
        try:
            st = os.lstat(current)
        except OSError as err:
            raise _fail("getting status of", current, err) from err
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise UnsupportedFileType(f"file '{current}' has an unsupported type")
        _remove_xattrs(current, ignored_acls)
        if from_uid is not None and st.st_uid != from_uid:
            # We chown'ed this inode ourselves through another hard link; a directory
            # cannot be hard-linked, so one not owned by the build user is foreign.
            if stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) not in inodes_seen:
                raise InvalidOwnership(f"invalid ownership on file '{current}'")
            continue
        inodes_seen.add((st.st_dev, st.st_ino))
        _canonicalise_timestamp_and_permissions(current, st)
        if st.st_uid != euid:
            try:
                os.lchown(current, euid, egid)
            except OSError as err:
                raise _fail(f"changing owner to {euid} of", current, err) from err
        if stat.S_ISDIR(st.st_mode):
            try:
                names = os.listdir(current)
            except OSError as err:
                raise _fail("opening directory", current, err) from err
            todo.extend(os.path.join(current, name) for name in sorted(names, reverse=True))
    st = os.lstat(path)
    if st.st_uid != euid:
        raise InvalidOwnership(f"wrong ownership of top-level store path '{path}'")
