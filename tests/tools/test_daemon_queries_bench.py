"""The daemon_queries benchmark runs end to end on a small store (both daemons answer alike)."""

from __future__ import annotations

import shutil

import pytest

from goalkeeper.tools.bench import daemon_queries


@pytest.mark.nix
@pytest.mark.timeout(90)
def test_small_benchmark_run(tmp_path, capsys):
    if shutil.which("nix-daemon") is None:
        pytest.skip("real Nix is not installed")
    ratio = daemon_queries.bench(200, runs=1, workdir=str(tmp_path))
    assert ratio > 0
    out = capsys.readouterr().out
    assert "200 QueryPathInfo round trips" in out and "ratio goalkeeper/nix" in out
