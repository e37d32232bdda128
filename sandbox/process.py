"""The engine's handle on the spawner process.

The engine must never fork (it has threads), so it starts one spawner and talks to it
through a socketpair.  Nothing here blocks except ``wait_event`` (for tests and simple
callers) and ``stop``: an actor registers ``fileno()`` with its selector and calls
``read_events()`` when it is readable.

Use from one thread at a time.  ``start`` must run on a thread that lives as long as the
spawner should: the spawner's PR_SET_PDEATHSIG fires when the *thread* that forked it exits.
"""

from __future__ import annotations

import array
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import time

from .errors import SandboxError
from .messages import Event, FrameDecoder, Kill, Spawn, Spawned, encode
from .spec import BuildSpec, LaunchProfile

_MAX_FDS_PER_READ = 64


class Spawner:
    """Client of ``python -m goalkeeper.sandbox.spawner``."""

    def __init__(self, profile: LaunchProfile | None = None) -> None:
        """``profile``: what every unsandboxed build shares (see `LaunchProfile`)."""
        self._profile = profile
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._decoder = FrameDecoder()
        self._fds: list[int] = []  # received pty masters not yet matched to a Spawned

    def start(self) -> None:
        """Start the spawner process."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            argv = [sys.executable, "-m", "goalkeeper.sandbox.spawner", str(os.getpid()),
                    str(theirs.fileno())]
            if self._profile is not None:
                argv.append(pickle.dumps(self._profile).hex())
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), close_fds=True)
        finally:
            theirs.close()
        self._sock = ours

    @property
    def pid(self) -> int:
        return self._proc.pid

    def fileno(self) -> int:
        """Readable when events are waiting (for selectors)."""
        return self._sock.fileno()

    def spawn(self, build_id: int, spec: BuildSpec) -> None:
        """Ask for a build to be started; the answer comes as events for ``build_id``.

        Events: ``Spawned`` (carries the pty master, which the caller now owns and must
        close), then ``Started`` or ``SetupFailed``, then ``Exited``.
        """
        self._sock.sendall(encode(Spawn(build_id=build_id, spec=spec)))

    def kill(self, build_id: int, sig: int = signal.SIGKILL) -> None:
        """Signal the build's whole process group."""
        self._sock.sendall(encode(Kill(build_id=build_id, signal=sig)))

    def read_events(self) -> list[Event]:
        """Every event already received, without blocking."""
        events: list[Event] = []
        while True:
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(
                    1 << 16, socket.CMSG_SPACE(_MAX_FDS_PER_READ * 4), socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    self._fds.extend(fds)
            if not data:
                raise SandboxError("the spawner exited")
            self._decoder.feed(data)
            for event in self._decoder.frames():
                if isinstance(event, Spawned):
                    event = Spawned(build_id=event.build_id, pid=event.pid,
                                    pty_master=self._fds.pop(0))
                events.append(event)
        return events

    def wait_event(self, timeout: float) -> list[Event]:
        """Block up to ``timeout`` seconds for at least one event."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.read_events()
            if events:
                return events
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no event from the spawner")
            select.select([self._sock], [], [], remaining)

    def stop(self, timeout: float = 5.0, *, idle: bool = False) -> None:
        """Stop the spawner and, with it, every build: EOF, then SIGTERM, then SIGKILL.

        `idle`: no build was started or all have ended, so there is nothing for it to
        kill: SIGKILL at once rather than wait for a spawner still starting up to read
        the EOF (~0.1 s of every short-lived engine's close).
        """
        if self._sock is not None:
            self._sock.close()  # EOF: the spawner SIGKILLs its builds and exits
            self._sock = None
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        if self._proc is None:
            return
        for sig in ((signal.SIGKILL,) if idle else (None, signal.SIGTERM, signal.SIGKILL)):
            if sig is not None:
                self._proc.send_signal(sig)
            if _wait_exit(self._proc, timeout):
                break
        self._proc = None

    def __enter__(self) -> "Spawner":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _wait_exit(proc: subprocess.Popen, timeout: float) -> bool:
    """Reap `proc` if it exits within `timeout`; whether it did.

    Popen.wait(timeout) polls with sleeps growing to 50 ms, so a spawner that takes
    20 ms to exit cost up to twice that at every engine close; a pidfd says at once.
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # reaped already, or no pidfd: Popen's own wait
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if not ready:
        return False
    proc.wait()
    return True
