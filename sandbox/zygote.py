"""The zygote: a small process, started by the spawner, that clones its prepared children.

Making a prepared child (clone with six namespaces, id maps, the new child's first steps
competing for the CPU) held the spawner's one thread for 2-4 ms a child.  A request or a
builder's exit arriving meanwhile waited.  So the spawner starts this process once, at
its own start, and asks it for each prepared child instead; the spawner's thread only
sends a request and, later, takes the answer.

The zygote clones with CLONE_PARENT: each child is the spawner's, not the zygote's.  The
spawner reaps it and gets its exit status, the child's PR_SET_PDEATHSIG watches the
spawner, and its lifeline is the spawner's pipe -- all exactly as for a child the
spawner cloned itself (the zygote's copy of the lifeline's write end dies with it, and it
dies with the spawner: PR_SET_PDEATHSIG(SIGKILL)).  What the zygote hands back per child
(its pid, setup channel, spec socket and first mount namespace) crosses a SOCK_SEQPACKET
socket, the fds as SCM_RIGHTS with their message.

The zygote is a fresh interpreter (``python -S -E``, the spawner's sys.path given
explicitly) that imports the child's side and `cloning` only: a child exec'ing the
builder unmaps every page it shares with its maker, and this one maps ~15 MB where the
spawner maps ~19 (site, subprocess, selectors, pyseccomp).  It inherits what a child must
share with the spawner's: its seccomp filter, personality and limits (a launch profile
applied to the spawner survives exec), and is told the rest (`child.spawner_base`, the
filter in force), so a child it makes is the child the spawner would have made.
"""

from __future__ import annotations

import array
import gc
import os
import pickle
import signal
import socket
import sys
from dataclasses import dataclass

import prctl

from . import child
from .cloning import Cloner, make_prepared

# Runs before anything of ours can be imported: sys.path and the package as the spawner has
# them (without `site`, an editable install's import hook is not there).
_BOOT = ("import pickle, sys, types; args = pickle.loads(bytes.fromhex(sys.argv[1])); "
         "sys.path[:] = args['path']; package = types.ModuleType('goalkeeper'); "
         "package.__path__ = [args['package']]; sys.modules['goalkeeper'] = package; "
         "from goalkeeper.sandbox.zygote import main; main(args)")

_MAX_FDS = 3  # setup channel, spec socket, mount namespace
READY = "ready"
_MAX_REQUEST = 1 << 24  # a template spec: its env and mounts


@dataclass(frozen=True, slots=True)
class Made:
    """A prepared child the zygote cloned; its fds are now the spawner's."""

    pid: int
    setup_r: int
    spec_w: int
    mount_ns: int  # -1: none
    forked_ns: int
    spawn_ns: int


@dataclass(frozen=True, slots=True)
class NotMade:
    """The zygote could not make one (the spawner's own clone would say why)."""

    step: str
    message: str


class Zygote:
    """The spawner's handle on its zygote process."""

    def __init__(self, proc, sock: socket.socket) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.sock = sock
        self._sent_key: bytes | None = None  # the template the zygote holds
        # Its interpreter takes ~0.1 s to start: until it says so, the spawner clones.
        self.ready = False

    @classmethod
    def start(cls, lifeline: tuple[int, int], filter_in_force) -> "Zygote":
        """Start the zygote; ``lifeline``: the spawner's lifeline pipe (read, write end),
        ``filter_in_force``: the SeccompPolicy the spawner runs under, if any."""
        import subprocess  # here: the zygote itself must not import it (threading etc.)

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            base = child.spawner_base
            args = {"path": [p for p in sys.path if isinstance(p, str) and os.path.exists(p)],
                    "package": os.path.dirname(os.path.dirname(child.__file__)),
                    "sock": theirs.fileno(), "lifeline": lifeline, "spawner": os.getpid(),
                    # pickled apart: read once the package can be imported
                    "filter": pickle.dumps(filter_in_force), "personality": base.personality,
                    "rlimits": base.rlimits}
            proc = subprocess.Popen(
                [sys.executable, "-S", "-E", "-c", _BOOT, pickle.dumps(args).hex()],
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(), *lifeline), close_fds=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(proc, ours)

    def fileno(self) -> int:
        return self.sock.fileno()

    def request(self, key: bytes, spec_pickle: bytes) -> None:
        """Ask for one child prepared for ``key``; the template goes along when it changed."""
        template = spec_pickle if key != self._sent_key else None
        self.sock.sendall(pickle.dumps((key, template), protocol=pickle.HIGHEST_PROTOCOL))
        self._sent_key = key

    def receive(self) -> Made | NotMade | str | None:
        """The answer to the oldest request; None: the zygote is gone; READY: its first
        word (`ready` is set)."""
        data, ancdata, _flags, _addr = self.sock.recvmsg(
            1 << 16, socket.CMSG_SPACE(_MAX_FDS * 4))
        fds = array.array("i")
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        if not data:
            for fd in fds:
                os.close(fd)
            return None
        reply = pickle.loads(data)
        if reply[0] == READY:
            self.ready = True
            return READY
        if reply[0] == "made":
            _, pid, forked_ns, spawn_ns = reply
            mount_ns = fds[2] if len(fds) > 2 else -1
            return Made(pid=pid, setup_r=fds[0], spec_w=fds[1], mount_ns=mount_ns,
                        forked_ns=forked_ns, spawn_ns=spawn_ns)
        return NotMade(step=reply[1], message=reply[2])

    def close(self) -> None:
        """EOF: it exits.  Then SIGKILL, should it be in the middle of a clone."""
        self.sock.close()
        if self.proc.returncode is None:  # not reaped yet: the pid is still the zygote's
            self.proc.send_signal(signal.SIGKILL)

    def reaped(self, status: int) -> None:
        """The spawner reaped it (waitpid(-1)): Popen must not wait for it again."""
        self.proc.returncode = status


def main(args: dict) -> None:
    """The zygote's process (see `_BOOT`)."""
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != args["spawner"]:  # it died before PDEATHSIG was armed
        return
    lifeline_r, lifeline_w = args["lifeline"]
    for fd in (lifeline_r, lifeline_w, args["sock"]):  # pass_fds: no builder's to keep
        os.set_inheritable(fd, False)
    child.spawner_base.personality = args["personality"]
    child.spawner_base.rlimits = args["rlimits"]
    cloner = Cloner(lifeline_r, lifeline_w, pickle.loads(args["filter"]))
    sock = socket.socket(fileno=args["sock"])
    gc.freeze()  # as the spawner: children share these pages rather than copy them
    _serve(sock, lambda spec: make_prepared(cloner, spec, clone_parent=True))


def _serve(sock: socket.socket, make) -> None:
    sock.sendall(pickle.dumps((READY,)))
    templates: dict[bytes, object] = {}
    while True:
        data = sock.recv(_MAX_REQUEST)
        if not data:  # the spawner closed its end or died
            return
        key, template = pickle.loads(data)
        if template is not None:
            templates = {key: pickle.loads(template)}  # only the latest is asked for
        try:
            cloned, spec_w = make(templates[key])
        except Exception as e:  # _CloneFailed; the spawner marks the key broken
            sock.sendall(pickle.dumps(("failed", getattr(e, "step", "clone"), str(e))))
            continue
        fds = [cloned.setup_r, spec_w] + ([cloned.mount_ns] if cloned.mount_ns != -1 else [])
        try:
            socket.send_fds(sock, [pickle.dumps(("made", cloned.pid, cloned.forked_ns,
                                                 cloned.spawn_ns))], fds)
        finally:
            for fd in fds:
                os.close(fd)
