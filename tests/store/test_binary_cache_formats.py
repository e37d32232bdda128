"""narinfo, signatures and compression: round trips, errors, and agreement with real Nix 2.8."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from goalkeeper.store import compression
from goalkeeper.store.hashes import Hash, hash_bytes
from goalkeeper.store.narinfo import BadNarInfo, NarInfo, parse, render
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.paths import StoreDir, StorePath
from goalkeeper.store.signatures import (BadKey, PublicKey, SecretKey, check_signatures, public_keys,
                                         sign_path_info, verify_detached)

SD = StoreDir("/nix/store")
A = StorePath("dcgxgfrhy8mb76rg8f1djpw23cl3fzmx-a")
B = StorePath("x1mzpvlh5nibnz53vzz1q58j1bw60bdc-b")

# written by real `nix copy --to file://…?secret-key=…` (Nix 2.8), key test-key-1 below
REAL_NARINFO = """StorePath: /nix/store/x1mzpvlh5nibnz53vzz1q58j1bw60bdc-b
URL: nar/1c9afyn1h3v79k80n61y4r2dgkss6ndvw6c63fzmjlvfr468rcyi.nar.xz
Compression: xz
FileHash: sha256:1c9afyn1h3v79k80n61y4r2dgkss6ndvw6c63fzmjlvfr468rcyi
FileSize: 168
NarHash: sha256:0vvl22a1xbsb0yq3hcwfkckydmria54dxxyb38qdnqyjszsp52qn
NarSize: 160
References: dcgxgfrhy8mb76rg8f1djpw23cl3fzmx-a
Deriver: nkh5wn2224bl8chw30cfh2y8dyg0as4y-b.drv
Sig: test-key-1:ZjQ4bJB5L3UltauK6rw6SQ1VDOC7cGnW7jNaXae/9YCxXP0pxgNreBkt60Sc5F8/aHRt/PfO6ZIrfQJLNESMDw==
"""
REAL_PK = "test-key-1:PU0e3Ba4lBaOhKunCzJ+xzalF/1qvK9H4uXIkHfFQUE="


@pytest.mark.timeout(10)
def test_real_narinfo_round_trips_and_its_signature_verifies() -> None:
    narinfo = parse(REAL_NARINFO, SD, "x1mz.narinfo")
    assert narinfo.info.references == {A}
    assert narinfo.info.deriver == StorePath("nkh5wn2224bl8chw30cfh2y8dyg0as4y-b.drv")
    assert (narinfo.compression, narinfo.file_size, narinfo.info.nar_size) == ("xz", 168, 160)
    assert render(narinfo, SD) == REAL_NARINFO
    keys = public_keys([REAL_PK])
    assert check_signatures(narinfo.info, SD, keys) == 1
    assert check_signatures(narinfo.info.replace(nar_size=161), SD, keys) == 0
    assert check_signatures(narinfo.info, SD, public_keys(["test-key-1:" + base64.b64encode(bytes(32)).decode()])) == 0


@pytest.mark.timeout(10)
def test_narinfo_reader_defaults() -> None:
    text = ("StorePath: /nix/store/dcgxgfrhy8mb76rg8f1djpw23cl3fzmx-a\nURL: nar/x.nar.bz2\n"
            "NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\nNarSize: 120\n"
            "References: \nDeriver: unknown-deriver\nSystem: x86_64-linux\nFutureField: whatever\n")
    narinfo = parse(text, SD, "a.narinfo")
    assert narinfo.compression == "bzip2"  # no Compression line: Nix's old default
    assert narinfo.info.deriver is None and narinfo.info.references == frozenset()
    assert narinfo.file_hash is None and narinfo.system == "x86_64-linux"
    assert "System: x86_64-linux\n" in render(narinfo, SD)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("text,message", [
    ("URL: x\n", "StorePath missing"),
    ("StorePath: /nix/store/dcgxgfrhy8mb76rg8f1djpw23cl3fzmx-a\nURL: x\nNarSize: 1\n", "NarHash missing"),
    ("StorePath: /nix/store/dcgxgfrhy8mb76rg8f1djpw23cl3fzmx-a\nNarHash: sha256:"
     "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\nNarSize: 1\n", "URL missing"),
    ("StorePath: /nix/store/dcgxgfrhy8mb76rg8f1djpw23cl3fzmx-a\nURL: x\nNarHash: sha256:"
     "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\n", "NarSize missing or zero"),
    ("URL: x\nNarHash: md5:zz\n", "bad hash .* at line 2"),
    ("URL: x\nNarSize: 12a\n", "invalid NarSize '12a' at line 2"),
    ("URL: x\nno colon here\n", "expecting ':' at line 2"),
    ("URL: x", "expecting '\\\\n' at line 1"),
    ("StorePath: /elsewhere/dcgxgfrhy8mb76rg8f1djpw23cl3fzmx-a\n", "bad StorePath .* at line 1"),
    ("References: not-a-path\n", "bad reference .* at line 1"),
    ("References: \nReferences: dcgxgfrhy8mb76rg8f1djpw23cl3fzmx-a\nReferences: dcgxgfrhy8mb76rg8f1djpw23cl3fzmx-a\n",
     "extra References at line 3"),
])
def test_narinfo_errors_name_file_and_line(text, message) -> None:
    with pytest.raises(BadNarInfo, match=f"^NAR info file 'c/h.narinfo' is corrupt: {message}"):
        parse(text, SD, "c/h.narinfo")


_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789+-._?=", min_size=1, max_size=20).filter(
    lambda s: not s.startswith("."))


@settings(max_examples=100, deadline=None)
@given(name=_names, refs=st.sets(_names, max_size=4), size=st.integers(1, 2**63), sigs=st.sets(
    st.text(alphabet="abcdef0123456789=+/", min_size=1, max_size=30).map(lambda s: "k:" + s), max_size=3),
    comp=st.sampled_from(["xz", "none", "zstd", "bzip2"]), deriver=st.booleans())
def test_narinfo_round_trip(name, refs, size, sigs, comp, deriver) -> None:
    path = StorePath.from_parts("1" * 32, name)
    info = ValidPathInfo(path=path, nar_hash=hash_bytes("sha256", name.encode()), nar_size=size,
                         references={StorePath.from_parts("2" * 32, r) for r in refs} | {path},
                         deriver=StorePath.from_parts("3" * 32, name + ".drv") if deriver else None, sigs=sigs)
    narinfo = NarInfo(info=info, url=f"nar/{name}.nar", compression=comp, file_hash=hash_bytes("sha256", b"f"),
                      file_size=size // 2)
    assert parse(render(narinfo, SD), SD, "t") == narinfo


@pytest.mark.timeout(10)
def test_keys_and_signatures() -> None:
    key = SecretKey.generate("k-1")
    assert SecretKey.parse(key.to_string()) == key
    assert PublicKey.parse(key.to_public_key().to_string()) == key.to_public_key()
    sig = key.sign_detached(b"data")
    keys = {"k-1": key.to_public_key()}
    assert verify_detached(b"data", sig, keys)
    assert not verify_detached(b"datA", sig, keys)
    assert not verify_detached(b"data", sig, {})  # a key we don't trust
    with pytest.raises(BadKey, match="signature .* is not valid"):
        verify_detached(b"data", "k-1:" + base64.b64encode(b"short").decode(), keys)
    for text, message in [("nocolon", "secret key is corrupt"), ("n:!!!", "not valid base64"),
                          ("n:" + base64.b64encode(bytes(32)).decode(), "secret key 'n' is not valid")]:
        with pytest.raises(BadKey, match=message):
            SecretKey.parse(text)
    info = ValidPathInfo(path=B, nar_hash=hash_bytes("sha256", b"x"), nar_size=5, references={A, B})
    signed = sign_path_info(info, SD, key)
    assert check_signatures(signed, SD, keys) == 1
    assert check_signatures(signed.replace(references={A}), SD, keys) == 0


@pytest.mark.nix
@pytest.mark.timeout(30)
def test_keys_interoperate_with_nix(tmp_path, run_nix, gk) -> None:
    """Nix's key files sign exactly as we do; our key files are ones Nix can sign with."""
    run_nix("nix-store", "--generate-binary-cache-key", "nix-key-1", tmp_path / "nsk", tmp_path / "npk")
    nsk = SecretKey.parse((tmp_path / "nsk").read_text())
    assert nsk.to_public_key().to_string() == (tmp_path / "npk").read_text()
    assert gk("generate-binary-cache-key", "gk-key-1", tmp_path / "gsk", tmp_path / "gpk").status == 0
    gsk_text, gpk_text = (tmp_path / "gsk").read_text(), (tmp_path / "gpk").read_text()
    assert not gsk_text.endswith("\n") and not gpk_text.endswith("\n")
    assert SecretKey.parse(gsk_text).to_public_key() == PublicKey.parse(gpk_text)
    # Nix signs a path with our secret key (`nix store sign`); we verify it and reproduce the sig.
    hello = tmp_path / "hello.txt"
    hello.write_text("hello\n")
    store = ["--store", str(tmp_path / "st"), "--option", "build-users-group", ""]
    path = run_nix("nix-store", *store, "--add", hello).stdout.decode().strip()
    env = {"PATH": "/usr/bin:/bin", "NIX_USER_CONF_FILES": "", "HOME": str(tmp_path)}
    for sk in ("gsk", "nsk"):
        run_nix("nix", "--extra-experimental-features", "nix-command", *store, "store", "sign", "--key-file",
                tmp_path / sk, path, env=env)
    out = run_nix("nix", "--extra-experimental-features", "nix-command", *store, "path-info", "--json", "--sigs",
                  path, env=env).stdout
    entry = json.loads(out)[0]
    info = ValidPathInfo(path=SD.parse(path), nar_hash=Hash.parse_any(entry["narHash"]), nar_size=entry["narSize"])
    for sk in (SecretKey.parse(gsk_text), nsk):
        assert sign_path_info(info, SD, sk).sigs <= set(entry["signatures"])


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=5000), method=st.sampled_from(compression.METHODS), split=st.integers(1, 700))
def test_compression_round_trip_streaming(data, method, split) -> None:
    packed = compression.compress(method, data)
    chunks = [packed[i:i + split] for i in range(0, len(packed), split)]
    assert b"".join(compression.stream(compression.make_decompressor(method), chunks)) == data


@pytest.mark.timeout(10)
@pytest.mark.parametrize("method", ["xz", "bzip2", "zstd", "gzip"])
def test_truncated_or_trailing_data_is_an_error(method) -> None:
    packed = compression.compress(method, b"hello world" * 100)
    with pytest.raises(compression.CompressionError, match="truncated"):
        compression.decompress(method, packed[:-4])
    with pytest.raises(compression.CompressionError, match="trailing data"):
        compression.decompress(method, packed + b"junk")


@pytest.mark.timeout(10)
def test_xz_is_what_nix_reads() -> None:
    """A standard .xz container with a CRC64 check, as liblzma's easy encoder writes."""
    packed = compression.compress("xz", b"x")
    assert packed[:6] == b"\xfd7zXZ\x00" and packed[7] == 0x04  # stream flags: CRC64
    with pytest.raises(compression.CompressionError, match="unknown compression method 'lzma2'"):
        compression.make_decompressor("lzma2")
    if shutil.which("xz"):
        assert subprocess.run(["xz", "-dc"], input=packed, capture_output=True).stdout == b"x"
