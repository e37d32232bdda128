"""The zygote: a process forked from the spawner that clones its prepared children.

Making a prepared child (clone with six namespaces, id maps, the new child's first steps
competing for the CPU) held the spawner's one thread for 2-4 ms a child.  A request or a
builder's exit arriving meanwhile waited.  So the spawner forks this process once, at its
start (single-threaded, before it installs any handler or opens any build's fd), and
asks it for each prepared child instead; the spawner's thread only sends a request and,
later, takes the answer.

The zygote clones with CLONE_PARENT: each child is the spawner's, not the zygote's.  The
spawner reaps it and gets its exit status, the child's PR_SET_PDEATHSIG watches the
spawner, and its lifeline is the spawner's pipe -- all exactly as for a child the
spawner cloned itself (the zygote's copy of the lifeline's write end dies with it, and it
dies with the spawner: PR_SET_PDEATHSIG(SIGKILL)).  What the zygote hands back per child
(its pid, setup channel, spec socket and first mount namespace) crosses a SOCK_SEQPACKET
socket, the fds as SCM_RIGHTS with their message.

The zygote is a fork of the spawner, not a fresh interpreter: it shares the spawner's
pages, its seccomp filter and launch profile (`child.spawner_base`), so a child it makes
is the child the spawner would have made.
"""

from __future__ import annotations

import array
import os
import pickle
import signal
import socket
from dataclasses import dataclass
from typing import Callable

import prctl

from . import child

_MAX_FDS = 3  # setup channel, spec socket, mount namespace
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

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self._sent_key: bytes | None = None  # the template the zygote holds

    @classmethod
    def start(cls, make: Callable, keep_fds: tuple[int, ...]) -> "Zygote":
        """Fork the zygote.  ``make(spec)`` returns (cloned, spec_w) or raises, naming
        the step (the spawner's own clone of a prepared child, run in the zygote);
        ``keep_fds``: the spawner's fds a child needs (the lifeline's two ends)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        spawner = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                _serve(theirs, make, spawner, keep_fds)
            finally:
                os._exit(0)
        theirs.close()
        return cls(pid, ours)

    def fileno(self) -> int:
        return self.sock.fileno()

    def request(self, key: bytes, spec_pickle: bytes) -> None:
        """Ask for one child prepared for ``key``; the template goes along when it changed."""
        template = spec_pickle if key != self._sent_key else None
        self.sock.sendall(pickle.dumps((key, template), protocol=pickle.HIGHEST_PROTOCOL))
        self._sent_key = key

    def receive(self) -> Made | NotMade | None:
        """The answer to the oldest request; None: the zygote is gone."""
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
        if reply[0] == "made":
            _, pid, forked_ns, spawn_ns = reply
            mount_ns = fds[2] if len(fds) > 2 else -1
            return Made(pid=pid, setup_r=fds[0], spec_w=fds[1], mount_ns=mount_ns,
                        forked_ns=forked_ns, spawn_ns=spawn_ns)
        return NotMade(step=reply[1], message=reply[2])

    def close(self) -> None:
        """EOF: it exits.  Then SIGKILL, should it be in the middle of a clone."""
        self.sock.close()
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _serve(sock: socket.socket, make: Callable, spawner: int, keep_fds: tuple[int, ...]) -> None:
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != spawner:  # it died before PDEATHSIG was armed
        return
    # Forked before the spawner's loop opened anything of a build; still, nothing of it
    # but the lifeline may live on here (the engine's socket above all: the engine must
    # see EOF when the spawner dies).
    child._close_fds_except(sorted({0, 1, 2, sock.fileno(), *keep_fds}))
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
