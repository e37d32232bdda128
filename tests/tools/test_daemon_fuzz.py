"""Malformed input against goalkeeper's daemon: each bad session ends with an error, nothing else does.

Valid requests of the ops that read the most from the client (paths, sets,
path infos, framed and unframed NARs, derived paths, settings) are mutated the
way a broken or hostile client would send them: truncated (the client vanishes
mid-request or mid-NAR), a length or count word replaced by a huge value, bytes
flipped, garbage op numbers. Throughout, one well-behaved connection stays open
and keeps getting right answers; afterwards no handler crashed (no "internal
error"), no temp file is left in the store, and the store verifies.
The mutations are seeded (`GOALKEEPER_FUZZ_SEED`, default 8) so a failure replays.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess

import pytest

from goalkeeper.protocol.client import RemoteStore
from goalkeeper.protocol.framing import frames
from goalkeeper.protocol.serializers import write_path_info
from goalkeeper.protocol.wire import WireWriter, encode
from goalkeeper.store import nar
from goalkeeper.store.content_address import ContentAddress
from goalkeeper.store.hashes import hash_bytes
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.store_config import DaemonStoreConfig

pytestmark = pytest.mark.timeout(120)

HELLO = encode(0x6E697863, 0x122, 0, 0)  # magic, 1.34, no affinity, reserveSpace
SET_OPTIONS = encode(19, 0, 0, 0, 3, 1, 0, 1, 0, 0, 0, 0, 1, 1, "max-silent-time", "0")
HUGE = (1 << 40, 1 << 63, (1 << 64) - 1, 1 << 32, 0xFFFFFFFF)
SESSIONS = 300


def _nar_of(tmp_path, name: str, files: dict[str, bytes]) -> tuple[bytes, str]:
    top = tmp_path / "src" / name
    top.mkdir(parents=True)
    for rel, data in files.items():
        (top / rel).write_bytes(data)
    return b"".join(nar.dump_path(str(top))), str(top)


def _ca_info(store_dir, dump: bytes, name: str) -> ValidPathInfo:
    digest = hash_bytes("sha256", dump)
    return ValidPathInfo(path=store_dir.make_fixed_output_path(True, digest, name), nar_hash=digest,
                         nar_size=len(dump), ca=ContentAddress("recursive", digest))


def valid_requests(daemon, tmp_path) -> list[bytes]:
    """One well-formed request per op under test (each adds something new if it succeeds)."""
    sd = daemon.store_dir
    known = daemon.store.add_text_to_store("known", b"known text")
    printed = sd.print(known)
    dump, _ = _nar_of(tmp_path, "tree", {"a": b"alpha\n" * 100, "b": b"beta\n"})
    dump2, _ = _nar_of(tmp_path, "other", {"c": b"gamma\n" * 3000})
    info, info2 = _ca_info(sd, dump, "tree"), _ca_info(sd, dump2, "other")
    framed = b"".join(frames([dump[:200], dump[200:]]))
    requests = [
        encode(1, printed),
        encode(26, printed),
        encode(31, 2, printed, sd.path + "/" + "0" * 32 + "-x", 0),
        encode(6, printed),
        encode(29, known.hash_part),
        encode(7, "tree", "fixed:r:sha256", 1, printed, 0) + framed,
        encode(7, "flat", "fixed:sha1", 0, 0) + b"".join(frames([b"flat contents"])),
        encode(7, "t", "text:sha256", 0, 0) + b"".join(frames([b"some text"])),
        encode(8, "legacy-text", "text", 1, printed),
        encode(38, printed),
        encode(40, 1, printed),
        encode(9, 1, sd.path + "/" + "1" * 32 + "-missing.drv!out", 0),
        encode(45, "2" * 32 + "-log.drv") + b"".join(frames([b"log line\n"])),
    ]
    w = WireWriter().u64(39)
    write_path_info(w, sd, info, 34, include_path=True)
    requests.append(w.u64(0).u64(0).take() + framed)
    inner = WireWriter().u64(2)
    for i, d in ((info, dump), (info2, dump2)):
        write_path_info(inner, sd, i, 34, include_path=True)
        inner.raw(d)
    requests.append(encode(44, 0, 0) + b"".join(frames([inner.take()])))
    return requests


def mutate(rng: random.Random, request: bytes) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:  # the client vanishes mid-request (mid-NAR for the adds)
        return request[:rng.randrange(len(request))]
    if kind == 1:  # a length, count or frame size replaced by a huge one
        words = len(request) // 8
        i = rng.randrange(words)
        return request[:8 * i] + rng.choice(HUGE).to_bytes(8, "little") + request[8 * i + 8:]
    if kind == 2:  # damaged bytes
        data = bytearray(request)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    return rng.randrange(1 << 64).to_bytes(8, "little") + rng.randbytes(rng.randrange(64))  # garbage op


def _session(daemon, payload: bytes) -> bytes:
    """Send one session, hang up our side, and read until the daemon ends the connection."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(daemon.socket_path)
    received = bytearray()
    try:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the daemon already gave up on us
        while chunk := s.recv(1 << 16):
            received += chunk
    except ConnectionResetError:
        pass
    finally:
        s.close()
    return bytes(received)


@pytest.mark.nix
def test_malformed_sessions_end_only_themselves(daemon, tmp_path):
    rng = random.Random(int(os.environ.get("GOALKEEPER_FUZZ_SEED", "8")))
    requests = valid_requests(daemon, tmp_path)
    with RemoteStore(DaemonStoreConfig(daemon.socket_path), log=lambda text: None) as good:
        witness = good.add_text_to_store("witness", "still here")
        for n in range(SESSIONS):
            request = rng.choice(requests)
            prefix = HELLO + (SET_OPTIONS if rng.random() < 0.5 else b"")
            _session(daemon, prefix + mutate(rng, request))  # socket timeout: the daemon hung
            if n % 25 == 0:
                assert good.is_valid_path(witness) and good.query_path_info(witness).nar_size > 0
        # a bad hello, and sessions cut inside it
        for payload in (HELLO[:3], encode(0x12345678, 0x122, 0, 0), encode(0x6E697863, 0x109, 0, 0)):
            _session(daemon, payload)
        assert good.query_all_valid_paths() >= {witness}

    crashes = [note for note in daemon.notes if "internal error" in note]
    assert not crashes, crashes[0]
    assert any("exceeds the limit" in note or "error processing connection" in note for note in daemon.notes)
    store = daemon.store
    real = store.config.real_store_dir
    leftovers = [name for name in os.listdir(real) if name.startswith(".") and name not in (".links",)]
    assert not leftovers
    assert not [n for n in os.listdir(store.config.state_dir) if n.startswith("gk-dump-")]
    for path in store.query_all_valid_paths():  # every valid path has its files
        assert os.path.lexists(store.real_path(path))
    if shutil.which("nix-store"):
        verify = subprocess.run(["nix-store", "--store", str(tmp_path / "root"), "--option", "build-users-group", "",
                                 "--verify", "--check-contents"], capture_output=True, timeout=60,
                                env={**os.environ, "NIX_USER_CONF_FILES": "", "NIX_REMOTE": ""})
        assert verify.returncode == 0 and b"error" not in verify.stderr, verify.stderr.decode()
