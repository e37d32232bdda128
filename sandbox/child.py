"""The forked child: applies a fully decided :class:`BuildSpec`, then execs the builder.

Guarantees of a sandboxed build (``spec.sandbox`` set), matching Nix 2.8's on Linux:

- It is pid 1 of a fresh pid namespace; nothing outside is visible, and when it exits the
  kernel kills everything it left behind.
- It runs as uid 1000 / gid 100 in a fresh user namespace mapped to one host uid/gid (the
  build user or the caller), with setgroups denied; it holds no capabilities after setuid.
- Its root is ``sandbox.root`` (pivot_root, old root detached): only the bind-mounted
  host paths, a fresh /proc, a private tmpfs /dev/shm, a private devpts and a minimal /dev.
- Mounts never propagate back to the host ("/" is made MS_PRIVATE first).
- Hostname ``localhost``, domainname ``(none)``, private SysV IPC, and (unless the build
  is fixed-output) a network namespace with only ``lo``, brought up.
- Every build, sandboxed or not: a new session; stdin is /dev/null, stdout and stderr the
  build's pty slave (raw mode, no CR/LF translation); no other fds survive exec; core
  dumps are off; address-space randomisation is off; setuid/setgid chmod fails with EPERM
  and setxattr with ENOTSUP (seccomp); no-new-privileges is set by that filter (libseccomp's
  CTL_NNP) unless allowed, and not at all without it (Nix's filter-syscalls=false); it is
  SIGKILLed if the spawner dies.

A pooled child (``run_prepared``) runs the same steps in the same order, split in two: those
that depend only on ``pool_key`` before its build exists, the rest once the spawner hands
it the spec and the pty.  What the builder sees is the same either way.

How a failure is reported: each step has a name; the first that fails writes
``step NUL errno NUL message`` to the setup channel and the child ``_exit(1)``s.  The setup
channel is O_CLOEXEC, so a successful exec closes it: EOF without data means started.

Imports: the standard library, ``prctl``, the compiled pyseccomp filter handed over by the
spawner, and this package's ``spec`` and ``_linux`` only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pickle
import resource
import select
import _signal
import signal
import socket
import struct
from dataclasses import dataclass

import prctl

from . import _linux
from .spec import (BindMount, BuildSpec, DevptsMount, ProcMount, SandboxSpec, SharedMount,
                   TmpfsMount)


@dataclass(frozen=True, slots=True)
class ChildFds:
    """The runtime fds a child inherits from the spawner (all O_CLOEXEC).

    The child also inherits the spawner's write ends of the sync and lifeline pipes, and
    O_CLOEXEC only drops them at exec: it closes them first thing, or its own copies
    would keep it from ever seeing EOF on the read ends.
    """

    pty_slave: int  # -1 for a pooled child: its pty comes with the spec
    setup_w: int  # setup channel, child -> spawner
    sync_r: int  # id-map sync, spawner -> child ("1" when uid_map/gid_map are written)
    sync_w: int  # the spawner's end of the sync pipe: closed by the child at once
    lifeline_r: int  # EOF means the spawner died (once our copy of the write end is shut)
    lifeline_w: int  # the spawner's end of the lifeline: closed by the child at once


class _StepFailed(Exception):
    def __init__(self, step: str, err: int, message: str):
        super().__init__(step, err, message)
        self.step, self.errno, self.message = step, err, message


def encode_failure(step: str, err: int, message: str) -> bytes:
    return b"\0".join([step.encode(), str(err).encode(), message.encode(errors="replace")])


def decode_failure(data: bytes) -> tuple[str, int, str]:
    step, err, message = data.split(b"\0", 2)
    return step.decode(), int(err), message.decode(errors="replace")


class _Steps:
    """Runs named steps; the first OSError becomes a _StepFailed naming the step."""

    __slots__ = ("name",)

    def __init__(self) -> None:
        self.name = "start"

    def __call__(self, name: str) -> "_Steps":
        self.name = name
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ, exc, tb) -> bool:
        if exc is None or isinstance(exc, _StepFailed):
            return False
        if isinstance(exc, OSError):
            detail = f": {exc.filename}" if exc.filename else ""
            raise _StepFailed(self.name, exc.errno or 0, f"{exc.strerror}{detail}") from exc
        raise _StepFailed(self.name, 0, f"{type(exc).__name__}: {exc}") from exc


@dataclass(slots=True)
class SpawnerBase:
    """The spawner's own process attributes before a launch profile changed them."""

    personality: int | None = None
    rlimits: tuple[tuple[int, tuple[int, int]], ...] = ()


spawner_base = SpawnerBase()  # filled in by the spawner when it applies a launch profile


def run(spec: BuildSpec, fds: ChildFds, seccomp_filter=None) -> None:
    """Apply ``spec`` and exec the builder.  Never returns."""
    def apply() -> None:
        step = _Steps()
        _prepare(spec, fds, seccomp_filter, step)
        _finish(spec, fds, step)

    _reporting_failures(fds, apply)


def run_prepared(template: BuildSpec, fds: ChildFds, seccomp_filter, spec_r: int) -> None:
    """A pooled child: prepare as ``template`` says, wait for the build's spec, finish it.

    Everything `_prepare` does depends only on what `pool_key` compares (the namespaces,
    id maps, filter, stdin), so it is done before any build asks for it; what the spec
    read from ``spec_r`` adds (the chroot, credentials, the exec) is `_finish`'s.  Never
    returns.
    """
    def apply() -> None:
        step = _Steps()
        _prepare(template, fds, seccomp_filter, step, keep=(spec_r,))
        _warm_up(template)
        with step("wait-for-spec"):
            spec, pty_slave = receive_spec(spec_r)
        with step("dup-fds"):
            _dup_pty(pty_slave)
            os.close(pty_slave)
        _finish(spec, fds, step)

    _reporting_failures(fds, apply)


def _warm_up(template: BuildSpec) -> None:
    """Take now, while no build waits, the page faults the spec's arrival would take.

    A prepared child shares the spawner's pages until it writes to one (reference counts
    included); decoding a spec writes to ~110 of them, each a copy-on-write fault, on the
    build's critical path.  Decoding a copy of the template first takes those faults
    here: the spec's objects then reuse the very blocks this copy's freed.
    """
    pickle.loads(pickle.dumps(template, protocol=pickle.HIGHEST_PROTOCOL))


def pool_key(spec: BuildSpec):
    """What a pooled child prepared for must equal in a spec it is given (None: not poolable)."""
    s = spec.sandbox
    if s is None:
        return None
    return (s.uid_map, s.gid_map, s.user_namespace, s.private_network, s.hostname,
            s.domainname, spec.seccomp, spec.stdin_path, spec.kill_with_parent)


_SPEC_LENGTH = struct.Struct(">I")


def spec_frame(spec_pickle: bytes) -> bytes:
    """A pickled spec as `receive_spec` reads it."""
    return _SPEC_LENGTH.pack(len(spec_pickle)) + spec_pickle


def receive_spec(fd: int) -> tuple[BuildSpec, int]:
    """A length-prefixed spec and, with its first bytes, the build's pty slave."""
    with socket.socket(fileno=fd) as sock:
        data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 1)
        if not fds:  # EOF: discarded, or the spawner died
            os._exit(1)
        buf = bytearray(data)
        while len(buf) < _SPEC_LENGTH.size or len(buf) < _SPEC_LENGTH.size + _length(buf):
            chunk = sock.recv(1 << 16)
            if not chunk:
                os._exit(1)
            buf += chunk
    return pickle.loads(bytes(buf[_SPEC_LENGTH.size:])), fds[0]


def _length(buf: bytearray) -> int:
    return _SPEC_LENGTH.unpack_from(buf)[0]


def _dup_pty(slave: int) -> None:
    os.dup2(slave, 1)
    os.dup2(slave, 2)


def _reporting_failures(fds: ChildFds, apply) -> None:
    try:
        apply()
    except _StepFailed as e:
        os.write(fds.setup_w, encode_failure(e.step, e.errno, e.message))
    except BaseException as e:  # a bug in this module: still report it
        os.write(fds.setup_w, encode_failure("internal", 0, f"{type(e).__name__}: {e}"))
    finally:
        # Never return into the spawner's loop, even if the report itself fails (EPIPE).
        os._exit(1)


def _check_lifeline(fds: ChildFds) -> None:
    # PR_SET_PDEATHSIG only covers deaths after it is set, and getppid() is 0 inside a
    # pid namespace; the lifeline pipe answers "is the spawner still there?" everywhere
    # (readable = EOF, since nobody ever writes to it).
    readable, _, _ = select.select([fds.lifeline_r], [], [], 0)
    if readable:
        os._exit(1)


def _prepare(spec: BuildSpec, fds: ChildFds, seccomp_filter, step: _Steps,
             keep: tuple[int, ...] = ()) -> None:
    """The steps that depend only on `pool_key`: up to the new root's population."""
    sandbox = spec.sandbox
    with step("close-spawner-fds"):
        # Nix's child starts with `userNamespaceSync.writeSide = -1`: only the spawner may
        # hold these write ends, so its death (or its closing sync_w) reads as EOF here.
        os.close(fds.sync_w)
        os.close(fds.lifeline_w)
    with step("signals"):
        # We start with every signal blocked (spawner._fork) and the spawner's Python
        # handlers installed.  Drop those first (and the spawner's wake-up fd), so that a
        # signal already pending -- a Kill during setup -- acts with its default action
        # once unblocked.  Ignored signals and the mask also survive execve, and Python
        # ignores SIGPIPE: a builder expects every disposition default, nothing blocked.
        signal.set_wakeup_fd(-1)
        # _signal, not signal: the wrappers build enums on every call (~1 ms for all 64).
        for sig in _signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}:
            _signal.signal(sig, _signal.SIG_DFL)  # the int _signal compares by identity
        _signal.pthread_sigmask(_signal.SIG_SETMASK, ())
    with step("setsid"):
        os.setsid()
    if spec.kill_with_parent:
        with step("pdeathsig"):
            prctl.set_pdeathsig(signal.SIGKILL)
            _check_lifeline(fds)
    with step("dup-fds"):
        stdin = os.open(spec.stdin_path, os.O_RDWR)
        os.dup2(stdin, 0)
        if fds.pty_slave != -1:
            _dup_pty(fds.pty_slave)
    if sandbox is not None and sandbox.user_namespace:
        with step("wait-for-id-map"):
            if os.read(fds.sync_r, 1) != b"1":
                os._exit(1)  # the spawner died before writing our id maps
    if spec.seccomp is not None and seccomp_filter is not None:
        # (None: the spawner runs under this very filter already, and we inherited it.)
        # Before setuid, while we still hold CAP_SYS_ADMIN in our namespace: loading a
        # filter without NO_NEW_PRIVS needs it.  Nix also installs the filter first.
        with step("seccomp"):
            try:
                seccomp_filter.load()
            except OSError:
                if spec.seccomp.required:
                    raise
    if sandbox is not None:
        _prepare_sandbox(sandbox, step)
    if keep:
        with step("close-fds"):
            # A pooled child may wait long: it must not hold the spawner's socket or other
            # builds' fds meanwhile (the engine would never see the spawner's EOF).
            _close_fds_except(sorted({0, 1, 2, fds.setup_w, fds.lifeline_r, *keep}))


def _finish(spec: BuildSpec, fds: ChildFds, step: _Steps) -> None:
    """The rest: the chroot, credentials, and the exec."""
    if spec.builtin is not None:
        # Nix runs a builtin in this process (runChild); its code must be loaded before
        # the chroot hides Python's files. Only builtin builds pay for the import.
        with step("load builtin builder"):
            from . import builtins as builtin_builders
    if spec.sandbox is not None:
        _enter_root(spec.sandbox, step)
    if spec.credentials is not None:
        creds = spec.credentials
        with step("setgid/setuid"):
            if creds.supplementary_gids is not None:
                os.setgroups(list(creds.supplementary_gids))
            os.setgid(creds.gid)
            os.setuid(creds.uid)
        if spec.kill_with_parent:
            # The kernel clears the parent-death signal when the euid changes.
            with step("pdeathsig"):
                prctl.set_pdeathsig(signal.SIGKILL)
                _check_lifeline(fds)
    with step("chdir"):
        os.chdir(spec.cwd)
    with step("close-fds"):
        # Everything but 0-2 and the setup channel, which exec closes (O_CLOEXEC).
        _close_fds_except([0, 1, 2, fds.setup_w])
    with step("personality"):
        current = _linux.personality(0xFFFFFFFF)
        base = spec.personality_set
        if base is None:
            # What the spawner had before a launch profile changed it, so a spec means
            # the same under any spawner.
            base = current if spawner_base.personality is None else spawner_base.personality
        if base | spec.personality_or != current:
            _linux.personality(base | spec.personality_or)
    with step("rlimits"):
        wanted = {limit.resource: (limit.soft, limit.hard) for limit in spec.rlimits}
        for res, limits in spawner_base.rlimits:
            wanted.setdefault(res, limits)  # undo a launch profile's limit the spec lacks
        for res, limits in wanted.items():
            resource.setrlimit(res, limits)
    with step("umask"):
        os.umask(spec.umask)
    if spec.builtin is not None:
        # set up: say so as exec would have, by closing the setup channel
        os.close(fds.setup_w)
        os._exit(builtin_builders.run_in_child(spec.builtin))
    with step("exec"):
        env = dict(spec.env)
        os.execve(spec.builder, list(spec.argv), env)


def _close_fds_except(keep: list[int]) -> None:
    low = 0
    for fd in keep:  # sorted
        if fd > low:  # closerange(0, 0) would close everything (close_range(0, ~0U))
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def _prepare_sandbox(sandbox: SandboxSpec, step: _Steps) -> None:
    if sandbox.private_network:
        with step("loopback-up"):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 0) as sock:
                flags = _linux.IFF_UP | _linux.IFF_LOOPBACK | _linux.IFF_RUNNING
                fcntl.ioctl(sock.fileno(), _linux.SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags))
    with step("hostname"):
        _linux.sethostname(sandbox.hostname)
        _linux.setdomainname(sandbox.domainname)
    with step("mount-private"):
        # Subtrees may be MS_SHARED (systemd does that); mounting on top of one would
        # propagate to the host even from a private mount namespace.
        _linux.mount(None, "/", None, _linux.MS_PRIVATE | _linux.MS_REC)


def _enter_root(sandbox: SandboxSpec, step: _Steps) -> None:
    root = sandbox.root
    with step("populate"):
        _populate(sandbox)
    with step("bind-root"):
        # pivot_root needs the new root to be a mount point of its own.
        _linux.mount(root, root, None, _linux.MS_BIND)
    for m in sandbox.mounts:
        _apply_mount(m, step)
    if sandbox.unshare_mount_before_pivot:
        with step("unshare-mount"):
            _linux.unshare(_linux.CLONE_NEWNS)
    with step("pivot_root"):
        # pivot_root(2)'s own recipe: with new_root == put_old the old root is stacked on
        # top of the new one, and detaching "." removes it -- no real-root directory to
        # make and remove (two journaled writes to the store's filesystem).  The mounts
        # left are Nix's, who pivots onto "real-root" and then detaches and removes it.
        os.chdir(root)
        _linux.pivot_root(".", ".")
        _linux.umount2(".", _linux.MNT_DETACH)
        os.chroot(".")


_PTMX_TARGET = "/dev/pts/ptmx"  # skeleton.PTMX_TARGET (not imported: the child stays small)


def _apply_mount(m, step: _Steps) -> None:
    if isinstance(m, BindMount):
        with step("bind-mount"):
            _bind(m.source, m.target, optional=m.optional, recursive=m.recursive)
            if m.read_only:
                _linux.mount(None, m.target, None,
                             _linux.MS_BIND | _linux.MS_REMOUNT | _linux.MS_RDONLY)
    elif isinstance(m, SharedMount):
        with step("shared-mount"):
            _linux.mount(m.target, m.target, None, _linux.MS_BIND)
            _linux.mount(None, m.target, None, _linux.MS_SHARED)
    elif isinstance(m, ProcMount):
        with step("proc"):
            os.makedirs(m.target, exist_ok=True)
            _linux.mount("none", m.target, "proc")
    elif isinstance(m, TmpfsMount):
        with step("tmpfs"):
            os.makedirs(m.target, exist_ok=True)
            _linux.mount("none", m.target, "tmpfs", 0, m.options or None)
    elif isinstance(m, DevptsMount):
        with step("devpts"):
            os.makedirs(m.target, exist_ok=True)
            try:
                _linux.mount("none", m.target, "devpts", 0, m.options)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                # No multiple devpts instances in this kernel: share the host's.
                _bind("/dev/pts", m.target)
                if os.path.islink(m.ptmx_link):  # a skeleton's link: bind onto a file
                    os.unlink(m.ptmx_link)
                _bind("/dev/ptmx", m.ptmx_link)
            else:
                try:
                    os.symlink(_PTMX_TARGET, m.ptmx_link)
                except FileExistsError:
                    # A chroot skeleton has it already (skeleton.py); anything else there
                    # fails this step as before.
                    try:
                        existing = os.readlink(m.ptmx_link)
                    except OSError:
                        existing = None
                    if existing != _PTMX_TARGET:
                        raise
                # Some kernels create ptmx with mode 0 in a new instance.
                os.chmod(os.path.join(m.target, "ptmx"), 0o666)
    else:
        raise TypeError(f"unknown mount {m!r}")


def _populate(sandbox: SandboxSpec) -> None:
    """The chroot's own directories, files and symlinks, each with exactly its mode.

    Under umask 0, so that mkdir and open give the mode at once (no chmod each); a
    directory that exists already (start_builder made the root and the store dir) or a
    file that does (a pre-build hook's) is chmod'ed as before.
    """
    saved = os.umask(0)
    try:
        for d in sandbox.dirs:
            _make_dir(d.path, d.mode)
        for f in sandbox.files:
            try:
                fd = os.open(f.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, f.mode)
            except FileExistsError:
                fd = os.open(f.path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
                os.fchmod(fd, f.mode)
            try:
                os.write(fd, f.contents)
            finally:
                os.close(fd)
        for s in sandbox.symlinks:
            os.symlink(s.target, s.path)
    finally:
        os.umask(saved)


def _make_dir(path: str, mode: int) -> None:
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        os.chmod(path, mode)
    except FileNotFoundError:
        # Parents as Nix's createDirs makes them: mkdir 0777 under its umask 0022.
        _make_dir(os.path.dirname(path), 0o755)
        os.mkdir(path, mode)


def _bind(source: str, target: str, *, optional: bool = False, recursive: bool = True) -> None:
    # Nix's doBind: stat() follows symlinks, so /bin -> usr/bin binds /usr/bin's contents.
    try:
        st = os.stat(source)
    except FileNotFoundError:
        if optional:
            return
        raise
    # The stand-in for the mount point: one syscall when its parent exists (the usual case).
    if (st.st_mode & 0o170000) == 0o040000:
        try:
            os.mkdir(target)
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(target, exist_ok=True)
    else:
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        os.close(fd)
    flags = _linux.MS_BIND | (_linux.MS_REC if recursive else 0)
    _linux.mount(source, target, "", flags)
