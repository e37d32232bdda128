"""Recursive Nix: a builder that runs the real Nix 2.8 client against its build's restricted
store, under goalkeeper and under real Nix, compared.

The builder adds a directory (`nix-store --add`), instantiates and builds an inner
derivation whose output is a directory (`nix-instantiate`, `nix-store -r`), reads both
from inside its sandbox (they must have been bind-mounted in while it ran), refers to
both from its output, and asks about a valid store path outside its closure (which must
stay invisible).  Output path, NAR hash, references and contents must match Nix's.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.nix, pytest.mark.timeout(180)]

# The Nix CLI and its libraries (Debian's /usr/bin/nix-store: /usr/lib/nix, /lib/x86_64-linux-gnu).
SANDBOX_PATHS = "/bin /lib /lib64 /usr"

OUTER = r'''{ hidden, hiddenDrv }:
derivation {
  name = "outer";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  requiredSystemFeatures = [ "recursive-nix" ];
  inherit hidden hiddenDrv;
  args = [ "-c" ''
    set -e
    export PATH=/usr/bin:/bin NIX_STORE_DIR=$NIX_STORE
    mkdir -p src/sub
    echo added-dir > src/sub/f
    added=$(nix-store --add src)
    cat > inner.nix <<INNER
    derivation { name = "inner"; system = "${builtins.currentSystem}"; builder = "/bin/sh";
      args = [ "-c" "/bin/mkdir \$out; echo built-inside > \$out/f" ]; }
    INNER
    drv=$(nix-instantiate inner.nix 2>/dev/null)
    innerout=$(nix-store -r $drv 2>/dev/null)
    mkdir $out
    ln -s $added $out/added
    ln -s $innerout $out/inner
    cat $added/sub/f $innerout/f > $out/seen-inside
    nix-store -q --references $innerout > $out/inner-references
    nix-store -q --hash "$hidden" > $out/hidden 2>&1 || echo "exit status $?" >> $out/hidden
    nix-store -r "$hiddenDrv" > $out/hidden-drv 2>&1 || echo "exit status $?" >> $out/hidden-drv
  '' ];
}
'''

HIDDEN_DRV = 'derivation { name = "hidden"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "exit 1" ]; }'


def _options(sandbox: bool) -> list[str]:
    return ["--option", "build-users-group", "", "--option", "substituters", "",
            "--option", "experimental-features", "recursive-nix",
            "--option", "sandbox", "true" if sandbox else "false", "--option", "sandbox-paths", SANDBOX_PATHS]


def _store_uri(root, sandbox: bool) -> str:
    if sandbox:
        return str(root)  # a chroot store: /nix/store inside, files under root
    for sub in ("store", "var/nix", "var/log/nix"):
        os.makedirs(root / sub, exist_ok=True)
    return f"local?store={root}/store&state={root}/var/nix&log={root}/var/log/nix"


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)


def _build_and_describe(program: list[str], root, sandbox: bool, nix_file) -> dict:
    """Add the hidden path, instantiate, build with `program`; what real Nix says of the output."""
    uri = _store_uri(root, sandbox)
    hidden_src = root.parent / "hidden.txt"
    hidden_src.write_text("outside the closure\n")
    hidden = _run(["nix-store", "--store", uri, "--add", str(hidden_src)]).stdout.decode().strip()
    hidden_drv = _run(["nix-instantiate", "--store", uri, "--expr", HIDDEN_DRV]).stdout.decode().strip()
    drv = _run(["nix-instantiate", "--store", uri, str(nix_file), "--argstr", "hidden", hidden,
                "--argstr", "hiddenDrv", hidden_drv])
    assert drv.returncode == 0, drv.stderr.decode()
    built = _run([*program, "--store", uri, *_options(sandbox), drv.stdout.decode().strip()])
    assert built.returncode == 0, built.stderr.decode()
    out = built.stdout.decode().strip().splitlines()[-1]
    query = lambda *args: _run(["nix-store", "--store", uri, "-q", *args, out]).stdout.decode()  # noqa: E731
    real_out = root / out.lstrip("/") if sandbox else out
    files = {name: (os.readlink(f"{real_out}/{name}") if os.path.islink(f"{real_out}/{name}")
                    else open(f"{real_out}/{name}").read())
             for name in sorted(os.listdir(real_out))}
    return {"out": out, "hash": query("--hash"), "references": query("--references"), "files": files,
            "hidden": hidden}


@pytest.mark.parametrize("sandbox", [True, False], ids=["sandbox", "no-sandbox"])
def test_recursive_build_as_nix(tmp_path, sandbox):
    nix_file = tmp_path / "outer.nix"
    nix_file.write_text(OUTER)
    # Without a sandbox the store dir is the real one, so both tools must use the same
    # directory in turn for their paths to be comparable.
    nix_root, gk_root = (tmp_path / "nix", tmp_path / "gk") if sandbox else (tmp_path / "s", tmp_path / "s")
    theirs = _build_and_describe(["nix-store", "-r"], nix_root, sandbox, nix_file)
    if not sandbox:
        nix_root.rename(tmp_path / "s-nix")
    ours = _build_and_describe([sys.executable, "-m", "goalkeeper.tools.cli", "realise"], gk_root, sandbox,
                               nix_file)
    assert ours == theirs
    # what the builder saw: both added paths inside its sandbox, and the hidden path not at all
    assert ours["files"]["seen-inside"] == "added-dir\nbuilt-inside\n"
    assert ours["files"]["hidden"] == f"error: path '{ours['hidden']}' is not valid\nexit status 1\n"
    assert "in recursive Nix because path is unknown" in ours["files"]["hidden-drv"]
    assert sorted(ours["references"].split()) == sorted([ours["files"]["added"], ours["files"]["inner"]])


LOGGING = r'''
derivation {
  name = "outer-log";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  requiredSystemFeatures = [ "recursive-nix" ];
  args = [ "-c" ''
    export PATH=/usr/bin:/bin NIX_STORE_DIR=$NIX_STORE
    cat > inner.nix <<INNER
    derivation { name = "inner-log"; system = "${builtins.currentSystem}"; builder = "/bin/sh";
      args = [ "-c" "echo inner log line; echo > \$out" ]; }
    INNER
    drv=$(nix-instantiate inner.nix 2>/dev/null)
    echo outer before
    nix-store -r $drv > /dev/null 2> client-stderr
    echo "the inner client said: $(tr '\n' '|' < client-stderr)"
    echo > $out
  '' ];
}
'''


@pytest.mark.parametrize("sandbox", [True, False], ids=["sandbox", "no-sandbox"])
def test_inner_builds_log_to_the_outer_client_as_nix(tmp_path, sandbox):
    """Nix's recursive daemon logs through the outer process's logger: the inner build's
    "building" line and log lines appear on the outer `nix-store -r`'s stderr, and the
    recursive client gets none of them."""
    nix_file = tmp_path / "outer-log.nix"
    nix_file.write_text(LOGGING)
    stderrs = []
    for program, root in ((["nix-store", "-r"], tmp_path / "nix"), ([sys.executable, "-m", "goalkeeper.tools.cli",
                                                                      "realise"], tmp_path / "gk")):
        if not sandbox and root.name == "gk":
            (tmp_path / "nix").rename(tmp_path / "nix-done")  # the same store dir in turn
            root = tmp_path / "nix"
        uri = _store_uri(root, sandbox)
        drv = _run(["nix-instantiate", "--store", uri, str(nix_file)])
        assert drv.returncode == 0, drv.stderr.decode()
        built = _run([*program, "--store", uri, *_options(sandbox), drv.stdout.decode().strip()])
        assert built.returncode == 0, built.stderr.decode()
        stderrs.append(built.stderr.decode())
    assert "inner log line\n" in stderrs[0]
    assert stderrs[1] == stderrs[0]
