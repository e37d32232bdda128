"""One store, two programs: what goalkeeper writes, real Nix 2.8 reads and verifies, and the other way round."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from goalkeeper.store.local import LocalStore
from goalkeeper.store.nar import hash_path
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.settings import Settings
from goalkeeper.store.store_config import parse_store_uri

pytestmark = pytest.mark.nix

GRAPH_NIX = Path(__file__).resolve().parent.parent / "data" / "store" / "graph.nix"
NO_SUBST = ["--option", "substituters", ""]
BUILD_OPTS = ["--option", "sandbox-paths", "/bin /lib /lib64 /usr"]
QUERY_FLAGS = ["--outputs", "--references", "--referrers", "--requisites", "--referrers-closure",
               "--deriver", "--hash", "--size"]


def master_rows(db_path: str) -> list[tuple]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("select type, name, tbl_name, sql from sqlite_master order by name").fetchall()


@pytest.mark.parametrize("ca", [False, True], ids=["plain", "ca-derivations"])
def test_new_store_has_nix_schema_and_layout(tmp_path, run_nix, ca):
    hello = tmp_path / "hello.txt"
    hello.write_text("hello\n")
    features = ["--extra-experimental-features", "ca-derivations"] if ca else []
    nix_root, gk_root = tmp_path / "nix", tmp_path / "gk"
    run_nix("nix-store", "--store", nix_root, "--option", "build-users-group", "", *features, "--add", hello)
    overrides = [("extra-experimental-features", "ca-derivations")] if ca else []
    settings = Settings.load(overrides=[("build-users-group", ""), *overrides])
    with LocalStore.open(parse_store_uri(str(gk_root)), settings) as store:
        assert store.print(store.add_to_store("hello.txt", str(hello))) == \
            "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"
    rel_db = "nix/var/nix/db"
    assert master_rows(str(gk_root / rel_db / "db.sqlite")) == master_rows(str(nix_root / rel_db / "db.sqlite"))
    assert (gk_root / rel_db / "schema").read_bytes() == b"10"
    if ca:
        assert (gk_root / rel_db / "ca-schema").read_bytes() == (nix_root / rel_db / "ca-schema").read_bytes() == b"3"
    else:
        assert not (gk_root / rel_db / "ca-schema").exists()
    for rel in ("nix/store/.links", "nix/var/nix/gcroots/per-user", "nix/var/nix/profiles/per-user",
                "nix/var/nix/temproots", rel_db + "/big-lock", rel_db + "/reserved"):
        assert (gk_root / rel).exists(), rel
    assert (gk_root / rel_db / "reserved").stat().st_size == 8388608
    assert os.readlink(gk_root / "nix/var/nix/gcroots/profiles") == str(gk_root / "nix/var/nix/profiles")
    with sqlite3.connect(gk_root / rel_db / "db.sqlite") as conn:
        assert conn.execute("pragma journal_mode").fetchone() == ("wal",)
        gk_row = conn.execute("select path, hash, deriver, narSize, ultimate, sigs, ca from ValidPaths").fetchall()
    with sqlite3.connect(nix_root / rel_db / "db.sqlite") as conn:
        nix_row = conn.execute("select path, hash, deriver, narSize, ultimate, sigs, ca from ValidPaths").fetchall()
    assert gk_row == nix_row


def _instantiate(run_nix, store_root: Path) -> dict[str, str]:
    """Real nix-instantiate of graph.nix into a chroot store; attr -> drv path."""
    return {
        attr: run_nix("nix-instantiate", "--store", store_root, "--option", "build-users-group", "",
                      GRAPH_NIX, "-A", attr).stdout.decode().strip()
        for attr in ("a", "b")
    }


def test_goalkeeper_store_read_by_real_nix(tmp_path, run_nix, gk):
    """Drvs, sources and a registered 'built' output written by goalkeeper; real Nix agrees on everything."""
    nix_root, gk_root = tmp_path / "nix", tmp_path / "gk"
    drvs = _instantiate(run_nix, nix_root)
    with LocalStore.open(parse_store_uri(str(gk_root)), Settings.load(overrides=[("build-users-group", "")])) as store:
        # Re-add every path of the Nix store's drv closure in dependency order, from Nix's files.
        nix_store = LocalStore.open(parse_store_uri(str(nix_root)), Settings.load(overrides=[("build-users-group", "")]))
        try:
            closure = nix_store.compute_fs_closure([store.store_dir.parse(d) for d in drvs.values()])
            for path in reversed(nix_store.topo_sort_paths(closure)):
                info = nix_store.query_path_info(path)
                with open(nix_store.real_path(path), "rb") as f:
                    text = f.read()
                assert store.add_text_to_store(path.name, text, info.references) == path
        finally:
            nix_store.close()
        # A fake build of a: its output registered as Nix registers built outputs.
        a_drv = store.store_dir.parse(drvs["a"])
        (a_out,) = store.derivation_known_outputs(a_drv).values()
        real = store.real_path(a_out)
        with open(real, "w") as f:
            f.write("hello\n")
        os.chmod(real, 0o444)
        os.utime(real, (1, 1), follow_symlinks=False)
        nar_hash, nar_size = hash_path(real)
        store.register_valid_paths([ValidPathInfo(path=a_out, nar_hash=nar_hash, nar_size=nar_size,
                                                  deriver=a_drv, ultimate=True)])

    args = ["--store", str(gk_root), "--option", "build-users-group", "", *NO_SUBST]
    verify = run_nix("nix-store", *args, "--verify", "--check-contents")
    assert b"error" not in verify.stderr and b"warning" not in verify.stderr
    # Nix must see exactly the rows Nix itself would have written for these drvs.
    with sqlite3.connect(gk_root / "nix/var/nix/db/db.sqlite") as g, \
            sqlite3.connect(nix_root / "nix/var/nix/db/db.sqlite") as n:
        q = "select d.id, d.path, v.path from DerivationOutputs d join ValidPaths v on v.id = d.drv order by 2"
        assert [r[1:] for r in g.execute(q)] == [r[1:] for r in n.execute(q)]
        q = "select path, hash, narSize, ultimate, sigs, ca, deriver from ValidPaths where ca is not null order by path"
        assert g.execute(q).fetchall() == n.execute(q).fetchall()
    all_paths = run_nix("nix-store", *args, "--dump-db").stdout
    assert a_out.base.encode() in all_paths
    for flag in QUERY_FLAGS:
        for target in [*drvs.values(), store.store_dir.print(a_out)]:
            expected = run_nix("nix-store", *args, "-q", flag, target)
            got = gk(*args, "query", flag, target)
            assert (got.status, got.stdout) == (0, expected.stdout), (flag, target, got.stderr)


@pytest.fixture
def nix_built_store(tmp_path, run_nix):
    """A chroot store where real Nix built graph.nix's `b` (and so `a`)."""
    root = tmp_path / "built"
    args = ["--store", str(root), "--option", "build-users-group", "", *NO_SUBST]
    run_nix("nix-build", *args, *BUILD_OPTS, GRAPH_NIX, "-A", "b", "--no-out-link", timeout=120)
    return root, args


def test_real_nix_store_read_by_goalkeeper(nix_built_store, run_nix, gk):
    root, args = nix_built_store
    dump = run_nix("nix-store", *args, "--dump-db").stdout.decode()
    paths = [line for line in dump.split("\n") if line.startswith("/nix/store/")]
    assert len(paths) >= 6
    for flag in QUERY_FLAGS:
        for path in paths:
            expected = run_nix("nix-store", *args, "-q", flag, path, check=False)
            got = gk(*args, "query", flag, path)
            assert (got.status, got.stdout) == (expected.returncode, expected.stdout), (flag, path)
    drvs = [p for p in paths if p.endswith(".drv")]
    for flags in (["--requisites", "--include-outputs"], ["--requisites", "-u"], ["--hash", "-u"],
                  ["--references", "-u"]):
        expected = run_nix("nix-store", *args, "-q", *flags, *drvs)
        got = gk(*args, "query", *flags, *drvs)
        assert (got.status, got.stdout) == (0, expected.stdout), flags
    expected = run_nix("nix-store", *args, "--verify", "--check-contents")
    got = gk(*args, "verify", "--check-contents")
    assert (got.status, got.stderr) == (0, expected.stderr)
    with LocalStore.open(parse_store_uri(str(root)), Settings.load(overrides=[("build-users-group", "")])) as store:
        for text in paths:
            info = store.query_path_info(store.store_dir.parse(text))
            assert info is not None
            assert hash_path(store.to_real_path(text)) == (info.nar_hash, info.nar_size)
        b_drv = next(store.store_dir.parse(p) for p in paths if p.endswith("-b.drv"))
        outputs = store.query_derivation_output_map(b_drv)
        assert sorted(outputs) == ["dev", "out"]
        for out in outputs.values():
            assert store.query_valid_derivers(out) == {b_drv}
            got = gk(*args, "query", "--valid-derivers", store.print(out))
            assert (got.status, got.stdout) == (0, store.print(b_drv).encode() + b"\n")
            assert store.query_path_from_hash_part(out.hash_part) == out
        assert store.query_path_from_hash_part("0" * 32) is None


def test_query_errors_match_nix(nix_built_store, run_nix, gk):
    root, args = nix_built_store
    missing = "/nix/store/x1mzpvlh5nibnz53vzz1q58j1bw60bdc-c"
    for target in [missing, "/nix/store/foo", "/nix/store/x1mzpvlh5nibnz53vzz1q58j1bw60bd-c", "/nonexistent"]:
        expected = run_nix("nix-store", *args, "-q", "--references", target, check=False)
        got = gk(*args, "query", "--references", target)
        assert got.status == expected.returncode == 1
        assert got.stderr.strip().splitlines()[-1] == expected.stderr.strip().splitlines()[-1], target


HOLDER = """
import sys
from goalkeeper.store.local import LocalStore
from goalkeeper.store.settings import Settings
from goalkeeper.store.store_config import parse_store_uri
store = LocalStore.open(parse_store_uri(sys.argv[1]), Settings.load(overrides=[("build-users-group", "")]))
print(store.print(store.add_text_to_store("unrooted", b"only a temp root keeps me")), flush=True)
sys.stdin.readline()
store.close()
"""


@pytest.mark.timeout(120)
def test_real_nix_gc_honours_our_temp_roots(tmp_path, run_nix):
    import subprocess
    import sys

    root = tmp_path / "gc"
    args = ["--store", str(root), "--option", "build-users-group", "", *NO_SUBST]
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        path = holder.stdout.readline().strip()
        real = str(root) + path
        run_nix("nix-store", *args, "--gc")
        assert os.path.exists(real)  # our live temp root protected it
        assert run_nix("nix-store", *args, "--check-validity", path).returncode == 0
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(30) == 0
    finally:
        holder.kill()
        holder.wait()
    assert not (root / "nix/var/nix/temproots" / str(holder.pid)).exists()
    run_nix("nix-store", *args, "--gc")
    assert not os.path.exists(real)
