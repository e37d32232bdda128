"""Wire codecs against the byte traces of spec §7 and round trips."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings, strategies as st

from goalkeeper.protocol import framing, handshake, serializers, stderr, version
from goalkeeper.protocol.errors import BadWireData, EndOfStream, LimitExceeded, RemoteError, UnsupportedVersion
from goalkeeper.protocol.wire import WireReader, WireWriter, encode
from goalkeeper.store.content_address import ContentAddress
from goalkeeper.store.hashes import Hash
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.paths import StoreDir, StorePath

pytestmark = pytest.mark.timeout(60)

STORE = StoreDir("/nix/store")
A_DRV = StorePath("w3gsyw5g8dbsmqjcdzxyrpbzmpajdf47-a.drv")


def reader(data: bytes) -> WireReader:
    return WireReader(io.BytesIO(data).read)


def test_u64_and_strings_are_little_endian_and_padded():
    assert encode(0x122) == bytes.fromhex("2201000000000000")
    assert encode("2.8.0") == bytes.fromhex("0500000000000000") + b"2.8.0\0\0\0"
    assert encode("") == b"\0" * 8
    assert encode("12345678") == bytes.fromhex("0800000000000000") + b"12345678"


def test_reads_are_bounded():
    with pytest.raises(LimitExceeded):
        reader(encode(1 << 40)).string()
    with pytest.raises(LimitExceeded):
        reader(encode(5, "a")).string(limit=4)
    with pytest.raises(LimitExceeded):
        reader(encode(1 << 30)).strings()
    with pytest.raises(EndOfStream):
        reader(encode(10) + b"abc").string()
    with pytest.raises(BadWireData):
        reader(encode(1) + b"a\0\0\0\0\0\0x").string()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 2**64 - 1), st.binary(max_size=40))))
def test_wire_round_trip(items):
    w = WireWriter()
    for item in items:
        w.u64(item) if isinstance(item, int) else w.bytes(item)
    r = reader(w.take())
    assert [r.u64() if isinstance(item, int) else r.bytes() for item in items] == items


def test_server_handshake_matches_the_observed_bytes():
    # spec §7.2: the client's hello (magic, 0x122, affinity 0, reserveSpace 0)
    client = bytes.fromhex("6378696e00000000" "2201000000000000") + b"\0" * 16
    sent = []
    hello = handshake.server_handshake(reader(client), sent.append)
    assert hello.version == 0x122 and hello.minor == 34 and hello.affinity is None
    daemon = b"".join(sent) + stderr.last()
    assert daemon == b"oixd\0\0\0\0" + bytes.fromhex("2201000000000000") + encode("2.8.0") + b"stla\0\0\0\0"


def test_server_handshake_for_old_clients_and_bad_magic():
    sent = []
    # a 1.32 client: still affinity and reserveSpace, but no version string from us
    hello = handshake.server_handshake(reader(encode(0x6E697863, 0x120, 1, 3, 0)), sent.append)
    assert hello.affinity == 3 and b"2.8.0" not in b"".join(sent)
    with pytest.raises(UnsupportedVersion):
        handshake.server_handshake(reader(encode(0x6E697863, 0x109)), [].append)
    with pytest.raises(BadWireData):
        handshake.server_handshake(reader(encode(0x12345678)), [].append)


def test_client_handshake_round_trip():
    daemon = encode(0x6478696F, 0x122, "2.8.0")
    sent = []
    hello = handshake.client_handshake(reader(daemon), sent.append)
    assert hello.nix_version == "2.8.0" and hello.minor == 34
    assert b"".join(sent) == encode(0x6E697863, 0x122, 0, 0)
    with pytest.raises(UnsupportedVersion):
        handshake.client_handshake(reader(encode(0x6478696F, 0x209)), [].append)
    with pytest.raises(UnsupportedVersion):
        handshake.client_handshake(reader(encode(0x6478696F, 0x109)), [].append)


def test_stderr_tags():
    assert stderr.last() == b"stla\0\0\0\0"
    assert stderr.next_line("hi\n") == encode(0x6F6C6D67, "hi\n")
    assert stderr.stop_activity(7) == encode(0x53544F50, 7)
    start = stderr.start_activity(5, 3, 105, "building 'x'", ("/nix/store/x.drv", "", 1, 1), 0)
    assert start == encode(0x53545254, 5, 3, 105, "building 'x'", 4, 1, "/nix/store/x.drv", 1, "", 0, 1, 0, 1, 0)
    assert stderr.result(5, 101, ("line",)) == encode(0x52534C54, 5, 101, 1, 1, "line")


def test_structured_error_and_legacy_error():
    assert stderr.error("boom", 34) == encode(0x63787470, "Error", 0, "Error", "boom", 0, 0)
    assert stderr.error("boom", 25, status=100) == encode(0x63787470, "\x1b[31;1merror:\x1b[0m boom", 100)
    for minor in (34, 25):
        with pytest.raises(RemoteError) as e:
            stderr.read_message(reader(stderr.error("boom", minor, status=100)), minor)
        assert "boom" in e.value.message
        assert e.value.status == (1 if minor == 34 else 100)


def test_stderr_messages_round_trip():
    data = (stderr.next_line("x\n") + stderr.start_activity(1, 0, 0, "t", (1, "s"), 9)
            + stderr.result(1, 104, ("buildPhase",)) + stderr.stop_activity(1) + stderr.read_request(10)
            + stderr.write_data(b"abc") + stderr.last())
    r = reader(data)
    got = [stderr.read_message(r, 34) for _ in range(7)]
    assert got == [stderr.Next("x\n"), stderr.StartActivity(1, 0, 0, "t", (1, "s"), 9),
                   stderr.Result(1, 104, ("buildPhase",)), stderr.StopActivity(1), stderr.Read(10),
                   stderr.Write(b"abc"), stderr.Last()]
    with pytest.raises(BadWireData):
        stderr.read_message(reader(encode(0x1234)), 34)


def test_framed_stream():
    payload = bytes(range(256)) * 300
    data = b"".join(framing.frames([payload, b"", b"tail"]))
    assert data.endswith(b"\0" * 8)
    assert data[:8] == (32 << 10).to_bytes(8, "little")  # no padding: raw frames
    source = framing.FramedSource(reader(data + b"after"))
    assert source.read_all(1 << 20) == payload + b"tail"
    assert source.read(5) == b""
    with pytest.raises(LimitExceeded):
        framing.FramedSource(reader(encode(1 << 40))).read(1)


PATH = StorePath("i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt")
HASH = Hash.parse_any("sha256:1dz9z5sgmv8ll1qhl1wwql6hl93zp7yd5ci1dskzhhqjs13yhjf0")


@pytest.mark.parametrize("minor", [34, 15])
def test_path_info_round_trip(minor):
    info = ValidPathInfo(path=PATH, nar_hash=HASH, nar_size=120, references=frozenset({PATH, A_DRV}),
                         deriver=A_DRV, registration_time=1234, ultimate=True, sigs=frozenset({"k:abc"}),
                         ca=ContentAddress("recursive", HASH))
    w = WireWriter()
    serializers.write_path_info(w, STORE, info, minor, include_path=True)
    data = w.take()
    back = serializers.read_path_info(reader(data), STORE, minor)
    if minor < 16:
        info = info.replace(ultimate=False, sigs=frozenset(), ca=None)
    assert back == info
    # the hash is base16 without prefix; references sorted by name
    assert encode(HASH.base16()) in data
    assert data.index(b"w3gs") < data.index(b"i9pm", 60)


def test_derived_paths():
    drv = "/nix/store/" + A_DRV.base
    assert serializers.parse_derived_path(STORE, drv + "!*", 34) == serializers.DerivedPath(A_DRV, frozenset())
    assert serializers.parse_derived_path(STORE, drv + "!out,dev", 34).outputs == {"out", "dev"}
    assert serializers.parse_derived_path(STORE, drv, 34) == serializers.DerivedPath(A_DRV, None)
    assert serializers.parse_derived_path(STORE, drv, 29) == serializers.DerivedPath(A_DRV, frozenset())
    assert serializers.DerivedPath(A_DRV, frozenset({"out", "dev"})).render(STORE) == drv + "!dev,out"
    assert serializers.DerivedPath(A_DRV, frozenset()).render(STORE) == drv + "!*"
    with pytest.raises(Exception, match="not an absolute path: 'foo'"):
        serializers.parse_derived_path(STORE, "foo", 34)


def test_realisation_json_is_sorted_with_base_names():
    text = serializers.realisation_json("sha256:ab!out", PATH)
    assert text == ('{"dependentRealisations":{},"id":"sha256:ab!out",'
                    '"outPath":"i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt","signatures":[]}')
    assert serializers.parse_realisation_json(text)[:2] == ("sha256:ab!out", PATH)


@pytest.mark.parametrize("minor", [34, 28, 27])
def test_build_result_round_trip(minor):
    result = serializers.WireBuildResult(status=3, error_msg="failed", times_built=1, start_time=5, stop_time=6,
                                         built_outputs={"sha256:b!out": "{}", "sha256:a!z": "{}"})
    w = WireWriter()
    serializers.write_build_result_body(w, result, minor)
    back = serializers.read_build_result_body(reader(w.take()), minor)
    assert back.status == 3 and back.error_msg == "failed"
    if minor >= 29:
        assert back == result
    assert (back.built_outputs is not None) == (minor >= 28)


def test_basic_derivation_round_trip():
    from goalkeeper.store.derivation import BasicDerivation, InputAddressed

    out = StorePath("3i327var4p0a54s1jv4vxb7vgd4v218f-y")
    drv = BasicDerivation(name="y", outputs={"out": InputAddressed(out)}, input_srcs=frozenset({PATH}),
                          platform="x86_64-linux", builder="/bin/sh", args=("-c", "echo"), env={"out": "/nix/store/" + out.base})
    w = WireWriter()
    serializers.write_basic_derivation(w, STORE, drv)
    assert serializers.read_basic_derivation(reader(w.take()), STORE, "y") == drv


def test_version_predicates():
    assert version.minor(0x122) == 34 and version.major(0x122) == 0x100
    assert version.has_framed_nar(23) and not version.has_framed_nar(22)
    assert version.has_read_pulled_nar(21) and not version.has_read_pulled_nar(23)
