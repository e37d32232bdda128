"""Chroot skeletons made ahead: the same tree the child would populate, kept and cleaned up."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from goalkeeper.sandbox import skeleton
from goalkeeper.sandbox.child import _populate
from goalkeeper.sandbox.skeleton import SkeletonPool, skeleton_of, without_population
from goalkeeper.store.nar import delete_path

from .conftest import sandbox_spec
from .test_spawner import _wait_for

pytestmark = pytest.mark.timeout(30)


def _tree(root: Path) -> dict[str, tuple]:
    """Every entry under root: type, mode, and contents or link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = path.read_bytes()
            else:
                what = None
            out[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), what)
    return out


@pytest.mark.parametrize("fixed_output", [False, True])
def test_a_skeleton_is_what_the_child_populates_plus_mount_points(tmp_path, fixed_output):
    spec = sandbox_spec(tmp_path, "true", fixed_output=fixed_output).sandbox
    populated = Path(spec.root)
    _populate(spec)  # the child's step, here on the host
    made = tmp_path / "made"
    skel = skeleton_of(spec, "/nix/store")
    skeleton.make(skel, str(made))
    assert stat.S_IMODE(made.stat().st_mode) == stat.S_IMODE(populated.stat().st_mode) == 0o750
    stand_ins = {path.lstrip("/") for path, _ in skel.stand_ins}
    assert {"bin", "build", "dev/null", "dev/full", "proc"} <= stand_ins
    assert not any(p.startswith("nix/store/") for p in stand_ins)
    ours = _tree(made)
    # The link the child makes once its devpts is mounted, made ahead too.
    assert ours.pop("dev/ptmx") == (stat.S_IFLNK, 0o777, "/dev/pts/ptmx")
    assert {k: v for k, v in ours.items() if k not in stand_ins} == _tree(populated)
    assert ours["dev/null"][0] == stat.S_IFREG and ours["bin"][0] == stat.S_IFDIR
    assert without_population(spec).dirs == () and without_population(spec).mounts == spec.mounts


def test_optional_and_missing_sources_get_no_mount_point(tmp_path):
    spec = sandbox_spec(tmp_path, "true", extra_paths=["/opt/absent?", "/also/absent"]).sandbox
    stand_ins = {path for path, _ in skeleton_of(spec, "/nix/store").stand_ins}
    assert "/opt/absent" not in stand_ins and "/also/absent" not in stand_ins


def test_the_pool_makes_spares_hands_them_out_and_removes_them(tmp_path):
    spec = sandbox_spec(tmp_path, "true").sandbox
    skel = skeleton_of(spec, "/nix/store")
    store = tmp_path / "store"
    spares = store / f".goalkeeper-skeletons-{os.getpid()}"
    pool = SkeletonPool(spares=2, idle_seconds=30)
    try:
        assert not pool.take(skel, str(store / "a.chroot"))  # none ready yet: made in place
        _wait_for(lambda: _ready(pool) == 2)
        assert pool.take(skel, str(store / "b.chroot"))
        assert _tree(store / "a.chroot") == _tree(store / "b.chroot")
        # A spare's file mount points are links of one file, not inodes of their own.
        stand_in = (spares / skeleton.STAND_IN).stat()
        for name in ("null", "zero", "full"):
            assert (store / "b.chroot" / "dev" / name).stat().st_ino == stand_in.st_ino
            assert (store / "a.chroot" / "dev" / name).stat().st_ino != stand_in.st_ino
        _wait_for(lambda: _ready(pool) == 2)  # made again
        for name in os.listdir(spares):  # removed behind its back (a garbage collector)
            delete_path(str(spares / name))
        assert not pool.take(skel, str(store / "c.chroot"))
        assert _tree(store / "c.chroot") == _tree(store / "a.chroot")
        pool.clear()
        assert not spares.exists()
    finally:
        pool.close()
    assert not pool.take(skel, str(store / "d.chroot"))  # closed: made in place, no spares
    time.sleep(0.1)
    assert not spares.exists()


def test_a_spare_taken_without_refill_is_made_again_only_at_refill(tmp_path):
    spec = sandbox_spec(tmp_path, "true").sandbox
    skel = skeleton_of(spec, "/nix/store")
    store = tmp_path / "store"
    pool = SkeletonPool(spares=2, idle_seconds=30)
    try:
        assert not pool.take(skel, str(store / "a.chroot"), refill=False)  # none yet: made
        _wait_for(lambda: _ready(pool) == 2)
        assert pool.take(skel, str(store / "b.chroot"), refill=False)
        time.sleep(0.3)
        assert _ready(pool) == 1  # not while the build is starting
        pool.refill()  # its builder runs
        _wait_for(lambda: _ready(pool) == 2)
        assert _tree(store / "a.chroot") == _tree(store / "b.chroot")
    finally:
        pool.close()


def _ready(pool: SkeletonPool) -> int:
    with pool._lock:
        return sum(len(names) for names in pool._ready.values())


def test_unused_spares_are_removed_after_a_while(tmp_path):
    spec = sandbox_spec(tmp_path, "true").sandbox
    store = tmp_path / "store"
    pool = SkeletonPool(spares=1, idle_seconds=0.2)
    try:
        pool.take(skeleton_of(spec, "/nix/store"), str(store / "a.chroot"))
        _wait_for(lambda: not (store / f".goalkeeper-skeletons-{os.getpid()}").exists())
        assert sorted(os.listdir(store)) == ["a.chroot"]
    finally:
        pool.close()


def test_spares_are_made_under_a_topdir_so_ext4_spreads_them(tmp_path):
    # An allocation hint only (see skeleton._make_spares_dir): checked where the
    # filesystem keeps the flag; elsewhere the spares are made all the same.
    spec = sandbox_spec(tmp_path, "true").sandbox
    store = tmp_path / "store"
    spares = store / f".goalkeeper-skeletons-{os.getpid()}"
    pool = SkeletonPool(spares=1, idle_seconds=30)
    try:
        pool.take(skeleton_of(spec, "/nix/store"), str(store / "a.chroot"))
        _wait_for(lambda: _ready(pool) == 1)
        flags = _inode_flags(spares)
        if flags is None:
            pytest.skip("this filesystem has no inode flags")
        assert flags & skeleton.FS_TOPDIR_FL
        assert not _inode_flags(store / "a.chroot") & skeleton.FS_TOPDIR_FL  # not inherited
    finally:
        pool.close()


def _inode_flags(path: Path) -> int | None:
    import array
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = array.array("l", [0])
        fcntl.ioctl(fd, skeleton.FS_IOC_GETFLAGS, flags, True)
        return flags[0]
    except OSError:
        return None
    finally:
        os.close(fd)
