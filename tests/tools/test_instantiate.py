"""`goalkeeper instantiate FILE.json`: nix's show-derivation JSON back into an empty store.

Real Nix instantiates the golden expressions into one store; goalkeeper writes
them from the JSON into another, and must produce the same paths and bytes,
in a store real Nix then reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from goalkeeper.store.local import LocalStore
from goalkeeper.store.paths import StoreDir
from goalkeeper.store.store_config import parse_store_uri

pytestmark = pytest.mark.nix

DATA = Path(__file__).resolve().parent.parent / "data" / "drv"
FEATURES = "nix-command ca-derivations impure-derivations"
EXTRA = ["--extra-experimental-features", "ca-derivations impure-derivations"]


@pytest.fixture
def nix_side(run_nix, tmp_path):
    """(store root, show-derivation JSON of every golden drv, {drv path: bytes}) written by real Nix."""
    root = tmp_path / "nixstore"
    base = ["--store", root, "--option", "build-users-group", ""]
    for nix_file in ("drvs.nix", "ca.nix", "impure.nix"):
        run_nix("nix-instantiate", *base, "--extra-experimental-features", FEATURES, DATA / nix_file)
    drvs = {f"/nix/store/{p.name}": p.read_bytes() for p in (root / "nix" / "store").glob("*.drv")}
    show = run_nix("nix", "--extra-experimental-features", FEATURES, "show-derivation", *base, *sorted(drvs)).stdout
    return root, show, drvs


def add_sources(store_root: str, nix_root: Path) -> None:
    """Make the non-derivation inputs (builtins.toFile results) valid in our store, as a prior step would."""
    store = LocalStore.open(parse_store_uri(store_root))
    try:
        for p in (nix_root / "nix" / "store").iterdir():
            if p.name.endswith("-greeting"):
                store.add_text_to_store("greeting", p.read_bytes())
    finally:
        close = getattr(store, "close", None)
        if close:
            close()


def check_written(gk_result, chroot_store, drvs, order):
    assert gk_result.status == 0, gk_result.stderr
    printed = gk_result.stdout.decode().splitlines()
    assert printed == order
    for path in printed:
        assert (Path(chroot_store.real_store_dir) / Path(path).name).read_bytes() == drvs[path]


def test_instantiate_nix_json(gk, run_nix, tmp_path, chroot_store, nix_side):
    nix_root, show, drvs = nix_side
    add_sources(chroot_store.uri, nix_root)
    (tmp_path / "in.json").write_bytes(show)
    got = gk(*chroot_store.args, *EXTRA, "instantiate", tmp_path / "in.json")
    check_written(got, chroot_store, drvs, list(json.loads(show)))
    # Real Nix reads our store: same JSON, references as Nix registers them.
    again = run_nix("nix", "--extra-experimental-features", FEATURES, "show-derivation", *chroot_store.args,
                    *sorted(drvs)).stdout
    assert again == show
    for path in sorted(drvs)[:6]:
        ours = run_nix("nix-store", *chroot_store.args, "--query", "--references", path).stdout
        theirs = run_nix("nix-store", "--store", nix_root, "--query", "--references", path).stdout
        assert ours == theirs


def test_instantiate_blanked_and_reordered(gk, tmp_path, chroot_store, nix_side):
    nix_root, show, drvs = nix_side
    add_sources(chroot_store.uri, nix_root)
    doc = json.loads(show)
    renamed = {k: f"/nix/store/{'1' * 32}-stale{i}.drv" for i, k in enumerate(doc)}
    blanked = {}
    for key in reversed(list(doc)):  # dependents first
        drv = doc[key]
        for name, output in drv["outputs"].items():
            output.pop("path", None)
            drv["env"][name] = ""
        drv["inputDrvs"] = {renamed[k]: v for k, v in drv["inputDrvs"].items()}
        blanked[renamed[key]] = drv
    (tmp_path / "blank.json").write_text(json.dumps(blanked, indent=1, ensure_ascii=False))
    got = gk(*chroot_store.args, *EXTRA, "instantiate", tmp_path / "blank.json")
    check_written(got, chroot_store, drvs, list(reversed(list(doc))))


def test_missing_inputs_are_named(gk, tmp_path, chroot_store, nix_side):
    _, show, _ = nix_side
    doc = json.loads(show)
    tofile = next(k for k in doc if k.endswith("-tofile.drv"))
    (tmp_path / "t.json").write_text(json.dumps({tofile: doc[tofile]}))
    got = gk(*chroot_store.args, "instantiate", tmp_path / "t.json")
    (src,) = doc[tofile]["inputSrcs"]
    assert got.status == 1
    assert got.stderr == f"error: input path '{src}' of derivation '{tofile}' is not valid in the store\n".encode()
    dep = next(k for k in doc if k.endswith("-diamond-left.drv"))
    (tmp_path / "d.json").write_text(json.dumps({dep: doc[dep]}))
    got = gk(*chroot_store.args, "instantiate", tmp_path / "d.json")
    first_missing = sorted(doc[dep]["inputDrvs"])[0]
    assert got.status == 1
    assert got.stderr == f"error: input derivation '{first_missing}' is not valid in the store\n".encode()


def test_feature_and_json_errors(gk, tmp_path, chroot_store, nix_side):
    _, show, _ = nix_side
    doc = json.loads(show)
    ca = next(k for k in doc if k.endswith("-ca.drv"))
    (tmp_path / "ca.json").write_text(json.dumps({ca: doc[ca]}))
    got = gk(*chroot_store.args, "instantiate", tmp_path / "ca.json")
    assert got.status == 1 and b"experimental Nix feature 'ca-derivations' is disabled" in got.stderr
    (tmp_path / "bad.json").write_bytes(b'{"x": ')
    got = gk(*chroot_store.args, "instantiate", tmp_path / "bad.json")
    assert got.status == 1
    assert got.stderr.startswith(f"error: malformed JSON '{tmp_path / 'bad.json'}' at byte 6: ".encode())


def test_store_dir_is_a_parameter(gk, run_nix, tmp_path, local_store, nix_side):
    """A store with another logical dir: paths are recomputed for it (nix agrees)."""
    _, show, _ = nix_side
    doc = json.loads(show)
    simple = next(k for k in doc if k.endswith("-simple.drv"))
    (tmp_path / "s.json").write_text(json.dumps({"anything": doc[simple]}))
    got = gk(*local_store.args, "instantiate", tmp_path / "s.json")
    assert got.status == 0, got.stderr
    (path,) = got.stdout.decode().split()
    assert StoreDir(local_store.store_dir).parse(path).name == "simple.drv"
    nix = run_nix("nix-instantiate", *local_store.args, DATA / "drvs.nix", "-A", "simple").stdout.decode().split()
    assert nix == [path]


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_instantiate_into_another_store_dir_rewrites_input_references(gk, run_nix, tmp_path):
    """JSON written for /nix/store, instantiated into a store whose logical dir differs: the
    dependents' env must mention the recomputed input outputs, exactly as nix-instantiate
    evaluating the same expression into that store writes them."""
    logical = tmp_path / "x" / "store"

    def uri(side: str) -> str:
        for d in ("real", "var/nix", "var/log/nix"):
            (tmp_path / side / d).mkdir(parents=True)
        s = tmp_path / side
        return f"local?store={logical}&real={s}/real&state={s}/var/nix&log={s}/var/log/nix"

    nix_uri, gk_uri = uri("nix"), uri("gk")
    expected = run_nix("nix-instantiate", "--store", nix_uri, "--option", "build-users-group", "",
                       EXAMPLES / "graph.nix").stdout.decode().split()
    result = gk("--store", gk_uri, "instantiate", str(EXAMPLES / "graph.json"))
    assert result.status == 0, result.stderr
    got = result.stdout.decode().split()
    nix_drvs = sorted(p.name for p in (tmp_path / "nix" / "real").glob("*.drv"))
    assert len(nix_drvs) == 5 and set(expected) <= set(got)
    assert sorted(Path(p).name for p in got) == nix_drvs
    for name in nix_drvs:
        assert (tmp_path / "gk" / "real" / name).read_bytes() == (tmp_path / "nix" / "real" / name).read_bytes()
