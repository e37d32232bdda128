"""The build runner: replies in order, log lines and files as Nix writes them, deadlines, kills,
and (with real Nix) the same failure messages and log files as nix-store -r."""

from __future__ import annotations

import bz2
import os
import queue
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from goalkeeper.actors.build_runner import BuildRunner, derivation_goal_name
from goalkeeper.actors.derivation_goal_state import (BuildExited, BuildKilled, BuildMode, BuildSetupFailed,
                                                     BuildStarted, KnownOutput, PathStatus)
from goalkeeper.actors.results import Status
from goalkeeper.actors.start_builder import delete_build_dir, start_builder
from goalkeeper.sandbox.seccomp import nix_policy
from goalkeeper.sandbox.spec import BuildSpec
from goalkeeper.store.local import LocalStore
from goalkeeper.store.paths import StorePath
from goalkeeper.store.settings import Settings
from goalkeeper.store.store_config import parse_store_uri

DATA = Path(__file__).parents[1] / "data" / "builder"
TIMEOUT = 10
pytestmark = pytest.mark.timeout(30)
no_nix = pytest.mark.skipif(shutil.which("nix-store") is None, reason="no nix-store")


def drv_path(n: int = 0) -> StorePath:
    return StorePath(f"{n:032d}-test.drv")


def printed(path: StorePath) -> str:
    return f"/nix/store/{path.base}"


class Build:
    """One build's replies, in order."""

    def __init__(self, runner: BuildRunner, spec: BuildSpec, n: int = 0, **kw):
        self.path = drv_path(n)
        self.replies: queue.Queue = queue.Queue()
        self.id = runner.run_build(drv_path=self.path, printed_drv_path=printed(self.path), spec=spec,
                                   reply=self.replies.put, **kw)

    def next(self, timeout: float = TIMEOUT):
        return self.replies.get(timeout=timeout)

    def outcome(self, timeout: float = TIMEOUT):
        """The reply after BuildStarted."""
        assert isinstance(self.next(timeout), BuildStarted)
        return self.next(timeout)


@pytest.fixture
def work(tmp_path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


def spec(work: Path, script: str, **kw) -> BuildSpec:
    kw.setdefault("builder", b"/bin/sh")
    kw.setdefault("argv", (b"sh", b"-c", script.encode()))
    kw.setdefault("cwd", str(work))
    return BuildSpec(env=((b"PATH", b"/usr/bin:/bin"),), build_dir=str(work), build_dir_in_sandbox=str(work),
                     seccomp=nix_policy(required=False), **kw)


@pytest.fixture
def make_runner(tmp_path):
    """make_runner(setting=value, ..., on_log_line=..., logger_is_verbose=...) -> a started runner."""
    runners = []

    def make(log_dir: Path | None = None, **kw) -> BuildRunner:
        options = {k: kw.pop(k) for k in list(kw) if k not in ("on_log_line", "on_message", "logger_is_verbose")}
        settings = Settings.load(overrides=[(k.replace("_", "-"), str(v)) for k, v in options.items()])
        runner = BuildRunner(log_dir=str(log_dir or tmp_path / "log"), settings=settings, **kw)
        runner.start()
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.stop()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, if unreaped
    except (FileNotFoundError, ProcessLookupError):  # gone, or reaped between open and read
        return False


def _wait_gone(pid_file: Path) -> None:
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(pid), "the builder survived"


def test_a_build_replies_started_then_exited(make_runner, work):
    runner = make_runner()
    before = int(time.time())
    build = Build(runner, spec(work, "echo x > out"))
    started = build.next()
    assert isinstance(started, BuildStarted) and before <= started.start_time <= time.time()
    exited = build.next()
    assert exited == BuildExited(ok=True, message="", stop_time=exited.stop_time)
    assert (work / "out").read_text() == "x\n" and build.replies.empty()


def test_failure_message_has_the_log_tail(make_runner, work):
    lines = []
    runner = make_runner(on_log_line=lambda p, line: lines.append((p, line)))
    script = ("i=0; while [ $i -lt 12 ]; do echo \"line $i\"; i=$((i+1)); done; "
              "printf 'abc\\rXY\\n'; echo '@nix {\"action\":\"setPhase\",\"phase\":\"b\"}'; printf partial; exit 3")
    build = Build(runner, spec(work, script))
    exited = build.outcome()
    p = printed(build.path)
    tail = [f"line {i}" for i in range(4, 12)] + ["XYc", "partial"]
    assert exited.message == (f"builder for '{p}' failed with exit code 3;\nlast 10 log lines:\n"
                              + "".join(f"> {line}\n" for line in tail)
                              + f"For full logs, run 'nix log {p}'.")
    assert not exited.ok and not exited.disk_full
    assert lines == [(build.path, f"line {i}") for i in range(12)] + [(build.path, "XYc"), (build.path, "partial")]


def test_log_lines_setting_and_a_verbose_logger(make_runner, work):
    runner = make_runner(log_lines=2)
    exited = Build(runner, spec(work, "echo a; echo b; echo c; kill -9 $$")).outcome()
    assert exited.message.endswith("failed due to signal 9 (Killed);\nlast 2 log lines:\n> b\n> c\n"
                                   f"For full logs, run 'nix log {printed(drv_path())}'.")
    verbose = make_runner(logger_is_verbose=True)
    exited = Build(verbose, spec(work, "echo a; exit 1")).outcome()
    assert exited.message == f"builder for '{printed(drv_path())}' failed with exit code 1"


def test_carriage_returns_rewind_the_line(make_runner, work):
    lines = []
    runner = make_runner(on_log_line=lambda p, line: lines.append(line))
    Build(runner, spec(work, "printf 'abc\\rXY\\nx\\r\\n\\r\\nlong line\\rshort\\n'; printf 'a\\rb'")).outcome()
    assert lines == ["XYc", "x", "", "shortline", "b"]


def test_nix_lines_are_messages_not_log_lines(make_runner, work, tmp_path):
    lines, messages = [], []
    runner = make_runner(on_log_line=lambda p, line: lines.append(line),
                         on_message=lambda p, level, text: messages.append((level, text)),
                         compress_build_log="false")
    script = ("echo one; echo '@nix {\"action\":\"msg\",\"level\":1,\"msg\":\"hello\"}'; "
              "echo '@nix {\"action\":\"start\",\"id\":1,\"type\":105}'; echo '@nix {bad'; echo two")
    Build(runner, spec(work, script)).outcome()
    assert lines == ["one", "@nix {bad", "two"]
    assert messages[0] == (1, "hello") and messages[1][0] == 0
    assert messages[1][1].startswith("bad JSON log message from builder: ")
    base = drv_path().base
    log = (tmp_path / "log" / "drvs" / base[:2] / base[2:]).read_bytes()
    assert log.count(b"@nix ") == 3  # the log file keeps everything, as Nix's does


def test_timeout_kills_the_build(make_runner, work):
    runner = make_runner(timeout=1)
    t0 = time.monotonic()
    build = Build(runner, spec(work, "echo $$ > pid; echo started; exec sleep 30"))
    killed = build.outcome()
    assert 1 <= time.monotonic() - t0 < 5
    assert killed == BuildKilled(status=Status.TimedOut,
                                 message=f"building of '{printed(build.path)}!*' from .drv file timed out "
                                         "after 1 seconds")
    _wait_gone(work / "pid")
    assert build.replies.empty()


def test_max_silent_time_counts_from_the_last_output(make_runner, work):
    runner = make_runner(max_silent_time=1)
    t0 = time.monotonic()
    name = derivation_goal_name(printed(drv_path()), frozenset({"out", "dev"}))
    build = Build(runner, spec(work, "echo $$ > pid; for i in 1 2 3; do echo $i; sleep 0.2; done; exec sleep 30"),
                  goal_name=name)
    killed = build.outcome()
    assert 1.35 <= time.monotonic() - t0 < 6  # the last output at 0.4 s, then 1 s of silence
    assert killed == BuildKilled(status=Status.TimedOut, message=(
        f"building of '{printed(build.path)}!dev,out' from .drv file timed out after 1 seconds of silence"))
    _wait_gone(work / "pid")


def test_log_size_limit_kills_the_build(make_runner, work):
    lines = []
    runner = make_runner(max_build_log_size=20, on_log_line=lambda p, line: lines.append(line))
    build = Build(runner, spec(work, "echo $$ > pid; echo 0123456789; sleep 0.2; echo 0123456789; exec sleep 30"))
    killed = build.outcome()
    assert killed == BuildKilled(status=Status.LogLimitExceeded, message=(
        f"building of '{printed(build.path)}!*' from .drv file killed after writing more than 20 bytes "
        "of log output"))
    assert lines == ["0123456789"]  # the read that crossed the limit is not logged
    _wait_gone(work / "pid")


def test_kill_ends_a_build_without_a_reply(make_runner, work):
    runner = make_runner()
    build = Build(runner, spec(work, "echo $$ > pid; echo started; exec sleep 30"))
    assert isinstance(build.next(), BuildStarted)
    _wait_for_pid(work / "pid")
    runner.kill(build.id)
    _wait_gone(work / "pid")
    assert Build(runner, spec(work, "true"), n=1).outcome().ok  # the runner goes on
    assert build.replies.empty()


def _wait_for_pid(pid_file: Path) -> None:
    """The builder wrote its pid: it runs the script (BuildStarted only means exec'd)."""
    deadline = time.monotonic() + 5
    while not pid_file.exists() or not pid_file.read_text().endswith("\n"):
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_stop_kills_every_build(make_runner, work):
    runner = make_runner()
    builds = [Build(runner, spec(work, f"echo $$ > pid{i}; echo started; exec sleep 30"), n=i) for i in range(3)]
    for i, build in enumerate(builds):
        assert isinstance(build.next(), BuildStarted)
        _wait_for_pid(work / f"pid{i}")
    t0 = time.monotonic()
    runner.stop()
    assert time.monotonic() - t0 < 5
    for i in range(3):
        _wait_gone(work / f"pid{i}")
    with pytest.raises(RuntimeError):
        Build(runner, spec(work, "true"))


def test_stop_right_after_a_kill_leaves_no_builder(make_runner, work):
    """The killed build is no longer the runner's, but until the spawner has read the kill
    its builder runs: stopping then must not SIGKILL the spawner as if it were idle (a
    vfork-launched builder has no parent-death signal and would outlive it)."""
    runner = make_runner()
    build = Build(runner, spec(work, "echo $$ > pid; echo started; exec sleep 30"))
    assert isinstance(build.next(), BuildStarted)
    _wait_for_pid(work / "pid")
    runner.kill(build.id)
    runner.stop()
    assert not _alive(int((work / "pid").read_text())), "the builder outlived the runner"


def test_a_dead_spawner_fails_its_builds_and_is_replaced(make_runner, work):
    runner = make_runner()
    build = Build(runner, spec(work, "echo $$ > pid; echo started; exec sleep 30"))
    assert isinstance(build.next(), BuildStarted)
    _wait_for_pid(work / "pid")
    os.kill(runner._spawner.pid, signal.SIGKILL)
    failed = build.next()
    assert failed == BuildExited(ok=False, stop_time=failed.stop_time,
                                 message=f"builder for '{printed(build.path)}' failed: the build spawner exited")
    _wait_gone(work / "pid")  # PR_SET_PDEATHSIG took the builder with it
    assert Build(runner, spec(work, "true"), n=1).outcome().ok


def test_a_setup_failure_names_the_step_and_the_stray_exit_is_dropped(make_runner, work):
    runner = make_runner()
    build = Build(runner, spec(work, "true", cwd=str(work / "missing")))
    failed = build.next()
    assert failed == BuildSetupFailed(message="while setting up the build environment: chdir: "
                                              f"No such file or directory: {work / 'missing'}")
    assert Build(runner, spec(work, "true"), n=1).outcome().ok
    assert build.replies.empty()


def test_a_builder_that_cannot_be_executed_fails_with_exit_code_1(make_runner, work):
    runner = make_runner()
    exited = Build(runner, spec(work, "", builder=b"/nonexistent/sh")).outcome()
    p = printed(drv_path())
    # Nix signals "ready" just before execve: its failure is the builder's, logged.
    assert exited == BuildExited(ok=False, stop_time=exited.stop_time, message=(
        f"builder for '{p}' failed with exit code 1;\nlast 1 log lines:\n"
        f"> executing '/nonexistent/sh': No such file or directory\nFor full logs, run 'nix log {p}'."))


def test_eof_kills_a_builder_that_closed_its_output(make_runner, work):
    runner = make_runner(logger_is_verbose=True)
    t0 = time.monotonic()
    exited = Build(runner, spec(work, "echo bye; exec >&- 2>&-; exec sleep 30")).outcome()
    assert exited.message == f"builder for '{printed(drv_path())}' failed due to signal 9 (Killed)"
    assert time.monotonic() - t0 < 5


def test_a_log_file_that_cannot_be_created_fails_the_build_and_kills_it(make_runner, work, tmp_path):
    # The log file is opened once the spawner has the request: the builder may be running.
    (tmp_path / "notadir").write_text("")
    runner = make_runner(log_dir=tmp_path / "notadir")
    pid_file = work / "pid"
    build = Build(runner, spec(work, f"echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; exec sleep 30"))
    reply = build.next()
    assert isinstance(reply, BuildSetupFailed)
    assert reply.message == f"creating directory '{tmp_path}/notadir/drvs/{build.path.base[:2]}': Not a directory"
    with pytest.raises(queue.Empty):
        build.next(timeout=0.5)
    if pid_file.exists():  # it got as far as running: it must be gone
        _wait_gone(pid_file)
    # The runner goes on with the next build (one that keeps no log).
    quiet = Settings.load(overrides=[("keep-build-log", "false")])
    assert Build(runner, spec(work, "true"), n=1, settings=quiet).outcome().ok


def test_done_waits_for_the_log_to_end(make_runner, work):
    lines = []
    runner = make_runner(on_log_line=lambda p, line: lines.append(line))
    # the builder exits at once; a background child keeps the pty open a little longer
    exited = Build(runner, spec(work, "(sleep 0.3; echo late) & echo early")).outcome()
    assert exited.ok and lines == ["early", "late"]


def test_many_builds_at_once(make_runner, work):
    lines = {}
    runner = make_runner(on_log_line=lambda p, line: lines.setdefault(p, []).append(line))
    builds = [Build(runner, spec(work, f"echo build {i}; echo {i} > out{i}"), n=i) for i in range(40)]
    for build in builds:
        assert build.outcome().ok
    for i, build in enumerate(builds):
        assert lines[build.path] == [f"build {i}"] and (work / f"out{i}").read_text() == f"{i}\n"


# -- against real Nix ------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.nix
@no_nix
@pytest.mark.timeout(60)
def test_log_file_is_read_by_nix(make_runner, work, tmp_path, compress):
    store = tmp_path / "st"
    log_dir = store / "nix" / "var" / "log" / "nix"
    runner = make_runner(log_dir=log_dir, compress_build_log=str(compress).lower())
    output = b"plain\r\nabc\rXY\n@nix {\"action\":\"msg\",\"level\":0,\"msg\":\"m\"}\n\xff\xfe bytes\nno newline"
    (work / "data").write_bytes(output)
    build = Build(runner, spec(work, "cat data"))
    assert build.outcome().ok
    base = build.path.base
    name = log_dir / "drvs" / base[:2] / (base[2:] + (".bz2" if compress else ""))
    assert (bz2.decompress(name.read_bytes()) if compress else name.read_bytes()) == output
    nix = subprocess.run(["nix-store", "--store", str(store), "--read-log", printed(build.path)],
                         capture_output=True, check=True)
    assert nix.stdout == output
    quiet = make_runner(log_dir=tmp_path / "none", keep_build_log="false")
    assert Build(quiet, spec(work, "cat data")).outcome().ok
    assert not (tmp_path / "none").exists()


class NixStore:
    """A local store (logical = real dir: sandbox = false is unsandboxed) shared with real Nix."""

    def __init__(self, tmp_path: Path):
        root = tmp_path / "s"
        for d in ("store", "var/nix", "var/log/nix", "tmp"):
            (root / d).mkdir(parents=True)
        self.tmp = root / "tmp"
        self.uri = f"local?store={root}/store&state={root}/var/nix&log={root}/var/log/nix"
        self.log_dir = root / "var/log/nix"
        self.options = ["--option", "build-users-group", "", "--option", "sandbox", "false",
                        "--option", "substituters", ""]

    def instantiate(self, attr: str) -> str:
        return subprocess.run(["nix-instantiate", "--store", self.uri, str(DATA / "fail.nix"), "-A", attr],
                              check=True, capture_output=True, text=True).stdout.strip()

    def start_nix(self, drv: str, *options: str) -> subprocess.Popen:
        return subprocess.Popen(["nix-store", "--store", self.uri, *self.options, *options, "-r", drv],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "TMPDIR": str(self.tmp)})

    @staticmethod
    def error_of(nix: subprocess.Popen) -> str:
        _, stderr = nix.communicate(timeout=30)
        assert nix.returncode != 0
        return next(line for line in stderr.split("\n") if line.startswith("error: "))[len("error: "):]

    def nix_error(self, drv: str, *options: str) -> str:
        return self.error_of(self.start_nix(drv, *options))

    def ours(self, make_runner, monkeypatch, drv_text: str, **settings):
        monkeypatch.setenv("TMPDIR", str(self.tmp))
        options = [("build-users-group", ""), ("sandbox", "false")]
        with LocalStore.open(parse_store_uri(self.uri), Settings.load(overrides=options)) as store:
            path = store.store_dir.parse(drv_text)
            drv = store.read_derivation(path)
            plan = start_builder(store, store.settings, drv=drv, drv_path=path, build_mode=BuildMode.Normal,
                                 initial_outputs={o: KnownOutput(out.path, PathStatus.ABSENT)
                                                  for o, out in drv.outputs.items()},
                                 input_paths=frozenset())
        runner = make_runner(log_dir=self.log_dir, logger_is_verbose=True, **settings)
        replies: queue.Queue = queue.Queue()
        runner.run_build(drv_path=path, printed_drv_path=drv_text, spec=plan.spec, reply=replies.put)
        assert isinstance(replies.get(timeout=TIMEOUT), BuildStarted)
        outcome = replies.get(timeout=TIMEOUT)
        delete_build_dir(plan, keep=False)
        return outcome

    def log(self, drv_text: str) -> bytes:
        base = os.path.basename(drv_text)
        return bz2.decompress((self.log_dir / "drvs" / base[:2] / (base[2:] + ".bz2")).read_bytes())


@pytest.mark.nix
@no_nix
@pytest.mark.timeout(60)
@pytest.mark.parametrize("attr", ["exit3", "killed", "closes"])
def test_failure_messages_and_logs_are_nixs(make_runner, tmp_path, monkeypatch, attr):
    s = NixStore(tmp_path)
    drv = s.instantiate(attr)
    ours = s.ours(make_runner, monkeypatch, drv)
    our_log = s.log(drv)
    assert isinstance(ours, BuildExited) and not ours.ok
    assert ours.message == s.nix_error(drv)
    assert our_log == s.log(drv)


@pytest.mark.nix
@no_nix
@pytest.mark.timeout(60)
@pytest.mark.parametrize("attr, setting, status", [("silent", "max-silent-time", Status.TimedOut),
                                                   ("silent", "timeout", Status.TimedOut),
                                                   ("chatty", "max-build-log-size", Status.LogLimitExceeded)])
def test_kill_messages_are_nixs(make_runner, tmp_path, monkeypatch, attr, setting, status):
    s = NixStore(tmp_path)
    drv = s.instantiate(attr)
    value = "20" if setting == "max-build-log-size" else "1"
    nix = s.start_nix(drv, "--option", setting, value)  # both wait out the deadline at once
    ours = s.ours(make_runner, monkeypatch, drv, **{setting.replace("-", "_"): value})
    assert ours == BuildKilled(status=status, message=s.error_of(nix))
