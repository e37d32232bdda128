"""`goalkeeper dump`, `restore` and `hash-path`, compared with nix-store and nix-hash."""

from __future__ import annotations

import io
import os
import sys
import types

import pytest

from goalkeeper.store.hashes import ALGOS


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    os.makedirs(root / "sub")
    (root / "hello.txt").write_text("hello\n")
    (root / "sub" / "tool").write_text("#!/bin/sh\n")
    os.chmod(root / "sub" / "tool", 0o755)
    os.symlink("../hello.txt", root / "sub" / "link")
    return str(root)


@pytest.fixture
def stdin(monkeypatch):
    """Set what `restore` reads as its standard input."""

    def feed(data: bytes) -> None:
        monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(data)))

    return feed


@pytest.mark.nix
def test_dump_matches_nix(gk, run_nix, tree):
    result = gk("dump", tree)
    assert (result.status, result.stderr) == (0, b"")
    assert result.stdout == run_nix("nix-store", "--dump", tree).stdout


@pytest.mark.nix
def test_restore_of_nix_dump(gk, run_nix, tree, tmp_path, stdin):
    data = run_nix("nix-store", "--dump", tree).stdout
    stdin(data)
    out = str(tmp_path / "restored")
    assert gk("restore", out).status == 0
    assert run_nix("nix-store", "--dump", out).stdout == data


@pytest.mark.parametrize("cut", [7, 100, 300])
def test_restore_malformed_reports_position_and_cleans_up(gk, tree, tmp_path, stdin, cut):
    data = gk("dump", tree).stdout
    stdin(data[:cut])
    out = tmp_path / "restored"
    result = gk("restore", str(out))
    assert result.status == 1
    assert result.stderr == f"error: malformed NAR '<stdin>' at byte {cut}: unexpected end of file\n".encode()
    assert not os.path.lexists(out)


def test_restore_into_existing_path_fails_and_keeps_it(gk, tree, stdin):
    stdin(gk("dump", tree).stdout)
    result = gk("restore", tree)
    assert result.status == 1 and b"File exists" in result.stderr
    assert os.path.exists(os.path.join(tree, "hello.txt"))


def test_dump_missing_path(gk, tmp_path):
    result = gk("dump", str(tmp_path / "missing"))
    assert result.status == 1
    assert result.stderr.startswith(b"error: getting status of ")


@pytest.mark.nix
@pytest.mark.parametrize("algo", ALGOS)
def test_hash_path_bases_match_nix_hash(gk, run_nix, tree, algo):
    def nix(*flags):
        return run_nix("nix-hash", "--type", algo, *flags, tree).stdout

    assert gk("hash-path", "--type", algo, "--base16", tree).stdout == nix()
    assert gk("hash-path", "--type", algo, "--base32", tree).stdout == nix("--base32")
    assert gk("hash-path", "--type", algo, tree).stdout == nix("--base32")  # our default is base-32
    assert gk("hash-path", "--type", algo, "--truncate", "--base16", tree).stdout == nix("--truncate")


@pytest.mark.nix
def test_hash_path_defaults_to_sha256_base32(gk, run_nix, tree):
    assert gk("hash-path", tree).stdout == run_nix("nix-hash", "--type", "sha256", "--base32", tree).stdout


@pytest.mark.nix
@pytest.mark.parametrize("algo", ALGOS)
def test_hash_path_flat_matches_nix_hash(gk, run_nix, tree, algo):
    path = os.path.join(tree, "hello.txt")
    got = gk("hash-path", "--flat", "--type", algo, "--base16", path, path)
    assert got.stdout == run_nix("nix-hash", "--flat", "--type", algo, path, path).stdout


def test_hash_path_sri(gk, tree):
    # SRI of the spec's hello.txt NAR hash (§3.3): base64 of 1c37d01a...fc13.
    assert gk("hash-path", "--sri", os.path.join(tree, "hello.txt")).stdout == \
        b"sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=\n"


def test_hash_path_errors(gk, tree):
    bad_algo = gk("hash-path", "--type", "sha3", tree)
    assert (bad_algo.status, bad_algo.stderr) == (1, b"error: unknown hash algorithm 'sha3'\n")
    flat_dir = gk("hash-path", "--flat", tree)
    assert (flat_dir.status, flat_dir.stderr) == (1, b"error: reading from file: Is a directory\n")
