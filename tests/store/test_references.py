"""Reference scanning, hash rewriting and hash-modulo-self (spec §2.7, §4.1)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from goalkeeper.store import nixbase32
from goalkeeper.store.nar import dump_path, hash_path
from goalkeeper.store.paths import StorePath
from goalkeeper.store.references import (
    HashModuloSink,
    RefScanSink,
    RewritingSink,
    rewrite_strings,
    scan_for_references,
)

A = StorePath("0a8mj2lz1jbj4dnqv4yqlhpjmyakfmq8-a")
B = StorePath("1b8mj2lz1jbj4dnqv4yqlhpjmyakfmq8-b")
C = StorePath("2c8mj2lz1jbj4dnqv4yqlhpjmyakfmq8-c")
OTHER = StorePath("3d8mj2lz1jbj4dnqv4yqlhpjmyakfmq8-other")
# Enough candidates to take the regex path as well as the one-`find`-per-candidate path.
MANY = [StorePath(nixbase32.ALPHABET[i] + "x" * 31 + f"-p{i}") for i in range(10)]


def nix_search(data: bytes, hashes: set[bytes]) -> set[bytes]:
    """A literal port of Nix 2.8's `search` (references.cc): the reference semantics."""
    is_base32 = set(nixbase32.ALPHABET.encode())
    seen = set()
    i = 0
    while i + 32 <= len(data):
        for j in range(31, -1, -1):
            if data[i + j] not in is_base32:
                i += j + 1
                break
        else:
            ref = data[i : i + 32]
            if ref in hashes:
                seen.add(ref)
            i += 1
    return seen


def chunked(data: bytes, size: int):
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_scan_finds_hash_in_file_name_only(tmp_path):
    (tmp_path / f"name-{A.hash_part}").write_text("nothing here")
    assert scan_for_references(str(tmp_path), [A, B]) == {A}


def test_scan_finds_hash_in_symlink_target_only(tmp_path):
    os.symlink(f"/nix/store/{B.base}/bin/x", tmp_path / "link")
    assert scan_for_references(str(tmp_path), [A, B, C] + MANY) == {B}


def test_scan_finds_bare_hash_in_contents_and_ignores_non_candidates(tmp_path):
    (tmp_path / "f").write_text(f"{C.hash_part} and /nix/store/{OTHER.base}")
    assert scan_for_references(str(tmp_path), [A, B, C]) == {C}
    assert scan_for_references(str(tmp_path), MANY + [C]) == {C}


def test_hash_inside_longer_base32_run_is_found():
    data = b"0123" + A.hash_part.encode() + b"abcd" * 20 + B.hash_part.encode() + b"zz"
    for candidates in ([A, B], [A, B] + MANY):
        assert scan_for_references([data], candidates) == {A, B}


@pytest.mark.parametrize("many", [False, True])
def test_scan_across_chunk_boundaries(many):
    data = b"\x00prefix /nix/store/" + A.hash_part.encode() + b"-a\x00" + B.hash_part.encode()
    candidates = [A, B] + (MANY if many else [])
    for size in range(1, 40):
        assert scan_for_references(chunked(data, size), candidates) == {A, B}, size


def test_one_pass_hash_and_scan(tmp_path):
    (tmp_path / "f").write_text(A.base)
    sink = RefScanSink([A.hash_part, B.hash_part])
    h, size = hash_path(str(tmp_path), sinks=(sink,))
    assert sink.found == {A.hash_part}
    assert (h, size) == hash_path(str(tmp_path))


base32_heavy = st.binary(max_size=200) | st.text(alphabet=nixbase32.ALPHABET + "-/ e", max_size=200).map(str.encode)


@settings(max_examples=200, deadline=None)
@given(st.lists(base32_heavy, max_size=6), st.integers(min_value=1, max_value=50), st.booleans())
def test_scan_agrees_with_nix_search(parts, chunk, many):
    # Plant candidates between random bytes so matches and near-misses are common.
    cands = [A, B] + (MANY if many else [])
    data = b"".join(p + (cands[i % len(cands)].hash_part.encode()[: 20 + i * 3] if i % 2 else b"") for i, p in enumerate(parts))
    expected = nix_search(data, {c.hash_part.encode() for c in cands})
    found = scan_for_references(chunked(data, chunk), cands)
    assert {p.hash_part.encode() for p in found} == expected


# -- rewriting -------------------------------------------------------------------------------


def test_rewrite_strings_matches_nix_loop_semantics():
    # Nix resumes the search at the start of each replacement, so "aab" -> "aaa" cascades.
    assert rewrite_strings(b"aabb", {b"aab": b"aaa"}) == b"aaaa"
    assert rewrite_strings(b"xAyA", {"A": "B", "B": "C"}) == b"xCyC"  # applied one after another
    assert rewrite_strings(b"same", {b"s": b"s"}) == b"same"


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=120), st.integers(min_value=1, max_value=20))
def test_rewriting_sink_equals_rewrite_strings(noise, chunk):
    frm, to = A.hash_part.encode(), B.hash_part.encode()
    data = noise[:40] + frm + noise[40:80] + frm[:10] + frm + noise[80:]
    out = bytearray()
    sink = RewritingSink({frm: to}, out.extend)
    for piece in chunked(data, chunk):
        sink(piece)
    sink.flush()
    assert bytes(out) == rewrite_strings(data, {frm: to})
    assert sink.matches == [i for i in range(len(data)) if data.startswith(frm, i)]


# -- hash modulo self ------------------------------------------------------------------------


def test_hash_modulo_matches_verified_ca_output(tmp_path):
    # Spec §2.7: the `ca` derivation writes its scratch path into $out; real Nix 2.8
    # computed fixed:r:sha256:0vzra7cv... for it.
    scratch = "k54g8hr5nkhacl6zg5klqshhk1wzrpah"
    out = tmp_path / "ca"
    out.write_text(f"/nix/store/{scratch}-ca\n")
    sink = HashModuloSink("sha256", scratch)
    for chunk in dump_path(str(out)):
        sink(chunk)
    h, size = sink.finish()
    assert h.base32() == "0vzra7cvvma148h9yx235nbfahh9axil6w8gdbb06kak636cvh20"
    assert size == hash_path(str(out))[1]


@pytest.mark.parametrize("chunk", [1, 5, 31, 32, 33, 1000])
def test_hash_modulo_records_offsets_across_chunks(chunk):
    from goalkeeper.store.hashes import hash_bytes

    mod = A.hash_part.encode()
    data = b"x" * 7 + mod + b"y" + mod
    sink = HashModuloSink("sha1", mod)
    for piece in chunked(data, chunk):
        sink(piece)
    h, size = sink.finish()
    assert size == len(data)
    assert h == hash_bytes("sha1", b"x" * 7 + bytes(32) + b"y" + bytes(32) + b"|7|40")
