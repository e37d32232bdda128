"""nixbase32 and Hash: encodings, parsing rules and error wording, checked against real nix-hash."""

import base64
import hashlib
import shutil
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from goalkeeper.store import nixbase32
from goalkeeper.store.errors import BadHash
from goalkeeper.store.hashes import HASH_SIZES, Base, Hash, compress_hash, hash_bytes

NIX_HASH = shutil.which("nix-hash")
needs_nix = pytest.mark.skipif(NIX_HASH is None, reason="real nix-hash (nix-bin) is not installed")

HELLO_SHA256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"


def nix_hash(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([NIX_HASH, *args], capture_output=True, text=True, timeout=30)


# -- nixbase32 ---------------------------------------------------------------------------------

def test_spec_examples():
    assert hash_bytes("sha256", b"hello\n").base32() == "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq"
    assert hash_bytes("sha1", b"hello\n").base32() == "iwjz551fyw0cxcjgf4l6c879zabd6wpm"
    assert hash_bytes("md5", b"hello\n").base32() == "4425hx5d1mc9y39llj4k4nm55i"
    assert nixbase32.encode(b"\x01" + b"\0" * 31) == "0" * 51 + "1"
    assert nixbase32.encode(b"\0" * 31 + b"\x80") == "1" + "0" * 51


@pytest.mark.parametrize("algo,length", [("md5", 26), ("sha1", 32), ("sha256", 52), ("sha512", 103)])
def test_lengths(algo, length):
    assert nixbase32.encoded_length(HASH_SIZES[algo]) == length


@settings(max_examples=200)
@given(st.binary(min_size=0, max_size=80))
def test_base32_round_trip(data):
    text = nixbase32.encode(data)
    assert len(text) == nixbase32.encoded_length(len(data))
    assert nixbase32.decode(text, len(data)) == data


def test_base32_rejects_bad_digit_and_overflow():
    with pytest.raises(BadHash, match="invalid base-32 character 'e'"):
        nixbase32.decode("e" * 52, 32)
    # 52 digits carry 260 bits: a leading digit >= 2 overflows a 256-bit hash
    with pytest.raises(BadHash, match="invalid base-32 hash"):
        nixbase32.decode("2" + "z" * 51, 32)
    assert nixbase32.decode("1" + "z" * 51, 32) == b"\xff" * 32


# -- Hash parsing and printing ------------------------------------------------------------------

def test_forms_of_one_hash():
    h = Hash.parse_any(HELLO_SHA256, "sha256")
    assert h.to_string(Base.BASE16) == "sha256:" + HELLO_SHA256
    assert h.to_string(Base.BASE32, False) == "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq"
    assert h.sri() == "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM="
    assert h.to_string(Base.BASE64, False) == "WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM="
    for text in (h.sri(), "sha256:" + h.base32(), "sha256:" + h.base16(), "sha256:" + h.base64(),
                 HELLO_SHA256.upper()):
        assert Hash.parse_any(text, "sha256") == h


def test_parse_errors_match_nix_wording():
    with pytest.raises(BadHash, match="hash 'zzzz' has wrong length for hash type 'sha256'"):
        Hash.parse_any("zzzz", "sha256")
    with pytest.raises(BadHash, match="should have type 'sha256'"):
        Hash.parse_any("sha1:iwjz551fyw0cxcjgf4l6c879zabd6wpm", "sha256")
    with pytest.raises(BadHash, match="does not include a type"):
        Hash.parse_any(HELLO_SHA256)
    with pytest.raises(BadHash, match="unknown hash algorithm 'sha3'"):
        Hash.parse_any("sha3:abc")
    with pytest.raises(BadHash):
        Hash.parse_sri("sha256-AAAA")  # decodes to 3 bytes


def test_compress_hash():
    assert compress_hash(bytes(range(40)), 20) == bytes(i ^ (i + 20) for i in range(20))


@settings(max_examples=100)
@given(st.sampled_from(sorted(HASH_SIZES)), st.data())
def test_hash_round_trip_every_base(algo, data):
    digest = data.draw(st.binary(min_size=HASH_SIZES[algo], max_size=HASH_SIZES[algo]))
    h = Hash(algo, digest)
    for base in Base:
        assert Hash.parse_any(h.to_string(base, True)) == h
        if base is not Base.SRI:
            assert Hash.parse_non_sri_unprefixed(h.to_string(base, False), algo) == h
    assert base64.b64decode(h.base64()) == digest


# -- against the real nix-hash ---------------------------------------------------------------------

@needs_nix
@pytest.mark.timeout(60)
@pytest.mark.parametrize("algo", sorted(HASH_SIZES))
def test_conversions_agree_with_nix_hash(algo):
    for seed in (b"", b"hello\n", bytes(range(256))):
        h = Hash(algo, hashlib.new(algo, seed).digest())
        out = nix_hash("--type", algo, "--to-base32", h.base16())
        assert out.stdout.strip() == h.base32()
        out = nix_hash("--type", algo, "--to-base16", h.base32())
        assert out.stdout.strip() == h.base16()
        out = nix_hash("--type", algo, "--to-base16", h.sri())
        assert out.stdout.strip() == h.base16()


@needs_nix
@pytest.mark.timeout(60)
@pytest.mark.parametrize("bad", ["zzzz", "2" + "z" * 51, "sha1:iwjz551fyw0cxcjgf4l6c879zabd6wpm", "e" * 52])
def test_rejections_agree_with_nix_hash(bad):
    out = nix_hash("--type", "sha256", "--to-base16", bad)
    assert out.returncode != 0
    with pytest.raises(BadHash) as info:
        Hash.parse_any(bad, "sha256")
    # nix-hash: "error: <message>"; ours carries the same message
    nix_message = out.stderr.strip().removeprefix("error: ")
    if "character" not in str(info.value):
        assert str(info.value) == nix_message
