"""Scale: `goalkeeper realise` of 10,000-derivation graphs (wide and chain) in under 1 GB.

The graph is written straight into a fresh store (tools/bench/realise_graph.py),
then realised by `goalkeeper realise -j 2` in a subprocess whose own peak RSS
is read from wait4's rusage. Afterwards every output must be valid, with the
NAR hash real Nix computes for it checked on a sample.

Slow (minutes: 10,000 builds each), so kept out of CI: run with `-m slow`.
A 200-node version of the same checks runs always, so the harness itself is tested.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from goalkeeper.store.hashes import Base
from goalkeeper.store.local import LocalStore
from goalkeeper.store.store_config import parse_store_uri
from goalkeeper.tools.bench import realise_graph

PEAK_RSS_LIMIT_KIB = 1024 * 1024  # 1 GiB


def realise_graph_and_check(tmp_path: Path, shape: str, nodes: int) -> realise_graph.Run:
    uri, top = realise_graph.prepared_store(str(tmp_path), shape, nodes)
    log = tmp_path / "realise.log"
    run = realise_graph.timed(realise_graph.goalkeeper_argv(uri, 2, [top]), str(log))
    assert run.status == 0, log.read_text()[-3000:]

    store = LocalStore.open(parse_store_uri(uri))
    try:
        outputs = [p for p in store.query_all_valid_paths() if not p.is_derivation()]
        assert len(outputs) == nodes
        top_path = store.store_dir.parse(top)
        [top_out] = store.query_derivation_output_map(top_path).values()
        # stdout (the log's last line) is the top output, as nix-store -r prints it
        assert log.read_text().splitlines()[-1] == store.print(top_out)
        if shutil.which("nix-hash"):
            sample = sorted(outputs)[:: max(1, nodes // 20)]
            printed = [store.print(p) for p in sample]
            hashes = subprocess.run(["nix-hash", "--type", "sha256", "--base32", *printed], capture_output=True,
                                    text=True, check=True).stdout.split()
            recorded = [store.query_path_info(p).nar_hash.to_string(Base.BASE32, False) for p in sample]
            assert hashes == recorded
    finally:
        store.close()
    return run


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shape", realise_graph.SHAPES)
def test_realise_small_graph_in_subprocess(tmp_path: Path, shape: str) -> None:
    run = realise_graph_and_check(tmp_path, shape, 200)
    assert run.max_rss_kib < PEAK_RSS_LIMIT_KIB


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("shape", realise_graph.SHAPES)
def test_realise_10k_graph_under_1gb(tmp_path: Path, shape: str) -> None:
    run = realise_graph_and_check(tmp_path, shape, 10_000)
    print(f"{shape}: 10,000 builds in {run.seconds:.1f} s, peak RSS {run.max_rss_kib // 1024} MiB")
    assert run.max_rss_kib < PEAK_RSS_LIMIT_KIB
