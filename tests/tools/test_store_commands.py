"""add, verify, optimise, dump-db and load-db next to their nix-store counterparts."""

from __future__ import annotations

import os
import sqlite3

import pytest

pytestmark = pytest.mark.nix

NO_SUBST = ["--option", "substituters", ""]


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    (src / "d" / "sub").mkdir(parents=True)
    (src / "hello.txt").write_text("hello\n")
    (src / "d" / "sub" / "f").write_text("hello\n")
    (src / "d" / "g").write_text("hello\n")
    (src / "d" / "exe").write_text("#!/bin/sh\n")
    os.chmod(src / "d" / "exe", 0o755)
    os.symlink("sub/f", src / "d" / "link")
    return src


ADD_FORMS = [
    ([], ["--add"]),
    (["--fixed", "sha256"], ["--add-fixed", "sha256"]),
    (["--fixed", "sha1"], ["--add-fixed", "sha1"]),
    (["--fixed", "sha1", "--recursive"], ["--add-fixed", "--recursive", "sha1"]),
    (["--fixed", "sha512", "--recursive"], ["--add-fixed", "--recursive", "sha512"]),
]


@pytest.mark.parametrize("gk_flags,nix_flags", ADD_FORMS, ids=lambda f: " ".join(f) or "add")
def test_add_prints_what_nix_store_prints(tmp_path, tree, gk, run_nix, chroot_store, gk_flags, nix_flags):
    nix_root = tmp_path / "nixroot"
    recursive = not gk_flags or "--recursive" in gk_flags
    targets = [tree / "hello.txt"] + ([tree / "d"] if recursive else [])
    got = gk(*chroot_store.args, "add", *gk_flags, *targets)
    expected = run_nix("nix-store", "--store", nix_root, "--option", "build-users-group", "", *nix_flags, *targets)
    assert (got.status, got.stdout) == (0, expected.stdout), got.stderr
    # Same rows (but the time) in both databases.
    q = "select path, hash, narSize, deriver, ultimate, sigs, ca from ValidPaths order by path"
    with sqlite3.connect(os.path.join(chroot_store.state_dir, "db/db.sqlite")) as g, \
            sqlite3.connect(nix_root / "nix/var/nix/db/db.sqlite") as n:
        assert g.execute(q).fetchall() == n.execute(q).fetchall()
    verify = run_nix("nix-store", *chroot_store.args, *NO_SUBST, "--verify", "--check-contents")
    assert verify.returncode == 0


def test_add_bad_input(tmp_path, tree, gk, chroot_store):
    (tree / "bad name").write_text("x")
    for argv, message in [
        (["add", tmp_path / "missing"], b"No such file or directory"),
        (["add", tree / "bad name"], b"contains illegal character ' '"),
        (["add", "--fixed", "sha256", tree / "d"], b"not a regular file"),
        (["add", "--fixed", "foo", tree / "hello.txt"], b"unknown hash algorithm 'foo'"),
    ]:
        got = gk(*chroot_store.args, *argv)
        assert got.status == 1 and message in got.stderr, (argv, got.stderr)
        assert b"Traceback" not in got.stderr
    got = gk(*chroot_store.args, "dump-db")
    assert (got.status, got.stdout) == (0, b"")


def test_verify_matches_nix_store_verify(tmp_path, tree, gk, run_nix, chroot_store):
    args = [*chroot_store.args, *NO_SUBST]
    added = gk(*args, "add", tree / "hello.txt", tree / "d").stdout.decode().split()
    gk(*args, "add", "--fixed", "sha1", tree / "d" / "g")
    assert gk(*args, "optimise").status == 0

    def both(*flags):
        g = gk(*args, "verify", *flags)
        n = run_nix("nix-store", *args, "--verify", *flags, check=False)
        return (g.status, g.stderr.decode()), (n.returncode, n.stderr.decode())

    g, n = both("--check-contents")
    assert g == n and g[0] == 0
    real = chroot_store.real_store_dir + added[0][len("/nix/store"):]
    os.chmod(real, 0o644)
    with open(real, "w") as f:
        f.write("tampered\n")
    g, n = both("--check-contents")
    assert g == n and g[0] == 1
    assert "was modified! expected hash" in g[1] and "not all store errors were fixed" in g[1]
    os.unlink(real)
    g = gk(*args, "verify")
    assert g.status == 0 and f"path '{added[0]}' disappeared, removing from database...".encode() in g.stderr
    assert run_nix("nix-store", *args, "--verify").returncode == 0


def test_optimise_links_identical_files(tmp_path, tree, gk, run_nix, chroot_store):
    args = [*chroot_store.args, *NO_SUBST]
    gk(*args, "add", tree / "hello.txt", tree / "d")
    got = gk(*args, "optimise")
    nix_args = ["--store", tmp_path / "nixroot", "--option", "build-users-group", "", *NO_SUBST]
    run_nix("nix-store", *nix_args, "--add", tree / "hello.txt", tree / "d")
    expected = run_nix("nix-store", *nix_args, "--optimise")
    assert got.status == 0 and got.stderr == expected.stderr == b"0.00 MiB freed by hard-linking 2 files\n"
    links = os.path.join(chroot_store.real_store_dir, ".links")
    hello_link = os.path.join(links, "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw")  # NAR sha256 of "hello\n"
    assert os.stat(hello_link).st_nlink == 4  # .links, hello.txt, d/g, d/sub/f
    assert run_nix("nix-store", *args, "--verify", "--check-contents").returncode == 0
    assert gk(*args, "verify", "--check-contents").status == 0
    assert gk(*args, "optimise").stderr == b"0.00 MiB freed by hard-linking 0 files\n"


def test_dump_db_and_load_db_round_trip_with_nix(tmp_path, tree, gk, run_nix, chroot_store):
    args = [*chroot_store.args, *NO_SUBST]
    run_nix("nix-instantiate", *args, os.path.join(os.path.dirname(__file__), "..", "data", "store", "graph.nix"),
            "-A", "b")
    run_nix("nix-store", *args, "--add", tree / "d")
    nix_dump = run_nix("nix-store", *args, "--dump-db").stdout
    assert gk(*args, "dump-db").stdout == nix_dump
    some = nix_dump.split(b"\n")[0].decode()
    assert gk(*args, "dump-db", some, some).stdout == run_nix("nix-store", *args, "--dump-db", some, some).stdout
    # load-db into a fresh goalkeeper store (only the database), then Nix dumps the same text.
    fresh = tmp_path / "fresh"
    fresh_args = ["--store", str(fresh), "--option", "build-users-group", ""]
    os.makedirs(fresh / "nix" / "store")
    for name in os.listdir(chroot_store.real_store_dir):
        if name != ".links" and not name.endswith(".lock"):
            os.rename(os.path.join(chroot_store.real_store_dir, name), fresh / "nix" / "store" / name)
    dump_file = tmp_path / "dump"
    dump_file.write_bytes(nix_dump)
    got = gk(*fresh_args, "load-db", "--input", dump_file)
    assert got.status == 0, got.stderr
    assert run_nix("nix-store", *fresh_args, "--dump-db").stdout == nix_dump
    with sqlite3.connect(fresh / "nix/var/nix/db/db.sqlite") as conn:
        assert conn.execute("select count(*) from DerivationOutputs").fetchone() == (3,)


def test_load_db_bad_input_changes_nothing(tmp_path, gk, chroot_store):
    args = chroot_store.args
    good = "/nix/store/pi8axnzkz80qa3x5smwjwxcc9n9hjik0-h\n" + "00" * 32 + "\n120\n\n0\n"
    cases = {
        "truncated": good + "/nix/store/54is82vxc68wdbqahm6qg6gf5rdpblpx-o\n",
        "bad number": good.replace("\n120\n", "\nabc\n"),
        "outside": good.replace("/nix/store/", "/tmp/", 1),
        "invalid ref": good.replace("\n0\n", "\n1\n/nix/store/54is82vxc68wdbqahm6qg6gf5rdpblpx-o\n"),
    }
    for name, text in cases.items():
        f = tmp_path / name.replace(" ", "_")
        f.write_text(text)
        got = gk(*args, "load-db", "--input", f)
        assert got.status == 1 and got.stderr.startswith(b"error: "), (name, got.stderr)
        assert b"Traceback" not in got.stderr
    assert gk(*args, "dump-db").stdout == b""


def test_auto_optimise_store_links_while_adding(tmp_path, gk, run_nix, chroot_store):
    (tmp_path / "a").write_text("same\n")
    (tmp_path / "b").write_text("same\n")
    args = [*chroot_store.args, "--option", "auto-optimise-store", "true"]
    a, b = gk(*args, "add", tmp_path / "a", tmp_path / "b").stdout.decode().split()
    st_a = os.stat(chroot_store.real_store_dir + a[len("/nix/store"):])
    st_b = os.stat(chroot_store.real_store_dir + b[len("/nix/store"):])
    assert st_a.st_ino == st_b.st_ino and st_a.st_nlink == 3
    assert run_nix("nix-store", *chroot_store.args, *NO_SUBST, "--verify", "--check-contents").returncode == 0
