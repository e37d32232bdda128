"""Chroot skeletons: the part of a chroot no build changes, made before the build asks.

A sandboxed build's chroot (``<drv>.chroot``) starts with the same directories, /etc
files, /dev symlinks and mount-point stand-ins every time; only the hard-linked inputs,
what a pre-build hook adds and the mounts themselves belong to one build.  Creating those
entries costs some twenty journaled metadata writes to the store's filesystem, each
waiting its turn behind whatever else writes there -- milliseconds on the critical path
of a chain of builds.  So the engine keeps a few skeletons made ahead, beside the
chroots, by a background thread (`SkeletonPool`), and a build renames one into place.
The child is then told to populate nothing (`without_population`); what the builder sees
is the same either way: `make` creates exactly what the child's populate step would, with
the same modes, and the stand-ins are hidden under their mounts.

Runs in the engine process (it has threads); never imported by the spawner or the child.
"""

from __future__ import annotations

import array
import atexit
import dataclasses
import fcntl
import itertools
import os
import threading
from dataclasses import dataclass

from goalkeeper.store.nar import delete_path

from .spec import BindMount, DevptsMount, ProcMount, SandboxSpec

SPARES = 2  # skeletons kept ready per kind: -j 2 takes two at once
IDLE_SECONDS = 5.0  # spares untouched this long are removed (nothing left behind for long)
_DIR_MODE = 0o755  # Nix's createDirs: mkdir 0777 under its umask 0022
# ioctl(2) numbers of chattr(1) (linux/fs.h): _IOR('f', 1, long), _IOW('f', 2, long).
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_TOPDIR_FL = 0x00020000  # chattr +T: spread subdirectories over block groups (ext2/3/4)


@dataclass(frozen=True, slots=True)
class Skeleton:
    """A chroot's build-independent entries, relative to its root ("" is the root itself).

    Attributes:
        dirs: (path, mode) in creation order, missing parents made 0755 on the way.
        files: (path, contents, mode).
        symlinks: (link target, path); the child's /dev/ptmx link included (see
            `skeleton_of`).
        stand_ins: (path, is_directory): what a bind mount is mounted on.
    """

    dirs: tuple[tuple[str, int], ...]
    files: tuple[tuple[str, bytes, int], ...]
    symlinks: tuple[tuple[str, str], ...]
    stand_ins: tuple[tuple[str, bool], ...]


def skeleton_of(sandbox: SandboxSpec, store_dir: str) -> Skeleton:
    """What of ``sandbox``'s chroot does not depend on the build.

    Stand-ins are made for the bind mounts outside the chroot's store whose source
    exists now and that no other mount covers; the child makes the others as before.
    """
    root = sandbox.root

    def rel(path: str) -> str:  # every path here is under root
        return path[len(root):]

    dirs = [(rel(d.path), d.mode) for d in sandbox.dirs]
    # start_builder made the store dir before the child's populate step chmod'ed the rest.
    store = [d for d in dirs if d[0] == store_dir]
    dirs = store + [d for d in dirs if d[0] != store_dir]
    binds = [m for m in sandbox.mounts if isinstance(m, BindMount)]
    targets = [rel(m.target) for m in sandbox.mounts]
    stand_ins = []
    for m in binds:
        target = rel(m.target)
        if (m.optional or target.startswith(store_dir + "/")
                or any(target.startswith(t + "/") for t in targets)):
            continue
        try:
            is_dir = os.path.isdir(m.source)  # as the child's stat(): symlinks followed
        except OSError:
            continue
        if not is_dir and not os.path.exists(m.source):
            continue
        stand_ins.append((target, is_dir))
    # The fresh /proc's mount point (the child makes it otherwise).
    stand_ins += [(rel(m.target), True) for m in sandbox.mounts if isinstance(m, ProcMount)]
    symlinks = [(s.target, rel(s.path)) for s in sandbox.symlinks]
    # The child links /dev/ptmx to its new devpts' ptmx once that is mounted; made here, it
    # is one inode less on the build's critical path (the child accepts it, or removes it
    # where the kernel has no devpts instances to give).
    symlinks += [(PTMX_TARGET, rel(m.ptmx_link)) for m in sandbox.mounts if isinstance(m, DevptsMount)]
    return Skeleton(dirs=tuple(dirs),
                    files=tuple((rel(f.path), f.contents, f.mode) for f in sandbox.files),
                    symlinks=tuple(symlinks), stand_ins=tuple(stand_ins))


PTMX_TARGET = "/dev/pts/ptmx"  # what /dev/ptmx links to in a chroot with its own devpts


def without_population(sandbox: SandboxSpec) -> SandboxSpec:
    """The spec for a chroot whose skeleton is in place: the child populates nothing."""
    return dataclasses.replace(sandbox, dirs=(), files=(), symlinks=())


def write_file(path: str, contents: bytes, mode: int, *, exclusive: bool = False) -> None:
    """Write ``contents`` to ``path`` with exactly ``mode`` (whatever this process's umask);
    with ``exclusive`` the file must not exist yet, else it is truncated."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(contents)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def make(skeleton: Skeleton, root: str, *, stand_in: str | None = None) -> None:
    """Create ``skeleton`` at ``root`` (which must not exist).

    ``stand_in``: an empty file on the same filesystem that the mount points of files
    (``/dev/null`` ...) may be hard links of, instead of new inodes (see `STAND_IN`).
    """
    for path, mode in skeleton.dirs:
        _make_dir(root + path, mode)
    for path, contents, mode in skeleton.files:
        write_file(root + path, contents, mode, exclusive=True)
    for target, path in skeleton.symlinks:
        os.symlink(target, root + path)
    for path, is_dir in skeleton.stand_ins:
        if is_dir:
            os.makedirs(root + path, _DIR_MODE, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(root + path), _DIR_MODE, exist_ok=True)
            if stand_in is None or not _link(stand_in, root + path):
                os.close(os.open(root + path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))


def _link(source: str, target: str) -> bool:
    try:
        os.link(source, target)
    except OSError:  # removed behind our back, too many links, a filesystem without them
        return False
    return True


def _make_dir(path: str, mode: int) -> None:
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    except FileNotFoundError:
        _make_dir(os.path.dirname(path), _DIR_MODE)
        os.mkdir(path, mode)
    os.chmod(path, mode)  # the umask, and the sticky bit some filesystems drop at mkdir


class SkeletonPool:
    """Skeletons made ahead, per directory and kind, by one background thread.

    Spares live in ``<dir>/.goalkeeper-skeletons-<pid>/`` beside the chroots they become
    (a rename never crosses a filesystem).  They are removed when unused for
    `IDLE_SECONDS`, by `close`, and at interpreter exit.
    """

    def __init__(self, spares: int = SPARES, idle_seconds: float = IDLE_SECONDS) -> None:
        self._spares = spares
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._ready: dict[tuple[str, Skeleton], list[str]] = {}
        self._wanted: tuple[str, Skeleton] | None = None  # the kind to keep spares of
        self._thread: threading.Thread | None = None
        self._names = itertools.count()
        self._closed = False
        atexit.register(self.close)

    def take(self, skeleton: Skeleton, root: str, *, refill: bool = True) -> bool:
        """Rename a ready skeleton to ``root``, or make one there; True if it was ready.

        ``refill=False``: the spare taken is replaced only at the next `refill` (if one
        was ready): the caller says when the work of making it (some twenty syscalls,
        each giving up the GIL and taking it back) is out of a build's way.
        """
        parent = os.path.dirname(root)
        key = (parent, skeleton)
        spare = None
        with self._lock:
            ready = self._ready.get(key)
            if ready:
                spare = ready.pop()
            if not self._closed:
                self._wanted = key
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="goalkeeper-skeletons",
                                                    daemon=True)  # atexit removes its spares
                    self._thread.start()
                if refill or spare is None:
                    self._wake.notify()
        if spare is not None:
            try:
                os.rename(spare, root)
                return True
            except OSError:  # removed behind our back, or root exists: as without one
                try:
                    delete_path(spare)
                except OSError:
                    pass
        make(skeleton, root)
        return False

    def refill(self) -> None:
        """Make the spares taken since the last refill (see `take`)."""
        with self._lock:
            self._wake.notify()

    def clear(self) -> None:
        """Remove the spares not taken (and stop making them until the next `take`)."""
        with self._lock:
            self._wanted = None
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        self._remove_spares()

    def close(self) -> None:
        """`clear`, for good: later builds make their skeletons in place."""
        with self._lock:
            self._closed = True
        self.clear()

    def _run(self) -> None:
        while True:
            with self._lock:
                key = self._wanted
                while key is not None and len(self._ready.get(key, ())) >= self._spares:
                    if not self._wake.wait(self._idle_seconds):  # nobody took one
                        self._wanted = None
                    key = self._wanted
                if key is None:
                    self._thread = None
                    break
                name = f"{key[0]}/.goalkeeper-skeletons-{os.getpid()}/{next(self._names)}"
            try:
                spares = os.path.dirname(name)
                _make_spares_dir(spares)
                make(key[1], name, stand_in=f"{spares}/{STAND_IN}")
            except OSError:
                try:
                    delete_path(name)
                except OSError:
                    pass
                with self._lock:
                    if self._wanted == key:
                        self._wanted = None  # cannot be made here: builds make their own
                continue
            with self._lock:
                self._ready.setdefault(key, []).append(name)
        self._remove_spares()

    def _remove_spares(self) -> None:
        with self._lock:
            if self._thread is not None:
                return  # the thread is back at work; it removes them when it stops
            ready, self._ready = self._ready, {}
        for (parent, _), names in ready.items():
            for name in names:
                try:
                    delete_path(name)
                except OSError:
                    pass  # removed behind our back
            spares = f"{parent}/.goalkeeper-skeletons-{os.getpid()}"
            for remove, path in ((os.unlink, f"{spares}/{STAND_IN}"), (os.rmdir, spares)):
                try:
                    remove(path)
                except OSError:
                    pass


# The file every spare's file mount points are hard links of, in the spares directory: a
# link is a directory entry, not an inode (see `_make_spares_dir` for what an inode costs).
# Nothing can tell them apart: each is hidden under its bind mount for the whole build (a
# builder cannot unmount it: mounts it was given come locked), and a chroot is deleted after
# its build.  Directory mount points cannot be links, nor can files a builder sees (their
# link count would show, and writing one would change the others).
STAND_IN = "stand-in"


def _make_spares_dir(path: str) -> None:
    """The directory spares are made in, marked as a top of a directory hierarchy, with
    the `STAND_IN` file.

    On ext4 without a journal (this machine's /tmp) every new inode is checked against
    the inodes of its block group deleted in the last 5 s -- or 305 s while their
    inode table block is dirty -- one buffer lookup each, and a chain of builds deletes
    some thirty per chroot in the same groups where it makes the next: 0.1-0.8 ms per
    inode, 3-30 ms per skeleton.  Under a directory marked TOPDIR, ext4's Orlov
    allocator places each new subdirectory (a spare's root) in a block group with few
    directories and many free inodes, and the spare's own entries follow their parent
    there: about 1 ms per skeleton (microbenchmark of 500 make/delete cycles).  Only an
    allocation hint; where it is refused or unknown the spares are made all the same.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    os.close(os.open(f"{path}/{STAND_IN}", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        flags = array.array("l", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        flags[0] |= FS_TOPDIR_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags, True)
    except OSError:
        pass  # not ext2/3/4 (ENOTTY, EOPNOTSUPP), or not ours to change
    finally:
        os.close(fd)
