"""Derivations: parse/print, types, hashing modulo, output and drv paths, resolution.

Golden data: tests/data/drv/*.nix are instantiated by real Nix 2.8 into a chroot
store; the `.drv` files it wrote are kept in tests/data/drv/store/ and its
`nix show-derivation` of all of them in tests/data/drv/show.json.
`test_golden_files_are_what_nix_writes` re-instantiates and compares;
with GOALKEEPER_ACCEPT=1 it rewrites the golden files instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from goalkeeper.store.derivation import (
    BasicDerivation,
    CAFixed,
    CAFloating,
    Deferred,
    Derivation,
    DerivationError,
    DerivationType,
    Impure,
    InputAddressed,
    MissingExperimentalFeature,
    downstream_placeholder,
    hash_placeholder,
)
from goalkeeper.store.derivation_hash import (
    DEFERRED,
    REGULAR,
    fill_in_outputs,
    hash_derivation_modulo,
    static_output_hashes,
    try_resolve,
)
from goalkeeper.store.errors import BadDerivation
from goalkeeper.store.hashes import Hash, sha256
from goalkeeper.store.parsed_derivation import BadDerivationAttr, ParsedDerivation
from goalkeeper.store.paths import StoreDir, StorePath

DATA = Path(__file__).resolve().parent.parent / "data" / "drv"
GOLDEN_STORE = DATA / "store"
NIX_FILES = ("drvs.nix", "ca.nix", "impure.nix")
FEATURES = "nix-command ca-derivations impure-derivations"
SD = StoreDir()


def golden_paths() -> list[StorePath]:
    return sorted(StorePath(p.name) for p in GOLDEN_STORE.glob("*.drv"))


def golden_text(path: StorePath) -> bytes:
    return (GOLDEN_STORE / path.base).read_bytes()


def read_golden(path: StorePath) -> Derivation:
    return Derivation.parse(golden_text(path), path.derivation_name(), SD)


def golden(name: str) -> StorePath:
    (path,) = [p for p in golden_paths() if p.derivation_name() == name]
    return path


def instantiate_all(run_nix, root: Path) -> None:
    """Instantiate every golden expression with real Nix into the chroot store `root`."""
    for nix_file in NIX_FILES:
        run_nix("nix-instantiate", "--store", root, "--option", "build-users-group", "",
                "--extra-experimental-features", FEATURES, DATA / nix_file)


def show_all(run_nix, root: Path, paths: list[str]) -> bytes:
    return run_nix("nix", "--extra-experimental-features", FEATURES, "show-derivation",
                   "--store", root, "--option", "build-users-group", "", *paths).stdout


@pytest.mark.nix
@pytest.mark.timeout(120)
def test_golden_files_are_what_nix_writes(run_nix, tmp_path):
    root = tmp_path / "st"
    instantiate_all(run_nix, root)
    written = {p.name: p.read_bytes() for p in (root / "nix" / "store").glob("*.drv")}
    show = show_all(run_nix, root, [f"/nix/store/{name}" for name in sorted(written)])
    if os.environ.get("GOALKEEPER_ACCEPT") == "1":
        shutil.rmtree(GOLDEN_STORE, ignore_errors=True)
        GOLDEN_STORE.mkdir(parents=True)
        for name, text in written.items():
            (GOLDEN_STORE / name).write_bytes(text)
        (DATA / "show.json").write_bytes(show)
    assert {p.base: golden_text(p) for p in golden_paths()} == written
    assert (DATA / "show.json").read_bytes() == show


def test_golden_set_covers_the_cases():
    types = {read_golden(p).type() for p in golden_paths()}
    assert types == set(DerivationType)
    assert len(golden_paths()) >= 30


# -- parse / print -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", golden_paths(), ids=lambda p: p.derivation_name())
def test_round_trip_and_paths(path):
    text = golden_text(path)
    drv = Derivation.parse(text, path.derivation_name(), SD)
    assert drv.unparse(SD) == text
    assert drv.drv_path(SD) == path
    # The text is stored with references inputSrcs ∪ inputDrvs: the recomputed path proves it.
    assert drv.references() == drv.input_srcs | set(drv.input_drvs)


@pytest.mark.parametrize("path", golden_paths(), ids=lambda p: p.derivation_name())
def test_evaluator_procedure_reproduces_outputs(path):
    """fill_in_outputs, from the drv with its outputs and output env vars scrambled, gives nix's drv."""
    drv = read_golden(path)
    scrambled_outputs = {
        name: (Deferred() if isinstance(o, InputAddressed) else o) for name, o in drv.outputs.items()
    }
    env = dict(drv.env)
    for name in drv.outputs:
        if name in env:
            env[name] = "/nix/store/wrong"
    scrambled = Derivation(name=drv.name, outputs=scrambled_outputs, input_drvs=drv.input_drvs,
                           input_srcs=drv.input_srcs, platform=drv.platform, builder=drv.builder,
                           args=drv.args, env=env)
    filled = fill_in_outputs(SD, scrambled, read_golden, {})
    assert filled == drv
    assert filled.unparse(SD) == golden_text(path)


def test_escapes_are_byte_exact():
    text = golden_text(golden("escapes"))
    assert b'("weird","q\\"b\\\\s\\nn\\rr\\tt$d \xc3\xa9 \xc3\xbc \xe6\x97\xa5\xe6\x9c\xac")' in text
    assert b'("ctl","c\x01\x1f\x7fd")' in text
    drv = read_golden(golden("escapes"))
    assert drv.env["weird"] == 'q"b\\s\nn\rr\tt$d é ü 日本'
    assert drv.env['key with "quotes" and\ttab'] == "v"
    assert "" in drv.args


def test_raw_bytes_survive():
    drv = Derivation(name="raw", outputs={"out": Deferred()}, platform="p", builder="b",
                     env={"k": b"\xff\xfe\x80".decode("utf-8", "surrogateescape"), "\udcf0": "x", "\ue000": "y"})
    text = drv.unparse(SD)
    assert b'("k","\xff\xfe\x80")' in text
    # std::map order is byte order: U+E000 (EE 80 80) sorts before the raw byte F0.
    assert text.index(b'"\xee\x80\x80"') < text.index(b'"\xf0"')
    assert Derivation.parse(text, "raw", SD) == drv


def test_parse_accepts_what_nix_accepts():
    # Optional commas before items, none between them, any \X escape, trailing bytes ignored.
    text = (b'Derive([,("out","","","")],[],[],"x\\y","/bin/sh",[,"a""b\\q"],[("k","v"),("k","w")])garbage')
    drv = Derivation.parse(text, "n", SD)
    assert drv.args == ("a", "bq")
    assert drv.platform == "xy"
    assert drv.env == {"k": "w"}  # drv.env[name] = value: the last wins
    assert drv.outputs == {"out": Deferred()}


def test_first_duplicate_output_wins():
    text = b'Derive([("out","","",""),("out","","r:sha256","")],[],[],"x","b",[],[])'
    assert Derivation.parse(text, "n", SD).outputs == {"out": Deferred()}


def test_fixed_output_path_field_is_ignored_and_recomputed():
    text = golden_text(golden("fixed-flat-sha256"))
    real_path = read_golden(golden("fixed-flat-sha256")).outputs_and_opt_paths(SD)["out"][1]
    bogus = text.replace(SD.print(real_path).encode(), b"/anything", 1)
    drv = Derivation.parse(bogus, "fixed-flat-sha256", SD)
    assert drv.unparse(SD) == text


def test_output_kinds_parse():
    outs = (b'("a","","md5","b1946ac92492d2347c6235b4d2611184"),("b","","r:sha1",""),'
            b'("c","","",""),("d","","sha512","impure")')
    with pytest.raises(BadDerivation, match="bad path ''"):
        Derivation.parse(b"Derive([" + outs + b'],[],[],"x","b",[],[])', "n", SD)
    text = outs.replace(b'("a","",', b'("a","/x",')
    drv = Derivation.parse(b"Derive([" + text + b'],[],[],"x","b",[],[])', "n", SD)
    assert drv.outputs == {
        "a": CAFixed("flat", Hash("md5", bytes.fromhex("b1946ac92492d2347c6235b4d2611184"))),
        "b": CAFloating("recursive", "sha1"),
        "c": Deferred(),
        "d": Impure("flat", "sha512"),
    }


def test_experimental_features_checked_when_asked():
    ca = golden_text(golden("ca"))
    with pytest.raises(MissingExperimentalFeature) as e:
        Derivation.parse(ca, "ca", SD, experimental_features=frozenset())
    assert str(e.value) == ("experimental Nix feature 'ca-derivations' is disabled; "
                            "use '--extra-experimental-features ca-derivations' to override")
    Derivation.parse(ca, "ca", SD, experimental_features={"ca-derivations"})
    impure = golden_text(golden("impure"))
    with pytest.raises(MissingExperimentalFeature, match="impure-derivations"):
        Derivation.parse(impure, "impure", SD, experimental_features={"ca-derivations"})
    # Deferred derivations need no feature to be read (nix show-derivation reads dep.drv without it).
    Derivation.parse(golden_text(golden("dep")), "dep", SD, experimental_features=frozenset())


def test_malformed_positions():
    # (text, the bytes at which the error must be reported, the reason)
    cases = [
        (b"Derive(", b"Derive(", "expected 'Derive(['"),
        (b'Xerive([("out","","","")],[],[],"x","b",[],[])', b"Xerive", "expected 'Derive(['"),
        (b'Derive([("out","","",""],[],[],"x","b",[],[])', b"],[],[],", "expected ')'"),
        (b'Derive([("out","rel","","")],[],[],"x","b",[],[])', b'"rel"', "bad path 'rel' in derivation"),
        (b'Derive([("out","","","")],[("x.drv",["out"])],[],"x","b",[],[])', b'"x.drv"', "bad path 'x.drv'"),
        (b'Derive([("out","","","")],[],["/nix/store/short"],"x","b",[],[])', b'"/nix/store/short"',
         "too short to be a valid store path"),
        (b'Derive([("out","/other/store/00000000000000000000000000000000-n","","")],[],[],"x","b",[],[])',
         b'"/other', "is not in the Nix store"),
        (b'Derive([("out","","foo","")],[],[],"x","b",[],[])', b'"foo"', "unknown hash algorithm 'foo'"),
        (b'Derive([("out","/x","sha256","abc")],[],[],"x","b",[],[])', b'"abc"', "wrong length"),
        (b'Derive([("out","","","")],[],[],"x","b",[],[("k","v)])', b'"v)])', "unterminated string"),
        (b'Derive([("out","","","")],[],[],"x","b",[],[("k","v")]', b"", "expected ')'"),
        (b'Derive([("out","","","")],[],[],"x","b",[],[("k","v")', b"", "unexpected end of input in list"),
        (b'Derive([("out","","","")],[],[],"x",b,[],[])', b"b,[]", "expected '\"'"),
        (b'Derive([("out","","r:sha1","")],[],[],"x","b",[],[])', None, None),  # floating: fine
    ]
    for text, at, reason in cases:
        if at is None:
            Derivation.parse(text, "n", SD)
            continue
        with pytest.raises(BadDerivation) as e:
            Derivation.parse(text, "n", SD, source="/nix/store/x.drv")
        position = text.rindex(at) if at else len(text)
        assert e.value.position == position, (text, e.value)
        assert str(e.value).startswith(f"malformed derivation '/nix/store/x.drv' at byte {position}: "), e.value
        assert reason in e.value.reason


@pytest.mark.parametrize("path", golden_paths()[::3], ids=lambda p: p.derivation_name())
def test_every_truncation_is_a_bad_derivation(path):
    text = golden_text(path)
    for end in range(len(text)):
        with pytest.raises(BadDerivation) as e:
            Derivation.parse(text[:end], path.derivation_name(), SD)
        assert 0 <= e.value.position <= end


def test_derivation_types_and_errors():
    def drv(**outputs):
        return BasicDerivation(name="n", outputs=outputs)

    p = StorePath("00000000000000000000000000000000-n")
    h = sha256(b"x")
    assert drv(out=InputAddressed(p)).type() is DerivationType.INPUT_ADDRESSED
    assert drv(out=CAFixed("flat", h)).type() is DerivationType.CA_FIXED
    assert drv(out=Deferred(), dev=Deferred()).type() is DerivationType.DEFERRED
    assert drv(a=CAFloating("flat", "sha1"), b=CAFloating("recursive", "sha1")).type().is_ca
    errors = {
        "must have at least one output": drv(),
        "can't mix derivation output types": drv(out=Deferred(), dev=InputAddressed(p)),
        "only one fixed output is allowed for now": drv(out=CAFixed("flat", h), dev=CAFixed("flat", h)),
        'single fixed output must be named "out"': drv(dev=CAFixed("flat", h)),
        "all floating outputs must use the same hash type": drv(a=CAFloating("flat", "sha1"),
                                                                b=CAFloating("flat", "sha256")),
    }
    for message, d in errors.items():
        with pytest.raises(DerivationError) as e:
            d.type()
        assert str(e.value) == message
    t = DerivationType
    assert [x.has_known_output_paths for x in t] == [True, False, True, False, False]
    assert [x.is_sandboxed for x in t] == [True, True, False, True, False]
    assert [x.is_pure for x in t] == [True, True, True, True, False]


# -- hashing ---------------------------------------------------------------------------------


def test_hash_modulo_spec_values():
    cache = {}
    fo = read_golden(golden("fixed-flat-sha256"))
    # Spec §2.5: a fixed-output drv hashes "fixed:out:<algo>:<hex>:<path>".
    (fo_out,) = [p for o, p in fo.outputs_and_opt_paths(SD).values()]
    assert hash_derivation_modulo(SD, fo, False, read_golden, cache).hashes["out"] == sha256(
        f"fixed:out:sha256:{fo.outputs['out'].hash.base16()}:{SD.print(fo_out)}".encode())
    ca = read_golden(golden("ca"))
    assert static_output_hashes(SD, ca, read_golden, cache)["out"].base16() == (
        "0551fe9240dc8ae8d2a7e98d03ace1d3279d37778c4a6e43c4f1728f31246e60")
    dep = read_golden(golden("dep"))
    dh = hash_derivation_modulo(SD, dep, True, read_golden, cache)
    assert dh.kind == DEFERRED and dh.hashes["out"].base16().startswith("408b0d96")
    impure = read_golden(golden("impure"))
    ih = hash_derivation_modulo(SD, impure, True, read_golden, cache)
    assert ih.kind == DEFERRED and ih.hashes["out"] == sha256(b"impure")
    simple = read_golden(golden("simple"))
    # No inputDrvs: the unmasked modulo hash is the hash of the file.
    assert hash_derivation_modulo(SD, simple, False, read_golden, cache).hashes["out"] == sha256(golden_text(golden("simple")))


def test_hash_modulo_memoises_each_input_once():
    reads = []

    def counting_read(path):
        reads.append(path)
        return read_golden(path)

    cache = {}
    for path in golden_paths():
        hash_derivation_modulo(SD, read_golden(path), True, counting_read, cache)
    assert len(reads) == len(set(reads))
    assert all(cache[p].kind in (REGULAR, DEFERRED) for p in cache)


def test_hash_modulo_deep_chain_is_iterative():
    """A 3,000-long chain: no recursion limit, each node read once."""
    drvs = {}
    build_cache = {}
    prev = None
    for i in range(3000):
        input_drvs = {prev: frozenset({"out"})} if prev else {}
        d = fill_in_outputs(SD, Derivation(name=f"n{i}", outputs={"out": Deferred()}, platform="x", builder="b",
                                           input_drvs=input_drvs, env={"i": str(i)}), drvs.__getitem__, build_cache)
        prev = d.drv_path(SD)
        drvs[prev] = d
    reads = []
    last = drvs[prev]

    def read(p):
        reads.append(p)
        return drvs[p]

    cache = {}
    hash_derivation_modulo(SD, last, True, read, cache)
    assert len(reads) == 2999 == len(set(reads))


def test_placeholders():
    assert hash_placeholder("out") == "/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9"
    assert hash_placeholder("dev") == "/02qcpld1y6xhs5gz9bchpxaw0xdhmsp5dv88lh25r2ss44kh8dxz"
    assert downstream_placeholder(golden("ca"), "out") == "/011h8d5y6vnf88qw2aa323gqj5rnz2hjfw1jhqj5m3wi4292mwwv"
    assert hash_placeholder("out") in read_golden(golden("ca")).args[1]


def test_try_resolve_matches_spec():
    dep = read_golden(golden("dep"))
    realised = StorePath("4lpn6n89gb8h315mxm7pw99m1l1srpqj-ca")
    resolved = try_resolve(SD, dep, lambda drv, out: realised if (drv, out) == (golden("ca"), "out") else None)
    as_drv = Derivation(**{f: getattr(resolved, f) for f in BasicDerivation.__dataclass_fields__})
    assert as_drv.drv_path(SD).base == "iz9i0prdj0jz5hsjxb34q2ryq9y1vypr-dep.drv"
    assert resolved.outputs["out"].path.base.startswith("n8j77kj5")
    assert resolved.input_srcs == {realised}
    assert SD.print(realised) in resolved.args[1]
    assert try_resolve(SD, dep, lambda drv, out: None) is None


def test_parsed_derivation_attrs():
    s = ParsedDerivation(golden("structured"), read_golden(golden("structured")))
    assert s.structured_attrs["nested"] == {"a": {"b": "c"}, "x": []}
    assert s.get_strings_attr("requiredSystemFeatures") == ["kvm", "big-parallel"]
    assert s.required_system_features() == {"kvm", "big-parallel"}
    assert s.prefer_local_build() and s.substitutes_allowed()
    assert s.get_string_attr("weird") == 'tab\tquote"é'
    with pytest.raises(BadDerivationAttr, match="attribute 'flag' of derivation '.*-structured.drv' must be a string"):
        s.get_string_attr("flag")
    b = ParsedDerivation(golden("booleans"), read_golden(golden("booleans")))
    assert b.get_bool_attr("t") is True and b.get_bool_attr("f") is False
    assert b.get_string_attr("n") is None  # __ignoreNulls
    assert b.get_strings_attr("l") == ["a", "1", "b"]
    assert ParsedDerivation(golden("ca"), read_golden(golden("ca"))).required_system_features() == {"ca-derivations"}
    assert not read_golden(golden("simple")).is_builtin()
