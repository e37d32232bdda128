"""The spawner: a single-threaded process that forks one child per build.

The engine has threads (Pykka actors), and fork() in a threaded process leaves the child
with locks held by threads that no longer exist.  So the engine starts this process once
(``process.Spawner``) and sends it ``Spawn``/``Kill`` requests over a socketpair; having no
threads, it can fork (or clone) and run Python in the child safely.

Per build: open the pty first (before any namespace work, as Nix does: a devpts opened
after CLONE_NEWUSER would belong to the wrong namespace), fork or clone the child, write
its uid_map/setgroups/gid_map from outside (a process cannot map itself to root-owned
ids), release it through the sync pipe, send the pty master back to the engine with
SCM_RIGHTS, then watch the child's setup channel (EOF = exec succeeded) and reap it.

Sandboxed children are made with a raw clone(CLONE_NEWUSER|CLONE_NEWPID|...), so the child
is pid 1 of its pid namespace directly and a direct child of the spawner (one process per
build, and its wait status is the builder's).  Unsandboxed children use os.fork().

Sandboxes are prepared ahead: whenever it has nothing else to do (no request waiting, no
build's child still setting up, and no builder running while the pool holds a child for
each one running), the spawner keeps `POOL_SIZE` children cloned for the last sandboxed
spec's namespaces, id maps and filter
(``child.pool_key``), each waiting for its build's spec (and pty) on a socket after doing
everything that does not depend on the build.  A matching build takes one, so
what is left between request and exec is the chroot and the exec itself.  The clones are
made by the zygote (``zygote.py``), a process forked from this one at its start, so that
they do not hold this thread; they are still our children (CLONE_PARENT).

Lifetime: the spawner dies with the engine (PR_SET_PDEATHSIG(SIGTERM) plus a re-check of
the parent pid, and EOF on the socket); before exiting it SIGKILLs every build's process
group.  Builds hold a lifeline pipe to the spawner and PR_SET_PDEATHSIG(SIGKILL).
"""

from __future__ import annotations

import array
import errno
import gc
import os
import selectors
import signal
import resource
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import prctl

from . import _linux, child, direct_launch
from .messages import (Exited, FrameDecoder, Kill, SetupFailed, Spawned, SpawnRequest, Started,
                       encode)
from .seccomp import compile_policy
from .cloning import Cloned, CloneFailed, Cloner, kill_group, make_prepared
from .spec import BuildSpec, ChildExited, LaunchProfile
from .terminal import give_pty, open_pty
from .zygote import READY, Made, Zygote

POOL_SIZE = 2  # prepared sandboxes kept ready (see _refill); -j 2 takes two at once


@dataclass(slots=True)
class _Child:
    build_id: int
    pid: int
    forked_ns: int
    spawn_ns: int
    setup_r: int  # -1 once the setup outcome has been reported
    mount_ns: int = -1  # the child's first mount namespace, held until it is reaped
    report: bytearray = field(default_factory=bytearray)
    popen: subprocess.Popen | None = None  # a directly launched builder (see _launch)
    prepared: bool = False  # taken from the pool


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A pooled child, prepared for ``key`` and waiting for a spec on ``spec_sock``."""

    cloned: Cloned  # its master is -1: the pty is opened at hand-over
    spec_sock: socket.socket
    key: tuple


class SpawnerLoop:
    """The select loop.  One instance per spawner process."""

    def __init__(self, sock: socket.socket, profile: LaunchProfile | None = None,
                 filter_in_force=None, pool_size: int = POOL_SIZE) -> None:
        self._profile = profile  # applied to this process (see apply_profile); None: not
        self._filter_in_force = filter_in_force  # the SeccompPolicy we run under, if any
        self._sock = sock
        self._sock.setblocking(False)
        self._decoder = FrameDecoder()
        self._outbox: list[tuple[bytes, list[int]]] = []  # frames + fds not yet sent
        self._children: dict[int, _Child] = {}  # by pid
        self._by_build: dict[int, int] = {}  # build_id -> pid
        # The children inherit the read end; only we hold the write end.
        self._lifeline_r, self._lifeline_w = os.pipe2(os.O_CLOEXEC)
        self._cloner = Cloner(self._lifeline_r, self._lifeline_w, filter_in_force)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._sock, selectors.EVENT_READ, "sock")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._running = True
        self._pool_size = pool_size
        self._pool: dict[int, _Prepared] = {}  # prepared children by pid, oldest first
        self._template: BuildSpec | None = None  # what refills prepare for
        self._template_key = None
        self._template_pickle = b""
        self._pool_broken: set = set()  # keys whose children failed to prepare
        self._zygote: Zygote | None = None  # makes the pool's children (zygote.py)
        self._zygote_pending: list = []  # keys asked of it, oldest first
        self._reaped_unclaimed: set[int] = set()  # its children reaped before it named them

    # -- main loop ---------------------------------------------------------------------

    def run(self) -> None:
        self._start_zygote()
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wake the selector via the fd
        signal.signal(signal.SIGTERM, lambda *_: self._stop())
        try:
            while self._running:
                # Prepare sandboxes only while nothing else is waiting: requests first.
                refill = self._wants_refill()
                ready = self._sel.select(0 if refill else None)
                if refill and not ready:
                    self._refill()
                    continue
                for key, mask in ready:
                    tag = key.data
                    if tag == "sock":
                        if mask & selectors.EVENT_READ:
                            self._read_requests()
                        if mask & selectors.EVENT_WRITE:
                            self._flush()
                    elif tag == "wake":
                        _drain(self._wake_r)
                        self._reap()
                    elif tag == "zygote":
                        self._zygote_replied()
                    else:
                        self._read_setup(tag)
        finally:
            self._kill_all()

    def _stop(self) -> None:
        self._running = False

    def _read_requests(self) -> None:
        try:
            data = self._sock.recv(1 << 16)
        except BlockingIOError:
            return
        except ConnectionResetError:
            data = b""
        if not data:  # the engine closed its end or died
            self._running = False
            return
        self._decoder.feed(data)
        for request in self._decoder.frames():
            if isinstance(request, SpawnRequest):
                self._spawn(request)
            elif isinstance(request, Kill):
                self._kill(request.build_id, request.signal)
            else:
                raise TypeError(f"unexpected request {request!r}")

    # -- events out ----------------------------------------------------------------------

    def _send(self, event, fds: list[int] = ()) -> None:
        self._outbox.append((encode(event), list(fds)))
        self._flush()

    def _flush(self) -> None:
        while self._outbox:
            data, fds = self._outbox[0]
            try:
                if fds:
                    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    sent = self._sock.sendmsg([data], ancillary)
                    for fd in fds:  # the engine has its own copies now
                        os.close(fd)
                else:
                    sent = self._sock.send(data)
            except BlockingIOError:
                break
            except (BrokenPipeError, ConnectionResetError):
                self._running = False
                self._outbox.clear()
                return
            if sent < len(data):
                self._outbox[0] = (data[sent:], [])
            else:
                self._outbox.pop(0)
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._outbox else 0)
        self._sel.modify(self._sock, events, "sock")

    # -- spawning ----------------------------------------------------------------------

    def _spawn(self, request: SpawnRequest) -> None:
        build_id, key = request.build_id, request.pool_key
        if key is not None:  # sandboxed: a prepared child may take it as it came
            if key != self._template_key:
                self._learn_template(request.spec(), key, request.spec_pickle)
            try:
                if self._hand_over(build_id, request.spec_pickle, key, request.pty_owner):
                    return
            except CloneFailed as e:  # no pty left
                self._clone_failed(build_id, e)
                return
        spec = request.spec()
        if direct_launch.launches_directly(spec, self._profile, self._filter_in_force):
            self._launch(build_id, spec)
            return
        try:
            cloned = self._cloner.clone(spec, lambda fds, f: child.run(spec, fds, f))
        except CloneFailed as e:
            self._clone_failed(build_id, e)
            return
        self._adopt(build_id, cloned)

    def _clone_failed(self, build_id: int, failure: CloneFailed) -> None:
        e = failure.error
        if isinstance(e, OSError):
            err, message = e.errno or 0, e.strerror or str(e)
            if failure.pid is not None and e.filename:
                message += f": {e.filename}"
        else:
            err, message = 0, f"{type(e).__name__}: {e}"
        self._send(SetupFailed(build_id=build_id, step=failure.step, errno=err, message=message))
        if failure.pid is not None:
            # Still reaped (and reported as Exited) by _reap.
            self._children[failure.pid] = _Child(build_id=build_id, pid=failure.pid,
                                                 forked_ns=0, spawn_ns=0, setup_r=-1)
            self._by_build[build_id] = failure.pid

    def _adopt(self, build_id: int, cloned: Cloned, prepared: bool = False) -> None:
        """The child now runs ``build_id``: watch its setup channel, give the engine its pty."""
        c = _Child(build_id=build_id, pid=cloned.pid, forked_ns=cloned.forked_ns,
                   spawn_ns=cloned.spawn_ns, setup_r=cloned.setup_r, mount_ns=cloned.mount_ns,
                   prepared=prepared)
        self._children[c.pid] = c
        self._by_build[build_id] = c.pid
        os.set_blocking(c.setup_r, False)
        self._sel.register(c.setup_r, selectors.EVENT_READ, c.pid)
        self._send(Spawned(build_id=build_id, pid=c.pid), [cloned.master])

    # -- the pool of prepared sandboxes ----------------------------------------------------
    #
    # Creating the namespaces, writing the id maps and the child's first steps cost 3-4 ms
    # of spawner time and as much in the child (a forked interpreter copies every page it
    # touches).  None of it depends on the build, only on `child.pool_key`, so between
    # requests the spawner clones up to `pool_size` children for the last poolable spec
    # (the template); each prepares itself (`child.run_prepared`) and then waits for its
    # spec on a pipe.  A build whose key matches takes one: spec in, chroot, exec.

    def _learn_template(self, spec: BuildSpec, key, spec_pickle: bytes) -> None:
        for pid in [pid for pid, p in self._pool.items() if p.key != key]:
            self._discard(pid)
        self._template, self._template_key, self._template_pickle = spec, key, spec_pickle

    def _wants_refill(self) -> bool:
        if (self._template_key is None or self._template_key in self._pool_broken
                or len(self._pool) + len(self._zygote_pending) >= self._pool_size):
            return False
        # Not while a build's child is still setting up: on a small machine the clone and
        # the new child's preparation would take the CPU that build's setup is waiting for.
        if any(c.setup_r != -1 for c in self._children.values()):
            return False
        # Nor while builders run, as long as the pool holds a child for each of them: the
        # clone keeps this thread ~2 ms, and a builder exiting meanwhile is reaped -- and
        # its build goes on -- only after that.  A chain of builds refills between one
        # builder's exit and the next request (the engine registers outputs meanwhile);
        # builds side by side (-j N) empty the pool, and it is refilled at once.
        return not self._children or len(self._pool) < len(self._children)

    def _refill(self) -> None:
        """Have one prepared child cloned for the template: by the zygote, or here."""
        key = self._template_key
        if self._zygote is not None and self._zygote.ready:
            try:
                self._zygote.request(key, self._template_pickle)
            except OSError as e:
                if e.errno != errno.EMSGSIZE:  # (a template too big for one message: here)
                    self._zygote_gone()
            else:
                self._zygote_pending.append(key)
                return
        try:
            cloned, spec_w = make_prepared(self._cloner, self._template)
        except CloneFailed:
            # A direct clone for the next build will fail the same way and say why.
            self._pool_broken.add(key)
            return
        self._pool[cloned.pid] = _Prepared(cloned=cloned, spec_sock=socket.socket(fileno=spec_w),
                                           key=key)

    # -- the zygote (zygote.py) ------------------------------------------------------------

    def _start_zygote(self) -> None:
        if self._pool_size <= 0:
            return
        try:
            self._zygote = Zygote.start((self._lifeline_r, self._lifeline_w),
                                        self._filter_in_force)
        except OSError:  # no process left: we clone the pool's children ourselves
            return
        self._sel.register(self._zygote.fileno(), selectors.EVENT_READ, "zygote")

    def _zygote_replied(self) -> None:
        try:
            reply = self._zygote.receive()
        except OSError:
            reply = None
        if reply is None:
            self._zygote_gone()
            return
        if reply == READY:  # from now on it makes the pool's children
            return
        key = self._zygote_pending.pop(0)
        if not self._zygote_pending:
            # Every child it made is named now (or was killed when it failed): a pid
            # reaped before its name came is one of these, or none of its.
            unclaimed, self._reaped_unclaimed = self._reaped_unclaimed, set()
        else:
            unclaimed = self._reaped_unclaimed
        if not isinstance(reply, Made):
            self._pool_broken.add(key)  # a direct clone will say why
            return
        cloned = Cloned(pid=reply.pid, master=-1, setup_r=reply.setup_r,
                         mount_ns=reply.mount_ns, forked_ns=reply.forked_ns,
                         spawn_ns=reply.spawn_ns)
        p = _Prepared(cloned=cloned, spec_sock=socket.socket(fileno=reply.spec_w), key=key)
        self._pool[p.cloned.pid] = p
        if reply.pid in unclaimed:  # died preparing, before we knew it
            unclaimed.discard(reply.pid)
            self._pooled_exited(reply.pid)
        elif key != self._template_key:  # asked for before the template changed
            self._discard(reply.pid)

    def _zygote_gone(self) -> None:
        """It died (or its socket failed): clone the pool's children here from now on."""
        if self._zygote is None:
            return
        self._sel.unregister(self._zygote.fileno())
        self._zygote.close()  # reaped as any child of ours (_reaped)
        self._zygote = None
        self._zygote_pending.clear()

    def _hand_over(self, build_id: int, spec_pickle: bytes, key: bytes,
                   pty_owner: int | None) -> bool:
        """Give the build (its spec as the engine pickled it) to a prepared child; False if
        none is ready."""
        pid = next((pid for pid, p in self._pool.items() if p.key == key), None)
        if pid is None:
            return False
        t0 = time.perf_counter_ns()
        p = self._pool.pop(pid)
        master = slave = -1
        sent = 0
        step = "openpty"
        try:
            master, slave = open_pty()
            if pty_owner is not None:
                step = "pty-owner"
                give_pty(slave, pty_owner)
            data = child.spec_frame(spec_pickle)
            # Blocking: the child is waiting in recvmsg, so a spec beyond the socket
            # buffer still goes through.  Once it has the whole spec it may close its end
            # at once, and even an empty send would then fail (EPIPE).
            sent = socket.send_fds(p.spec_sock, [data], [slave])
            if sent < len(data):
                p.spec_sock.sendall(data[sent:])
        except OSError as e:
            if sent:
                # It has the start of the spec: the build is its own (no second child may
                # populate the same chroot); it is killed and reaped as the build's.
                os.close(master)
                os.close(slave)
                self._close_prepared(p)
                kill_group(pid, signal.SIGKILL)
                raise CloneFailed("spec", e, pid) from e
            for fd in (master, slave):
                if fd != -1:
                    os.close(fd)
            self._close_prepared(p)
            kill_group(pid, signal.SIGKILL)
            if e.errno in (errno.EPIPE, errno.ECONNRESET):  # it died meanwhile (reaped later)
                return False
            raise CloneFailed(step, e) from e
        finally:
            p.spec_sock.close()
        os.close(slave)
        now = time.perf_counter_ns()
        cloned = p.cloned
        self._adopt(build_id, Cloned(pid=pid, master=master, setup_r=cloned.setup_r,
                                      mount_ns=cloned.mount_ns, forked_ns=now,
                                      spawn_ns=now - t0), prepared=True)
        return True

    def _discard(self, pid: int) -> None:
        p = self._pool.pop(pid)
        p.spec_sock.close()
        self._close_prepared(p)
        kill_group(pid, signal.SIGKILL)

    @staticmethod
    def _close_prepared(p: _Prepared) -> None:
        for fd in (p.cloned.setup_r, p.cloned.mount_ns):
            if fd != -1:
                os.close(fd)

    def _pooled_exited(self, pid: int) -> None:
        """A prepared child died before any build took it: its preparation failed."""
        p = self._pool.pop(pid)
        p.spec_sock.close()
        self._close_prepared(p)
        self._pool_broken.add(p.key)  # a direct clone will report the failing step

    def _launch(self, build_id: int, spec: BuildSpec) -> None:
        """An unsandboxed build without a forked child (see direct_launch.py)."""
        t0 = time.perf_counter_ns()
        try:
            master, proc = direct_launch.launch(spec)
        except direct_launch.LaunchFailed as e:
            failed = SetupFailed(build_id=build_id, step=e.step, errno=e.errno, message=e.message)
            if not e.execed:
                self._send(failed)
                return
            # As a forked child's failed execve looks: the build started, said why on
            # setup, exited 1, and its pty reads EOF (subprocess reaped that child).
            self._send(Spawned(build_id=build_id, pid=0), [e.master])
            self._send(failed)
            self._send(Exited(build_id=build_id, result=ChildExited(0, 1 << 8)))
            return
        spawn_ns = time.perf_counter_ns() - t0
        c = _Child(build_id=build_id, pid=proc.pid, forked_ns=0, spawn_ns=spawn_ns, setup_r=-1,
                   popen=proc)
        self._children[proc.pid] = c
        self._by_build[build_id] = proc.pid
        self._send(Spawned(build_id=build_id, pid=proc.pid), [master])
        # subprocess returned: the builder has been exec'd (an exec failure raised above)
        self._send(Started(build_id=build_id, pid=proc.pid, spawn_ns=spawn_ns, setup_ns=0))

    def _read_setup(self, pid: int) -> None:
        c = self._children.get(pid)
        if c is None or c.setup_r == -1:  # reaped earlier in this batch of events
            return
        try:
            data = os.read(c.setup_r, 4096)
        except BlockingIOError:
            return
        if data:
            c.report += data
            return
        self._finish_setup(c)

    def _finish_setup(self, c: _Child) -> None:
        self._sel.unregister(c.setup_r)
        os.close(c.setup_r)
        c.setup_r = -1
        if c.report:
            step, err, message = child.decode_failure(bytes(c.report))
            self._send(SetupFailed(build_id=c.build_id, step=step, errno=err, message=message))
        else:
            self._send(Started(build_id=c.build_id, pid=c.pid, spawn_ns=c.spawn_ns,
                               setup_ns=time.perf_counter_ns() - c.forked_ns,
                               prepared=c.prepared))

    # -- killing and reaping -------------------------------------------------------------

    def _kill(self, build_id: int, sig: int) -> None:
        pid = self._by_build.get(build_id)
        if pid is not None:
            kill_group(pid, sig)

    def _reap(self) -> None:
        while self._children or self._pool or self._zygote is not None or self._zygote_pending:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._reaped(pid, status)

    def _reaped(self, pid: int, status: int) -> None:
        c = self._children.pop(pid, None)
        if c is None:
            if pid in self._pool:
                self._pooled_exited(pid)
            elif self._zygote is not None and pid == self._zygote.pid:
                self._zygote.reaped(status)
                self._zygote_gone()
            elif self._zygote_pending:  # a child the zygote made and has yet to name
                self._reaped_unclaimed.add(pid)
            return
        if c.setup_r != -1:
            # Dead before we saw its setup channel close: whatever it wrote is all there
            # is (no other process holds the O_CLOEXEC write end).
            os.set_blocking(c.setup_r, True)
            while chunk := os.read(c.setup_r, 4096):
                c.report += chunk
            self._finish_setup(c)
        del self._by_build[c.build_id]
        if c.popen is not None:
            c.popen.returncode = status  # reaped by us: its __del__ must not wait for it
        self._send(Exited(build_id=c.build_id, result=ChildExited(pid, status)))
        if c.mount_ns != -1:
            # After the event: the last reference to a mount namespace unmounts its whole
            # tree, waiting for an RCU grace period (~0.2 ms, up to 2 ms seen here).
            os.close(c.mount_ns)

    def _kill_all(self) -> None:
        if self._zygote is not None:
            self._zygote.close()
        for pid in list(self._pool):
            self._discard(pid)
        for pid in list(self._children):
            kill_group(pid, signal.SIGKILL)
        for pid in list(self._children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def apply_profile(profile: LaunchProfile):
    """Take the profile's attributes ourselves; (profile or None if unusable, filter in force)."""
    child.spawner_base.personality = _linux.personality(0xFFFFFFFF)
    child.spawner_base.rlimits = tuple((limit.resource, resource.getrlimit(limit.resource))
                                       for limit in profile.rlimits)
    try:
        for limit in profile.rlimits:
            resource.setrlimit(limit.resource, (limit.soft, limit.hard))
        _linux.personality(child.spawner_base.personality | profile.personality_or)
    except (OSError, ValueError):
        # Not ours to take (an unprivileged caller raising a hard limit): forked children
        # apply their specs one by one, and report the failing step as before.
        for res, limits in child.spawner_base.rlimits:
            resource.setrlimit(res, limits)
        _linux.personality(child.spawner_base.personality)
        return None, None
    if profile.seccomp is None:
        return profile, None
    try:
        compile_policy(profile.seccomp).load()
    except OSError:
        # Children would fail to load it too: a required filter makes them report that,
        # an optional one is skipped by them and by us alike.
        return (None if profile.seccomp.required else profile), None
    return profile, profile.seccomp


def main(argv: list[str]) -> int:
    """``python -m goalkeeper.sandbox.spawner ENGINE_PID SOCKET_FD [PROFILE_HEX]``.

    PROFILE_HEX: a pickled `LaunchProfile`, hex-encoded (from our own engine only).
    """
    engine_pid, sock_fd = int(argv[1]), int(argv[2])
    # Die with the engine.  PDEATHSIG fires when the engine *thread* that forked us exits,
    # so the engine must start us from a long-lived thread; SIGTERM lets us kill builds.
    prctl.set_pdeathsig(signal.SIGTERM)
    if os.getppid() != engine_pid:  # it died before PDEATHSIG was armed
        return 1
    # Inherited through pass_fds; like every other fd of ours, exec must drop it (the
    # child also closes it in close-fds, but no builder should ever hold the channel).
    os.set_inheritable(sock_fd, False)
    sock = socket.socket(fileno=sock_fd)
    # Everything imported so far lives as long as we do: keep it out of the collector,
    # so forked children share those pages instead of copying them (gc.freeze's purpose).
    profile, filter_in_force = None, None
    if len(argv) > 3:
        import pickle
        profile, filter_in_force = apply_profile(pickle.loads(bytes.fromhex(argv[3])))
    gc.freeze()
    SpawnerLoop(sock, profile, filter_in_force).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
