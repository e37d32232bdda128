"""Benchmark: register N paths in batches, goalkeeper vs `nix-store --register-validity --hash-given`.

Both get the same input (the `--dump-db` format: path, narHash, narSize,
deriver, references), each path referring to up to three earlier ones, on
fresh stores of the same shape. goalkeeper registers through
`LocalStore.register_valid_paths` (one transaction per batch) and, separately,
through the store actor; Nix reads the whole input and registers it in one
transaction after canonicalising each path, so the paths exist as empty files.

    python -m goalkeeper.tools.bench.register_paths [--paths 10000] [--batch 1000]

Prints paths/s for each and the ratio goalkeeper/Nix; the target is >= 10,000 paths/s.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import tempfile
import time

from goalkeeper.store.hashes import sha256
from goalkeeper.store.local import LocalStore
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.settings import Settings
from goalkeeper.store.store_config import parse_store_uri

TARGET = 10_000  # paths per second


def make_infos(store_dir, n: int, seed: int = 1) -> list[ValidPathInfo]:
    rng = random.Random(seed)
    infos: list[ValidPathInfo] = []
    for i in range(n):
        path = store_dir.make_store_path("output:out", sha256(f"bench {i}".encode()), f"bench-{i}")
        refs = {infos[rng.randrange(i)].path for _ in range(min(i, 3))}
        infos.append(ValidPathInfo(path=path, nar_hash=sha256(f"nar {i}".encode()), nar_size=120 + i,
                                   references=refs))
    return infos


def dump_text(store_dir, infos: list[ValidPathInfo]) -> bytes:
    out = []
    for info in infos:
        out.append(store_dir.print(info.path))
        out.append(info.nar_hash.base16())
        out.append(str(info.nar_size))
        out.append("")
        out.append(str(len(info.references)))
        out.extend(sorted(store_dir.print(r) for r in info.references))
    return ("\n".join(out) + "\n").encode()


def scratch_store(root: str) -> str:
    store, state, log = (os.path.join(root, d) for d in ("store", "var/nix", "var/log/nix"))
    for d in (store, state, log):
        os.makedirs(d)
    return f"local?store={store}&state={state}&log={log}"


def open_store(uri: str) -> LocalStore:
    return LocalStore.open(parse_store_uri(uri), Settings.load(overrides=[("build-users-group", "")]))


def bench_goalkeeper(root: str, n: int, batch: int) -> float:
    uri = scratch_store(root)
    with open_store(uri) as store:
        infos = make_infos(store.store_dir, n)
        start = time.perf_counter()
        for i in range(0, n, batch):
            store.register_valid_paths(infos[i : i + batch])
        elapsed = time.perf_counter() - start
        assert store.db().execute("select count(*) from ValidPaths").fetchone() == (n,)
    return elapsed


def bench_actor(root: str, n: int, batch: int) -> float:
    from goalkeeper.actors.store_actor import StoreActor
    from goalkeeper.actors.store_messages import RegisterValidPaths

    uri = scratch_store(root)
    with open_store(uri) as store:
        infos = make_infos(store.store_dir, n)
        ref = StoreActor.start(store)
        try:
            start = time.perf_counter()
            futures = [ref.ask(RegisterValidPaths(infos=tuple(infos[i : i + batch])), block=False)
                       for i in range(0, n, batch)]
            for f in futures:
                f.get(timeout=600)
            elapsed = time.perf_counter() - start
        finally:
            ref.stop(timeout=60)
        assert store.db().execute("select count(*) from ValidPaths").fetchone() == (n,)
    return elapsed


def bench_nix(root: str, n: int) -> float:
    uri = scratch_store(root)
    with open_store(uri) as store:  # same layout and schema; Nix then opens it as its own
        store_dir = store.store_dir
        infos = make_infos(store_dir, n)
        for info in infos:
            # --register-validity canonicalises every path, so each must exist.
            with open(store.real_path(info.path), "wb"):
                pass
    text = dump_text(store_dir, infos)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIX_")}
    env["NIX_USER_CONF_FILES"] = ""
    start = time.perf_counter()
    subprocess.run(["nix-store", "--store", uri, "--option", "build-users-group", "",
                    "--register-validity", "--hash-given"], input=text, check=True, env=env,
                   capture_output=True)
    elapsed = time.perf_counter() - start
    with open_store(uri) as store:
        assert store.db().execute("select count(*) from ValidPaths").fetchone() == (n,)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paths", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--no-nix", action="store_true", help="skip the real Nix run")
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="gk-bench-register-")
    try:
        gk = bench_goalkeeper(os.path.join(root, "gk"), args.paths, args.batch)
        actor = bench_actor(os.path.join(root, "actor"), args.paths, args.batch)
        print(f"goalkeeper LocalStore: {args.paths} paths in {gk:.3f} s = {args.paths / gk:,.0f} paths/s "
              f"(batches of {args.batch})")
        print(f"goalkeeper store actor: {args.paths} paths in {actor:.3f} s = {args.paths / actor:,.0f} paths/s")
        if not args.no_nix and shutil.which("nix-store"):
            nix = bench_nix(os.path.join(root, "nix"), args.paths)
            print(f"nix-store --register-validity --hash-given: {args.paths} paths in {nix:.3f} s "
                  f"= {args.paths / nix:,.0f} paths/s")
            print(f"ratio goalkeeper/nix: {nix / gk:.2f}x")
        ok = args.paths / gk >= TARGET
        print(f"target {TARGET:,} paths/s: {'met' if ok else 'NOT met'}")
        return 0 if ok else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
