"""What happens after a builder exits, against real `nix-store -r` (Nix 2.8, sandbox off).

Issue 6 case by case: registerOutputs refusals, checkOutputs, fixed-output hash
mismatches, timeouts and the log limit, keep-failed, --check with keep-failed and
the diff hook, build-repeat with and without enforce-determinism, the post-build
hook, and build logs read across tools.  Each case runs one `nix-store -r` and one
`goalkeeper realise` on the same store directory (see test_realise_vs_nix.py, whose
helpers this reuses), grouping derivations under `-k` to keep the count of Nix
invocations low, and compares the exit status, stderr as a multiset of lines (the
key sentences of the errors; build directories and the hook's OUT_PATHS masked),
the valid paths afterwards and the `.check` paths kept.
"""

from __future__ import annotations

import bz2
import io
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .test_realise_vs_nix import CA, NO_SANDBOX, Outcome, Side, read_db

DATA = Path(__file__).resolve().parent.parent / "data" / "outputs"
REALISE = DATA.parent / "realise"


@dataclass(frozen=True)
class Case:
    id: str
    nix: Path
    args: tuple[str, ...] = ("-k",)
    options: tuple[tuple[str, str], ...] = ()  # --option NAME VALUE, for both tools
    features: tuple[str, ...] = ()
    attrs: tuple[str, ...] = ()  # nix-instantiate -A each (default: the whole file)
    noise: tuple[str, ...] = ()  # stderr lines whose count depends on timing
    prebuild: bool = False  # realise everything first (with real Nix, on both sides)
    random: tuple[str, ...] = ()  # outputs whose contents differ between the sides
    expect: tuple[str, ...] = ()  # sentences Nix's stderr must contain (guards the case itself)
    expect_files: tuple[str, ...] = ()  # globs in the store dir Nix leaves (e.g. '*.check')


def _opts(**kwargs: str) -> tuple[tuple[str, str], ...]:
    return tuple((name.replace("_", "-"), value) for name, value in kwargs.items())


CASES = [
    # (cycle, badattr, badsize and illegal throw plain Errors, which end the whole run: left out)
    Case("register-and-check-outputs", DATA / "outputs.nix", features=CA, random=("nondet",),
         attrs=("self", "multi", "missing", "flat", "rec-sha256", "rec-sha1", "mismatch", "flat-exec",
                "fod-self", "allowed", "requisites", "maxsize", "closure", "nondet", "ca"),
         expect=("failed to produce output path for output 'dev'",
                 "should be a non-executable regular file", "hash mismatch in fixed-output derivation",
                 "specified: sha256-", "is not allowed to refer to the following paths",
                 "is too large at 136 bytes; limit is 16 bytes")),
    Case("timeout-silence-log-limit", DATA / "limits.nix",
         options=_opts(timeout="2", max_silent_time="1", max_build_log_size="2000"), noise=("tick", "0123456789abcdef"),
         expect=("timed out after 2 seconds", "timed out after 1 seconds of silence",
                 "killed after writing more than 2000 bytes of log output")),
    Case("keep-failed", REALISE / "fail.nix", options=_opts(keep_failed="true"), expect=("note: keeping build directory",)),
    Case("repeat-enforce", REALISE / "nondet.nix", options=_opts(build_repeat="1"),
         expect=("differs from previous round", "(round 2/2)")),
    Case("repeat-no-enforce", REALISE / "nondet.nix", args=(), random=("nondet",),
         options=_opts(build_repeat="1", enforce_determinism="false"), expect=("differs from previous round",)),
    Case("repeat-keep-failed", REALISE / "nondet.nix", options=_opts(build_repeat="1", keep_failed="true"),
         expect=(".check' from previous round",), expect_files=("*-nondet.check",)),
    Case("repeat-diff-hook", REALISE / "nondet.nix",
         options=_opts(build_repeat="1", run_diff_hook="true", diff_hook=str(DATA / "diff-hook.sh")),
         expect=("diff-hook: a=", "second line"), expect_files=("*-nondet.check",)),
    Case("check-diff-hook", REALISE / "nondet.nix", args=("-k", "--check"), prebuild=True, random=("nondet",),
         options=_opts(run_diff_hook="true", diff_hook=str(DATA / "diff-hook.sh")),
         expect=("may not be deterministic", "diff-hook: a="), expect_files=("*-nondet.check",)),
    Case("check-diff-hook-fails", REALISE / "nondet.nix", args=("-k", "--check"), prebuild=True,
         random=("nondet",), options=_opts(run_diff_hook="true", diff_hook=str(DATA / "diff-hook-fail.sh")),
         expect=("diff hook execution failed: diff-hook program",), expect_files=("*-nondet.check",)),
    Case("check-keep-failed", REALISE / "nondet.nix", args=("-k", "--check"), prebuild=True,
         random=("nondet",), options=_opts(keep_failed="true"), expect=("differs from '",), expect_files=("*-nondet.check",)),
    Case("check-diff-hook-not-run", REALISE / "nondet.nix", args=("-k", "--check"), prebuild=True,
         random=("nondet",), options=_opts(diff_hook=str(DATA / "diff-hook.sh")), expect=("' differs\n",)),
    Case("post-build-hook", DATA / "hooks.nix", options=_opts(post_build_hook=str(DATA / "hook-ok.sh")),
         expect=("running post-build-hook", "post-build-hook: to stderr", "post-build-hook: no newline")),
    # One build only: Nix's synchronous hook fails before the next build starts, ours runs
    # beside it (Nix 2.35's asynchronous hook), so a second build's lines would differ.
    Case("post-build-hook-fails", DATA / "hooks.nix", attrs=("0",),
         options=_opts(post_build_hook=str(DATA / "hook-fail.sh")),
         expect=("failed with exit code 3",)),
]

_BUILD_DIR = re.compile(r"/[^ ']*/nix-build-[^ '/]*")


@dataclass
class Run:
    outcome: Outcome
    files: set[str] = field(default_factory=set)


def _mask(text: str, noise: tuple[str, ...] = ()) -> list[str]:
    """stderr as a sorted list of lines; build dirs and OUT_PATHS masked, `noise` dropped.

    OUT_PATHS: Nix 2.8.0 passes it empty (NixOS/nix#6446); we pass the outputs.
    """
    text = _BUILD_DIR.sub("<build-dir>", text)
    text = re.sub(r"OUT_PATHS=.*", "OUT_PATHS=<masked>", text)
    return sorted(line for line in text.splitlines() if line not in noise)


def _options(case: Case) -> list[str]:
    return [arg for name, value in case.options for arg in ("--option", name, value)]


def _prepare(side: Side, case: Case) -> list[str]:
    side.create()
    attrs = [arg for attr in case.attrs for arg in ("-A", attr)]
    drvs = side.nix("nix-instantiate", *case.features, str(case.nix), *attrs).stdout.decode().split()
    if case.prebuild:
        side.nix("nix-store", *case.features, "-r", *drvs)
    return drvs


def _finish(side: Side, outcome: Outcome, case: Case) -> Run:
    read_db(side, outcome)
    for path in outcome.valid:
        if path.endswith(tuple(f"-{name}" for name in case.random)):
            outcome.valid[path] = ("(random)", *outcome.valid[path][1:])
    files = {p.name for pattern in ("*.check", *case.expect_files) for p in Path(side.store_dir).glob(pattern)}
    return Run(outcome, files)


def realise_nix(side: Side, case: Case) -> Run:
    drvs = _prepare(side, case)
    proc = side.nix("nix-store", *case.features, *_options(case), "-r", *case.args, *drvs, check=False)
    return _finish(side, Outcome(proc.returncode, proc.stdout.decode(), proc.stderr.decode()), case)


def realise_goalkeeper(side: Side, case: Case) -> Run:
    from goalkeeper.tools.cli import main

    drvs = _prepare(side, case)
    out, err = io.BytesIO(), io.BytesIO()
    status = main(["--store", side.uri, *NO_SANDBOX, *case.features, *_options(case), "realise", *case.args,
                   *drvs], stdout=out, stderr=err)
    return _finish(side, Outcome(status, out.getvalue().decode(), err.getvalue().decode()), case)


def _make_writable(root: Path) -> None:
    subprocess.run(["chmod", "-R", "u+w", str(root)], check=False)


@pytest.mark.nix
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_outputs_match_nix(case: Case, tmp_path: Path, run_nix) -> None:
    side = Side(tmp_path / "s")
    nix = realise_nix(side, case)
    _make_writable(side.root)
    side.root.rename(tmp_path / "nix-store-was-here")
    gk = realise_goalkeeper(side, case)

    for sentence in case.expect:
        assert sentence in nix.outcome.stderr, nix.outcome.stderr
    for pattern in case.expect_files:
        assert any(Path(f).match(pattern) for f in nix.files), nix.files
    ran = f"goalkeeper exited {gk.outcome.status} (nix-store: {nix.outcome.status}); stderr:\n{gk.outcome.stderr}"
    assert gk.outcome.status == nix.outcome.status, ran
    assert _mask(gk.outcome.stderr, case.noise) == _mask(nix.outcome.stderr, case.noise), ran
    assert gk.outcome.stdout == nix.outcome.stdout, ran
    assert gk.outcome.valid == nix.outcome.valid, ran
    assert gk.files == nix.files, ran


def _read_logs(side: Side, paths: list[str]) -> dict[str, tuple[int, bytes, str]]:
    """`nix-store --read-log` and `goalkeeper log` of each path: (status, log, error line)."""
    from goalkeeper.tools.cli import main

    logs = {}
    for path in paths:
        proc = side.nix("nix-store", "--read-log", path, check=False)
        logs[f"nix {path}"] = (proc.returncode, proc.stdout, proc.stderr.decode().strip())
        out, err = io.BytesIO(), io.BytesIO()
        status = main(["--store", side.uri, "log", path], stdout=out, stderr=err)
        logs[f"gk {path}"] = (status, out.getvalue(), err.getvalue().decode().strip())
    return logs


@pytest.mark.nix
@pytest.mark.timeout(60)
@pytest.mark.parametrize("compress", ["true", "false"])
def test_build_logs_readable_by_both(compress: str, tmp_path: Path, run_nix) -> None:
    """Each tool reads the logs the other wrote: by drv and by output, bz2 or plain; a path
    built by nobody has no log, with Nix's error."""
    case = Case("logs", DATA / "hooks.nix", args=(), options=_opts(compress_build_log=compress))
    side = Side(tmp_path / "s")
    seen = {}
    for tool, realise in (("nix", realise_nix), ("goalkeeper", realise_goalkeeper)):
        if tool == "goalkeeper":
            _make_writable(side.root)
            side.root.rename(tmp_path / "nix-store-was-here")
        run = realise(side, case)
        assert run.outcome.status == 0, run.outcome.stderr
        drvs = sorted(p for p in run.outcome.valid if p.endswith(".drv"))
        outputs = sorted(p for p in run.outcome.valid if not p.endswith(".drv"))
        source = drvs[0].replace(".drv", "")  # an invalid path: no deriver, no log
        logs = _read_logs(side, [*drvs, *outputs, source])
        names = sorted(p.name for p in Path(side.root, "var/log/nix/drvs").rglob("*") if p.is_file())
        assert all(n.endswith(".bz2") == (compress == "true") for n in names), names
        seen[tool] = (names, logs)

    nix_names, nix_logs = seen["nix"]
    gk_names, gk_logs = seen["goalkeeper"]
    assert gk_names == nix_names
    assert gk_logs == nix_logs
    logged = next(v for k, v in nix_logs.items() if k.startswith("gk ") and k.endswith("-logged"))
    # the raw bytes, \r and @nix lines kept
    assert logged[1] == (b"first line\nprogress 10%\rprogress 100%\n"
                         b'@nix {"action":"msg","level":0,"msg":"from builder"}\nlast\n'), logged
    missing = next(v for k, v in nix_logs.items() if k.startswith("gk ") and k.endswith(source[-20:]))
    assert missing[0] == 1 and "is not available" in missing[2]
