"""`goalkeeper realise` against real `nix-store -r` (Nix 2.8, sandbox off) on the same graphs.

Each case instantiates a Nix expression from tests/data/realise/ with real
`nix-instantiate`, realises it with real `nix-store -r`, records what happened,
then does the same on a fresh store with `goalkeeper realise`, and compares:
exit status, stdout, stderr (exactly where Nix's order is deterministic, as a
multiset of lines where builds run in parallel), and the store left behind --
every valid path with its NAR hash, size, references, deriver, CA and
`ultimate` flag, the derivation outputs and realisations tables -- and checks
that goalkeeper's recorded NAR hashes match the files (real `nix-hash`).

Why one store directory used twice instead of two stores side by side: Nix
forces a chroot for a store whose logical and real directories differ (a
"chroot store"), so sandbox-off builds need `local?store=D&state=…`, and the
output paths depend on D. Nix runs first in D; its store is then moved away
(kept for debugging) and goalkeeper gets a fresh store in the same D.

Run as a script to print what real Nix does in every case (the store dir
replaced by `<store>`):  python tests/actors/test_realise_vs_nix.py [OUT.md]
or to print diffs between Nix and goalkeeper:  ... --compare [CASE-ID...]
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

DATA = Path(__file__).resolve().parent.parent / "data" / "realise"
NO_SANDBOX = ("--option", "build-users-group", "", "--option", "substituters", "", "--option", "sandbox", "false")
CA = ("--extra-experimental-features", "ca-derivations")


@dataclass(frozen=True)
class Side:
    """One fresh store, and how to run real Nix against it."""

    root: Path

    @property
    def store_dir(self) -> str:
        return str(self.root / "store")

    @property
    def uri(self) -> str:
        r = self.root
        return f"local?store={r}/store&state={r}/var/nix&log={r}/var/log/nix"

    def create(self) -> None:
        for d in ("store", "var/nix", "var/log/nix"):
            (self.root / d).mkdir(parents=True)

    def nix(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([tool, "--store", self.uri, *NO_SANDBOX, *args], capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr.decode()}")
        return proc

    def outputs(self, drv: str) -> list[str]:
        return self.nix("nix-store", "-q", "--outputs", drv).stdout.decode().split()


@dataclass(frozen=True)
class Case:
    """A graph, what to ask for, and how: realise `targets(side, drvs)` with `args`."""

    id: str
    nix: str
    args: tuple[str, ...] = ()
    targets: Callable[[Side, list[str]], list[str]] = lambda side, drvs: drvs
    setup: Callable[[Side, list[str]], None] | None = None  # run with real Nix on both sides first
    features: tuple[str, ...] = ()
    parallel: bool = False  # builds overlap: compare stderr as a multiset of lines
    nix_args: tuple[str, ...] = ()  # `--arg` for nix-instantiate
    # outputs (by name) a setup built nondeterministically: their contents differ between the sides
    random_outputs: tuple[str, ...] = ()


def _select(outputs: str) -> Callable[[Side, list[str]], list[str]]:
    return lambda side, drvs: [drvs[0] + outputs]


def _build_all(side: Side, drvs: list[str]) -> None:
    side.nix("nix-store", "-r", *drvs)


def _corrupt(name: str) -> Callable[[Side, list[str]], None]:
    def setup(side: Side, drvs: list[str]) -> None:
        _build_all(side, drvs)
        [path] = Path(side.store_dir).glob(f"*-{name}")
        path.chmod(0o644)
        path.write_text("corrupted\n")
        path.chmod(0o444)

    return setup


def _invalid(name: str) -> Callable[[Side, list[str]], list[str]]:
    return lambda side, drvs: [f"{side.store_dir}/{'0' * 32}-{name}"]


CASES = [
    Case("wide", "wide.nix"),
    Case("wide-j2", "wide.nix", ("-j", "2"), parallel=True),
    Case("chain", "chain.nix"),
    Case("diamond", "diamond.nix"),
    Case("multi-outputs", "multi.nix"),
    Case("multi-select-dev", "multi.nix", targets=_select("!dev")),
    Case("multi-select-lib-dev", "multi.nix", targets=_select("!lib,dev")),
    Case("multi-select-empty", "multi.nix", targets=_select("!")),
    Case("self-reference", "selfref.nix"),
    Case("output-cycle", "cycle.nix"),
    Case("failing-builder", "fail.nix"),
    Case("failing-builder-keep-going", "fail.nix", ("-k",)),
    Case("failing-builder-keep-going-j2", "fail.nix", ("-k", "-j", "2"), parallel=True),
    Case("many-failures", "fail_many.nix"),
    Case("many-failures-keep-going", "fail_many.nix", ("--keep-going",)),
    Case("dependency-failure-chain", "depchain.nix"),
    Case("no-output", "noout.nix", ("-k",)),
    Case("fixed-outputs", "fixed.nix"),
    Case("fixed-output-hash-mismatch", "fixed_mismatch.nix"),
    Case("ca-derivations", "ca.nix", features=CA),
    Case("dry-run", "diamond.nix", ("--dry-run",)),
    Case("dry-run-all-valid", "diamond.nix", ("--dry-run",), setup=_build_all),
    Case("already-valid", "diamond.nix", setup=_build_all),
    Case("max-jobs-0", "diamond.nix", ("-j", "0")),
    Case("check-not-built", "nondet.nix", ("--check",)),
    Case("check-deterministic", "nondet.nix", ("--check",), targets=lambda side, drvs: drvs[:1], setup=_build_all,
         random_outputs=("nondet",)),
    Case("check-nondeterministic", "nondet.nix", ("--check",), targets=lambda side, drvs: drvs[1:],
         setup=_build_all, random_outputs=("nondet",)),
    Case("check-both-keep-going", "nondet.nix", ("--check", "-k"), setup=_build_all, random_outputs=("nondet",)),
    Case("repair-corrupt-input", "diamond.nix", ("--repair",), setup=_corrupt("base")),
    Case("repair-all-valid", "diamond.nix", ("--repair",), setup=_build_all),
    Case("opaque-valid", "selfref.nix", targets=lambda side, drvs: side.outputs(drvs[0]), setup=_build_all),
    Case("opaque-invalid", "selfref.nix", targets=lambda side, drvs: _invalid("foo")(side, drvs) + drvs),
    Case("missing-derivation", "selfref.nix", targets=_invalid("foo.drv")),
    Case("unknown-output", "multi.nix", targets=_select("!nope,zz")),
    Case("unknown-and-known-output", "multi.nix", targets=_select("!nope,dev")),
]


@dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str
    valid: dict[str, tuple] = field(default_factory=dict)
    derivation_outputs: set[tuple] = field(default_factory=set)
    realisations: set[tuple] = field(default_factory=set)


def read_db(side: Side, outcome: Outcome) -> None:
    """The store's state as Nix's schema records it (registration times aside)."""
    db = sqlite3.connect(f"file:{side.root}/var/nix/db/db.sqlite?mode=ro", uri=True)
    try:
        refs: dict[int, list[str]] = {}
        for referrer, reference in db.execute(
                "select referrer, path from Refs join ValidPaths on Refs.reference = ValidPaths.id"):
            refs.setdefault(referrer, []).append(reference)
        for id_, path, nar_hash, nar_size, deriver, ca, ultimate in db.execute(
                "select id, path, hash, narSize, deriver, ca, ultimate from ValidPaths"):
            outcome.valid[path] = (nar_hash, nar_size, tuple(sorted(refs.get(id_, ()))), deriver, ca or None,
                                   bool(ultimate))
        outcome.derivation_outputs = set(db.execute(
            "select ValidPaths.path, DerivationOutputs.id, DerivationOutputs.path"
            " from DerivationOutputs join ValidPaths on DerivationOutputs.drv = ValidPaths.id"))
        tables = {name for (name,) in db.execute("select name from sqlite_master where type = 'table'")}
        if "Realisations" in tables:
            outcome.realisations = set(db.execute(
                "select drvPath, outputName, ValidPaths.path from Realisations"
                " join ValidPaths on Realisations.outputPath = ValidPaths.id"))
    finally:
        db.close()


def prepare(side: Side, case: Case) -> list[str]:
    side.create()
    inst = side.nix("nix-instantiate", *case.features, *case.nix_args, str(DATA / case.nix))
    drvs = inst.stdout.decode().split()
    if case.setup is not None:
        case.setup(side, drvs)
    return case.targets(side, drvs)


def realise_with_nix(side: Side, case: Case) -> Outcome:
    targets = prepare(side, case)
    proc = side.nix("nix-store", *case.features, "-r", *case.args, *targets, check=False)
    outcome = Outcome(proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    read_db(side, outcome)
    return outcome


def realise_with_goalkeeper(side: Side, case: Case) -> Outcome:
    from goalkeeper.tools.cli import main

    targets = prepare(side, case)
    out, err = io.BytesIO(), io.BytesIO()
    status = main(["--store", side.uri, *NO_SANDBOX, *case.features, "realise", *case.args, *targets],
                  stdout=out, stderr=err)
    outcome = Outcome(status, out.getvalue().decode(), err.getvalue().decode())
    read_db(side, outcome)
    return outcome


def nar_hashes(paths: list[str]) -> dict[str, str]:
    """What real Nix computes for the files (sha256 of the NAR, base-16)."""
    if not paths:
        return {}
    proc = subprocess.run(["nix-hash", "--type", "sha256", *paths], capture_output=True, check=True, timeout=60)
    return {p: "sha256:" + h for p, h in zip(paths, proc.stdout.decode().split())}


def make_writable(root: Path) -> None:
    for dirpath, dirnames, _ in os.walk(root):
        os.chmod(dirpath, 0o755)


@pytest.mark.nix
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_realise_matches_nix(case: Case, tmp_path: Path, run_nix) -> None:
    side = Side(tmp_path / "s")
    nix = realise_with_nix(side, case)
    side.root.rename(tmp_path / "nix-store-was-here")  # same store dir for goalkeeper, fresh state
    gk = realise_with_goalkeeper(side, case)

    ran = f"goalkeeper exited {gk.status} (nix-store: {nix.status}); its stderr:\n{gk.stderr[-4000:]}"
    # The store left behind: same valid paths, NAR hashes, sizes, references, derivers, CA.
    assert sorted(gk.valid) == sorted(nix.valid), ran
    for outcome in (nix, gk):
        for path in outcome.valid:
            if path.endswith(tuple(f"-{name}" for name in case.random_outputs)):
                outcome.valid[path] = ("(random)", *outcome.valid[path][1:])
    assert gk.valid == nix.valid, ran
    assert gk.derivation_outputs == nix.derivation_outputs, ran
    assert gk.realisations == nix.realisations, ran
    outputs = sorted(p for p in gk.valid if not p.endswith(".drv") and gk.valid[p][0] != "(random)")
    assert nar_hashes(outputs) == {p: gk.valid[p][0] for p in outputs}, ran

    assert gk.status == nix.status, gk.stderr
    assert gk.stdout == nix.stdout
    if case.parallel:
        assert sorted(gk.stderr.splitlines()) == sorted(nix.stderr.splitlines())
    else:
        assert gk.stderr == nix.stderr


# -- recording what real Nix prints (for the engine's author and the docs) -----------------


def record(out) -> None:
    """Run every case with real Nix only and write its transcript as Markdown."""
    out.write("# What `nix-store -r` (Nix 2.8, sandbox off) prints\n\n"
              "Generated by `python tests/actors/test_realise_vs_nix.py`; `<store>` is the store directory.\n"
              "Graphs: tests/data/realise/*.nix. Every case starts from a fresh store.\n")
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            side = Side(Path(tmp) / "s")
            outcome = realise_with_nix(side, case)
            targets = " ".join(a.replace(side.store_dir, "<store>") for a in case.args)
            out.write(f"\n## {case.id}\n\n`{case.nix}`, options `{targets or '(none)'}`"
                      f"{', set-up: ' + case.setup.__qualname__.split('.')[0] if case.setup else ''}"
                      f" -- exit status **{outcome.status}**\n\n")
            for name, text in (("stdout", outcome.stdout), ("stderr", outcome.stderr)):
                text = text.replace(side.store_dir, "<store>")
                out.write(f"{name}:\n```\n{text}```\n" if text else f"{name}: (empty)\n")
            valid = sorted(p.replace(side.store_dir, "<store>") for p in outcome.valid if not p.endswith(".drv"))
            out.write("\nvalid outputs afterwards: " + (", ".join(f"`{v}`" for v in valid) or "none") + "\n")
            make_writable(side.root)


def compare(case_ids: list[str]) -> None:
    """Run cases both ways and print unified diffs (nix-store first), for debugging the engine."""
    import difflib

    for case in CASES:
        if case_ids and case.id not in case_ids:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            side = Side(Path(tmp) / "s")
            nix = realise_with_nix(side, case)
            make_writable(side.root)
            side.root.rename(Path(tmp) / "nix")
            gk = realise_with_goalkeeper(side, case)
            print(f"== {case.id}: exit nix-store {nix.status}, goalkeeper {gk.status}")
            for name in ("stdout", "stderr"):
                a, b = (getattr(o, name).replace(side.store_dir, "<store>").splitlines(keepends=True)
                        for o in (nix, gk))
                sys.stdout.writelines(difflib.unified_diff(a, b, f"nix-store {name}", f"goalkeeper {name}"))
            for key in sorted(set(nix.valid) | set(gk.valid)):
                if nix.valid.get(key) != gk.valid.get(key):
                    print(f"valid {key.replace(side.store_dir, '<store>')}:\n  nix-store  {nix.valid.get(key)}"
                          f"\n  goalkeeper {gk.valid.get(key)}")
            for name in ("derivation_outputs", "realisations"):
                if getattr(nix, name) != getattr(gk, name):
                    print(f"{name}: only nix-store {getattr(nix, name) - getattr(gk, name)}; "
                          f"only goalkeeper {getattr(gk, name) - getattr(nix, name)}")
            make_writable(side.root)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--compare"]:
        compare(sys.argv[2:])
    elif len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            record(f)
    else:
        record(sys.stdout)
