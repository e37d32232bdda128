"""`nix show-derivation` JSON: byte-exact output, and reading it back with recomputation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from goalkeeper.store.derivation import Deferred, Derivation
from goalkeeper.store.derivation_json import json_string, read_show_derivation, recompute, show_derivations
from goalkeeper.store.errors import BadJSON
from goalkeeper.store.paths import StoreDir, StorePath

DATA = Path(__file__).resolve().parent.parent / "data" / "drv"
SD = StoreDir()
SHOW = (DATA / "show.json").read_bytes()
PATHS = sorted(StorePath(p.name) for p in (DATA / "store").glob("*.drv"))


def read_golden(path: StorePath) -> Derivation:
    return Derivation.parse((DATA / "store" / path.base).read_bytes(), path.derivation_name(), SD)


def test_show_derivation_is_byte_exact():
    # Given in reverse order: the output is sorted by path, as 2.8's StorePathSet is.
    assert show_derivations(SD, [(p, read_golden(p)) for p in reversed(PATHS)]) == SHOW


def test_writer_details():
    assert json_string('a"b\\c\nd\re\tf\x01\x1f\x7fé') == '"a\\"b\\\\c\\nd\\re\\tf\\u0001\\u001f\x7fé"'
    assert show_derivations(SD, []) == b"{}\n"
    assert b'"impure": true' in SHOW and b'"hashAlgo": "r:sha256"' in SHOW


def test_read_back_exactly():
    entries = read_show_derivation(SHOW, SD, "show.json", recompute=False)
    assert [e.key for e in entries] == [SD.print(p) for p in PATHS]
    for entry, path in zip(entries, PATHS):
        expected = read_golden(path)
        assert entry.drv.outputs == expected.outputs
        assert entry.input_drv_keys == {SD.print(p): o for p, o in expected.input_drvs.items()}
        assert entry.drv.env == expected.env and entry.drv.args == expected.args


def test_recompute_reproduces_every_drv():
    results = recompute(read_show_derivation(SHOW, SD, "show.json"), SD, read_golden)
    assert sorted(path for _, path, _ in results) == PATHS
    for entry, path, drv in results:
        assert entry.key == SD.print(path)
        assert drv.unparse(SD) == (DATA / "store" / path.base).read_bytes()


def _blanked(doc: dict) -> dict:
    """Keys renamed, output paths dropped or wrong, output env vars wrong: all must be recomputed."""
    renamed = {SD.print(p): f"/nix/store/{'0' * 32}-stale{i}.drv" for i, p in enumerate(PATHS)}
    out = {}
    for key, drv in doc.items():
        for i, (name, output) in enumerate(drv["outputs"].items()):
            if "path" in output:
                if i % 2:
                    del output["path"]
                else:
                    output["path"] = "/nix/store/wrong"
            drv["env"][name] = "" if i % 2 else "garbage"
        drv["inputDrvs"] = {renamed[k]: v for k, v in drv["inputDrvs"].items()}
        out[renamed[key]] = drv
    return out


def test_recompute_from_blanked_document_in_any_order():
    doc = _blanked(json.loads(SHOW))
    # Dependents before their dependencies: recomputation must sort them.
    text = json.dumps(dict(reversed(list(doc.items()))), ensure_ascii=False)
    # Entries read from the file never touch read_drv: everything is in the document.
    results = recompute(read_show_derivation(text.encode(), SD, "x.json"), SD, _no_store)
    assert sorted(path for _, path, _ in results) == PATHS
    for _, path, drv in results:
        assert drv.unparse(SD) == (DATA / "store" / path.base).read_bytes()
    order = [path for _, path, _ in results]
    for _, path, drv in results:
        assert all(order.index(p) < order.index(path) for p in drv.input_drvs)


def _no_store(path):
    raise AssertionError(f"read {path}")


def test_inputs_outside_the_document_come_from_read_drv():
    doc = json.loads(SHOW)
    dep2 = next(k for k in doc if k.endswith("-dep2.drv"))
    results = recompute(read_show_derivation(json.dumps({dep2: doc[dep2]}).encode(), SD), SD, read_golden)
    assert SD.print(results[0][1]) == dep2


def test_malformed_json_names_file_and_byte():
    with pytest.raises(BadJSON) as e:
        read_show_derivation('{"é": [}'.encode(), SD, "f.json")
    assert e.value.position == len('{"é": ['.encode())
    assert str(e.value).startswith("malformed JSON 'f.json' at byte 8: ")


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d.pop("outputs"), "missing required field 'outputs'"),
    (lambda d: d.__setitem__("args", "x"), '.args: expected a list of strings'),
    (lambda d: d["env"].__setitem__("n", 1), '.env.n: expected a string'),
    (lambda d: d["outputs"]["out"].__setitem__("hashAlgo", "r:sha3"), ".outputs.out.hashAlgo: unknown hash algorithm 'sha3'"),
    (lambda d: d["outputs"]["out"].update(hashAlgo="sha256", hash="xyz"), ".outputs.out.hash: "),
    (lambda d: d.__setitem__("inputSrcs", ["/elsewhere/x"]), '.inputSrcs[0]: '),
    (lambda d: d.__setitem__("inputDrvs", {"x.drv": ["out"]}), '.inputDrvs["x.drv"]: '),
])
def test_structural_errors_name_the_key_path(mutate, where):
    doc = json.loads(SHOW)
    key = next(k for k in doc if k.endswith("-simple.drv"))
    mutate(doc[key])
    with pytest.raises(BadJSON) as e:
        recompute(read_show_derivation(json.dumps({key: doc[key]}).encode(), SD, "f.json"), SD, read_golden, source="f.json")
    message = str(e.value)
    assert message.startswith(f"malformed JSON 'f.json': $[\"{key}\"]")
    assert where in message


def test_cycle_in_document():
    doc = json.loads(SHOW)
    a = next(k for k in doc if k.endswith("-simple.drv"))
    b = next(k for k in doc if k.endswith("-multi.drv"))
    doc[a]["inputDrvs"] = {b: ["out"]}
    with pytest.raises(BadJSON, match="cycle"):
        recompute(read_show_derivation(json.dumps({a: doc[a], b: doc[b]}).encode(), SD), SD, read_golden)


_text = st.binary(max_size=30).filter(lambda b: b"\x00" not in b).map(lambda b: b.decode("utf-8", "surrogateescape"))


@settings(max_examples=100, deadline=None)
@given(st.lists(_text, max_size=4), st.dictionaries(_text, _text, max_size=5), _text)
def test_json_round_trip_of_arbitrary_strings(args, env, builder):
    path = StorePath(f"{'0' * 32}-n.drv")
    env = {**env, "name": "n"}
    drv = Derivation(name="n", outputs={"out": Deferred()}, platform="p", builder=builder, args=tuple(args), env=env)
    text = show_derivations(SD, [(path, drv)])
    (entry,) = read_show_derivation(text, SD, recompute=False)
    assert (entry.key, entry.drv) == (SD.print(path), drv)


def test_stale_path_rewrites_replace_whole_paths_only():
    from goalkeeper.store.derivation_json import _Rewrites

    h1, h2 = "0" * 31 + "1", "0" * 31 + "2"
    r = _Rewrites()
    assert r("/nix/store/x") == "/nix/store/x"
    r.add(f"/nix/store/{h1}-a", f"/t/store/{h2}-a")
    r.add(f"/nix/store/{h1}-a-dev", f"/t/store/{h2}-a-dev")
    r.add("/not/a/store/path", "/x")  # nothing can refer to it: ignored
    text = f"x=/nix/store/{h1}-a y=/nix/store/{h1}-a-dev/bin z=/other/{h1}-a /not/a/store/path"
    assert r(text) == f"x=/t/store/{h2}-a y=/t/store/{h2}-a-dev/bin z=/other/{h1}-a /not/a/store/path"
