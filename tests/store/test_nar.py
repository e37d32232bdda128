"""NAR dump, hash, parse and restore, checked against `nix-store --dump/--restore` and `nix-hash`."""

from __future__ import annotations

import io
import os
import stat
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from goalkeeper.store import nar
from goalkeeper.store.errors import BadArchive, StoreError
from goalkeeper.store.hashes import ALGOS

PAD_SIZES = (0, 1, 7, 8, 9, 15, 16, 17)
# Names whose byte order differs from locale order (case, accents, digits, punctuation).
ODD_NAMES = ["B", "a", "Z", "_x", "10", "9", "é", "e", "with space", ".hidden", "..dots", "-dash",
             "\N{SNOWMAN}", "tab\tname"]


def make_tree(root: str) -> None:
    """A tree exercising every NAR feature (file sizes around the padding boundary, odd names, links)."""
    os.makedirs(os.path.join(root, "nested", "deeper", "deepest"))
    os.mkdir(os.path.join(root, "empty dir"))
    for size in PAD_SIZES:
        with open(os.path.join(root, f"size-{size}"), "wb") as f:
            f.write(bytes(range(1, size + 1)))
    for i, name in enumerate(ODD_NAMES):
        with open(os.path.join(root, "nested", name), "w") as f:
            f.write(f"file {i}\n")
    with open(os.path.join(os.fsencode(root), b"nested", b"latin1-\xff"), "wb") as f:
        f.write(b"not utf-8 name")
    exe = os.path.join(root, "nested", "deeper", "run.sh")
    with open(exe, "w") as f:
        f.write("#!/bin/sh\necho hi\n")
    os.chmod(exe, 0o755)
    owner_only = os.path.join(root, "nested", "deeper", "owner-x")
    open(owner_only, "w").close()
    os.chmod(owner_only, 0o700)
    group_only = os.path.join(root, "nested", "deeper", "group-x")  # no owner x: not executable
    open(group_only, "w").close()
    os.chmod(group_only, 0o654)
    with open(os.path.join(root, "nested", "deeper", "deepest", "big"), "wb") as f:
        f.write(os.urandom(3 * nar.CHUNK_SIZE + 5))  # crosses several read chunks
    os.symlink("../size-1", os.path.join(root, "nested", "relative"))
    os.symlink("/nonexistent/absolute/target", os.path.join(root, "nested", "dangling"))
    os.symlink("deeper", os.path.join(root, "nested", "to-dir"))
    os.link(exe, os.path.join(root, "nested", "hardlink"))


def walk(root: str) -> dict[bytes, tuple]:
    """Everything a NAR records about a tree: type, owner-executable bit, contents or target."""
    root_b = os.fsencode(root)
    out = {}
    todo = [b""]
    while todo:
        rel = todo.pop()
        full = os.path.join(root_b, rel) if rel else root_b
        s = os.lstat(full)
        if stat.S_ISDIR(s.st_mode):
            out[rel] = ("dir",)
            todo.extend(os.path.join(rel, n) if rel else n for n in os.listdir(full))
        elif stat.S_ISLNK(s.st_mode):
            out[rel] = ("link", os.readlink(full))
        else:
            with open(full, "rb") as f:
                out[rel] = ("file", bool(s.st_mode & stat.S_IXUSR), f.read())
    return out


def dump_bytes(path) -> bytes:
    return b"".join(nar.dump_path(path))


@pytest.fixture
def tree(tmp_path):
    root = str(tmp_path / "tree")
    make_tree(root)
    return root


# -- against real Nix ------------------------------------------------------------------------


@pytest.mark.nix
def test_dump_matches_nix_store_dump(tree, run_nix):
    assert dump_bytes(tree) == run_nix("nix-store", "--dump", tree).stdout


@pytest.mark.nix
@pytest.mark.parametrize("sub", ["size-0", "size-9", "nested/deeper/run.sh", "nested/dangling", "nested/to-dir",
                                 "empty dir"])
def test_dump_of_single_entries_matches_nix(tree, run_nix, sub):
    path = os.path.join(tree, sub)
    assert dump_bytes(path) == run_nix("nix-store", "--dump", path).stdout


@pytest.mark.nix
@pytest.mark.parametrize("algo", ALGOS)
def test_hash_path_matches_nix_hash(tree, run_nix, algo):
    h, size = nar.hash_path(tree, algo)
    assert h.base16() == run_nix("nix-hash", "--type", algo, tree).stdout.decode().strip()
    assert h.base32() == run_nix("nix-hash", "--type", algo, "--base32", tree).stdout.decode().strip()
    assert size == len(dump_bytes(tree))


@pytest.mark.nix
@pytest.mark.parametrize("algo", ALGOS)
def test_hash_flat_matches_nix_hash_flat(tree, run_nix, algo):
    path = os.path.join(tree, "nested", "deeper", "deepest", "big")
    expected = run_nix("nix-hash", "--type", algo, "--flat", "--base32", path).stdout.decode().strip()
    assert nar.hash_flat(path, algo).base32() == expected


@pytest.mark.nix
def test_restore_of_nix_dump_reproduces_tree(tree, run_nix, tmp_path):
    out = str(tmp_path / "restored")
    data = run_nix("nix-store", "--dump", tree).stdout
    assert nar.restore_path(out, io.BytesIO(data)) == len(data)
    expected = walk(tree)
    expected[b"nested/hardlink"] = expected[b"nested/deeper/run.sh"]  # NARs have no hard links
    assert walk(out) == expected


@pytest.mark.nix
def test_nix_restore_of_our_dump_reproduces_tree(tree, run_nix, tmp_path):
    out = str(tmp_path / "restored-by-nix")
    run_nix("nix-store", "--restore", out, input=dump_bytes(tree))
    assert walk(out) == walk(tree)


def test_spec_example_hello_txt(tmp_path):
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello\n")
    h, size = nar.hash_path(str(path))
    assert size == 120
    assert h.base32() == "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"


def test_chunks_stay_bounded(tree):
    assert max(len(c) for c in nar.dump_path(tree)) <= nar.CHUNK_SIZE + nar._FLUSH_AT + nar._SMALL_FILE + 4096


def test_restored_modes_follow_nix(tree, tmp_path):
    out = str(tmp_path / "r")
    old = os.umask(0o022)
    try:
        nar.restore_path(out, io.BytesIO(dump_bytes(tree)))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(os.path.join(out, "nested", "deeper", "run.sh")).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(os.path.join(out, "size-1")).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(os.path.join(out, "nested")).st_mode) == 0o755


def test_unsupported_file_type(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(nar.UnsupportedFileType, match="has an unsupported type"):
        dump_bytes(str(tmp_path))


def test_restore_refuses_existing_path_and_keeps_it(tree, tmp_path):
    with pytest.raises(StoreError, match="File exists"):
        nar.restore_path(tree, io.BytesIO(dump_bytes(tree)))
    assert os.path.isdir(os.path.join(tree, "nested"))


# -- parsing: strictness and positions -------------------------------------------------------


def s(data: bytes | str) -> bytes:
    data = data.encode() if isinstance(data, str) else data
    return len(data).to_bytes(8, "little") + data + bytes(-len(data) % 8)


def regular(contents: bytes, *marker: bytes) -> bytes:
    exe = s("executable") + s(marker[0]) if marker else b""
    return s("(") + s("type") + s("regular") + exe + s("contents") + s(contents) + s(")")


def directory(*entries: tuple[bytes, bytes]) -> bytes:
    body = b"".join(s("entry") + s("(") + s("name") + s(n) + s("node") + node + s(")") for n, node in entries)
    return s("(") + s("type") + s("directory") + body + s(")")


MAGIC = s("nix-archive-1")


def parse_error(data: bytes) -> BadArchive:
    with pytest.raises(BadArchive) as info:
        nar.parse(io.BytesIO(data))
    return info.value


@pytest.mark.parametrize(
    "data, reason, position",
    [
        (s("nix-archive-2") + regular(b""), "doesn't look like a Nix archive", 0),
        (MAGIC + directory((b"b", regular(b"")), (b"a", regular(b""))), "not sorted", 312),
        (MAGIC + directory((b"a", regular(b"")), (b"a", regular(b""))), "not sorted", 312),
        (MAGIC + directory((b".", regular(b""))), "invalid file name", 128),
        (MAGIC + directory((b"..", regular(b""))), "invalid file name", 128),
        (MAGIC + directory((b"", regular(b""))), "invalid file name", 128),
        (MAGIC + directory((b"a/b", regular(b""))), "invalid file name", 128),
        (MAGIC + directory((b"a\0b", regular(b""))), "invalid file name", 128),
        (MAGIC + regular(b"x", b"yes"), "executable marker has non-empty value", 96),
        (MAGIC + s("(") + s("type") + s("fifo") + s(")"), "unknown file type", 56),
        (MAGIC + s("(") + s(")"), "expected 'type'", 40),
        (MAGIC + s("x"), "expected open tag", 24),
    ],
    ids=["magic", "unsorted", "duplicate", "dot", "dotdot", "empty-name", "slash", "nul", "exe-marker",
         "file-type", "no-type", "open-tag"],
)
def test_malformed(data, reason, position):
    err = parse_error(data)
    assert reason in err.reason
    assert err.position == position


def test_non_zero_padding_position():
    data = bytearray(MAGIC + regular(b"abc"))
    data[99] = 1  # contents "abc" start at byte 96, so its padding is 99..103
    err = parse_error(bytes(data))
    assert (err.reason, err.position) == ("non-zero padding", 99)


def test_huge_name_length_is_rejected_without_reading_it():
    data = MAGIC + s("(") + s("type") + s("directory") + s("entry") + s("(") + s("name") + (2**62).to_bytes(8, "little")
    assert "too long" in parse_error(data).reason


@pytest.mark.timeout(60)
def test_truncation_at_every_position_is_bad_archive(tmp_path):
    small = tmp_path / "t"
    os.makedirs(small / "d")
    (small / "d" / "f").write_bytes(b"contents!")
    os.symlink("d/f", small / "l")
    data = dump_bytes(str(small))
    for cut in range(len(data)):
        err = parse_error(data[:cut])
        assert err.position is not None and err.position <= cut


def test_copy_reads_exactly_one_nar_and_tees_it(tree):
    data = dump_bytes(tree)
    stream = io.BytesIO(data + b"TRAILER")
    seen = bytearray()
    assert nar.copy(stream, seen.extend) == len(data)
    assert bytes(seen) == data
    assert stream.read() == b"TRAILER"


def test_deep_nesting_does_not_recurse(tmp_path):
    depth = 3000
    node = regular(b"leaf")
    for _ in range(depth):
        node = directory((b"d", node))
    assert nar.parse(io.BytesIO(MAGIC + node)) == len(MAGIC) + len(node)


class ShortReads(io.RawIOBase):
    """A source that returns at most 3 bytes per read, like a slow pipe."""

    def __init__(self, data: bytes):
        self.inner = io.BytesIO(data)

    def read(self, n=-1):
        return self.inner.read(min(n, 3) if n >= 0 else 3)


def test_restore_from_short_reads(tree, tmp_path):
    out = str(tmp_path / "r")
    nar.restore_path(out, ShortReads(dump_bytes(tree)))
    assert dump_bytes(out) == dump_bytes(tree)


# -- hypothesis round trips ------------------------------------------------------------------

names = st.binary(min_size=1, max_size=12).filter(lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b".."))
leaves = st.one_of(
    st.tuples(st.just("file"), st.booleans(), st.binary(max_size=40)),
    st.tuples(st.just("link"), st.binary(min_size=1, max_size=30).filter(lambda t: b"\0" not in t)),
)
trees = st.recursive(leaves, lambda children: st.dictionaries(names, children, max_size=5), max_leaves=20)


def build(path: bytes, node) -> None:
    if isinstance(node, dict):
        os.mkdir(path)
        for name, child in node.items():
            build(path + b"/" + name, child)
    elif node[0] == "file":
        with open(path, "wb") as f:
            f.write(node[2])
        os.chmod(path, 0o755 if node[1] else 0o644)
    else:
        os.symlink(node[1], path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_round_trip_random_trees(node):
    with tempfile.TemporaryDirectory() as tmp:
        src = os.fsencode(tmp) + b"/src"
        build(src, node)
        first = dump_bytes(src)
        dst = os.fsencode(tmp) + b"/dst"
        assert nar.restore_path(dst, io.BytesIO(first)) == len(first)
        assert dump_bytes(dst) == first


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=200))
def test_garbage_only_raises_bad_archive(noise, offset):
    # Splice noise into a valid NAR so the parser gets past the magic often enough.
    valid = MAGIC + directory((b"a", regular(b"x", b"")), (b"b", s("(") + s("type") + s("symlink") + s("target") + s("a") + s(")")))
    for data in (noise, valid[:offset] + noise, valid[:offset] + noise + valid[offset:]):
        try:
            nar.parse(io.BytesIO(data))
        except BadArchive:
            pass


def test_failed_restore_of_a_very_deep_nar_cleans_up(tmp_path):
    """Nesting beyond Python's recursion limit: the BadArchive surfaces and nothing is left."""
    import io
    import struct

    def tok(b: bytes) -> bytes:
        return struct.pack("<Q", len(b)) + b + b"\0" * (-len(b) % 8)

    depth = 1500
    data = tok(b"nix-archive-1")
    for _ in range(depth):
        data += b"".join(tok(t) for t in (b"(", b"type", b"directory", b"entry", b"(", b"name", b"d", b"node"))
    data += b"".join(tok(t) for t in (b"(", b"type", b"bogus"))
    out = tmp_path / "out"
    with pytest.raises(BadArchive):
        nar.restore_path(str(out), io.BytesIO(data))
    assert not out.exists()
