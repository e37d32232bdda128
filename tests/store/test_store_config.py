"""Store URIs (store/store_config.py) as Nix 2.8's openStore reads them."""

from __future__ import annotations

import os

import pytest

from goalkeeper.store.errors import StoreError
from goalkeeper.store.store_config import (
    BadStoreURI,
    DaemonStoreConfig,
    Environment,
    LocalStoreConfig,
    parse_store_uri,
)

DEFAULT_ENV = Environment()


def test_local_with_store_state_log():
    config = parse_store_uri("local?store=/t/store&state=/t/var/nix&log=/t/var/log/nix", DEFAULT_ENV)
    assert isinstance(config, LocalStoreConfig)
    assert config.store_dir.path == "/t/store"
    assert config.real_store_dir == "/t/store"
    assert (config.state_dir, config.log_dir, config.root_dir) == ("/t/var/nix", "/t/var/log/nix", "")
    assert config.db_dir == "/t/var/nix/db"
    assert config.to_real_path("/t/store/abc-x/bin") == "/t/store/abc-x/bin"


def test_plain_local_uses_the_defaults():
    config = parse_store_uri("local", DEFAULT_ENV)
    assert (config.store_dir.path, config.real_store_dir) == ("/nix/store", "/nix/store")
    assert (config.state_dir, config.log_dir) == ("/nix/var/nix", "/nix/var/log/nix")


def test_bare_absolute_path_is_a_chroot_store():
    config = parse_store_uri("/tmp/r/", DEFAULT_ENV)
    assert isinstance(config, LocalStoreConfig)
    assert config.store_dir.path == "/nix/store"  # the logical dir stays /nix/store
    assert config.root_dir == "/tmp/r"
    assert config.real_store_dir == "/tmp/r/nix/store"
    assert (config.state_dir, config.log_dir) == ("/tmp/r/nix/var/nix", "/tmp/r/nix/var/log/nix")
    assert config.to_real_path("/nix/store/abc-x/f") == "/tmp/r/nix/store/abc-x/f"


def test_root_parameter_equals_a_bare_path():
    assert parse_store_uri("local?root=/tmp/r", DEFAULT_ENV).real_store_dir == "/tmp/r/nix/store"
    config = parse_store_uri("local?root=/tmp/r&state=/s&real=/real", DEFAULT_ENV)
    assert (config.state_dir, config.real_store_dir, config.log_dir) == ("/s", "/real", "/tmp/r/nix/var/log/nix")


def test_percent_decoding():
    config = parse_store_uri("local?store=/t/my%20store&state=/t/s", DEFAULT_ENV)
    assert config.store_dir.path == "/t/my store"


def test_environment_variables():
    env = Environment.from_environ({"NIX_STORE_DIR": "/e/store", "NIX_STATE_DIR": "/e/state",
                                    "NIX_LOG_DIR": "/e/log"})
    config = parse_store_uri("local", env)
    assert (config.store_dir.path, config.state_dir, config.log_dir) == ("/e/store", "/e/state", "/e/log")
    # A chroot store keeps its own state and log dirs, whatever the environment says.
    chroot = parse_store_uri("/r", env)
    assert (chroot.state_dir, chroot.log_dir) == ("/r/nix/var/nix", "/r/nix/var/log/nix")
    assert chroot.store_dir.path == "/e/store"
    assert Environment.from_environ({"NIX_STORE": "/old/store"}).store_dir == "/old/store"
    assert Environment.from_environ({}).store_dir == "/nix/store"


def test_root_store_files_live_in_root_nix_store(tmp_path):
    # Observed: nix-store --store 'local?root=R&store=/foo/store' --add f -> /foo/store/...-f in R/nix/store.
    config = parse_store_uri("local?root=/r&store=/foo/store", DEFAULT_ENV)
    assert config.store_dir.path == "/foo/store"
    assert config.real_store_dir == "/r/nix/store"


def test_nix_remote_chooses_the_default(monkeypatch):
    env = Environment.from_environ({"NIX_REMOTE": "local?store=/x/store&state=/x/state"})
    assert parse_store_uri(None, env).store_dir.path == "/x/store"
    assert parse_store_uri("", env).store_dir.path == "/x/store"


def test_auto_is_local_when_the_state_dir_is_writable(tmp_path):
    env = Environment(state_dir=str(tmp_path))
    config = parse_store_uri("auto", env)
    assert isinstance(config, LocalStoreConfig) and config.state_dir == str(tmp_path)


def test_auto_without_writable_state_dir_or_socket_is_local(tmp_path):
    env = Environment(state_dir=str(tmp_path / "missing"))
    assert isinstance(parse_store_uri(None, env), LocalStoreConfig)


@pytest.mark.skipif(os.getuid() == 0, reason="root can write any directory, so 'auto' never picks the daemon")
def test_auto_uses_the_daemon_when_only_its_socket_is_there(tmp_path):
    state = tmp_path / "state"
    (state / "daemon-socket").mkdir(parents=True)
    (state / "daemon-socket" / "socket").touch()
    state.chmod(0o555)
    try:
        config = parse_store_uri("auto", Environment(state_dir=str(state)))
    finally:
        state.chmod(0o755)
    assert isinstance(config, DaemonStoreConfig)
    assert config.socket_path == f"{state}/daemon-socket/socket"


def test_daemon_and_unix_sockets():
    env = Environment(state_dir="/st", daemon_socket=None)
    daemon = parse_store_uri("daemon", env)
    assert isinstance(daemon, DaemonStoreConfig)
    assert daemon.socket_path == "/st/daemon-socket/socket"
    assert daemon.store_dir.path == "/nix/store"
    unix = parse_store_uri("unix:///run/nix.sock", env)
    assert isinstance(unix, DaemonStoreConfig) and unix.socket_path == "/run/nix.sock"
    assert unix.uri == "unix:///run/nix.sock"
    assert parse_store_uri("daemon", Environment.from_environ({"NIX_DAEMON_SOCKET_PATH": "/s/sock"})).socket_path \
        == "/s/sock"


@pytest.mark.parametrize(
    "uri, message",
    [
        ("s3://bucket", "don't know how to open Nix store 's3://bucket'"),
        ("ssh://host", "don't know how to open Nix store 'ssh://host'"),
        ("https://cache.nixos.org", "don't know how to open Nix store 'https://cache.nixos.org'"),
        ("unix://relative", None),
        ("local?store=relative", None),
        ("local?state=", None),
    ],
)
def test_bad_uris(uri, message):
    with pytest.raises(BadStoreURI) as raised:
        parse_store_uri(uri, DEFAULT_ENV)
    assert isinstance(raised.value, StoreError) and raised.value.exit_status == 1
    assert uri in str(raised.value) if message is None else str(raised.value) == message


@pytest.mark.nix
def test_our_local_store_uri_matches_where_nix_puts_files(run_nix, local_store, chroot_store, tmp_path):
    src = tmp_path / "hello.txt"
    src.write_bytes(b"hello\n")
    for scratch in (local_store, chroot_store):
        out = run_nix("nix-store", *scratch.args, "--add", str(src)).stdout.decode().strip()
        config = parse_store_uri(scratch.uri, DEFAULT_ENV)
        assert out.startswith(config.store_dir.path + "/")
        assert os.path.isfile(config.to_real_path(out))
        assert os.path.isfile(os.path.join(config.db_dir, "db.sqlite"))


def test_bare_path_with_parameters():
    config = parse_store_uri("/tmp/r?state=/tmp/s", DEFAULT_ENV)
    assert (config.root_dir, config.state_dir) == ("/tmp/r", "/tmp/s")


def test_relative_path_is_a_chroot_store(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert parse_store_uri("./st", DEFAULT_ENV).root_dir == f"{tmp_path}/st"


def test_unknown_parameters_warn_like_nix_and_bare_items_are_ignored():
    warnings = []
    config = parse_store_uri("local?store=/s/store&foo=bar&novalue", DEFAULT_ENV, warn=warnings.append)
    assert config.store_dir.path == "/s/store"
    assert warnings == ["unknown setting 'foo'"]


def test_relative_parameter_names_the_value():
    with pytest.raises(BadStoreURI, match="not an absolute path: 'rel'"):
        parse_store_uri("local?state=rel", DEFAULT_ENV)


def test_auto_honours_a_state_parameter(tmp_path):
    config = parse_store_uri(f"auto?state={tmp_path}", Environment(state_dir="/nonexistent/state"))
    assert isinstance(config, LocalStoreConfig) and config.state_dir == str(tmp_path)
