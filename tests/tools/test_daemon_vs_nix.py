"""The unmodified Nix 2.8 client against `goalkeeper daemon` and against `nix-daemon`, side by side.

Each daemon serves its own chroot store (logical /nix/store), so the same inputs give the
same paths in both and every client output can be compared byte for byte. The client is
a "local FS store" too (it reads .drv files, logs and NARs from disk), hence `?root=`.
The daemons are started by conftest's `start_daemon_side`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


pytestmark = [pytest.mark.nix, pytest.mark.timeout(60)]

NIX_COMMAND = ["--extra-experimental-features", "nix-command"]

EXPR = r"""
{ salt ? "" }:
let
  txt = builtins.toFile "greeting" "hi there ${salt}";
  mk = name: args: derivation ({ inherit name; system = "x86_64-linux"; builder = "/bin/sh"; SALT = salt; } // args);
in rec {
  a = mk "a" { args = ["-c" "echo hello > $out; echo a line from a"]; };
  b = mk "b" { outputs = ["out" "dev"]; args = ["-c" "echo ${a} > $out; echo ${txt} > $dev; echo b says hi"]; };
  fail = mk "fail" { args = ["-c" "echo failing now; exit 3"]; };
  after = mk "after" { args = ["-c" "echo ${fail} ${b} > $out"]; };
}
"""


@pytest.fixture(scope="module")
def sides(tmp_path_factory, daemon_pair_on):
    top = tmp_path_factory.mktemp("daemons")
    (top / "t.nix").write_text(EXPR)
    (top / "hello.txt").write_text("hello\n")
    with daemon_pair_on(top) as started:
        yield top, started
    assert started[1].proc.returncode == 0, "goalkeeper daemon did not exit cleanly on SIGTERM"


def both(sides, *argv, check=True):
    """(nix result, goalkeeper result) of one client command."""
    _, (nix, gk) = sides
    return nix.run(*argv, check=check), gk.run(*argv, check=check)


def same(sides, *argv, check=True) -> bytes:
    n, g = both(sides, *argv, check=check)
    assert (g.returncode, g.stdout) == (n.returncode, n.stdout), g.stderr.decode()
    return n.stdout


def instantiate(sides, salt: str, attr: str) -> str:
    top = sides[0]
    return same(sides, "nix-instantiate", top / "t.nix", "--argstr", "salt", salt, "-A", attr).decode().strip()


def test_add_and_query(sides):
    top = sides[0]
    path = same(sides, "nix-store", "--add", top / "hello.txt").decode().strip()
    assert path == "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"
    same(sides, "nix-store", "-q", "--hash", path)
    same(sides, "nix-store", "-q", "--references", path)
    same(sides, "nix-store", "-q", "--referrers", path)
    same(sides, "nix-store", "-q", "--deriver", path)
    n, g = both(sides, "nix", *NIX_COMMAND, "path-info", "--json", path)
    assert _without_times(g.stdout) == _without_times(n.stdout)


def _without_times(out: bytes):
    infos = json.loads(out)
    for info in infos:
        info.pop("registrationTime", None)
    return infos


def test_instantiate_build_and_query(sides):
    drv = instantiate(sides, "build", "b")
    n, g = both(sides, "nix-store", "-r", drv)
    assert g.stdout == n.stdout and len(n.stdout.splitlines()) == 2
    assert g.stderr == n.stderr  # "these 2 derivations will be built", "building '…'", the log lines
    assert b"a line from a" in g.stderr and b"b says hi" in g.stderr
    out = [line for line in n.stdout.decode().split() if line.endswith("-b")][0]
    same(sides, "nix-store", "-q", "--outputs", drv)
    same(sides, "nix-store", "-q", "--references", out)
    same(sides, "nix-store", "-q", "--requisites", out)
    same(sides, "nix-store", "-q", "--deriver", out)
    a_out = same(sides, "nix-store", "-q", "--references", out).decode().split()[0]
    same(sides, "nix-store", "-q", "--referrers", a_out)
    n, g = both(sides, "nix", *NIX_COMMAND, "path-info", "--json", "-r", out)
    assert _without_times(g.stdout) == _without_times(n.stdout)
    a_drv = instantiate(sides, "build", "a")
    n, g = both(sides, "nix", *NIX_COMMAND, "log", a_drv)
    assert g.stdout == n.stdout == b"a line from a\n"
    # already valid: nothing to build, same answer
    n, g = both(sides, "nix-store", "-r", drv)
    assert (g.stdout, g.stderr) == (n.stdout, n.stderr)


def test_build_failure_and_keep_going(sides):
    fail = instantiate(sides, "fail", "fail")
    after = instantiate(sides, "fail", "after")
    n, g = both(sides, "nix-store", "-r", fail, check=False)
    assert g.returncode == n.returncode == 1  # the daemon does not send the exit status (≥ 1.26)
    assert g.stderr == n.stderr
    assert b"failing now" in g.stderr and b"failed with exit code 3" in g.stderr
    b = instantiate(sides, "fail", "b")
    n, g = both(sides, "nix-store", "-r", "-k", after, b, check=False)
    assert g.returncode == n.returncode == 1
    assert sorted(g.stderr.splitlines()) == sorted(n.stderr.splitlines())


def test_nix_build_uses_build_paths_with_results(sides):
    top = sides[0]
    n, g = both(sides, "nix", *NIX_COMMAND, "build", "--no-link", "--json", "-f", top / "t.nix",
                "--argstr", "salt", "new", "b", "b.dev")
    assert json.loads(g.stdout) == json.loads(n.stdout)


def test_nix_copy_to_a_binary_cache(sides):
    top, (nix, gk) = sides
    drv = instantiate(sides, "copy", "b")
    same(sides, "nix-store", "-r", drv)
    out = same(sides, "nix-store", "-q", "--outputs", drv).decode().split()
    for side in (nix, gk):
        side.run("nix", *NIX_COMMAND, "copy", "--to", f"file://{top}/cache-{side.name}", *out)
    narinfos = {side.name: {p.name: p.read_bytes() for p in (top / f"cache-{side.name}").glob("*.narinfo")}
                for side in (nix, gk)}
    assert narinfos["gk"] == narinfos["nix"] and len(narinfos["nix"]) == 4  # b, b-dev, a, greeting


def test_nix_copy_from_a_binary_cache_into_the_daemon(sides):
    top, (nix, gk) = sides
    drv = instantiate(sides, "fromcache", "b")
    nix.run("nix-store", "-r", drv)
    out = nix.run("nix-store", "-q", "--outputs", drv).stdout.decode().split()
    nix.run("nix", *NIX_COMMAND, "copy", "--to", f"file://{top}/cache-in", *out)
    gk.run("nix", *NIX_COMMAND, "copy", "--no-check-sigs", "--from", f"file://{top}/cache-in", "--to", gk.uri, *out)
    for path in out:
        n, g = both(sides, "nix-store", "-q", "--hash", path)
        assert g.stdout == n.stdout
    gk.run("nix-store", "--verify", "--check-contents")


QUERIES = [["--hash"], ["--references"], ["--requisites"], ["--referrers"], ["--deriver"], ["--size"]]


def test_goalkeeper_client_queries_both_daemons(sides):
    """`goalkeeper --store unix://S query …` prints what `nix-store -q` prints, against either daemon."""
    drv = instantiate(sides, "client", "b")
    same(sides, "nix-store", "-r", drv)
    top, (nix, gk) = sides
    out = nix.run("nix-store", "-q", "--outputs", drv).stdout.decode().split()[-1]
    for flags in QUERIES:
        expected = nix.run("nix-store", "-q", *flags, out).stdout
        for side in (nix, gk):
            got = subprocess.run([sys.executable, "-m", "goalkeeper.tools.cli", "--store", f"unix://{side.sock}",
                                  "query", *flags, out], capture_output=True, timeout=30, env=side.env)
            assert (got.returncode, got.stdout) == (0, expected), (side.name, flags, got.stderr.decode())
    missing = "/nix/store/" + "0" * 32 + "-missing"
    got = subprocess.run([sys.executable, "-m", "goalkeeper.tools.cli", "--store", f"unix://{gk.sock}",
                          "query", "--hash", missing], capture_output=True, timeout=30, env=gk.env)
    assert got.returncode == 1 and got.stderr == f"error: path '{missing}' is not valid\n".encode()


def _activities(stderr_bytes: bytes) -> list[tuple]:
    """The builds' activities and log lines of an internal-json log, without ids and progress counts."""
    events = []
    for line in stderr_bytes.decode().splitlines():
        if not line.startswith("@nix "):
            continue
        doc = json.loads(line[5:])
        if doc["action"] == "start":
            events.append(("start", doc["type"], doc["level"], doc["text"], tuple(doc.get("fields", ()))))
        elif doc["action"] == "result" and doc["type"] == 101:
            events.append(("log", tuple(doc["fields"])))
    return events


def test_build_activities_stream_as_from_nix_daemon(sides):
    top = sides[0]
    n, g = both(sides, "nix", *NIX_COMMAND, "build", "--no-link", "-f", top / "t.nix", "--argstr", "salt", "acts",
                "b", "--log-format", "internal-json", "-v")
    expected = _activities(n.stderr)
    assert ("log", ("b says hi",)) in expected and any(e[1] == 105 for e in expected if e[0] == "start")
    assert _activities(g.stderr) == expected


def test_add_fixed_verify_and_optimise(sides):
    top = sides[0]
    (top / "f.txt").write_text("flat\n")
    same(sides, "nix-store", "--add-fixed", "sha256", top / "f.txt")  # IsValidPath + AddToStoreNar
    same(sides, "nix-store", "--add-fixed", "--recursive", "sha1", top / "f.txt")
    n, g = both(sides, "nix-store", "--verify", "--check-contents")
    assert (g.returncode, g.stderr) == (n.returncode, n.stderr)
    n, g = both(sides, "nix-store", "--optimise")
    assert g.returncode == n.returncode == 0 and b"freed by hard-linking" in g.stderr


def test_garbage_collection_is_a_clear_error(sides):
    g = sides[1][1].run("nix-store", "--gc", check=False)
    assert g.returncode == 1 and b"garbage collection is not supported" in g.stderr


def test_goalkeeper_client_reads_drv_files_of_a_chroot_store(sides):
    """`unix://S?root=R`: .drv files are read from R/nix/store, as Nix's client reads them."""
    drv = instantiate(sides, "rootparam", "b")
    top, (nix, gk) = sides
    expected = nix.run("nix-store", "-q", "--outputs", drv).stdout
    assert len(expected.split()) == 2
    for side in (nix, gk):
        for uri in (side.uri, f"unix://{side.sock}?real={side.root}/nix/store"):
            got = subprocess.run([sys.executable, "-m", "goalkeeper.tools.cli", "--store", uri, "query", "--outputs",
                                  drv], capture_output=True, timeout=30, env=side.env)
            assert (got.returncode, got.stdout) == (0, expected), (side.name, uri, got.stderr.decode())
    got = subprocess.run([sys.executable, "-m", "goalkeeper.tools.cli", "--store", f"unix://{gk.sock}", "query",
                          "--outputs", drv], capture_output=True, timeout=30, env=gk.env)
    assert got.returncode == 1 and b"cannot read derivation" in got.stderr  # /nix/store holds no such file
