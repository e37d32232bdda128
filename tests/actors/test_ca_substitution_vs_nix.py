"""Floating CA derivations substituted from a binary cache (realisations), side by side with Nix 2.8.

Real Nix builds `ca.nix`'s b (over a, both floating content-addressed) and `nix copy`s
it, with its realisations (`realisations/<id>.doi`), to a signed `file://` cache.
Then `nix-store -r` and `goalkeeper realise` (max-jobs 0: nothing may be built) each
take b's derivation on a fresh store from that cache, or from a copy lacking b's
narinfo (the realisation is there, its output path is not: an incomplete closure,
retried once after the inputs, then a build that max-jobs 0 refuses). Both must
print the same, exit the same and leave the same rows: valid paths, references,
realisations and the realisations' dependencies.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.nix

CA_NIX = """
let
  ca = name: script: deps: derivation {
    inherit name deps;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    __contentAddressed = true;
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
  };
in rec {
  a = ca "ca-a" "echo a > $out" [];
  b = ca "ca-b" "echo $deps > $out" [ a ];
}
"""
OPTS = ["--option", "build-users-group", "", "--option", "sandbox-paths", "/bin /lib /lib64 /usr",
        "--option", "experimental-features", "nix-command ca-derivations"]


@pytest.fixture(scope="module")
def ca_cache(tmp_path_factory):
    """(cache dir, public key, the nix file, the store that built b, b's drv path)."""
    if shutil.which("nix") is None:
        pytest.skip("real Nix is not installed")
    root = tmp_path_factory.mktemp("cacache")
    env = {"PATH": "/usr/bin:/bin", "NIX_USER_CONF_FILES": "", "HOME": str(root)}
    nix_file = root / "ca.nix"
    nix_file.write_text(CA_NIX)

    def nix(*argv) -> str:
        return subprocess.run([str(a) for a in argv], check=True, capture_output=True, env=env,
                              stdin=subprocess.DEVNULL, timeout=120).stdout.decode().strip()

    nix("nix-store", "--generate-binary-cache-key", "test-key-1", root / "sk", root / "pk")
    st = root / "st"
    drv = nix("nix-instantiate", "--store", st, *OPTS, nix_file, "-A", "b")
    nix("nix-store", "--store", st, *OPTS, "--option", "substituters", "", "-r", drv)
    nix("nix", "copy", "--store", st, *OPTS, "--to", f"file://{root}/cache?secret-key={root}/sk", drv)
    assert len(list((root / "cache" / "realisations").iterdir())) == 2
    return root / "cache", (root / "pk").read_text().strip(), nix_file, st, drv


def db_rows(store_root: Path) -> list[tuple]:
    with sqlite3.connect(store_root / "nix" / "var" / "nix" / "db" / "db.sqlite") as conn:
        q = conn.execute
        return [
            *q("select path, hash, deriver, narSize, ultimate, sigs, ca from ValidPaths order by path"),
            *q("select a.path, b.path from Refs r join ValidPaths a on r.referrer = a.id "
               "join ValidPaths b on r.reference = b.id order by 1, 2"),
            *q("select r.drvPath, r.outputName, v.path, r.signatures from Realisations r "
               "join ValidPaths v on r.outputPath = v.id order by 1, 2"),
            *q("select a.drvPath, a.outputName, b.drvPath, b.outputName from RealisationsRefs x "
               "join Realisations a on x.referrer = a.id join Realisations b on x.realisationReference = b.id "
               "order by 1, 2, 3, 4"),
        ]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cache_has", ["everything", "no-output-narinfo"])
def test_realisations_substituted_like_nix(ca_cache, tmp_path, gk, run_nix, cache_has) -> None:
    cache, pk, nix_file, _, _ = ca_cache
    if cache_has == "no-output-narinfo":
        copy = tmp_path / "cache"
        shutil.copytree(cache, copy)
        b_narinfo = next(p for p in copy.glob("*.narinfo") if "-ca-b\n" in p.read_text())
        b_narinfo.unlink()
        cache = copy
    subst = ["--option", "substituters", f"file://{cache}", "--option", "trusted-public-keys", pk,
             "--option", "max-jobs", "0"]
    env = {"PATH": "/usr/bin:/bin", "NIX_USER_CONF_FILES": "", "HOME": str(tmp_path)}
    nix_root, gk_root = tmp_path / "nix", tmp_path / "gk"
    drvs = [run_nix("nix-instantiate", "--store", root, *OPTS, nix_file, "-A", "b", env=env).stdout.decode().strip()
            for root in (nix_root, gk_root)]
    assert drvs[0] == drvs[1]
    nix_proc = run_nix("nix-store", "--store", nix_root, *OPTS, *subst, "-r", drvs[0], check=False, env=env)
    result = gk("--store", gk_root, *OPTS, *subst, "realise", drvs[1])
    assert (result.status, result.stdout, result.stderr) == (nix_proc.returncode, nix_proc.stdout, nix_proc.stderr)
    expected_status = 0 if cache_has == "everything" else 1
    assert result.status == expected_status, result.stderr.decode()
    rows = db_rows(gk_root)
    assert rows == db_rows(nix_root)
    realised = [r for r in rows if len(r) == 4 and str(r[2]).startswith("/nix/store/")]
    assert len(realised) == (2 if cache_has == "everything" else 1)  # never b's without its path


@pytest.mark.timeout(120)
def test_goalkeeper_copy_of_a_derivation_is_substituted_by_nix(ca_cache, tmp_path, gk, run_nix) -> None:
    """`goalkeeper copy DRV` writes what `nix copy DRV` wrote (outputs and realisations), and real
    Nix substitutes the CA derivation from it without building."""
    nix_cache, pk, nix_file, st, drv = ca_cache
    ours = tmp_path / "gkcache"
    result = gk("--store", st, *OPTS, "copy", "--to", f"file://{ours}", "--sign", nix_cache.parent / "sk", drv)
    assert result.status == 0, result.stderr.decode()
    files = sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(nix_cache) for p in nix_cache.rglob("*") if p.is_file())
    for doi in (nix_cache / "realisations").iterdir():
        assert (ours / "realisations" / doi.name).read_bytes() == doi.read_bytes()
    env = {"PATH": "/usr/bin:/bin", "NIX_USER_CONF_FILES": "", "HOME": str(tmp_path)}
    root = tmp_path / "nix"
    drv_here = run_nix("nix-instantiate", "--store", root, *OPTS, nix_file, "-A", "b", env=env).stdout.decode().strip()
    subst = ["--option", "substituters", f"file://{ours}", "--option", "trusted-public-keys", pk,
             "--option", "max-jobs", "0"]
    proc = run_nix("nix-store", "--store", root, *OPTS, *subst, "-r", drv_here, env=env)
    assert proc.stdout.decode().strip().endswith("-ca-b")
    import json

    docs = [json.loads(doi.read_text()) for doi in (ours / "realisations").iterdir()]
    expected = sorted((d["id"].split("!")[0], "/nix/store/" + d["outPath"]) for d in docs)
    assert sorted((r[0], r[2]) for r in db_rows(root) if len(r) == 4 and str(r[2]).startswith("/nix/store/")) \
        == expected
