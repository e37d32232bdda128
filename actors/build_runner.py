"""The build runner: one thread that runs every builder, as Nix's `Worker::waitForInput` does.

It owns the sandbox spawner (started from its own thread, because the spawner's
PR_SET_PDEATHSIG follows the thread that forked it) and selects over the spawner's
socket, every running build's pty master and a wake-up fd for requests from other
threads.  Per build it does what the seed's DerivationGoal does around the child:
`handleChildOutput` (log size limit, `\\r` and `\\n` line splitting, `@nix` messages,
the log tail), `openLogFile`/`closeLogFile`, the `max-silent-time` and `timeout`
deadlines of `waitForInput`, and `buildDone`'s failure message.  The select timeout is
always the nearest deadline; the thread never sleeps in a loop.

A build is done when the builder was reaped *and* its log reached EOF: Nix reads the
log to EOF and only then reaps (killing the process group first, in case the builder
merely closed its output).

Actor threads never block on the runner: `run_build`, `kill` and `stop`'s request
are a deque append plus an eventfd write; results come back through `reply`, called
on the runner thread.
"""

from __future__ import annotations

import bz2
import collections
import errno
import itertools
import json
import os
import selectors
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from goalkeeper.sandbox.errors import SandboxError, SandboxSetupError
from goalkeeper.sandbox.messages import Exited, SetupFailed, Spawned, Started
from goalkeeper.sandbox.process import Spawner
from goalkeeper.sandbox.spec import BuildSpec
from goalkeeper.store.paths import StorePath
from goalkeeper.store.settings import Settings

from .derivation_goal_state import BuildExited, BuildKilled, BuildSetupFailed, BuildStarted
from .results import Status
from .start_builder import launch_profile, refill_skeletons

_READ_SIZE = 4096  # Nix reads the log 4096 bytes at a time; the log limit is checked per read
_DISK_FULL = 8 << 20  # buildDone: under 8 MiB free, a failure may be the disk's fault
_BZIP2_LEVEL = 9  # makeCompressionSink("bzip2"): BZ2_bzCompressInit(&strm, 9, 0, 30)
_LOG_FILE_MODE = 0o644  # 0666 under the umask 0022 every Nix process sets

LogLineCallback = Callable[[StorePath, str], None]
MessageCallback = Callable[[StorePath, int, str], None]


def derivation_goal_name(printed_drv_path: str, wanted_outputs: frozenset[str] = frozenset()) -> str:
    """A DerivationGoal's `getName()`: named in timeout and log-limit errors.

    `DerivedPath::Built::to_string`: the outputs sorted and comma-joined, ``*`` for all.
    """
    outputs = ",".join(sorted(wanted_outputs)) if wanted_outputs else "*"
    return f"building of '{printed_drv_path}!{outputs}' from .drv file"


def status_to_string(status: int) -> str:
    """`statusToString` of a wait status."""
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        return "succeeded" if code == 0 else f"failed with exit code {code}"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"failed due to signal {sig} ({signal.strsignal(sig)})"
    return "died abnormally"


@dataclass(eq=False, slots=True, kw_only=True)
class _Build:
    """One build, owned by the runner thread once its request is taken."""

    build_id: int
    drv_path: StorePath
    printed: str
    name: str
    spec: BuildSpec
    reply: Callable[[object], None]
    # settings, read when the build was asked for
    max_silent_time: int
    timeout: int
    max_log_size: int
    log_lines: int
    keep_log: bool
    compress_log: bool
    # the child
    start_time: int = 0
    started: bool = False  # BuildStarted was replied
    pty: int = -1
    time_started: float = 0.0
    last_output: float = 0.0
    status: int | None = None  # wait status, once reaped
    pid: int = 0
    pidfd: int = -1  # the builder, should the spawner die before it (see _spawner_died)
    eof: bool = False
    done: bool = False  # discarded: its last reply was sent (or it was killed on request)
    # the log (Nix's currentLogLine / currentLogLinePos / logTail / logSize / logSink)
    line: bytearray = field(default_factory=bytearray)
    line_pos: int = 0
    tail: collections.deque = None  # type: ignore[assignment]
    log_size: int = 0
    log_fd: int = -1
    compressor: bz2.BZ2Compressor | None = None
    # where this build's log lines and messages go (None: the runner's callbacks)
    on_log_line: Callable | None = None
    on_message: Callable | None = None


class BuildRunner:
    """One long-lived thread that owns the sandbox spawner, selects over the spawner socket
    and every build's pty master, writes build logs and enforces deadlines.

    Args:
        log_dir: the store's log dir; logs go to ``<log_dir>/drvs/XX/REST[.bz2]``.
        settings: read per build when it is asked for (log-lines, max-silent-time,
            timeout, max-build-log-size, keep-build-log, compress-build-log).
        on_log_line: called on the runner thread with each build log line (not the
            `@nix` ones), decoded with surrogateescape so the bytes can be recovered.
        on_message: called with (drv, level, text) for a builder's `@nix` "msg" and for
            "bad JSON log message from builder" (level 0, an error).
        logger_is_verbose: Nix's `logger->isVerbose()`.  nix-store's logger prints every
            log line and is verbose, so its failure messages carry no log tail; `nix build`
            and the daemon's tunnel logger are not.
    """

    def __init__(self, *, log_dir: str, settings: Settings, on_log_line: LogLineCallback | None = None,
                 on_message: MessageCallback | None = None, logger_is_verbose: bool = False):
        self._log_dir = log_dir
        self._settings = settings
        self._on_log_line = on_log_line
        self._on_message = on_message
        self._logger_is_verbose = logger_is_verbose
        self._ids = itertools.count(1)
        self._requests: collections.deque = collections.deque()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._stopped = False
        # runner thread only
        self._spawner: Spawner | None = None
        self._sel: selectors.BaseSelector | None = None
        self._builds: dict[int, _Build] = {}
        # Builds the spawner has a process for: sent, and no Exited seen yet.  A killed
        # build leaves _builds at once but stays here until the spawner has reaped it.
        self._unreaped: set[int] = set()
        self._timed: set[_Build] = set()  # running builds with a deadline
        self._running = True

    # -- the API (any thread) ------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread and, from it, the spawner; return once both run."""
        self._thread = threading.Thread(target=self._run, name="build-runner", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            raise SandboxError(f"cannot start the build spawner: {self._start_error}") from self._start_error

    def run_build(self, *, drv_path: StorePath, printed_drv_path: str, spec: BuildSpec,
                  reply: Callable[[object], None], goal_name: str | None = None,
                  settings: Settings | None = None, on_log_line: LogLineCallback | None = None,
                  on_message: MessageCallback | None = None) -> int:
        """Ask for a build; thread-safe, never blocks.  Returns its build id.

        ``reply`` is called on the runner thread with BuildStarted or BuildSetupFailed,
        then BuildExited or BuildKilled (the events of derivation_goal_state).

        Args:
            goal_name: the goal's `getName()` for timeout messages (see
                `derivation_goal_name`);
                default: all outputs wanted.
            settings: the goal's own settings (a daemon client's `timeout`, say); default:
                the runner's.
            on_log_line, on_message: this build's own (a recursive Nix build's inner builds
                report to their own worker); default: the runner's.
        """
        if self._stopped:
            raise RuntimeError("the build runner is stopped")
        s = settings if settings is not None else self._settings
        build = _Build(
            build_id=next(self._ids), drv_path=drv_path, printed=printed_drv_path,
            name=goal_name or derivation_goal_name(printed_drv_path), spec=spec, reply=reply,
            max_silent_time=s.max_silent_time, timeout=s.timeout, max_log_size=s.max_build_log_size,
            log_lines=s.log_lines, keep_log=s.keep_build_log, compress_log=s.compress_build_log,
            on_log_line=on_log_line, on_message=on_message)
        self._post(("run", build))
        return build.build_id

    def kill(self, build_id: int) -> None:
        """Kill a build's process group; thread-safe.  The build replies nothing more."""
        self._post(("kill", build_id))

    def builder_process(self, build_id: int) -> tuple[int, int] | None:
        """(spawner pid, builder pid) of a running build, or None if it has no process
        (yet, or any more); thread-safe (for recursive Nix, which joins the builder's
        namespaces while it runs)."""
        build = self._builds.get(build_id)  # one dict lookup: atomic, safe off-thread
        spawner = self._spawner
        if build is None or build.pid <= 0 or build.done or spawner is None:
            return None
        return spawner.pid, build.pid

    def stop(self) -> None:
        """Kill every build, stop the spawner and the thread (no replies follow)."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is None:
            os.close(self._wake)
            return
        self._post(("stop", None))
        self._thread.join()
        os.close(self._wake)

    def _post(self, request: tuple) -> None:
        self._requests.append(request)
        os.eventfd_write(self._wake, 1)

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._sel = selectors.DefaultSelector()
            self._sel.register(self._wake, selectors.EVENT_READ, None)
            self._start_spawner()
        except BaseException as e:
            self._start_error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while self._running:
                for key, _ in self._sel.select(self._select_timeout()):
                    build = key.data
                    if build is None:
                        self._take_requests()
                    elif build is self._spawner:
                        self._take_events()
                    elif build.pty != -1:  # not closed by an earlier key of this batch
                        self._guarded(build, self._read_log, build)
                if self._timed:
                    self._check_deadlines(time.monotonic())
        finally:
            self._shut_down()

    def _start_spawner(self) -> None:
        self._spawner = Spawner(launch_profile(self._settings))
        self._spawner.start()
        self._sel.register(self._spawner.fileno(), selectors.EVENT_READ, self._spawner)

    def _take_requests(self) -> None:
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass
        while self._requests:
            kind, arg = self._requests.popleft()
            if kind == "run":
                self._guarded(arg, self._spawn, arg)
            elif kind == "kill":
                build = self._builds.get(arg)
                if build is not None:
                    self._discard(build)
                    self._signal(build)
            else:
                self._running = False

    def _spawn(self, build: _Build) -> None:
        build.tail = collections.deque(maxlen=build.log_lines)
        build.start_time = int(time.time())  # result.startTime, set before the fork
        self._builds[build.build_id] = build
        self._unreaped.add(build.build_id)
        self._spawner.spawn(build.build_id, build.spec)
        # Nix opens the log file before it forks; here the child is set up meanwhile (a
        # new file costs an inode: ~0.1-0.5 ms).  Nothing is read from the build before
        # this returns, and should it fail, `_guarded` kills the build and fails it with
        # the same message as before.
        self._open_log_file(build)

    def _take_events(self) -> None:
        try:
            events = self._spawner.read_events()
        except SandboxError:
            self._spawner_died()
            return
        for event in events:
            if isinstance(event, Exited):
                self._unreaped.discard(event.build_id)
            build = self._builds.get(event.build_id)
            if build is None:  # killed by us, or an Exited after SetupFailed
                if isinstance(event, Spawned):
                    os.close(event.pty_master)
                continue
            self._guarded(build, self._on_event, build, event)

    def _on_event(self, build: _Build, event) -> None:
        if isinstance(event, Spawned):
            build.pty = event.pty_master
            build.pid = event.pid
            if event.pid > 0:
                try:
                    build.pidfd = os.pidfd_open(event.pid)
                except OSError:
                    pass  # already gone
            os.set_blocking(build.pty, False)
            self._sel.register(build.pty, selectors.EVENT_READ, build)
            # Worker::childStarted: timeStarted = lastOutput = now
            build.time_started = build.last_output = time.monotonic()
            if build.max_silent_time or build.timeout:
                self._timed.add(build)
        elif isinstance(event, Started):
            self._started(build)
        elif isinstance(event, SetupFailed):
            if event.step == "exec":
                # Nix reports "build environment ready" just before execve, so a builder
                # that cannot be executed is a build failing with exit code 1, its error
                # in the log.  The child exits 1 and closes the pty like any builder.
                self._started(build)
                builder = build.spec.builder.decode("utf-8", "surrogateescape")
                detail = os.strerror(event.errno) if event.errno else event.message
                self._log_output(build, f"executing '{builder}': {detail}\n".encode(errors="surrogateescape"))
                return
            self._discard(build)
            error = SandboxSetupError(event.step, event.errno, event.message)
            self._reply(build, BuildSetupFailed(message=str(error)))
        elif isinstance(event, Exited):
            build.status = event.result.status
            if build.eof:
                self._finish(build)

    def _started(self, build: _Build) -> None:
        if not build.started:
            build.started = True
            self._reply(build, BuildStarted(start_time=build.start_time))
            if build.spec.sandbox is not None:
                refill_skeletons()

    # -- the log (handleChildOutput, flushLine, handleEOF) ------------------------------------

    def _read_log(self, build: _Build) -> None:
        try:
            data = os.read(build.pty, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:  # EIO on a pty master: every slave fd is closed (EOF)
                raise
            data = b""
        if not data:
            self._log_eof(build)
            return
        build.last_output = time.monotonic()
        self._started(build)  # output means the builder runs, even if Started is still in flight
        build.log_size += len(data)
        if build.max_log_size and build.log_size > build.max_log_size:
            self._kill_build(build, Status.LogLimitExceeded,
                             f"{build.name} killed after writing more than {build.max_log_size} bytes "
                             "of log output")
            return
        self._log_output(build, data)

    def _log_output(self, build: _Build, data: bytes) -> None:
        """Split into lines: `\\r` moves back to the start of the line, `\\n` flushes it."""
        line, pos, start = build.line, build.line_pos, 0
        while True:
            nl = data.find(b"\n", start)
            segment = data[start:] if nl == -1 else data[start:nl]
            if segment:
                pieces = segment.split(b"\r") if b"\r" in segment else (segment,)
                for i, piece in enumerate(pieces):
                    if i:
                        pos = 0
                    line[pos:pos + len(piece)] = piece  # overwrite, extending past the end
                    pos += len(piece)
            if nl == -1:
                break
            self._flush_line(build, bytes(line))
            line.clear()
            pos, start = 0, nl + 1
        build.line_pos = pos
        self._write_log(build, data)  # the raw bytes, \r and @nix lines included

    def _flush_line(self, build: _Build, raw: bytes) -> None:
        if raw.startswith(b"@nix "):
            try:
                message = json.loads(raw[5:])
            except ValueError as e:
                self._message(build, 0, f"bad JSON log message from builder: {e}")
            else:
                self._structured(build, message)
                return
        text = raw.decode("utf-8", "surrogateescape")
        build.tail.append(text)
        on_log_line = build.on_log_line or self._on_log_line
        if on_log_line is not None:
            _call(on_log_line, build.drv_path, text)

    def _structured(self, build: _Build, message: object) -> None:
        """`handleJSONLogMessage`, untrusted: of what a builder may say, only "msg" reaches
        the user here; activities and phases only feed progress displays."""
        if isinstance(message, dict) and message.get("action") == "msg":
            level, text = message.get("level"), message.get("msg")
            if isinstance(level, int) and isinstance(text, str):
                self._message(build, level, text)

    def _message(self, build: _Build, level: int, text: str) -> None:
        on_message = build.on_message or self._on_message
        if on_message is not None:
            _call(on_message, build.drv_path, level, text)

    def _log_eof(self, build: _Build) -> None:
        if build.line:
            self._flush_line(build, bytes(build.line))
            build.line.clear()
        self._close_pty(build)
        build.eof = True
        self._timed.discard(build)
        if build.status is None:
            # buildDone's pid.kill(): the builder may only have closed its output; harmless
            # on one that is already exiting.
            self._signal(build)
        else:
            self._finish(build)

    # -- the log file (openLogFile, closeLogFile) ----------------------------------------------

    def _open_log_file(self, build: _Build) -> None:
        if not build.keep_log:
            return
        base = build.drv_path.base
        directory = f"{self._log_dir}/drvs/{base[:2]}"
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        except OSError as e:
            raise SandboxError(f"creating directory '{directory}': {e.strerror}") from e
        name = f"{directory}/{base[2:]}" + (".bz2" if build.compress_log else "")
        try:
            build.log_fd = os.open(name, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC,
                                   _LOG_FILE_MODE)
        except OSError as e:
            raise SandboxError(f"creating log file '{name}': {e.strerror}") from e
        if build.compress_log:
            build.compressor = bz2.BZ2Compressor(_BZIP2_LEVEL)

    def _write_log(self, build: _Build, data: bytes) -> None:
        if build.log_fd == -1:
            return
        if build.compressor is not None:
            data = build.compressor.compress(data)
        _write_all(build.log_fd, data)

    def _close_log_file(self, build: _Build) -> None:
        if build.log_fd == -1:
            return
        try:
            if build.compressor is not None:
                _write_all(build.log_fd, build.compressor.flush())
        finally:
            os.close(build.log_fd)
            build.log_fd = -1
            build.compressor = None

    # -- ending a build ------------------------------------------------------------------------

    def _finish(self, build: _Build) -> None:
        """`buildDone`: the builder was reaped and its log is at EOF."""
        self._discard(build)
        status = build.status
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            self._reply(build, BuildExited(ok=True, message="", stop_time=int(time.time())))
            return
        disk_full = _disk_nearly_full(build.spec.build_dir)
        message = f"builder for '{build.printed}' {status_to_string(status)}"
        if not self._logger_is_verbose and build.tail:
            message += f";\nlast {len(build.tail)} log lines:\n"
            message += "".join(f"> {line}\n" for line in build.tail)
            message += f"For full logs, run 'nix log {build.printed}'."
        if disk_full:
            message += "\nnote: build failure may have been caused by lack of free disk space"
        self._reply(build, BuildExited(ok=False, message=message, stop_time=int(time.time()),
                                       disk_full=disk_full))

    def _kill_build(self, build: _Build, status: Status, message: str) -> None:
        """`killChild` + `done(status)`: for timeouts and the log limit."""
        self._discard(build)
        self._signal(build)
        self._reply(build, BuildKilled(status=status, message=message))

    def _signal(self, build: _Build) -> None:
        """SIGKILL the build's process group (the spawner ignores builds it no longer has)."""
        try:
            self._spawner.kill(build.build_id)
        except OSError:
            pass  # the spawner is gone: _take_events sees its EOF and fails every build

    def _discard(self, build: _Build) -> None:
        """Forget a build: no event of it is looked at any more."""
        build.done = True
        self._builds.pop(build.build_id, None)
        self._timed.discard(build)
        self._close_pty(build)
        self._close_log_file(build)
        if build.pidfd != -1:
            os.close(build.pidfd)
            build.pidfd = -1

    def _close_pty(self, build: _Build) -> None:
        if build.pty != -1:
            self._sel.unregister(build.pty)
            os.close(build.pty)
            build.pty = -1

    def _reply(self, build: _Build, event: object) -> None:
        _call(build.reply, event)

    def _guarded(self, build: _Build, fn, *args) -> None:
        """Run one step of a build; an unexpected error fails that build, not the runner."""
        try:
            fn(*args)
        except Exception as e:
            if build.done:  # a bug after its last reply: report it, keep running
                traceback.print_exc(file=sys.stderr)
                return
            self._signal(build)
            if isinstance(e, OSError) and e.filename:
                self._fail(build, f"{e.strerror}: '{e.filename}'")  # e.g. creating the log file
            else:
                self._fail(build, str(e))

    def _fail(self, build: _Build, detail: str) -> None:
        self._discard(build)
        if build.started:
            self._reply(build, BuildExited(ok=False, stop_time=int(time.time()),
                                           message=f"builder for '{build.printed}' failed: {detail}"))
        else:
            self._reply(build, BuildSetupFailed(message=detail))

    # -- deadlines (waitForInput) --------------------------------------------------------------

    def _select_timeout(self) -> float | None:
        """Until the nearest deadline of any build, or None (wait for input only)."""
        if not self._timed:
            return None
        nearest = min(_deadline(b) for b in self._timed)
        return max(0.0, nearest - time.monotonic())

    def _check_deadlines(self, now: float) -> None:
        for build in list(self._timed):
            if build.max_silent_time and now - build.last_output >= build.max_silent_time:
                self._kill_build(build, Status.TimedOut,
                                 f"{build.name} timed out after {build.max_silent_time} seconds of silence")
            elif build.timeout and now - build.time_started >= build.timeout:
                self._kill_build(build, Status.TimedOut,
                                 f"{build.name} timed out after {build.timeout} seconds")

    # -- the spawner going away ----------------------------------------------------------------

    def _spawner_died(self) -> None:
        """Fail every build in flight and start a new spawner for the next ones."""
        self._sel.unregister(self._spawner.fileno())
        self._spawner.stop()
        self._unreaped.clear()
        for build in list(self._builds.values()):
            _kill_orphaned_builder(build)
            self._fail(build, "the build spawner exited")
        try:
            self._start_spawner()
        except Exception:
            traceback.print_exc(file=sys.stderr)
            self._running = False

    def _shut_down(self) -> None:
        # Not `not self._builds`: a build killed a moment ago is gone from there while
        # the spawner may not have read the kill yet; SIGKILLing the spawner then would
        # leave its builder (vfork-launched: no parent-death signal) running.
        idle = not self._unreaped
        for build in list(self._builds.values()):
            self._discard(build)
        if self._spawner is not None:
            # EOF: the spawner SIGKILLs every build and exits. With no build it has nothing
            # to clean up (its prepared children die with it), and may still be starting.
            self._spawner.stop(idle=idle)
        if self._sel is not None:
            self._sel.close()
        self._stopped = True


def _kill_orphaned_builder(build: _Build) -> None:
    """SIGKILL the process group of a builder whose spawner died before it.

    Builders the spawner launched directly (vfork) have no parent-death signal; the
    spawner kills them when it exits, but not when it is SIGKILLed.  The pidfd proves
    the pid is still that builder (not reused) before its group is signalled.
    """
    if build.pidfd == -1:
        return
    try:
        signal.pidfd_send_signal(build.pidfd, 0)  # ProcessLookupError once it is gone
        os.killpg(build.pid, signal.SIGKILL)
    except OSError:
        pass


def _deadline(build: _Build) -> float:
    deadlines = []
    if build.max_silent_time:
        deadlines.append(build.last_output + build.max_silent_time)
    if build.timeout:
        deadlines.append(build.time_started + build.timeout)
    return min(deadlines)


def _disk_nearly_full(path: str) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_bsize < _DISK_FULL


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _call(callback: Callable, *args) -> None:
    """Call back into the engine; its bug must not stop the runner for every other build."""
    try:
        callback(*args)
    except Exception:
        traceback.print_exc(file=sys.stderr)
