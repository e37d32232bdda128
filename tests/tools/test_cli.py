"""The CLI frame: global options before and after the command, discovery, and the error boundary."""

from __future__ import annotations

import errno
import subprocess
import sys
import types

import pytest

from goalkeeper.store.errors import BadHash, StoreError
from goalkeeper.store.store_config import DaemonStoreConfig, LocalStoreConfig
from goalkeeper.tools import cli


def _command(run, name="probe"):
    """A command module built on the fly, recording what run() saw."""
    module = types.ModuleType(f"fake_{name}")
    module.NAME = name
    module.HELP = "a test command"
    module.seen = []

    def add_arguments(parser):
        parser.add_argument("things", nargs="*")
        parser.add_argument("--flag", action="store_true")

    def _run(args, ctx):
        module.seen.append((args, ctx))
        return run(args, ctx)

    module.add_arguments = add_arguments
    module.run = _run
    return module


@pytest.fixture
def probe(monkeypatch):
    """Install one fake command `probe` whose behaviour the test chooses via probe.behaviour."""
    state = types.SimpleNamespace(behaviour=lambda args, ctx: 0)
    module = _command(lambda args, ctx: state.behaviour(args, ctx))
    monkeypatch.setattr(cli, "discover_commands", lambda argv=None: [module])
    state.module = module
    return state


def test_version(gk):
    result = gk("--version")
    assert result.status == 0
    assert result.stdout == f"goalkeeper (Nix-compatible 2.8.0) {cli.version_string().split()[-1]}\n".encode()
    assert result.stdout.startswith(b"goalkeeper (Nix-compatible 2.8.0) ")


def test_no_command_is_a_usage_error(gk):
    result = gk()
    assert result.status == 1
    assert result.stderr == b"error: no command given\nTry 'goalkeeper --help' for more information.\n"


def test_unknown_option_is_a_usage_error_without_traceback(gk):
    result = gk("--no-such-flag")
    assert result.status == 1
    assert result.stderr.startswith(b"error: unrecognized arguments: --no-such-flag\n")
    assert b"Traceback" not in result.stderr


def test_help_goes_to_stdout(gk, probe):
    result = gk("--help")
    assert result.status == 0
    assert b"usage: goalkeeper" in result.stdout
    assert b"probe" in result.stdout
    assert result.stderr == b""


def test_command_receives_arguments_and_context(gk, probe, local_store):
    result = gk("--store", local_store.uri, "probe", "a", "b", "--flag")
    assert result.status == 0, result.stderr
    args, ctx = probe.module.seen[-1]
    assert args.things == ["a", "b"] and args.flag
    assert isinstance(ctx.store_config, LocalStoreConfig)
    assert ctx.store_dir.path == local_store.store_dir
    assert ctx.store_config.state_dir == local_store.state_dir


def test_command_output_is_bytes_on_stdout(gk, probe):
    def behaviour(args, ctx):
        ctx.stdout.write(b"out\xff\n")
        ctx.stderr.write(b"err\n")
        return 3

    probe.behaviour = behaviour
    result = gk("probe")
    assert (result.status, result.stdout, result.stderr) == (3, b"out\xff\n", b"err\n")


def test_global_options_after_the_command_apply_in_order(gk, probe, local_store, chroot_store):
    result = gk("--option", "max-jobs", "3", "--store", chroot_store.uri, "probe", "x",
                "--option", "max-jobs", "5", "--option", "extra-system-features", "gk-test",
                "--store", local_store.uri)
    assert result.status == 0, result.stderr
    args, ctx = probe.module.seen[-1]
    assert ctx.settings.get("max-jobs") == 5
    assert "gk-test" in ctx.settings.get("system-features")
    assert ctx.settings.overridden()["max-jobs"] == "5"
    assert ctx.store_dir.path == local_store.store_dir  # the later --store wins


def test_store_setting_is_the_default_store(gk, probe, local_store):
    result = gk("--option", "store", local_store.uri, "probe")
    assert result.status == 0, result.stderr
    assert probe.module.seen[-1][1].store_dir.path == local_store.store_dir


def test_extra_experimental_features_flag(gk, probe):
    probe.behaviour = lambda args, ctx: ctx.settings.require_experimental_feature("ca-derivations") or 0
    assert gk("probe").status == 1
    assert gk("probe").stderr == (b"error: experimental Nix feature 'ca-derivations' is disabled; "
                                  b"use '--extra-experimental-features ca-derivations' to override\n")
    assert gk("--extra-experimental-features", "ca-derivations", "probe").status == 0
    assert gk("probe", "--extra-experimental-features", "ca-derivations").status == 0


def test_unknown_setting_warns_like_nix(gk, probe):
    result = gk("--option", "foo", "bar", "probe", "--option", "extra-max-jobs", "2")
    assert result.status == 0
    assert result.stderr == b"warning: unknown setting 'extra-max-jobs'\nwarning: unknown setting 'foo'\n"


def test_bad_setting_value_is_an_error_naming_the_setting(gk, probe):
    result = gk("--option", "max-jobs", "lots", "probe")
    assert result.status == 1
    assert result.stderr == b"error: configuration setting 'max-jobs' should be 'auto' or an integer\n"
    assert probe.module.seen == []


def test_bad_store_uri_is_an_error(gk, probe):
    result = gk("--store", "s3://bucket", "probe")
    assert result.status == 1
    assert result.stderr == b"error: don't know how to open Nix store 's3://bucket'\n"


def test_store_error_uses_its_exit_status(gk, probe):
    class Special(StoreError):
        exit_status = 104

    def behaviour(args, ctx):
        raise Special("build failed")

    probe.behaviour = behaviour
    result = gk("probe")
    assert (result.status, result.stdout, result.stderr) == (104, b"", b"error: build failed\n")

    def bad_hash(args, ctx):
        raise BadHash("invalid hash 'x'")

    probe.behaviour = bad_hash
    assert (gk("probe").status, gk("probe").stderr) == (1, b"error: invalid hash 'x'\n")


def test_os_error_on_a_user_path(gk, probe, tmp_path):
    missing = tmp_path / "missing.drv"
    probe.behaviour = lambda args, ctx: open(missing, "rb") and 0
    result = gk("probe")
    assert result.status == 1
    assert result.stderr == f"error: '{missing}': No such file or directory\n".encode()


def test_keyboard_interrupt_is_130(gk, probe):
    def behaviour(args, ctx):
        raise KeyboardInterrupt

    probe.behaviour = behaviour
    result = gk("probe")
    assert result.status == 130
    assert result.stderr == b"error: interrupted by the user\n"


def test_unexpected_exceptions_are_not_swallowed(gk, probe):
    def behaviour(args, ctx):
        raise RuntimeError("a bug")

    probe.behaviour = behaviour
    with pytest.raises(RuntimeError):
        gk("probe")


def test_daemon_store_is_a_clear_error(gk, probe):
    # a daemon store is opened through the protocol client; a missing socket fails as in Nix
    probe.behaviour = lambda args, ctx: ctx.open_store().query_all_valid_paths() and 0
    result = gk("--store", "unix:///tmp/no-such-socket", "probe")
    assert result.status == 1
    assert result.stderr == b"error: cannot connect to socket at '/tmp/no-such-socket': No such file or directory\n"
    assert isinstance(probe.module.seen[-1][1].store_config, DaemonStoreConfig)


def test_every_discovered_command_is_complete():
    for module in cli.discover_commands():
        assert isinstance(module.NAME, str) and module.NAME
        assert isinstance(module.HELP, str) and module.HELP
        assert callable(module.add_arguments) and callable(module.run)
    names = [m.NAME for m in cli.discover_commands()]
    assert len(names) == len(set(names))


@pytest.mark.timeout(60)
def test_python_dash_m_and_broken_pipe():
    version = subprocess.run([sys.executable, "-m", "goalkeeper.tools.cli", "--version"],
                             capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert version.returncode == 0 and version.stdout.startswith(b"goalkeeper (Nix-compatible 2.8.0)")
    # --help into a closed pipe: no traceback, no "Exception ignored" noise.
    proc = subprocess.Popen([sys.executable, "-m", "goalkeeper.tools.cli", "--help"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    proc.stdout.close()
    _, err = proc.communicate(timeout=30)
    assert b"Traceback" not in err and b"Exception ignored" not in err


def test_os_error_without_a_file_name():
    assert cli._describe_os_error(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"


def test_only_the_named_command_is_imported():
    names = ["dump", "hash_path", "show_derivation"]
    assert cli._command_word(["--store", "dump", "hash-path", "x"], names) == "hash_path"
    assert cli._command_word(["--option", "a", "dump", "show-derivation"], names) == "show_derivation"
    assert cli._command_word(["--extra-experimental-features", "dump", "dump"], names) == "dump"
    assert cli._command_word(["--help"], names) is None
    assert cli._command_word(["--help", "dump"], names) is None
    assert cli._command_word(["no-such-command"], names) is None
    assert [m.NAME for m in cli.discover_commands(["hash-path", "x"])] == ["hash-path"]
    assert len(cli.discover_commands(["--help"])) > 5
