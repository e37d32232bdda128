"""BuildDerivation of a BasicDerivation whose `.drv` is not in the store, against both daemons.

This is what Nix's ssh-ng remote builds send (`Store::buildDerivation`: a goal given its
derivation in memory). The derivations are instantiated in a scratch store of their own,
so neither daemon has their `.drv`; a trusted client sends each to nix-daemon and to
goalkeeper's daemon, and both answer the same status, error text, times built and built
outputs, and leave the same valid paths (NAR hash, references, deriver, content address)
-- and still no `.drv`.

Error texts are compared without colours: Nix also colours the arguments inside its
messages (`hintfmt`), which goalkeeper's messages do not carry; the leading `normaltxt`
or coloured ``error:`` is compared as sent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from goalkeeper.protocol.client import RemoteStore
from goalkeeper.protocol.errors import RemoteError
from goalkeeper.store.derivation import BasicDerivation, Derivation
from goalkeeper.store.paths import StoreDir
from goalkeeper.store.store_config import DaemonStoreConfig
from goalkeeper.tools.bench.daemon_queries import init_nix_store, wait_for_socket

pytestmark = [pytest.mark.nix, pytest.mark.timeout(180)]

SD = StoreDir()
ANSI = re.compile(r"\x1b\[[0-9;]*m")

CASES = {
    # its output refers to its input source: a reference to register
    "refs": 'derivation { name = "bd"; system = "x86_64-linux"; builder = "/bin/sh"; src = ./src.txt; '
            'args = [ "-c" "read l < $src; echo \\"$l $src\\" > $out; echo a log line" ]; }',
    "multi": 'derivation { name = "mo"; outputs = [ "out" "dev" ]; system = "x86_64-linux"; builder = "/bin/sh"; '
             'args = [ "-c" "echo a > $out; echo b > $dev" ]; }',
    "fixed": 'derivation { name = "fo"; system = "x86_64-linux"; builder = "/bin/sh"; outputHashMode = "flat"; '
             'outputHashAlgo = "sha256"; '
             'outputHash = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"; '
             'args = [ "-c" "echo hello > $out" ]; }',
    "fails": 'derivation { name = "bf"; system = "x86_64-linux"; builder = "/bin/sh"; '
             'args = [ "-c" "echo oops; exit 3" ]; }',
    # its input source is valid on neither side, and there are no substituters
    "missing-src": 'derivation { name = "bm"; system = "x86_64-linux"; builder = "/bin/sh"; '
                   'args = [ "-c" "cat ${./other.txt} > $out" ]; }',
}


def _instantiate(top, env) -> dict[str, tuple]:
    """Each case's (drv path, BasicDerivation), from a scratch store neither daemon sees."""
    (top / "src.txt").write_text("from the source\n")
    (top / "other.txt").write_text("nowhere\n")
    drvs = {}
    for name, expr in CASES.items():
        (top / f"{name}.nix").write_text(expr)
        proc = subprocess.run(["nix-instantiate", "--store", str(top / "scratch"), "--option", "build-users-group",
                               "", str(top / f"{name}.nix")], capture_output=True, env=env, check=True, timeout=60)
        printed = proc.stdout.decode().strip()
        drv_path = SD.parse(printed)
        drv = Derivation.parse((top / "scratch" / printed.lstrip("/")).read_bytes(), drv_path.derivation_name(), SD)
        drvs[name] = (drv_path, BasicDerivation(name=drv.name, outputs=drv.outputs, input_srcs=drv.input_srcs,
                                                platform=drv.platform, builder=drv.builder, args=drv.args,
                                                env=drv.env))
    return drvs


def _answer(side, drv_path, drv):
    """What one daemon answered and left behind for one derivation."""
    logs = []
    with RemoteStore(DaemonStoreConfig(side.sock), log=logs.append) as client:
        result = client.build_derivation(drv_path, drv)
        outputs = {name: path for name, (_, path) in drv.outputs_and_opt_paths(SD).items()}
        infos = {}
        for name, path in sorted(outputs.items()):
            info = client.query_path_info(path)
            infos[name] = None if info is None else (info.path, info.nar_hash, info.nar_size, info.references,
                                                     info.deriver, info.ca, info.ultimate)
        drv_valid = client.is_valid_path(drv_path)
    return {"status": result.status, "error_head": result.error_msg[:4],
            "error": ANSI.sub("", result.error_msg), "times_built": result.times_built,
            "non_deterministic": result.is_non_deterministic, "built_outputs": result.built_outputs,
            "times_set": (result.start_time > 0, result.stop_time >= result.start_time),
            "infos": infos, "drv_valid": drv_valid,
            "building": [line for line in logs if line.startswith("building '")]}


@pytest.fixture(scope="module")
def answers(tmp_path_factory, start_daemon_side):
    """{side name: {case: answer}} for both daemons, each case sent twice (the second finds
    the outputs valid)."""
    if shutil.which("nix-daemon") is None:
        pytest.skip("real Nix is not installed")
    top = tmp_path_factory.mktemp("basic-drv")
    sides = []
    try:
        for side_name in ("nix", "gk"):
            sides.append(start_daemon_side(side_name, top))
        drvs = _instantiate(top, sides[0].env)
        result = {}
        for side in sides:
            side.run("nix-store", "--add", top / "src.txt")  # the "refs" case's input source
            result[side.name] = {case: _answer(side, *drvs[case]) for case in CASES}
            result[side.name]["refs again"] = _answer(side, *drvs["refs"])
        return result
    finally:
        for side in sides:
            side.stop()


@pytest.mark.parametrize("case", ["refs", "multi", "fixed"])
def test_a_drv_not_in_the_store_is_built_as_nix_builds_it(answers, case):
    nix, gk = answers["nix"][case], answers["gk"][case]
    assert gk == nix
    assert nix["status"] == 0 and nix["times_built"] == 1 and nix["times_set"] == (True, True)
    assert nix["built_outputs"] and all(info is not None for info in nix["infos"].values())
    assert not nix["drv_valid"]  # built from the description alone
    assert len(nix["building"]) == 1


def test_the_output_refers_to_its_input_source_as_with_nix(answers):
    nix = answers["nix"]["refs"]
    (path, _, _, references, deriver, _, _), = nix["infos"].values()
    assert {r.name for r in references} == {"src.txt"} and deriver.name == "bd.drv"


def test_a_second_build_finds_the_outputs_valid(answers):
    nix, gk = answers["nix"]["refs again"], answers["gk"]["refs again"]
    assert gk == nix
    assert nix["status"] == 2 and nix["times_built"] == 0 and nix["built_outputs"] and not nix["building"]


def test_a_failing_builder_is_answered_as_nix_answers(answers):
    nix, gk = answers["nix"]["fails"], answers["gk"]["fails"]
    assert gk == nix
    assert nix["status"] == 3 and nix["error_head"] == "\x1b[0m" and "failed with exit code 3" in nix["error"]
    assert nix["infos"] == {"out": None}


def test_a_missing_input_source_is_an_error_thrown_as_with_nix(answers):
    nix, gk = answers["nix"]["missing-src"], answers["gk"]["missing-src"]
    assert gk == nix
    assert nix["status"] == 9 and nix["error"].startswith("error: some dependencies of '")
    assert nix["error"].endswith("' are missing") and nix["times_built"] == 0


# -- an untrusted client ----------------------------------------------------------------------

def _start_untrusted(kind: str, top, env) -> tuple[subprocess.Popen, str]:
    """A daemon with `trusted-users` empty, so this (root) client is untrusted."""
    root, sock = top / kind, str(top / f"{kind}.sock")
    options = ["--option", "build-users-group", "", "--option", "substituters", "", "--option", "sandbox-paths",
               "/bin /lib /lib64 /usr", "--option", "trusted-users", ""]
    env = dict(env)
    if kind == "nix":
        init_nix_store(root, env)
        env["NIX_DAEMON_SOCKET_PATH"] = sock
        argv = ["nix-daemon", "--store", str(root), *options]
    else:
        argv = [sys.executable, "-m", "goalkeeper.tools.cli", "--store", str(root), *options, "daemon", "--socket",
                sock, "--quiet"]
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    wait_for_socket(sock, proc, timeout=20)
    return proc, sock


def test_an_untrusted_client_s_fixed_output_drv_is_written_and_built_as_with_nix(tmp_path):
    """daemon.cc: only content-addressed derivations, and their path is recomputed by
    writing the .drv; an input-addressed one is refused."""
    if shutil.which("nix-daemon") is None:
        pytest.skip("real Nix is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIX_")}
    env["NIX_USER_CONF_FILES"] = ""
    drvs = _instantiate(tmp_path, env)
    seen = []
    for kind in ("nix", "gk"):
        proc, sock = _start_untrusted(kind, tmp_path, env)
        try:
            with RemoteStore(DaemonStoreConfig(sock), log=lambda text: None) as client:
                drv_path, drv = drvs["fixed"]
                result = client.build_derivation(drv_path, drv)
                out = drv.outputs_and_opt_paths(SD)["out"][1]
                info = client.query_path_info(out)
                drv_valid = client.is_valid_path(drv_path)
                with pytest.raises(RemoteError) as refused:
                    client.build_derivation(*drvs["refs"])
            seen.append((result.status, result.built_outputs, info.nar_hash, info.deriver, info.ca, drv_valid,
                         type(refused.value).__name__, str(refused.value)))
        finally:
            proc.terminate()
            proc.wait(10)
    assert seen[1] == seen[0]
    status, _, _, deriver, _, drv_valid, _, refusal = seen[0]
    assert status == 0 and drv_valid and deriver == drvs["fixed"][0]
    assert refusal == "you are not privileged to build input-addressed derivations"
