"""`goalkeeper copy --to file://…` makes caches real Nix 2.8 substitutes from; the narinfo bench runs."""

from __future__ import annotations

import sqlite3

import pytest

from goalkeeper.tools.bench import narinfo_queries

BASE = ["--option", "build-users-group", ""]


@pytest.mark.nix
@pytest.mark.timeout(60)
@pytest.mark.parametrize("compression", ["xz", "zstd"])
def test_goalkeeper_cache_is_accepted_by_nix(tmp_path, gk, run_nix, compression) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("data\n")
    text = tmp_path / "t.txt"
    text.write_text("text\n")
    gk_store = ["--store", str(tmp_path / "gk"), *BASE]
    leaf = gk(*gk_store, "add", text).stdout.decode().strip()
    top = gk(*gk_store, "add", src).stdout.decode().strip()
    assert leaf and top
    assert gk("generate-binary-cache-key", "gk-1", tmp_path / "sk", tmp_path / "pk").status == 0
    cache = f"file://{tmp_path}/cache?compression={compression}"
    result = gk(*gk_store, "copy", "--to", cache, "--sign", tmp_path / "sk", top, leaf)
    assert result.status == 0, result.stderr.decode()
    assert "copying 2 paths..." in result.stderr.decode()
    # already there: nothing to copy
    assert gk(*gk_store, "copy", "--to", cache, top).stderr == b""
    env = {"PATH": "/usr/bin:/bin", "NIX_USER_CONF_FILES": "", "HOME": str(tmp_path)}
    nix_store = ["--store", str(tmp_path / "nix"), *BASE]
    proc = run_nix("nix-store", *nix_store, "--option", "substituters", f"file://{tmp_path}/cache",
                   "--option", "trusted-public-keys", (tmp_path / "pk").read_text(), "-r", top, leaf, env=env)
    assert proc.stdout.decode().split() == [top, leaf]
    run_nix("nix-store", *nix_store, "--verify", "--check-contents", env=env)

    def rows(root: str) -> list:
        with sqlite3.connect(f"{root}/nix/var/nix/db/db.sqlite") as conn:
            return conn.execute("select path, hash, narSize, ca from ValidPaths order by path").fetchall()

    assert rows(str(tmp_path / "nix")) == rows(str(tmp_path / "gk"))
    with sqlite3.connect(f"{tmp_path}/nix/nix/var/nix/db/db.sqlite") as conn:
        sigs = [row[0] for row in conn.execute("select sigs from ValidPaths")]
    assert all(s.startswith("gk-1:") for s in sigs)


@pytest.mark.timeout(30)
def test_copy_refuses_http_targets(tmp_path, gk) -> None:
    result = gk("--store", tmp_path / "gk", *BASE, "copy", "--to", "http://127.0.0.1:1", "/nix/store/x")
    assert result.status == 1
    assert b"only file:// binary caches can be written" in result.stderr


@pytest.mark.timeout(60)
def test_narinfo_bench_runs(capsys) -> None:
    assert narinfo_queries.main(["--paths", "200", "--threads", "32", "--in-process"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("narinfo queries: 200 paths, 32 threads, ") and out.rstrip().endswith("200 found")
