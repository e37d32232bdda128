"""`pre-build-hook` (sandboxed builds): its extra-sandbox-paths reach the builder, and a
hook that says something else fails the build with Nix's message -- as real Nix 2.8 does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.nix, pytest.mark.timeout(120)]

DRV = ('derivation { name = "pbh"; system = "x86_64-linux"; builder = "/bin/sh"; '
       'args = ["-c" "read x < /extra/file; echo $x > $out"]; }')


def _store(root) -> str:
    for sub in ("store", "var/nix", "var/log/nix"):
        os.makedirs(root / sub, exist_ok=True)
    return f"local?store={root}/store&state={root}/var/nix&log={root}/var/log/nix"


def _hook(tmp_path, name: str, output: str) -> str:
    hook = tmp_path / name
    hook.write_text(f"#!/bin/sh\nprintf '{output}'\n")
    hook.chmod(0o755)
    return str(hook)


def _build(program: list[str], command: list[str], root, hook: str, nix_file) -> subprocess.CompletedProcess:
    """`program --store … --option … command DRV` on a fresh store at `root`."""
    uri = _store(root)
    drv = subprocess.run(["nix-instantiate", "--store", uri, str(nix_file)], capture_output=True,
                         check=True).stdout.decode().strip()
    opts = ["--option", "build-users-group", "", "--option", "substituters", "", "--option", "sandbox", "true",
            "--option", "sandbox-paths", "/bin /lib /lib64 /usr", "--option", "pre-build-hook", hook]
    return subprocess.run([*program, "--store", uri, *opts, *command, drv], capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=60)


@pytest.mark.parametrize("case", ["extra-sandbox-paths", "unknown-command"])
def test_pre_build_hook_as_nix(tmp_path, case):
    extra = tmp_path / "extradir"
    extra.mkdir()
    (extra / "file").write_text("hello-from-hook\n")
    output = (f"extra-sandbox-paths\\n/extra={extra}\\n\\n" if case == "extra-sandbox-paths"
              else "bogus\\n")
    hook = _hook(tmp_path, "hook.sh", output)
    nix_file = tmp_path / "d.nix"
    nix_file.write_text(DRV)
    theirs = _build(["nix-store"], ["-r"], tmp_path / "nix", hook, nix_file)
    ours = _build([sys.executable, "-m", "goalkeeper.tools.cli"], ["realise"], tmp_path / "gk", hook, nix_file)
    assert ours.returncode == theirs.returncode, (ours.stderr.decode(), theirs.stderr.decode())
    if case == "extra-sandbox-paths":
        assert ours.returncode == 0
        [nix_out] = [p for p in (tmp_path / "nix" / "store").iterdir() if p.name.endswith("-pbh")]
        [gk_out] = [p for p in (tmp_path / "gk" / "store").iterdir() if p.name.endswith("-pbh")]
        assert gk_out.read_text() == nix_out.read_text() == "hello-from-hook\n"
    else:
        message = "unknown pre-build hook command 'bogus'"
        assert message in theirs.stderr.decode() and message in ours.stderr.decode()
