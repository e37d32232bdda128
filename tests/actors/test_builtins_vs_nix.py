"""Builtin builders in real builds: `nix-store -r` and `goalkeeper realise` of the same
derivations, each in a fresh store at the same place in turn (so store paths, and the
symlinks buildenv makes, are the same): exit status, stdout, stderr, the valid paths
left and their NAR hashes and references agree. Sandbox off and on."""

from __future__ import annotations

import lzma
import os
import shutil
import subprocess
import sys

import pytest

from goalkeeper.store import nar

pytestmark = [pytest.mark.nix, pytest.mark.timeout(180)]

NIX = """
let
  pkg = name: script: derivation { inherit name; system = "x86_64-linux"; builder = "/bin/sh";
                                   args = [ "-c" ("PATH=/bin:/usr/bin; " + script) ]; };
  a = pkg "a" "mkdir -p $out/bin $out/share/a; echo a > $out/bin/a; echo doc > $out/share/a/doc";
  dep = pkg "dep" "mkdir -p $out/bin; echo dep > $out/bin/dep";
  b = pkg "b" ("mkdir -p $out/bin $out/nix-support; echo b > $out/bin/b; "
               + "echo ${dep} > $out/nix-support/propagated-user-env-packages");
  c = pkg "c" "mkdir -p $out/bin; echo c > $out/bin/a";
  fetch = name: attrs: derivation ({ inherit name; system = "builtin"; builder = "builtin:fetchurl";
                                    outputHashMode = "flat"; outputHashAlgo = "sha256"; } // attrs);
in {
  file = fetch "file" { url = "file://@DIR@/hello.txt"; outputHash = "@HELLO@"; };
  exe = fetch "exe" { url = "file://@DIR@/hello.txt"; executable = "1"; outputHashMode = "recursive";
                      outputHash = "@HELLO_EXE@"; };
  flatexe = fetch "flatexe" { url = "file://@DIR@/hello.txt"; outputHash = "@HELLO@"; executable = "1"; };
  missing = fetch "missing" { url = "file://@DIR@/nope.txt"; outputHash = "@HELLO@"; };
  nar = fetch "nar" { url = "file://@DIR@/tree.nar.xz"; unpack = "1"; outputHashMode = "recursive";
                      outputHash = "@TREE@"; };
  env = derivation { name = "user-environment"; system = "builtin"; builder = "builtin:buildenv";
                     derivations = "true 5 1 ${a} true 5 1 ${b} false 5 1 ${c}";
                     manifest = builtins.toFile "manifest.nix" "[ ]"; };
  collision = derivation { name = "collision"; system = "builtin"; builder = "builtin:buildenv";
                           derivations = "true 5 1 ${a} true 5 1 ${c}";
                           manifest = builtins.toFile "manifest.nix" "[ ]"; };
  channel = derivation { name = "channel"; system = "builtin"; builder = "builtin:unpack-channel";
                         channelName = "nixpkgs"; src = @DIR@/chan.tar.xz; };
  frob = derivation { name = "frob"; system = "builtin"; builder = "builtin:frob"; };
}
"""

CASES = ["file", "exe", "flatexe", "missing", "nar", "env", "collision", "channel", "frob"]


def _nix_hash(args: list[str]) -> str:
    return subprocess.run(["nix-hash", "--type", "sha256", "--base32", *args], capture_output=True, check=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("builtin-inputs")
    (d / "hello.txt").write_text("hello\n")
    tree = d / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("f\n")
    os.symlink("sub/f", tree / "link")
    (d / "tree.nar.xz").write_bytes(lzma.compress(b"".join(nar.dump_path(str(tree)))))
    exe = d / "hello-exe"
    shutil.copy(d / "hello.txt", exe)
    exe.chmod(0o755)
    chan = d / "chan"
    (chan / "nixpkgs-1234").mkdir(parents=True)
    (chan / "nixpkgs-1234" / "default.nix").write_text("{ }\n")
    subprocess.run(["tar", "-cJf", str(d / "chan.tar.xz"), "-C", str(chan), "nixpkgs-1234"], check=True)
    text = (NIX.replace("@DIR@", str(d)).replace("@HELLO@", _nix_hash(["--flat", str(d / "hello.txt")]))
            .replace("@HELLO_EXE@", _nix_hash([str(exe)])).replace("@TREE@", _nix_hash([str(tree)])))
    (d / "builtins.nix").write_text(text)
    return d


def _realise(program: list[str], root, nix_file, attr: str, sandbox: bool) -> tuple:
    """Instantiate and realise `attr` in a fresh store at `root`; what it printed and left valid."""
    for sub in ("store", "var/nix", "var/log/nix"):
        os.makedirs(root / sub)
    uri = f"local?store={root}/store&state={root}/var/nix&log={root}/var/log/nix"
    drv = subprocess.run(["nix-instantiate", "--store", uri, str(nix_file), "-A", attr], capture_output=True,
                         check=True, text=True).stdout.strip()
    opts = ["--option", "build-users-group", "", "--option", "substituters", "",
            "--option", "sandbox", "true" if sandbox else "false", "--option", "sandbox-paths", "/bin /lib /lib64 /usr"]
    run = subprocess.run([*program, "--store", uri, *opts, *(["-r"] if program == ["nix-store"] else ["realise"]),
                          drv], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    valid = subprocess.run(["sqlite3", f"{root}/var/nix/db/db.sqlite", "select path from ValidPaths order by path"],
                           capture_output=True, text=True, check=True).stdout.split()
    infos = {}
    for out in valid:
        infos[out] = [subprocess.run(["nix-store", "--store", uri, "-q", query, out], capture_output=True,
                                     text=True).stdout for query in ("--hash", "--references")]
    for dirpath, _, _ in os.walk(root):
        os.chmod(dirpath, 0o755)
    shutil.rmtree(root)
    return run.returncode, run.stdout, run.stderr, infos


@pytest.mark.parametrize("sandbox", [False, True], ids=["sandbox-off", "sandbox-on"])
@pytest.mark.parametrize("case", CASES)
def test_builtin_as_nix(tmp_path, inputs, case, sandbox):
    nix_file = inputs / "builtins.nix"
    theirs = _realise(["nix-store"], tmp_path / "s", nix_file, case, sandbox)
    ours = _realise([sys.executable, "-m", "goalkeeper.tools.cli"], tmp_path / "s", nix_file, case, sandbox)
    assert ours[0] == theirs[0], (ours[2], theirs[2])
    assert ours[1] == theirs[1]
    assert ours[2] == theirs[2]
    assert ours[3] == theirs[3]
    # in the sandbox a file:// URL outside the chroot is unreadable, to Nix as to us
    fetched = case in ("file", "exe", "nar")
    assert (theirs[0] == 0) == (case in ("env", "channel") or (fetched and not sandbox))
