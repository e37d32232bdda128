"""The hash_tree benchmark runs end to end on a small tree (hashes agree with nix-hash)."""

from __future__ import annotations

import os

import pytest

from goalkeeper.tools.bench import hash_tree


@pytest.mark.nix
@pytest.mark.timeout(60)
def test_small_benchmark_run(tmp_path, run_nix, capsys):
    root = str(tmp_path / "tree")
    size, entries = hash_tree.build_tree(root, 2)
    assert size == 2 * 1024 * 1024
    kinds = {"link": 0, "exe": 0, "dir": 0}
    for dirpath, dirnames, filenames in os.walk(root):
        kinds["dir"] += len(dirnames)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                kinds["link"] += 1
            elif os.stat(path).st_mode & 0o100:
                kinds["exe"] += 1
    assert all(kinds.values()), kinds
    ratio = hash_tree.bench(root, runs=1, command=False)
    assert ratio > 0
    assert "throughput ratio goalkeeper/nix (in-process)" in capsys.readouterr().out
