"""`goalkeeper show-derivation` next to `nix show-derivation` (2.8) on the golden expressions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.nix

DATA = Path(__file__).resolve().parent.parent / "data" / "drv"
FEATURES = "nix-command ca-derivations impure-derivations"


@pytest.fixture
def instantiated(run_nix, chroot_store):
    """The golden expressions instantiated by real Nix into `chroot_store`; attr name -> drv path."""
    paths = {}
    for nix_file in ("drvs.nix", "ca.nix", "impure.nix"):
        out = run_nix("nix-instantiate", *chroot_store.args, "--extra-experimental-features", FEATURES,
                      DATA / nix_file).stdout.decode().split()
        for p in out:
            paths[Path(p).name[33:-4]] = p  # "<hash>-<name>.drv" -> name
    return paths


def nix_show(run_nix, store, *args, check=True):
    return run_nix("nix", "--extra-experimental-features", FEATURES, "show-derivation", *store.args, *args,
                   check=check)


@pytest.mark.parametrize("selection", [
    ["simple"], ["escapes", "structured", "passfile"], ["diamond", "flat-md5"], ["dep2", "ca", "impure"],
], ids=lambda s: "+".join(s))
def test_same_json_as_nix(gk, run_nix, chroot_store, instantiated, selection):
    names = {"flat-md5": "fixed-flat-md5"}
    args = [instantiated[names.get(s, s)] for s in selection]
    got = gk(*chroot_store.args, "--extra-experimental-features", "ca-derivations impure-derivations",
             "show-derivation", *args)
    assert got.status == 0, got.stderr
    assert got.stdout == nix_show(run_nix, chroot_store, *args).stdout


def test_all_at_once_and_recursive(gk, run_nix, chroot_store, instantiated):
    everything = sorted(instantiated.values())
    extra = ["--extra-experimental-features", "ca-derivations impure-derivations"]
    got = gk(*chroot_store.args, *extra, "show-derivation", *reversed(everything))
    assert got.stdout == nix_show(run_nix, chroot_store, *everything).stdout
    for flag in ("-r", "--recursive"):
        got = gk(*chroot_store.args, *extra, "show-derivation", flag, instantiated["diamond"], instantiated["dep2"])
        expected = nix_show(run_nix, chroot_store, flag, instantiated["diamond"], instantiated["dep2"]).stdout
        assert (got.status, got.stdout) == (0, expected), got.stderr


def test_needs_the_feature_like_nix(gk, run_nix, chroot_store, instantiated):
    got = gk(*chroot_store.args, "show-derivation", instantiated["ca"])
    nix = run_nix("nix", "--extra-experimental-features", "nix-command", "show-derivation", *chroot_store.args,
                  instantiated["ca"], check=False)
    assert got.status == nix.returncode == 1
    assert got.stderr == nix.stderr == (b"error: experimental Nix feature 'ca-derivations' is disabled; "
                                        b"use '--extra-experimental-features ca-derivations' to override\n")


def test_malformed_drv(gk, chroot_store, instantiated):
    path = instantiated["simple"]
    real = Path(chroot_store.real_store_dir) / Path(path).name
    os.chmod(real.parent, 0o755)
    os.chmod(real, 0o644)
    text = real.read_bytes()
    real.write_bytes(text[:40])
    got = gk(*chroot_store.args, "show-derivation", path)
    assert got.status == 1 and got.stdout == b""
    assert got.stderr.startswith(f"error: malformed derivation '{path}' at byte ".encode()), got.stderr
    real.write_bytes(text.replace(b'"x86_64-linux"', b'"x86_64-linux', 1).replace(b'"/bin/sh"', b'/bin/sh"', 1))
    got = gk(*chroot_store.args, "show-derivation", path)
    assert got.status == 1
    assert got.stderr.startswith(f"error: malformed derivation '{path}' at byte ".encode()), got.stderr


def test_arguments(gk, run_nix, chroot_store, instantiated):
    missing = "/nix/store/00000000000000000000000000000000-x.drv"
    got = gk(*chroot_store.args, "show-derivation", missing)
    assert (got.status, got.stderr) == (1, f"error: path '{missing}' is not a valid store path\n".encode())
    src = next(p for p in Path(chroot_store.real_store_dir).iterdir() if p.name.endswith("-greeting"))
    logical = f"/nix/store/{src.name}"
    got = gk(*chroot_store.args, "show-derivation", logical)
    assert (got.status, got.stderr) == (1, f"error: '{logical}' does not have a known deriver\n".encode())
    output = json.loads(nix_show(run_nix, chroot_store, instantiated["multi"]).stdout)
    dev = next(iter(output.values()))["outputs"]["dev"]["path"]
    got = gk(*chroot_store.args, "show-derivation", dev)
    assert (got.status, got.stdout) == (0, nix_show(run_nix, chroot_store, dev).stdout), got.stderr
    got = gk(*chroot_store.args, "show-derivation", "/tmp/x.drv")
    assert got.status == 1 and b"is not in the Nix store" in got.stderr


def test_other_store_dir(gk, run_nix, local_store):
    """A logical store dir other than /nix/store enters every path; the file is read from the real dir."""
    (path,) = run_nix("nix-instantiate", *local_store.args, DATA / "drvs.nix", "-A", "diamond").stdout.decode().split()
    assert path.startswith(local_store.store_dir + "/")
    got = gk(*local_store.args, "show-derivation", "-r", path)
    assert (got.status, got.stdout) == (0, nix_show(run_nix, local_store, "-r", path).stdout), got.stderr


def test_an_unregistered_drv_file_is_refused_like_nix(gk, run_nix, chroot_store, instantiated, tmp_path):
    """A .drv file lying in the store but not registered as valid: Nix's readDerivation refuses it."""
    src = Path(chroot_store.real_store_dir) / Path(instantiated["simple"]).name
    empty = tmp_path / "empty"
    (empty / "nix" / "store").mkdir(parents=True)
    (empty / "nix" / "store" / src.name).write_bytes(src.read_bytes())
    args = ["--store", str(empty), "--option", "build-users-group", ""]
    nix = run_nix("nix", "--extra-experimental-features", FEATURES, "show-derivation", *args,
                  instantiated["simple"], check=False)
    ours = gk(*args, "show-derivation", instantiated["simple"])
    assert nix.returncode == ours.status == 1 and ours.stdout == b""
    assert ours.stderr == f"error: path '{instantiated['simple']}' is not a valid store path\n".encode()
    assert ours.stderr.decode() in nix.stderr.decode().replace("\x1b[35;1m", "").replace("\x1b[0m", "")
