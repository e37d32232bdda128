"""Many writers on one store: goalkeeper processes and threads, real Nix at the same time, and kill -9 mid-write."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from goalkeeper.store.local import LocalStore
from goalkeeper.store.nar import hash_path
from goalkeeper.store.settings import Settings
from goalkeeper.store.store_config import parse_store_uri

GRAPH_NIX = Path(__file__).resolve().parent.parent / "data" / "store" / "graph.nix"
NIX_ARGS = ["--option", "build-users-group", "", "--option", "substituters", ""]

# A writer process: adds text paths (shared names across writers, so the same paths race),
# trees, and batches of registrations with references, from several threads.
WRITER = textwrap.dedent(
    """
    import os, sys, threading
    from goalkeeper.store.local import LocalStore
    from goalkeeper.store.settings import Settings
    from goalkeeper.store.store_config import parse_store_uri
    uri, tag, rounds, scratch = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    store = LocalStore.open(parse_store_uri(uri), Settings.load(overrides=[("build-users-group", "")]))
    def work(t):
        for i in range(rounds):
            shared = store.add_text_to_store(f"shared-{i}", f"same text {i}".encode())
            own = store.add_text_to_store(f"own-{tag}-{t}-{i}", f"{tag} {t} {i}".encode(), [shared])
            d = os.path.join(scratch, f"tree-{tag}-{t}-{i}")
            os.makedirs(os.path.join(d, "sub"))
            for k in range(5):
                with open(os.path.join(d, "sub", f"f{k}"), "w") as f:
                    f.write(f"{tag} {t} {i} {k}" * 200)
            store.add_to_store(f"tree-{i % 3}", d, references=[own])
            print("added", i, flush=True)
    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for th in threads: th.start()
    for th in threads: th.join()
    store.close()
    """
)

# The same through the store actor: text paths via AddTextToStore, and outputs written in place
# (as a build leaves them) and then registered in batches via RegisterValidPaths.
WRITER_ACTOR = textwrap.dedent(
    """
    import os, sys, threading
    from goalkeeper.actors.store_actor import StoreActor
    from goalkeeper.actors.store_messages import AddTextToStore, RegisterValidPaths
    from goalkeeper.store.canonicalise import canonicalise_path_metadata
    from goalkeeper.store.hashes import sha256
    from goalkeeper.store.local import LocalStore
    from goalkeeper.store.nar import hash_path
    from goalkeeper.store.path_info import ValidPathInfo
    from goalkeeper.store.settings import Settings
    from goalkeeper.store.store_config import parse_store_uri
    uri, tag, rounds, scratch = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    store = LocalStore.open(parse_store_uri(uri), Settings.load(overrides=[("build-users-group", "")]))
    ref = StoreActor.start(store)
    def work(t):
        for i in range(rounds):
            shared = ref.ask(AddTextToStore(name=f"shared-{i}", text=f"same text {i}".encode()), timeout=60)
            infos = []
            for k in range(4):
                out = store.store_dir.make_store_path("output:out", sha256(f"{tag}{t}{i}{k}".encode()), f"out-{k}")
                real = store.real_path(out)
                with open(real, "w") as f:
                    f.write(f"{tag} {t} {i} {k}" * 100)
                canonicalise_path_metadata(real)
                h, n = hash_path(real)
                infos.append(ValidPathInfo(path=out, nar_hash=h, nar_size=n, references={shared}, ultimate=True))
            ref.ask(RegisterValidPaths(infos=tuple(infos)), timeout=60)
            print("added", i, flush=True)
    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for th in threads: th.start()
    for th in threads: th.join()
    ref.stop(timeout=60)
    store.close()
    """
)


def settings() -> Settings:
    return Settings.load(overrides=[("build-users-group", "")])


def check_store(uri: str) -> set:
    """Every valid path's files hash to its narHash, every reference is valid, and the DB is intact."""
    with LocalStore.open(parse_store_uri(uri), settings()) as store:
        db = store.db()
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)
        assert db.execute("pragma foreign_key_check").fetchall() == []
        paths = store.query_all_valid_paths()
        for path in paths:
            info = store.query_path_info(path)
            assert hash_path(store.real_path(path)) == (info.nar_hash, info.nar_size), path
            assert all(store.is_valid_path(r) for r in info.references)
        return paths


def spawn_writer(uri: str, tag: str, rounds: int, scratch: Path, script: str = WRITER) -> subprocess.Popen:
    scratch.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", script, uri, tag, str(rounds), str(scratch)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.timeout(240)
def test_processes_and_threads_register_concurrently(tmp_path, run_nix):
    uri = str(tmp_path / "st")
    LocalStore.open(parse_store_uri(uri), settings()).close()
    rounds = 8
    writers = [spawn_writer(uri, f"w{n}", rounds, tmp_path / f"scratch{n}") for n in range(3)]
    for w in writers:
        out, err = w.communicate(timeout=200)
        assert w.returncode == 0, err.decode()
    paths = check_store(uri)
    # shared-i once each; own paths and trees per writer and thread (trees may coincide only if equal).
    names = sorted(p.name for p in paths)
    assert sum(n.startswith("shared-") for n in names) == rounds
    assert sum(n.startswith("own-") for n in names) == 3 * 2 * rounds
    assert sum(n.startswith("tree-") for n in names) == 3 * 2 * rounds
    with LocalStore.open(parse_store_uri(uri), settings()) as store:
        rows = store.db().execute("select count(*), count(distinct path) from ValidPaths").fetchone()
        assert rows[0] == rows[1] == len(paths)
    proc = run_nix("nix-store", "--store", uri, *NIX_ARGS, "--verify", "--check-contents")
    assert b"error" not in proc.stderr


@pytest.mark.timeout(240)
def test_real_nix_and_goalkeeper_write_at_once(tmp_path, run_nix):
    uri = str(tmp_path / "st")
    LocalStore.open(parse_store_uri(uri), settings()).close()
    writer = spawn_writer(uri, "gk", 6, tmp_path / "scratch")
    nix = subprocess.Popen(
        ["nix-build", "--store", uri, *NIX_ARGS, "--option", "sandbox-paths", "/bin /lib /lib64 /usr",
         str(GRAPH_NIX), "-A", "b", "--no-out-link"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Meanwhile, the text path Nix's evaluation also adds (builtins.toFile "greeting").
    with LocalStore.open(parse_store_uri(uri), settings()) as store:
        greeting = store.add_text_to_store("greeting", b"hello\n")
    out, err = nix.communicate(timeout=200)
    assert nix.returncode == 0, err.decode()
    w_out, w_err = writer.communicate(timeout=200)
    assert writer.returncode == 0, w_err.decode()
    paths = check_store(uri)
    assert greeting in paths
    assert any(p.name == "b" for p in paths) and any(p.name == "b-dev" for p in paths)
    run_nix("nix-store", "--store", uri, *NIX_ARGS, "--verify", "--check-contents")
    refs = run_nix("nix-store", "--store", uri, *NIX_ARGS, "-q", "--references", out.decode().strip()).stdout
    assert refs.strip().endswith(b"-a")


@pytest.mark.timeout(280)
@pytest.mark.parametrize("script", [WRITER, WRITER_ACTOR], ids=["local-store", "store-actor"])
def test_kill_9_mid_registration_leaves_a_consistent_store(tmp_path, run_nix, script):
    uri = str(tmp_path / "st")
    LocalStore.open(parse_store_uri(uri), settings()).close()
    rng = random.Random(1234)
    for attempt in range(8):
        writer = spawn_writer(uri, f"k{attempt}", 40, tmp_path / f"scratch{attempt}", script)
        # Wait for some progress, then kill at a random moment.
        assert writer.stdout.readline().startswith(b"added")
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(30)
        writer.stdout.close()
        writer.stderr.close()
        check_store(uri)
    # After all that, goalkeeper and Nix both see a sound store and can keep adding to it.
    writer = spawn_writer(uri, "final", 2, tmp_path / "scratch-final", script)
    _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err.decode()
    check_store(uri)
    proc = run_nix("nix-store", "--store", uri, *NIX_ARGS, "--verify", "--check-contents")
    assert b"error" not in proc.stderr
