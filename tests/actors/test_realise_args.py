"""`goalkeeper realise` arguments: parsing `PATH[!OUTPUTS]`, argument errors, and `--json`.

Argument errors are compared with real `nix-store -r` where Nix gives one; where
Nix 2.8 crashes (outputs selected on a non-derivation: an assertion, SIGABRT) we
give a clear error and exit 1 instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from goalkeeper.actors.engine import DerivedPath
from goalkeeper.store.local import LocalStore
from goalkeeper.store.store_config import parse_store_uri
from goalkeeper.tools.commands.realise import BadTarget, parse_target

DATA = Path(__file__).resolve().parent.parent / "data" / "realise"
NO_SANDBOX = ["--option", "build-users-group", "", "--option", "substituters", "", "--option", "sandbox", "false"]


@pytest.fixture
def store(local_store):
    s = LocalStore.open(parse_store_uri(local_store.uri))
    yield s
    s.close()


@pytest.mark.timeout(30)
def test_parse_target(store, local_store) -> None:
    d = local_store.store_dir
    drv = f"{d}/{'1' * 32}-x.drv"
    plain = f"{d}/{'1' * 32}-x"
    parsed = store.store_dir.parse(drv)
    assert parse_target(store, drv) == DerivedPath(parsed, frozenset())
    assert parse_target(store, drv + "!") == DerivedPath(parsed, frozenset())
    assert parse_target(store, drv + "!out") == DerivedPath(parsed, frozenset({"out"}))
    # tokenizeString: empty names between commas are dropped
    assert parse_target(store, drv + "!dev,,out,") == DerivedPath(parsed, frozenset({"dev", "out"}))
    assert parse_target(store, plain) == DerivedPath(store.store_dir.parse(plain))
    assert parse_target(store, plain + "!") == DerivedPath(store.store_dir.parse(plain))
    with pytest.raises(BadTarget, match="it is not a derivation"):
        parse_target(store, plain + "!out")


@pytest.mark.timeout(30)
def test_parse_target_follows_symlinks_into_the_store(store, local_store, tmp_path) -> None:
    target = f"{local_store.store_dir}/{'2' * 32}-y.drv"
    link = tmp_path / "result"
    os.symlink(target, link)
    assert parse_target(store, f"{link}!out") == DerivedPath(store.store_dir.parse(target), frozenset({"out"}))


@pytest.mark.nix
@pytest.mark.timeout(60)
@pytest.mark.parametrize("arg", ["{tmp}/outside", "{tmp}/does-not-exist", "{store}/foo", "relative-missing"])
def test_argument_errors_match_nix(arg, local_store, tmp_path, gk, run_nix) -> None:
    (tmp_path / "outside").write_text("x")
    arg = arg.format(tmp=tmp_path, store=local_store.store_dir)
    nix = run_nix("nix-store", *local_store.args, "-r", arg, check=False)
    ours = gk(*local_store.args, "realise", arg)
    assert (ours.status, ours.stdout, ours.stderr) == (nix.returncode, nix.stdout, nix.stderr)
    assert ours.status == 1 and ours.stderr.startswith(b"error: ")


@pytest.mark.timeout(30)
def test_outputs_of_a_non_derivation_are_refused(local_store, gk) -> None:
    path = f"{local_store.store_dir}/{'3' * 32}-plain"
    ours = gk(*local_store.args, "realise", f"{path}!out")
    assert ours.status == 1
    assert ours.stderr == f"error: cannot select outputs of '{path}' in '{path}!out': it is not a derivation\n".encode()


@pytest.mark.nix
@pytest.mark.timeout(30)
def test_no_arguments_do_nothing(local_store, gk, run_nix) -> None:
    nix = run_nix("nix-store", *local_store.args, "-r")
    ours = gk(*local_store.args, "realise")
    assert (ours.status, ours.stdout, ours.stderr) == (0, nix.stdout, nix.stderr) == (0, b"", b"")


@pytest.mark.timeout(30)
def test_check_and_repair_exclude_each_other(local_store, gk) -> None:
    ours = gk(*local_store.args, "realise", "--check", "--repair", f"{local_store.store_dir}/{'4' * 32}-x.drv")
    assert ours.status == 1 and b"not allowed with argument" in ours.stderr


@pytest.mark.nix
@pytest.mark.timeout(60)
def test_json_reports_one_result_per_argument(local_store, gk, run_nix) -> None:
    args = [*local_store.args, *NO_SANDBOX[3:]]
    multi, = run_nix("nix-instantiate", *args, str(DATA / "multi.nix")).stdout.decode().split()
    a, b, _ = run_nix("nix-instantiate", *args, str(DATA / "fail_many.nix")).stdout.decode().split()
    ours = gk(*args, "realise", "--json", "-k", f"{multi}!dev", a, b)
    assert ours.status == 100
    results = json.loads(ours.stdout)
    assert [r.get("drvPath") for r in results] == [multi, a, b]
    first, second, third = results
    dev = run_nix("nix-store", *args, "-q", "--outputs", multi).stdout.decode().split()
    assert first["status"] == "Built" and first["timesBuilt"] == 1
    assert first["outputs"] == {"dev": next(p for p in dev if p.endswith("-multi-dev"))}
    assert 0 < first["startTime"] <= first["stopTime"]
    assert "errorMsg" not in first and "isNonDeterministic" not in first
    # a depends on a failing derivation; b's own builder fails
    assert second["status"] == "DependencyFailed" and second["outputs"] == {}
    assert f"1 dependencies of derivation '{a}' failed to build" in second["errorMsg"]
    assert third["status"] == "PermanentFailure"
    assert f"builder for '{b}' failed with exit code 1" in third["errorMsg"]
    # the failure is still reported on stderr, after the JSON
    assert ours.stderr.endswith(f"error: build of '{min(a, b)}', '{max(a, b)}' failed\n".encode())


@pytest.mark.nix
@pytest.mark.timeout(60)
def test_dry_run_does_not_check_output_names(local_store, gk, run_nix) -> None:
    # Nix's goal finds unknown outputs; a dry run makes no goals, so it only prints what is missing.
    args = [*local_store.args, *NO_SANDBOX[3:]]
    multi, = run_nix("nix-instantiate", *args, str(DATA / "multi.nix")).stdout.decode().split()
    nix = run_nix("nix-store", *args, "-r", "--dry-run", f"{multi}!nope,dev", check=False)
    ours = gk(*args, "realise", "--dry-run", f"{multi}!nope,dev")
    assert (ours.status, ours.stdout, ours.stderr) == (nix.returncode, nix.stdout, nix.stderr)
    assert nix.returncode == 0 and b"will be built" in nix.stderr


@pytest.mark.nix
@pytest.mark.timeout(60)
def test_keep_failed_flag_keeps_the_build_directory_as_nix_store_K(local_store, gk, run_nix) -> None:
    args = [*local_store.args, *NO_SANDBOX]
    drv = run_nix("nix-instantiate", *args, str(DATA / "fail.nix")).stdout.decode().split()[0]
    theirs = run_nix("nix-store", *args, "-r", "-K", drv, check=False)
    ours = gk(*args, "realise", "-K", drv)
    assert ours.status == theirs.returncode == 100
    [ours_note] = [line for line in ours.stderr.decode().splitlines() if "keeping build directory" in line]
    assert any("keeping build directory" in line for line in theirs.stderr.decode().splitlines())
    assert os.path.isdir(ours_note.split("'")[1])
