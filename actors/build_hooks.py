"""The post-build hook and the diff hook, run off every actor thread.

Nix 2.8 runs both synchronously inside `buildDone`, so a slow hook holds up every
other build of the worker.  Here they run on a small thread pool: the goal asks
for a hook, carries on with nothing (its build slot is already free, as after Nix's
`childTerminated`), and continues when the pool tells it the hook ended.  Each hook
is a plain `subprocess` (vfork + exec, no Python after the fork), so running it from
a thread of this multi-threaded process is safe.

What they print is returned as messages for the user, in Nix's words:
- post-build-hook: the activity "running post-build-hook '…'...", then each line of
  the hook's merged stdout/stderr as "post-build-hook: LINE"; a last line without a
  newline keeps one (Nix's LogSink destructor), which prints as an empty line after it.
  A failing hook is an error that ends the run: "program '…' failed with exit code N".
- diff-hook: its chomped stdout as one message; a failure is logged as
  "diff hook execution failed: diff-hook program '…' …" and is otherwise ignored.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .build_runner import status_to_string

_MAX_HOOKS = 4  # hooks running at once; more wait in the pool's queue, builds do not
_pool: ThreadPoolExecutor | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HookOutcome:
    """What a hook printed (messages for the user, in order) and, if it failed fatally, why."""

    messages: tuple[str, ...] = ()
    error: str | None = None  # the post-build hook failed: Nix's ExecError text


@dataclass(frozen=True, slots=True, kw_only=True)
class DiffHookRequest:
    """`handleDiffHook(uid, gid, tryA, tryB, drvPath, tmpDir)`."""

    try_a: str
    try_b: str
    drv_path: str
    tmp_dir: str
    uid: int
    gid: int


def submit(job: Callable[[], HookOutcome], done: Callable[[HookOutcome], None]) -> None:
    """Run `job` on the hook pool; call `done` with its outcome (on a pool thread)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_MAX_HOOKS, thread_name_prefix="build-hook")

    def run() -> None:
        try:
            outcome = job()
        except Exception as e:  # a bug here must still let the goal go on
            outcome = HookOutcome(error=f"internal error running a hook: {e}")
        done(outcome)

    _pool.submit(run)


def post_build_hook_env(drv_path: str, out_paths: list[str]) -> dict[str, str]:
    """The hook's environment: ours plus DRV_PATH and OUT_PATHS (emplace: existing ones win).

    OUT_PATHS is every output's final path, sorted, space-separated.  Nix 2.8.0 passes it
    empty (NixOS/nix#6446, fixed in 2.8.1); we pass what its manual documents.
    """
    env = dict(os.environ)
    env.setdefault("DRV_PATH", drv_path)
    env.setdefault("OUT_PATHS", " ".join(sorted(out_paths)).rstrip(" \n\r\t"))
    return env


def run_post_build_hook(hook: str, drv_path: str, out_paths: list[str]) -> HookOutcome:
    """Run the post-build hook to its end (on a pool thread); see the module docstring."""
    messages = [f"running post-build-hook '{hook}'..."]
    try:
        proc = subprocess.run([hook], env=post_build_hook_env(drv_path, out_paths), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as e:
        return HookOutcome(messages=tuple(messages), error=f"executing '{hook}': {e.strerror}")
    messages.extend(f"post-build-hook: {line}" for line in _log_sink_lines(proc.stdout))
    error = None
    if proc.returncode != 0:
        error = f"program '{hook}' {status_to_string(_wait_status(proc.returncode))}"
    return HookOutcome(messages=tuple(messages), error=error)


def _log_sink_lines(output: bytes) -> list[str]:
    """The post-build hook's LogSink: a line per '\\n'; the rest, if any, with a '\\n' added."""
    *lines, rest = output.split(b"\n")
    if rest:
        lines.append(rest + b"\n")
    return [line.decode("utf-8", "surrogateescape") for line in lines]


def run_diff_hook(diff_hook: str, request: DiffHookRequest) -> HookOutcome:
    """`handleDiffHook` (only called when diff-hook is set and run-diff-hook is true)."""
    argv = [diff_hook, request.try_a, request.try_b, request.drv_path, request.tmp_dir]
    as_other = request.uid != os.getuid()
    try:
        proc = subprocess.run(argv, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              user=request.uid if as_other else None,
                              group=request.gid if as_other else None)
    except OSError as e:
        return HookOutcome(messages=(f"error: diff hook execution failed: executing '{diff_hook}': "
                                     f"{e.strerror}",))
    if proc.returncode != 0:
        status = status_to_string(_wait_status(proc.returncode))
        return HookOutcome(messages=(f"error: diff hook execution failed: diff-hook program '{diff_hook}' "
                                     f"{status}",))
    text = proc.stdout.decode("utf-8", "surrogateescape").rstrip(" \n\r\t")  # chomp
    return HookOutcome(messages=(text,) if proc.stdout else ())


def _wait_status(returncode: int) -> int:
    """A wait status from subprocess's returncode (negative: killed by that signal)."""
    return -returncode if returncode < 0 else returncode << 8
