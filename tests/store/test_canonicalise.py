"""canonicalisePathMetaData (spec §4.2), compared with what real Nix leaves in its store."""

from __future__ import annotations

import os
import stat

import pytest

from goalkeeper.store.canonicalise import (
    MTIME_STORE,
    InvalidOwnership,
    canonicalise_path_metadata,
    canonicalise_timestamp_and_permissions,
)
from goalkeeper.store.nar import UnsupportedFileType

OTHER_UID = 54321  # some uid that owns nothing on this machine


def make_messy_tree(root) -> None:
    os.makedirs(root / "sub" / "deeper")
    (root / "plain").write_text("plain")
    (root / "exe").write_text("#!/bin/sh\n")
    (root / "suid").write_text("s")
    (root / "sub" / "group-exec").write_text("g")
    (root / "sub" / "deeper" / "readonly").write_text("r")
    os.symlink("../plain", root / "sub" / "link")
    os.symlink("/dangling/target", root / "dangling")
    os.chmod(root / "exe", 0o755)
    os.chmod(root / "suid", 0o4755)
    os.chmod(root / "sub" / "group-exec", 0o670)
    os.chmod(root / "sub" / "deeper" / "readonly", 0o400)
    os.chmod(root / "sub", 0o1777)  # sticky, world-writable
    os.chmod(root / "sub" / "deeper", 0o2750)
    os.chmod(root, 0o777)


def metadata(root) -> dict[str, tuple]:
    """Per relative path: file type, permission bits (None for symlinks), mtime, owner, group."""
    out = {}
    todo = ["."]
    while todo:
        rel = todo.pop()
        st = os.lstat(os.path.join(root, rel))
        mode = None if stat.S_ISLNK(st.st_mode) else stat.S_IMODE(st.st_mode)
        out[rel] = (stat.S_IFMT(st.st_mode), mode, int(st.st_mtime), st.st_uid, st.st_gid)
        if stat.S_ISDIR(st.st_mode):
            todo.extend(os.path.normpath(os.path.join(rel, n)) for n in os.listdir(os.path.join(root, rel)))
    return out


@pytest.mark.nix
def test_matches_nix_store_add(tmp_path, run_nix, chroot_store):
    ours = tmp_path / "tree"
    make_messy_tree(ours)
    theirs = run_nix("nix-store", *chroot_store.args, "--add", str(ours)).stdout.decode().strip()
    theirs_real = chroot_store.real_store_dir + theirs[len(chroot_store.store_dir):]
    canonicalise_path_metadata(str(ours))
    got = metadata(ours)
    assert got == metadata(theirs_real)
    assert got["."][1] == 0o555 and got["exe"][1] == 0o555 and got["suid"][1] == 0o555
    assert got["plain"][1] == 0o444 and got["sub/group-exec"][1] == 0o444
    assert {m[2] for m in got.values()} == {MTIME_STORE}


def test_hard_links_keep_their_inode(tmp_path):
    os.mkdir(tmp_path / "out")
    (tmp_path / "out" / "a").write_text("x")
    os.link(tmp_path / "out" / "a", tmp_path / "out" / "b")
    before = os.lstat(tmp_path / "out" / "a").st_ino
    canonicalise_path_metadata(str(tmp_path / "out"))
    a, b = os.lstat(tmp_path / "out" / "a"), os.lstat(tmp_path / "out" / "b")
    assert a.st_ino == b.st_ino == before and a.st_nlink == 2
    assert stat.S_IMODE(a.st_mode) == 0o444 and a.st_mtime == MTIME_STORE


def test_symlink_gets_mtime_and_keeps_atime(tmp_path):
    link = tmp_path / "link"
    os.symlink("target", link)
    os.utime(link, (1_000_000, 2_000_000), follow_symlinks=False)
    canonicalise_timestamp_and_permissions(str(link))
    st = os.lstat(link)
    assert (st.st_atime, st.st_mtime) == (1_000_000, MTIME_STORE)


def test_xattrs_removed_except_ignored(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    try:
        os.setxattr(f, "user.goalkeeper", b"1")
        os.setxattr(f, "user.keep", b"2")
    except OSError as err:
        pytest.skip(f"no user xattrs here: {err}")
    canonicalise_path_metadata(str(f), ignored_acls=frozenset({"user.keep"}))
    assert os.listxattr(f) == ["user.keep"]


def test_unsupported_type(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnsupportedFileType, match="fifo' has an unsupported type"):
        canonicalise_path_metadata(str(tmp_path))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to a build user")
def test_build_user_files_are_taken_over_including_hard_links(tmp_path):
    out = tmp_path / "out"
    os.mkdir(out)
    (out / "a").write_text("x")
    os.link(out / "a", out / "b")
    for p in (out, out / "a"):
        os.lchown(p, OTHER_UID, OTHER_UID)
    seen: set = set()
    canonicalise_path_metadata(str(out), from_uid=OTHER_UID, inodes_seen=seen)
    for p in (out, out / "a", out / "b"):
        assert os.lstat(p).st_uid == os.geteuid()
    assert (os.lstat(out / "a").st_dev, os.lstat(out / "a").st_ino) in seen


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to a build user")
def test_foreign_file_is_invalid_ownership(tmp_path):
    out = tmp_path / "out"
    os.mkdir(out)
    (out / "shadow").write_text("secret")  # owned by us, not by the build user
    os.lchown(out, OTHER_UID, OTHER_UID)
    with pytest.raises(InvalidOwnership, match=r"invalid ownership on file '.*shadow'"):
        canonicalise_path_metadata(str(out), from_uid=OTHER_UID)
    assert stat.S_IMODE(os.lstat(out / "shadow").st_mode) == 0o644 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old
