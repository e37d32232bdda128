"""BuildDerivation (the op remote builders use) against goalkeeper's daemon and nix-daemon.

A trusted client sends the BasicDerivation of a `.drv` that is valid in the store: both
daemons build it and answer the same status, error and built outputs.  (A `.drv` that is
*not* in the store is built from the description alone: test_daemon_basic_derivation_vs_nix.py.)
"""

from __future__ import annotations


import pytest

from goalkeeper.protocol.client import RemoteStore
from goalkeeper.store.derivation import Derivation
from goalkeeper.store.paths import StoreDir
from goalkeeper.store.store_config import DaemonStoreConfig

pytestmark = [pytest.mark.nix, pytest.mark.timeout(120)]

EXPR = ('derivation { name = "bd"; system = "x86_64-linux"; builder = "/bin/sh"; '
        'args = [ "-c" "echo built by description > $out" ]; }')


@pytest.fixture
def sides(daemon_pair):
    return daemon_pair


def test_build_derivation_of_a_valid_drv_as_nix(sides):
    top, pair = sides
    (top / "bd.nix").write_text(EXPR)
    store_dir = StoreDir()
    answers = []
    for side in pair:
        printed = side.run("nix-instantiate", top / "bd.nix").stdout.decode().strip()
        drv_path = store_dir.parse(printed)
        text = (side.root / printed.lstrip("/")).read_bytes()
        drv = Derivation.parse(text, drv_path.derivation_name(), store_dir)
        with RemoteStore(DaemonStoreConfig(side.sock), log=lambda text: None) as client:
            result = client.build_derivation(drv_path, drv)
        out = drv.outputs_and_opt_paths(store_dir)["out"][1]
        answers.append((result.status, result.error_msg, result.built_outputs, result.times_built,
                        (side.root / "nix" / "store" / out.base).read_text()))
    assert answers[1] == answers[0]
    assert answers[0][0] == 0 and answers[0][-1] == "built by description\n"
