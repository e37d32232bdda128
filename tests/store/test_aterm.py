"""ATerm primitives and whole-derivation round trips (Hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from goalkeeper.store.aterm import ATermReader, decode_text, encode_text, escaped, unescaped
from goalkeeper.store.derivation import (
    CAFixed,
    CAFloating,
    Deferred,
    Derivation,
    Impure,
    InputAddressed,
)
from goalkeeper.store.errors import BadDerivation
from goalkeeper.store.hashes import HASH_SIZES, Hash
from goalkeeper.store.nixbase32 import encode as b32
from goalkeeper.store.paths import StoreDir, StorePath

SD = StoreDir()


def test_escaped_follows_print_string():
    assert escaped('q"b\\s\nn\rr\tt$d é') == '"q\\"b\\\\s\\nn\\rr\\tt$d é"'
    assert escaped("\x01\x7f") == '"\x01\x7f"'  # other control bytes stay raw
    assert unescaped('a"b\\') == '"a"b\\"'


def test_reader_decodes_escapes_like_parse_string():
    data = b'"a\\nb\\rc\\td\\\\e\\"f\\qg",'
    r = ATermReader(data)
    assert r.string() == 'a\nb\rc\td\\e"fqg'
    assert r.pos == len(data) - 1


def test_reader_lists_accept_optional_commas():
    r = ATermReader(b'[,"a""b",",c"]')
    r.expect(b"[")
    assert r.strings() == ["a", "b", ",c"]
    r = ATermReader(b'[,,"a"]')
    r.expect(b"[")
    with pytest.raises(BadDerivation) as e:
        r.strings()
    assert e.value.position == 2


def test_reader_errors_carry_offsets():
    with pytest.raises(BadDerivation) as e:
        ATermReader(b'xx"abc', "src").string()
    assert (e.value.position, e.value.reason) == (0, "expected '\"'")
    r = ATermReader(b'xx"ab\\"c')
    r.pos = 2
    with pytest.raises(BadDerivation) as e:
        r.string()
    assert (e.value.position, e.value.reason) == (2, "unterminated string")
    with pytest.raises(BadDerivation, match="bad path 'rel' in derivation"):
        ATermReader(b'"rel"').path()


def test_long_strings_are_linear():
    body = (b"x" * 999 + b"\\n") * 2000  # 2 MB with 2,000 escapes
    r = ATermReader(b'"' + body + b'"')
    assert len(r.string()) == 2_000_000


# -- Hypothesis: random derivations ------------------------------------------------------------

_bytes_text = st.binary(max_size=40).filter(lambda b: b"\x00" not in b).map(decode_text)
_names = st.from_regex(r"[a-z][a-z0-9+\-._?=]{0,15}", fullmatch=True)
_hash_parts = st.binary(min_size=20, max_size=20).map(b32)
_store_paths = st.builds(lambda h, n: StorePath(f"{h}-{n}"), _hash_parts, _names)
_drv_paths = st.builds(lambda h, n: StorePath(f"{h}-{n}.drv"), _hash_parts, _names)
_algos = st.sampled_from(sorted(HASH_SIZES))
_methods = st.sampled_from(["flat", "recursive"])
_hashes = _algos.flatmap(lambda a: st.binary(min_size=HASH_SIZES[a], max_size=HASH_SIZES[a]).map(lambda d: Hash(a, d)))


def _outputs(kind):
    names = st.lists(_names, min_size=1, max_size=4, unique=True)
    if kind == "ia":
        return st.dictionaries(_names, _store_paths.map(InputAddressed), min_size=1, max_size=4)
    if kind == "fixed":
        return st.builds(lambda m, h: {"out": CAFixed(m, h)}, _methods, _hashes)
    if kind == "floating":
        return st.tuples(names, _methods, _algos).map(lambda t: {n: CAFloating(t[1], t[2]) for n in t[0]})
    if kind == "impure":
        return st.tuples(names, _methods, _algos).map(lambda t: {n: Impure(t[1], t[2]) for n in t[0]})
    return names.map(lambda ns: {n: Deferred() for n in ns})


_derivations = st.builds(
    lambda name, outputs, input_drvs, input_srcs, platform, builder, args, env: Derivation(
        name=name, outputs=outputs, input_drvs=input_drvs, input_srcs=input_srcs, platform=platform,
        builder=builder, args=tuple(args), env=env),
    _names,
    st.sampled_from(["ia", "fixed", "floating", "impure", "deferred"]).flatmap(_outputs),
    st.dictionaries(_drv_paths, st.frozensets(_names, min_size=1, max_size=3), max_size=3),
    st.frozensets(_store_paths, max_size=3),
    # platform and output names are printed unescaped: Nix cannot round-trip `"` or `\` there.
    st.text(st.characters(blacklist_characters='"\\\x00', blacklist_categories=("Cs",)), max_size=10),
    _bytes_text,
    st.lists(_bytes_text, max_size=4),
    st.dictionaries(_bytes_text, _bytes_text, max_size=5),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_derivations)
def test_print_parse_round_trip(drv):
    text = drv.unparse(SD)
    parsed = Derivation.parse(text, drv.name, SD)
    assert parsed == drv
    assert parsed.unparse(SD) == text


@settings(max_examples=100, deadline=None)
@given(_derivations, st.data())
def test_mangled_text_never_raises_anything_else(drv, data):
    text = drv.unparse(SD)
    cut = data.draw(st.integers(0, len(text)))
    junk = data.draw(st.binary(max_size=4))
    mangled = text[:cut] + junk + text[cut + len(junk) * data.draw(st.integers(0, 1)):]
    try:
        Derivation.parse(mangled, drv.name, SD)
    except BadDerivation as e:
        assert 0 <= e.position <= len(mangled)


def test_encode_decode_are_inverse_on_raw_bytes():
    raw = bytes(range(1, 256))
    assert encode_text(decode_text(raw)) == raw
