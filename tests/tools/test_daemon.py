"""goalkeeper's daemon in-process, driven by goalkeeper's own client and by raw bytes.

The real Nix client is in test_daemon_vs_nix.py; these tests cover what it cannot
show: error framing, bounded reads, vanishing clients, trust, and the client API.
"""

from __future__ import annotations

import shutil
import socket
import threading

import pytest

from goalkeeper.protocol import stderr
from goalkeeper.protocol.client import RemoteStore
from goalkeeper.protocol.errors import RemoteError
from goalkeeper.protocol.wire import WireReader, encode
from goalkeeper.store import nar
from goalkeeper.store.hashes import hash_bytes
from goalkeeper.store.local import LocalStore
from goalkeeper.store.path_info import ValidPathInfo
from goalkeeper.store.paths import StorePath
from goalkeeper.store.settings import Settings
from goalkeeper.store.store_config import DaemonStoreConfig, parse_store_uri
from goalkeeper.tools.daemon import match_user

pytestmark = pytest.mark.timeout(60)

HELLO = encode(0x6E697863, 0x122, 0, 0)  # magic, 1.34, no affinity, reserveSpace


@pytest.fixture
def client(daemon):
    with RemoteStore(DaemonStoreConfig(daemon.socket_path), log=lambda text: None) as remote:
        yield remote


def raw(daemon) -> tuple[socket.socket, WireReader]:
    """A connection after the hello and its first STDERR_LAST."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(daemon.socket_path)
    s.settimeout(20)
    s.sendall(HELLO)
    r = WireReader(s.recv)
    assert r.read_exact(16) == b"oixd\0\0\0\0" + (0x122).to_bytes(8, "little")
    assert r.string() == "2.8.0" and r.u64() == stderr.STDERR_LAST
    return s, r


def assert_closed_after_two_errors(r: WireReader, message: str) -> None:
    for _ in range(2):
        with pytest.raises(RemoteError, match=message):
            stderr.read_message(r, 34)
    assert r._read(1) == b""  # the daemon hung up


def test_queries_match_the_local_store(daemon, client):
    store = daemon.store
    text = store.add_text_to_store("greeting", b"hi there")
    dependent = store.add_text_to_store("user", b"uses " + store.print(text).encode(), [text])
    assert client.is_valid_path(text)
    assert client.query_path_info(dependent) == store.query_path_info(dependent)
    assert client.query_referrers(text) == {dependent}
    assert client.query_valid_paths([text, dependent]) == {text, dependent}
    assert client.query_path_from_hash_part(text.hash_part) == text
    assert client.query_path_from_hash_part("0" * 32) is None
    assert client.query_all_valid_paths() == {text, dependent}
    assert client.compute_fs_closure(dependent) == {text, dependent}
    assert client.topo_sort_paths({text, dependent}) == [dependent, text]
    missing = client.query_path_info(text.__class__("0" * 32 + "-nope"))
    assert missing is None


def test_adds_and_nar_from_path(daemon, client, tmp_path):
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "f").write_text("hello\n")
    (tree / "x").write_text("x")
    added = client.add_to_store("tree", str(tree))
    flat = client.add_to_store("x", str(tree / "x"), method="flat", algo="sha1")
    text = client.add_text_to_store("t", "text")
    local = LocalStore.open(parse_store_uri(str(tmp_path / "other")), Settings.load())
    try:
        assert added == local.add_to_store("tree", str(tree))
        assert flat == local.add_to_store("x", str(tree / "x"), method="flat", algo="sha1")
        assert text == local.add_text_to_store("t", b"text")
        assert client.query_path_info(added).nar_hash == local.query_path_info(added).nar_hash
    finally:
        local.close()
    got = bytearray()
    client.nar_from_path(added, got.extend)
    assert bytes(got) == b"".join(nar.dump_path(daemon.store.real_path(added)))


def _content_addressed_info(daemon, tmp_path, contents: bytes):
    f = tmp_path / "c"
    f.write_bytes(contents)
    dump = b"".join(nar.dump_path(str(f)))
    from goalkeeper.store.content_address import ContentAddress

    digest = hash_bytes("sha256", dump)
    path = daemon.store_dir.make_fixed_output_path(True, digest, "c")
    return ValidPathInfo(path=path, nar_hash=digest, nar_size=len(dump), ca=ContentAddress("recursive", digest)), dump


def test_add_to_store_nar_checks_the_hash_and_the_connection_survives(daemon, client, tmp_path):
    info, dump = _content_addressed_info(daemon, tmp_path, b"contents\n")
    bad = info.replace(nar_hash=hash_bytes("sha256", b"other"))
    with pytest.raises(RemoteError, match="hash mismatch importing path"):
        client.add_to_store_nar(bad, [dump])
    assert not client.is_valid_path(info.path)  # same connection, still in step
    client.add_to_store_nar(info, [dump[:100], dump[100:]])
    assert daemon.store.query_path_info(info.path).nar_hash == info.nar_hash
    # an input-addressed path without signatures is refused
    unsigned = info.replace(ca=None)
    daemon.store.invalidate_path(info.path)
    with pytest.raises(RemoteError, match="lacks a valid signature"):
        client.add_to_store_nar(unsigned, [dump])


def test_unknown_op_ends_that_connection_only(daemon, client):
    s, r = raw(daemon)
    s.sendall(encode(99))
    assert_closed_after_two_errors(r, "invalid operation 99")
    s.close()
    assert client.query_all_valid_paths() == set()


def test_bad_path_in_a_request_ends_the_connection(daemon):
    s, r = raw(daemon)
    s.sendall(encode(1, "foo"))  # IsValidPath "foo"
    assert_closed_after_two_errors(r, "not an absolute path: 'foo'")


def test_oversized_string_is_refused_without_reading_it(daemon, client):
    s, r = raw(daemon)
    s.sendall(encode(1, 1 << 40))  # IsValidPath with a 1 TiB string
    assert_closed_after_two_errors(r, "exceeds the limit")
    assert not client.is_valid_path(daemon.store.add_text_to_store("a", b"a").__class__("0" * 32 + "-a"))


def test_a_client_vanishing_mid_request_leaves_the_daemon_serving(daemon, client):
    for partial in (encode(7, "name", "fixed:r:sha256", 0, 0) + (100).to_bytes(8, "little") + b"short",
                    HELLO[:5]):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(daemon.socket_path)
        if partial is not HELLO[:5]:
            s.sendall(HELLO)
        s.sendall(partial)
        s.close()
    assert client.query_all_valid_paths() == set()


def test_an_error_after_start_work_keeps_the_connection(daemon):
    s, r = raw(daemon)
    missing = daemon.store_dir.path + "/" + "0" * 32 + "-missing"
    s.sendall(encode(37, missing, 1, "k:sig"))  # AddSignatures of an invalid path: fails after startWork
    with pytest.raises(RemoteError, match="is not valid"):
        stderr.read_message(r, 34)
    s.sendall(encode(1, missing))  # one ERROR only: the connection goes on
    assert isinstance(stderr.read_message(r, 34), stderr.Last) and not r.bool()
    s.close()


def test_untrusted_clients_cannot_add_signatures_or_set_privileged_settings(daemon):
    a, b = socket.socketpair()
    thread = threading.Thread(target=daemon.serve_connection, args=(a.recv, a.sendall),
                              kwargs={"trusted": False}, daemon=True)
    thread.start()
    try:
        b.settimeout(20)
        b.sendall(HELLO)
        r = WireReader(b.recv)
        r.read_exact(16), r.string(), r.u64()
        # 12 fixed fields, one override; Nix 2.8 says why it ignores it at debug level only
        settings = [0, 0, 0, stderr.LVL_INFO, 1, 0, 1, 0, 0, 0, 0, 1, 1]
        b.sendall(encode(19, *settings, "sandbox", "false"))
        assert isinstance(stderr.read_message(r, 34), stderr.Last)
        settings[3] = stderr.LVL_DEBUG
        b.sendall(encode(19, *settings, "sandbox", "false"))
        warning = stderr.read_message(r, 34)
        assert isinstance(warning, stderr.Next) and "ignoring the client-specified setting 'sandbox'" in warning.text
        assert isinstance(stderr.read_message(r, 34), stderr.Last)
        path = daemon.store.add_text_to_store("s", b"s")
        b.sendall(encode(37, daemon.store.print(path), 1, "k:sig"))
        with pytest.raises(RemoteError, match="not privileged to add signatures"):
            stderr.read_message(r, 34)
        b.sendall(encode(1, daemon.store.print(path)))  # the connection goes on
        assert isinstance(stderr.read_message(r, 34), stderr.Last) and r.bool()
    finally:
        b.close()
        thread.join(10)
        a.close()


def test_old_clients_get_old_formats(daemon):
    """A 1.25 client: no version string, unstructured errors with the status."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(daemon.socket_path)
    s.settimeout(20)
    s.sendall(encode(0x6E697863, 0x119, 0, 0))
    r = WireReader(s.recv)
    assert r.read_exact(16) == b"oixd\0\0\0\0" + (0x122).to_bytes(8, "little")
    assert r.u64() == stderr.STDERR_LAST
    s.sendall(encode(99))
    assert r.u64() == stderr.STDERR_ERROR
    assert r.string() == "\x1b[31;1merror:\x1b[0m invalid operation 99" and r.u64() == 1
    s.close()


def test_match_user():
    assert match_user("alice", "users", ["*"])
    assert match_user("alice", "users", ["bob", "alice"])
    assert match_user("alice", "users", ["@users"])
    assert not match_user("alice", "users", ["root", "@wheel-does-not-exist"])



def test_the_store_deleted_and_recreated_between_connections(daemon, tmp_path):
    root = tmp_path / "root"
    config = DaemonStoreConfig(daemon.socket_path)
    with RemoteStore(config, log=lambda text: None) as first:
        old = first.add_text_to_store("old", "before the store went away")
        assert first.is_valid_path(old)
    long_lived = RemoteStore(config, log=lambda text: None)
    assert long_lived.is_valid_path(old)  # connected before the store went away
    shutil.rmtree(root)
    with RemoteStore(config, log=lambda text: None) as second:
        assert second.query_all_valid_paths() == set()  # a new, empty store
        new = second.add_text_to_store("new", "after")
        assert (root / "nix" / "store" / new.base).read_text() == "after"
    assert long_lived.is_valid_path(old)  # still on the store it started with
    long_lived.close()
    # deleted and recreated by someone else, with only the store dir left: a fresh database
    shutil.rmtree(root / "nix" / "var")
    with RemoteStore(config, log=lambda text: None) as third:
        assert not third.is_valid_path(new)
        assert third.add_text_to_store("new", "after") == new
        assert third.query_all_valid_paths() == {new}
    assert daemon.store.query_all_valid_paths() == {new}


def test_local_fs_dirs_of_daemon_store_uris():
    from goalkeeper.protocol.client import local_fs_dirs

    root = parse_store_uri("unix:///s?root=/r")
    assert local_fs_dirs(root) == ("/r", "/r/nix/store", "/r/nix/var/nix", "/r/nix/var/log/nix")
    store = RemoteStore(root)
    assert store.real_path(StorePath("0" * 32 + "-x")) == "/r/nix/store/" + "0" * 32 + "-x"
    assert store.to_real_path("/nix/store/" + "0" * 32 + "-x/bin") == "/r/nix/store/" + "0" * 32 + "-x/bin"
    custom = parse_store_uri("unix:///s?store=/gk/store&real=/data/store&state=/st&log=/lg")
    assert local_fs_dirs(custom)[1:] == ("/data/store", "/st", "/lg")
    assert RemoteStore(custom).real_path(StorePath("0" * 32 + "-x")) == "/data/store/" + "0" * 32 + "-x"
    plain = parse_store_uri("unix:///s")
    assert RemoteStore(plain).real_path(StorePath("0" * 32 + "-x")) == "/nix/store/" + "0" * 32 + "-x"


def test_a_socket_path_longer_than_sun_path_works_for_both_ends(tmp_path):
    """Nix's bind/connect helpers reach such a socket through its directory; so do ours:
    the daemon listens there, and goalkeeper's client and real Nix's both connect."""
    from goalkeeper.tools.daemon.server import Daemon, listen

    store = LocalStore.open(parse_store_uri(str(tmp_path / "root")), Settings.load())
    d = Daemon(store, Settings.load(overrides=[("build-users-group", "")]))
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    path = str(deep / "socket")
    assert len(path) > 108
    sock = listen(path)
    thread = threading.Thread(target=d.serve_socket, args=(sock,), daemon=True)
    thread.start()
    try:
        added = store.add_text_to_store("long-socket", b"x", [])
        with RemoteStore(DaemonStoreConfig(path), log=lambda text: None) as remote:
            assert remote.is_valid_path(added)
        if shutil.which("nix-store"):
            import subprocess
            out = subprocess.run(["nix-store", "--store", f"unix://{path}", "-q", "--hash", store.print(added)],
                                 capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() == store.query_path_info(added).nar_hash.to_string()
    finally:
        d.close()
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        thread.join(10)
