"""Store path syntax and makeStorePath / makeFixedOutputPath / makeTextPath against real Nix 2.8."""

import shutil
import subprocess

import pytest

from goalkeeper.store.content_address import ContentAddress, parse_method, render_method
from goalkeeper.store.errors import BadHash, BadStorePath
from goalkeeper.store.hashes import Hash, hash_bytes
from goalkeeper.store.paths import StoreDir, StorePath, output_path_name

NIX = shutil.which("nix-store")
needs_nix = pytest.mark.skipif(NIX is None, reason="real Nix (nix-bin) is not installed")
SD = StoreDir()


def test_spec_worked_examples():
    nar = Hash("sha256", bytes.fromhex("1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13"))
    flat = hash_bytes("sha256", b"hello\n")
    assert SD.make_fixed_output_path(True, nar, "hello.txt").base == "i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"
    assert SD.make_fixed_output_path(False, flat, "hello.txt").base == "gy454w1cxaq731grqwylhzf4pp9r5izh-hello.txt"
    assert (SD.make_fixed_output_path(False, hash_bytes("sha1", b"hello\n"), "hello.txt").base
            == "svdva85yi507g9vncgsaxvnd1r808h4w-hello.txt")
    sha1_nar = Hash.parse_any("sha1:0deb52c2735eb38d360f976b7b3823c4ad05cce7")
    assert SD.make_fixed_output_path(True, sha1_nar, "hello.txt").base == "hzq8n5jpi3g2d0xhlvqd8q1gx5c9s6i3-hello.txt"
    text = SD.make_text_path("hello.txt", flat)
    assert text.base == "qa1w9gdfrba6jl2r57mb3c43863gqywp-hello.txt"
    # the spec's a.drv -> output path chain
    a_masked = Hash.parse_any("sha256:2f70ad92d714d0cd459e3dd4dc8aee2d83b11fa68690006ee1430e171eb7bf39")
    assert SD.make_output_path("out", a_masked, "a").base == "nplh5lxv7fajva98zhy0mj1xyc2qyg9l-a"


def test_rewrite_scratch_path():
    # `rewrite:<drv>:name:<out>` with an all-zero sha256, as DerivationGoal::makeFallbackPath
    zero = Hash("sha256", bytes(32))
    path = SD.make_store_path("rewrite:/nix/store/x-ca.drv:name:out", zero, "ca")
    assert path.name == "ca" and len(path.hash_part) == 32


def test_output_path_name():
    assert output_path_name("b", "out") == "b"
    assert output_path_name("b", "dev") == "b-dev"


@pytest.mark.parametrize("base,message", [
    ("abc", "'abc' is too short to be a valid store path"),
    ("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x", "contains illegal base-32 character 'e'"),
    ("h0h42gcb4mcpd1b5y8pkjg690c4vrd9g-a~b", "store path 'h0h42gcb4mcpd1b5y8pkjg690c4vrd9g-a~b' contains illegal character '~'"),
    ("w1x5fiwxj7grmzll2lci00lsfllymp8f-a b", "contains illegal character ' '"),
    ("x9cvy0sjhkvayyr221hd52r6znyw0xcz-é", "contains illegal character"),
    ("9hkl24wx2v9601jsphlk7p3vd0wz2avi-" + "y" * 212, "has a name longer than 211 characters"),
])
def test_bad_names_rejected_like_nix(base, message):
    with pytest.raises(BadStorePath, match=message):
        StorePath(base)


def test_good_names():
    for name in (".hidden", "x" * 211, "a+b-c._?=d"):
        assert StorePath("37pjm6adi126bxlrmgr0p5abz6vhbafw-" + name).name == name


def test_parse_and_print():
    p = SD.parse("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt")
    assert SD.print(p) == "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"
    assert p.hash_part == "i9pmrzmpshapij2kin22pff6fc2adavx" and p.name == "hello.txt"
    with pytest.raises(BadStorePath, match="is not in the Nix store"):
        SD.parse("/tmp/foo")
    with pytest.raises(BadStorePath, match="is not in the Nix store"):
        SD.parse("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt/sub")
    assert SD.to_store_path("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt/a/b") == (p, "/a/b")
    assert SD.is_in_store("/nix/store/x") and not SD.is_in_store("/nix/storex/y")
    assert StoreDir("/tmp/x/../st//store/").path == "/tmp/st/store"


def test_content_address_strings():
    for text in ("fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
                 "fixed:sha1:iwjz551fyw0cxcjgf4l6c879zabd6wpm",
                 "fixed:r:sha1:wz60bbf44cw7nswp1wv8vcsyfg155sqd",
                 "text:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq"):
        assert ContentAddress.parse(text).render() == text
    assert parse_method("fixed:r:sha256") == ("recursive", "sha256")
    assert render_method("flat", "md5") == "fixed:md5"
    with pytest.raises(BadHash):
        ContentAddress.parse("nope:sha256:abc")
    with pytest.raises(BadHash):
        parse_method("text:sha1")


# -- against real Nix ---------------------------------------------------------------------------

def _nix(*args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=True, **kw).stdout.strip()


@needs_nix
@pytest.mark.timeout(120)
@pytest.mark.parametrize("store_kind", ["chroot", "relocated"])
def test_add_paths_agree_with_nix(tmp_path, store_kind):
    if store_kind == "chroot":
        store_args, sd = ["--store", str(tmp_path / "st")], StoreDir("/nix/store")
    else:
        t = tmp_path / "T"
        for d in ("store", "var/nix", "var/log/nix"):
            (t / d).mkdir(parents=True)
        store_args = ["--store", f"local?store={t}/store&state={t}/var/nix&log={t}/var/log/nix"]
        sd = StoreDir(f"{t}/store")
    common = [*store_args, "--option", "build-users-group", ""]
    f = tmp_path / "data.bin"
    f.write_bytes(b"hello\n" * 3 + bytes(range(20)))
    for algo in ("md5", "sha1", "sha256", "sha512"):
        flat = Hash.parse_any(_nix("nix-hash", "--type", algo, "--flat", str(f)), algo)
        nar = Hash.parse_any(_nix("nix-hash", "--type", algo, str(f)), algo)
        got_flat = _nix("nix-store", *common, "--add-fixed", algo, str(f))
        assert got_flat == sd.print(sd.make_fixed_output_path(False, flat, "data.bin"))
        got_rec = _nix("nix-store", *common, "--add-fixed", "--recursive", algo, str(f))
        assert got_rec == sd.print(sd.make_fixed_output_path(True, nar, "data.bin"))
    nar256 = Hash.parse_any(_nix("nix-hash", "--type", "sha256", str(f)), "sha256")
    assert _nix("nix-store", *common, "--add", str(f)) == sd.print(sd.make_fixed_output_path(True, nar256, "data.bin"))


@needs_nix
@pytest.mark.timeout(120)
def test_text_paths_with_references_agree_with_nix(tmp_path):
    expr = ('let g = builtins.toFile "greeting" "hi\\n"; '
            'h = builtins.toFile "hello.txt" "uses ${g} twice ${g}\\n"; in [ g h ]')
    out = _nix("nix-instantiate", "--store", str(tmp_path / "st"), "--option", "build-users-group", "",
               "--eval", "--strict", "-E", expr)
    g_path, h_path = [s.strip('"') for s in out.strip("[ ]").split()]
    g = SD.make_text_path("greeting", hash_bytes("sha256", b"hi\n"))
    assert SD.print(g) == g_path
    h = SD.make_text_path("hello.txt", hash_bytes("sha256", f"uses {g_path} twice {g_path}\n".encode()), [g])
    assert SD.print(h) == h_path
