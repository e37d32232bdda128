"""Substitution from binary caches, side by side with real Nix 2.8.

One cache per module, made by real `nix copy --to file://…?secret-key=…` with a key
from `nix-store --generate-binary-cache-key`, holding graph.nix's `b` closure. Then
`goalkeeper realise` and `nix-store -r` substitute from it (file:// and the same
directory over loopback HTTP) and must register the same path infos; damaged
copies of the cache must be refused by both, with nothing registered.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from goalkeeper.tools.bench.narinfo_queries import serve_directory

pytestmark = pytest.mark.nix

GRAPH_NIX = Path(__file__).resolve().parent.parent / "data" / "store" / "graph.nix"
BASE = ["--option", "build-users-group", "", "--option", "sandbox-paths", "/bin /lib /lib64 /usr"]
BUILD_NOTHING = ["--option", "max-jobs", "0"]  # a substitution test must never fall back to building


@pytest.fixture(scope="module")
def nix_cache(tmp_path_factory):
    """(cache dir, public key text, {attr: output path}, drv path of b, the store that built it)."""
    import subprocess

    if shutil.which("nix") is None:
        pytest.skip("real Nix is not installed")
    root = tmp_path_factory.mktemp("nixcache")
    env = {"PATH": "/usr/bin:/bin", "NIX_USER_CONF_FILES": "", "HOME": str(root)}

    def nix(*argv: str) -> str:
        return subprocess.run([str(a) for a in argv], check=True, capture_output=True, env=env,
                              stdin=subprocess.DEVNULL, timeout=120).stdout.decode().strip()

    nix("nix-store", "--generate-binary-cache-key", "test-key-1", root / "sk", root / "pk")
    st = root / "st"
    drv = nix("nix-instantiate", "--store", st, *BASE, GRAPH_NIX, "-A", "b")
    outs = nix("nix-store", "--store", st, *BASE, "--option", "substituters", "", "-r", drv).split("\n")
    nix("nix", "--extra-experimental-features", "nix-command", "copy", "--store", st, *BASE,
        "--to", f"file://{root}/cache?secret-key={root}/sk", *outs)
    return root / "cache", (root / "pk").read_text(), outs, drv, st


def rows(store_root: Path) -> list[tuple]:
    """ValidPaths (without id and registrationTime) and Refs by path, sorted."""
    db = store_root / "nix" / "var" / "nix" / "db" / "db.sqlite"
    with sqlite3.connect(db) as conn:
        paths = conn.execute("select path, hash, deriver, narSize, ultimate, sigs, ca from ValidPaths "
                             "order by path").fetchall()
        refs = conn.execute("select a.path, b.path from Refs r join ValidPaths a on r.referrer = a.id "
                            "join ValidPaths b on r.reference = b.id order by 1, 2").fetchall()
    return paths + refs


def valid_count(store_root: Path) -> int:
    db = store_root / "nix" / "var" / "nix" / "db" / "db.sqlite"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from ValidPaths").fetchone()[0]


def subst_opts(uri: str, pk: str) -> list[str]:
    return [*BASE, "--option", "substituters", uri, "--option", "trusted-public-keys", pk]


@pytest.fixture
def served(nix_cache):
    """The cache's URL: file:// or the same directory over loopback HTTP (parametrised by the test)."""
    return nix_cache


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["file", "http"])
def test_substitutes_like_nix(nix_cache, tmp_path, gk, run_nix, transport, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cache, pk, outs, _, _ = nix_cache
    nix_root, gk_root = tmp_path / "nix", tmp_path / "gk"
    nix_proc = run_nix("nix-store", "--store", nix_root, *subst_opts(f"file://{cache}", pk), "-r", *outs,
                       env={"PATH": "/usr/bin:/bin", "NIX_USER_CONF_FILES": "", "HOME": str(tmp_path)})
    with (serve_directory(str(cache)) if transport == "http" else _nullcontext(f"file://{cache}")) as uri:
        result = gk("--store", gk_root, *subst_opts(uri, pk), *BUILD_NOTHING, "realise", *outs)
    assert result.status == 0, result.stderr.decode()
    assert result.stdout == nix_proc.stdout
    assert rows(gk_root) == rows(nix_root)
    err = result.stderr.decode()
    assert "these 4 paths will be fetched (0.00 MiB download, 0.00 MiB unpacked):" in err
    for out in outs:
        assert f"copying path '{out}' from '{uri}'..." in err
    run_nix("nix-store", "--store", gk_root, *BASE, "--verify", "--check-contents")


class _nullcontext:
    def __init__(self, value):
        self.value = value

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return False


@pytest.mark.timeout(60)
def test_derivation_outputs_are_substituted_not_built(nix_cache, tmp_path, gk, run_nix) -> None:
    """A drv whose outputs a cache has: nothing is built (max-jobs 0 would refuse a build)."""
    cache, pk, outs, drv, _ = nix_cache
    gk_root = tmp_path / "gk"
    drv_here = run_nix("nix-instantiate", "--store", gk_root, *BASE, GRAPH_NIX, "-A", "b").stdout.decode().strip()
    assert drv_here == drv
    result = gk("--store", gk_root, *subst_opts(f"file://{cache}", pk), *BUILD_NOTHING, "realise", drv)
    assert result.status == 0, result.stderr.decode()
    assert sorted(result.stdout.decode().split()) == sorted(outs)
    assert "will be built" not in result.stderr.decode()


def _damage(cache: Path, tmp_path: Path, what: str) -> Path:
    """A copy of the cache with one thing wrong in the narinfo/NAR of the path named `-a`."""
    copy = tmp_path / "damaged"
    shutil.copytree(cache, copy)
    narinfo = next(p for p in copy.glob("*.narinfo") if "-a\n" in p.read_text())
    text = narinfo.read_text()
    nar = copy / next(line[5:] for line in text.splitlines() if line.startswith("URL: "))
    if what == "bad-signature":
        sig = next(line for line in text.splitlines() if line.startswith("Sig: "))
        body = sig.split(":", 2)[2]
        flipped = ("B" if body[0] == "A" else "A") + body[1:]
        narinfo.write_text(text.replace(sig, f"Sig: test-key-1:{flipped}"))
    elif what == "corrupt-nar":
        data = bytearray(nar.read_bytes())
        data[len(data) // 2] ^= 0xFF
        nar.write_bytes(bytes(data))
    elif what == "missing-nar":
        nar.unlink()
    elif what in ("wrong-narhash", "wrong-narsize"):
        # uncompressed, so the file hash still matches and only the NAR's own check can fail
        import lzma

        nar.with_suffix("").write_bytes(lzma.decompress(nar.read_bytes()))
        nar.unlink()
        lines = []
        for line in text.splitlines():
            if line.startswith(("URL:", "Compression:", "FileHash:", "FileSize:")):
                line = {"URL": f"URL: {nar.with_suffix('').relative_to(copy)}", "Compression": "Compression: none",
                        "FileHash": None, "FileSize": None}[line.split(":")[0]]
            elif what == "wrong-narhash" and line.startswith("NarHash:"):
                line = "NarHash: sha256:" + "0" * 52
            elif what == "wrong-narsize" and line.startswith("NarSize:"):
                line = f"NarSize: {int(line.split()[1]) + 8}"
            if line is not None:
                lines.append(line)
        narinfo.write_text("\n".join(lines) + "\n")
    return copy


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what,message", [
    # the goal's pathInfoIsUntrusted: Nix's warning, then the next substituter (none here)
    ("bad-signature", "is not signed by any of the keys in 'trusted-public-keys'"),
    ("corrupt-nar", "is corrupt"),
    ("missing-nar", "does not exist in binary cache"),
    ("wrong-narhash", "hash mismatch importing path"),
    ("wrong-narsize", "size mismatch importing path"),
])
def test_damaged_cache_is_refused(nix_cache, tmp_path, gk, run_nix, what, message) -> None:
    cache, pk, outs, _, _ = nix_cache
    damaged = _damage(cache, tmp_path, what)
    a = next(o for o in outs if o.endswith("-b"))  # b refers to a: a's failure must stop b too
    sigs = ["--option", "require-sigs", "false"] if what.startswith("wrong-") else []
    nix_root, gk_root = tmp_path / "nix", tmp_path / "gk"
    nix_proc = run_nix("nix-store", "--store", nix_root, *subst_opts(f"file://{damaged}", pk), *sigs, "-r", a,
                       check=False, env={"PATH": "/usr/bin:/bin", "NIX_USER_CONF_FILES": "", "HOME": str(tmp_path)})
    result = gk("--store", gk_root, *subst_opts(f"file://{damaged}", pk), *sigs, *BUILD_NOTHING, "realise", a)
    err = result.stderr.decode()
    assert result.status != 0 and nix_proc.returncode != 0
    assert message in err, err
    if what == "bad-signature":
        assert err == nix_proc.stderr.decode()  # word for word
    # nothing of a (nor b, which needs it) is valid, and no file of a is left behind
    assert valid_count(gk_root) == 0
    leftovers = [p.name for p in (gk_root / "nix" / "store").iterdir() if "-a" in p.name and not p.name.endswith(".lock")]
    assert leftovers == []


@pytest.mark.timeout(60)
def test_unreachable_substituter_warns_and_fails_fast(tmp_path, gk, monkeypatch) -> None:
    import time

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = f"/nix/store/{'1' * 32}-x"
    start = time.monotonic()
    result = gk("--store", tmp_path / "gk", *BASE, "--option", "substituters", "http://127.0.0.1:1", "realise", path)
    assert time.monotonic() - start < 5
    err = result.stderr.decode()
    assert ("warning: unable to download 'http://127.0.0.1:1/nix-cache-info': Couldn't connect to server (7)"
            in err.splitlines())
    assert "don't know how to build these paths:" in err
    assert result.status == 1


@pytest.mark.timeout(90)
def test_fallback_builds_when_substitution_fails(nix_cache, tmp_path, gk, run_nix) -> None:
    """A corrupt NAR for a drv's output: without --fallback the build fails, with it the drv is built."""
    cache, pk, outs, drv, _ = nix_cache
    damaged = _damage(cache, tmp_path, "corrupt-nar")
    a_drv = run_nix("nix-instantiate", "--store", tmp_path / "gk", *BASE, GRAPH_NIX, "-A", "a").stdout.decode().strip()
    opts = ["--store", tmp_path / "gk", *subst_opts(f"file://{damaged}", pk)]
    refused = gk(*opts, "realise", a_drv)
    assert refused.status == 1
    assert "some substitutes for the outputs of derivation" in refused.stderr.decode()
    built = gk(*opts, "realise", "--fallback", a_drv)
    assert built.status == 0, built.stderr.decode()
    assert built.stdout.decode().strip().endswith("-a")
