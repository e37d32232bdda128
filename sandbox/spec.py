"""A build fully decided by the parent, as plain immutable data.

The engine turns a derivation into a :class:`BuildSpec`; the spawner forks a child that
applies it step by step (``child.py``) and never decides anything itself.  Everything here
is a frozen, slotted dataclass so a spec can cross the dill channel to the spawner and be
shared between threads without copying.

Paths on the host are ``str``; the environment and arguments are ``bytes`` because a
derivation's env need not be valid UTF-8 (Nix passes raw bytes to ``execve``).
"""

from __future__ import annotations

import os
import resource
import signal
from dataclasses import dataclass, fields

# personality(2) flags (linux/personality.h).
ADDR_NO_RANDOMIZE = 0x0040000  # Nix always sets this, for determinism
UNAME26 = 0x0020000  # `impersonate-linux-26`: uname reports 2.6.x
PER_LINUX32 = 0x0008  # i686-linux builds on x86_64


@dataclass(frozen=True, slots=True, kw_only=True)
class IdMap:
    """One line of /proc/<pid>/uid_map or gid_map: ``inside outside count``."""

    inside: int
    outside: int
    count: int = 1

    def render(self) -> bytes:
        return b"%d %d %d" % (self.inside, self.outside, self.count)


@dataclass(frozen=True, slots=True, kw_only=True)
class BindMount:
    """Bind ``source`` (host path, symlinks followed as Nix's stat() does) onto ``target``.

    ``target`` is a host path (normally under the chroot root).  The target directory or an
    empty file standing in for it is created first, as Nix's doBind does.
    """

    source: str
    target: str
    optional: bool = False  # a missing source (ENOENT) is skipped: sandbox-paths "x?"
    read_only: bool = False
    recursive: bool = True  # MS_REC, as Nix


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedMount:
    """Bind ``target`` onto itself and mark it MS_SHARED (Nix does this for the store dir so
    that later bind mounts made from outside propagate into the pivoted namespace)."""

    target: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcMount:
    """A fresh procfs for the new pid namespace."""

    target: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TmpfsMount:
    """A private tmpfs, e.g. /dev/shm with ``options=b"size=50%"`` (sandbox-shm-size)."""

    target: str
    options: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class DevptsMount:
    """A private devpts instance, with ``ptmx_link`` -> /dev/pts/ptmx made world-writable.

    If the kernel refuses a new instance (EINVAL), the host's /dev/pts and /dev/ptmx are
    bind-mounted instead, as Nix does.
    """

    target: str
    ptmx_link: str
    options: bytes = b"newinstance,mode=0620"


Mount = BindMount | SharedMount | ProcMount | TmpfsMount | DevptsMount


@dataclass(frozen=True, slots=True, kw_only=True)
class MakeDir:
    path: str
    mode: int = 0o755  # applied with chmod, so the umask does not interfere


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteFile:
    path: str
    contents: bytes
    mode: int = 0o644


@dataclass(frozen=True, slots=True, kw_only=True)
class Symlink:
    target: str  # what the link points to
    path: str  # where the link is created


@dataclass(frozen=True, slots=True, kw_only=True)
class RLimit:
    resource: int
    soft: int
    hard: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SeccompRule:
    """Return ``errno`` for ``syscall`` when argument ``arg`` masked with ``mask`` equals
    ``mask`` (``arg=None``: unconditionally)."""

    syscall: str
    errno: int
    arg: int | None = None
    mask: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SeccompPolicy:
    """A default-allow filter with errno rules (Nix's setupSeccomp)."""

    rules: tuple[SeccompRule, ...]
    extra_arches: tuple[str, ...] = ()  # pyseccomp.Arch attribute names, e.g. "X86", "X32"
    allow_new_privileges: bool = False  # SCMP_FLTATR_CTL_NNP = not this
    # Nix ignores a failure to load the filter when there is no build user
    # (`catch (...) { if (buildUser) throw; }`): an unprivileged caller may lack the rights.
    required: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """Who the builder runs as, as seen from where it runs (inside the user namespace)."""

    uid: int
    gid: int
    supplementary_gids: tuple[int, ...] | None = None  # None: leave groups alone


@dataclass(frozen=True, slots=True, kw_only=True)
class BuiltinSpec:
    """A builtin builder (`builtin:fetchurl`, ...), which the child runs instead of an exec.

    `env` is the derivation's own environment with the input rewrites applied (what
    runChild hands the builtin), not the builder environment of initEnv.
    """

    builder: str
    env: tuple[tuple[str, str], ...]
    netrc_data: str = ""  # the host's netrc-file, for fetchurl
    hashed_mirrors: tuple[str, ...] = ()
    download_attempts: int = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxSpec:
    """The namespaces and filesystem of a sandboxed build.

    The child is created with ``clone(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID |
    CLONE_NEWIPC | CLONE_NEWUTS [| CLONE_NEWNET])`` so it is pid 1 of its namespace.
    """

    root: str  # the chroot directory on the host; pivot_root target
    uid_map: IdMap
    gid_map: IdMap
    user_namespace: bool = True
    private_network: bool = True  # not for fixed-output (impure) derivations
    hostname: bytes = b"localhost"
    domainname: bytes = b"(none)"  # the kernel's default, set explicitly as Nix does
    dirs: tuple[MakeDir, ...] = ()
    files: tuple[WriteFile, ...] = ()
    symlinks: tuple[Symlink, ...] = ()
    mounts: tuple[Mount, ...] = ()
    # Nix unshares the mount namespace once more before pivot_root, keeping the first one
    # (opened by the parent) un-pivoted so it can bind store paths in later.
    unshare_mount_before_pivot: bool = True


DEFAULT_RLIMITS = (RLimit(resource=resource.RLIMIT_CORE, soft=0, hard=resource.RLIM_INFINITY),)


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildSpec:
    """Everything needed to start one builder.

    Attributes:
        builder: the program to execve, a path as seen by the builder.
        argv: the full argument vector, argv[0] included (Nix: baseNameOf(builder)).
        env: environment pairs in order; later duplicates win, as in a map.
        build_dir: the build directory on the host.
        build_dir_in_sandbox: the same directory as the builder sees it (/build).
        cwd: the working directory at exec, as seen by the builder.
        sandbox: namespaces and mounts, or None for an unsandboxed build.
        credentials: setgid/setuid before exec (sandbox: 100/1000 inside), or None.
        stdin_path: opened read-write as fd 0 (Nix: /dev/null); 1 and 2 are the pty slave.
        umask: set before exec (the Nix daemon runs with 0022).
        kill_with_parent: PR_SET_PDEATHSIG(SIGKILL) towards the spawner.
        pty_owner: the host uid the pty slave is given (mode 0600, owner uid:0) before the
            builder starts, as Nix does for a build user; None: left as opened (root's).
    """

    builder: bytes
    argv: tuple[bytes, ...]
    env: tuple[tuple[bytes, bytes], ...]
    build_dir: str
    build_dir_in_sandbox: str
    cwd: str
    sandbox: SandboxSpec | None = None
    credentials: Credentials | None = None
    rlimits: tuple[RLimit, ...] = DEFAULT_RLIMITS
    personality_set: int | None = None  # e.g. PER_LINUX32, set before the OR below
    personality_or: int = ADDR_NO_RANDOMIZE
    # Also the one source of no-new-privileges (libseccomp's CTL_NNP, from the policy's
    # allow_new_privileges), as in Nix: with filter-syscalls=false nothing sets it.
    seccomp: SeccompPolicy | None = None
    stdin_path: str = "/dev/null"
    umask: int = 0o022
    kill_with_parent: bool = True
    builtin: BuiltinSpec | None = None  # run this in the child instead of exec'ing `builder`
    # Nix chowns the slave to the build user, who may then reopen it (echo > /dev/stderr).
    pty_owner: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchProfile:
    """What every unsandboxed build of one engine shares, applied once to the spawner.

    A spawner started with a profile takes these process attributes itself (all of them
    survive fork and execve), so an unsandboxed build whose spec asks for exactly them
    needs nothing from its child that a vfork child cannot do, and is started through
    ``subprocess`` (vfork + exec, ~0.3 ms) instead of a forked Python child (~5 ms: a
    forked interpreter copies the pages it touches, and so does the spawner after it).
    """

    seccomp: SeccompPolicy | None
    personality_or: int = ADDR_NO_RANDOMIZE
    rlimits: tuple[RLimit, ...] = DEFAULT_RLIMITS


# -- pickling ------------------------------------------------------------------------------------
#
# A spec is pickled once per build (by the engine; a prepared child reads those very bytes)
# and read once or twice.  As dataclasses, each of its ~30 objects costs Python calls both
# ways (~0.2 ms a side, more in a forked child, which copies every page it touches); as
# nested tuples of primitives the C pickler does all the work, around one small Python
# pass that turns the tree into tuples (~0.03 ms) and back (~0.07 ms, without __init__:
# the values are a spec's already).

_WIRE_CLASSES = (BuildSpec, SandboxSpec, IdMap, BindMount, SharedMount, ProcMount, TmpfsMount,
                 DevptsMount, MakeDir, WriteFile, Symlink, RLimit, SeccompRule, SeccompPolicy,
                 Credentials, BuiltinSpec)
_WIRE_TAG = {cls: tag for tag, cls in enumerate(_WIRE_CLASSES)}
# Per class, (field, kind): 0 a primitive or a tuple of them, 1 one of these classes or
# None, 2 a tuple of them.
_NESTED = {"sandbox": 1, "credentials": 1, "seccomp": 1, "builtin": 1, "uid_map": 1, "gid_map": 1,
           "rlimits": 2, "dirs": 2, "files": 2, "symlinks": 2, "mounts": 2, "rules": 2}
_WIRE_FIELDS = tuple(tuple((f.name, _NESTED.get(f.name, 0)) for f in fields(cls))
                     for cls in _WIRE_CLASSES)


def _reduce(obj):
    return (_from_wire, (_to_wire(obj),))


for _cls in _WIRE_CLASSES:  # parts pickled on their own (a pool key's) take the same path
    _cls.__reduce__ = _reduce
del _cls


def _to_wire(obj) -> tuple:
    tag = _WIRE_TAG[type(obj)]
    out = [tag]
    for name, kind in _WIRE_FIELDS[tag]:
        value = getattr(obj, name)
        if kind == 0 or value is None:
            out.append(value)
        elif kind == 1:
            out.append(_to_wire(value))
        else:
            out.append(tuple([_to_wire(v) for v in value]))
    return tuple(out)


def _from_wire(wire: tuple, _new=object.__new__, _set=object.__setattr__):
    tag = wire[0]
    obj = _new(_WIRE_CLASSES[tag])
    for (name, kind), value in zip(_WIRE_FIELDS[tag], wire[1:]):
        if kind:
            if kind == 2:
                value = tuple([_from_wire(v) for v in value])
            elif value is not None:
                value = _from_wire(value)
        _set(obj, name, value)  # frozen: as the generated __init__ does
    return obj


def same_filter(a: SeccompPolicy | None, b: SeccompPolicy | None) -> bool:
    """The two policies install the same filter (``required`` only says what a failure means)."""
    if a is None or b is None:
        return a is b
    return (a.rules, a.extra_arches, a.allow_new_privileges) == (b.rules, b.extra_arches,
                                                                  b.allow_new_privileges)


@dataclass(frozen=True, slots=True)
class ChildExited:
    """A reaped child and its raw wait status (as from ``os.waitpid``)."""

    pid: int
    status: int

    @property
    def signal(self) -> int | None:
        """The terminating signal, or None if the child exited normally."""
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None

    @property
    def exit_status(self) -> int:
        """The shell convention: the exit code, or ``128 + n`` for death by signal n."""
        if os.WIFSIGNALED(self.status):
            return 128 + os.WTERMSIG(self.status)
        return os.WEXITSTATUS(self.status)

    def describe(self) -> str:
        """Nix's statusToString wording: 'exited with code N' / 'failed due to signal N (Name)'."""
        sig = self.signal
        if sig is None:
            return f"exited with code {os.WEXITSTATUS(self.status)}"
        return f"failed due to signal {sig} ({signal.strsignal(sig)})"
