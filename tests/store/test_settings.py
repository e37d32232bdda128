"""Settings: the table, nix.conf syntax and value parsing, checked against `nix show-config`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from goalkeeper.store.errors import BadSetting, StoreError
from goalkeeper.store.settings import MissingExperimentalFeature, SandboxMode, Settings
from goalkeeper.store.settings_table import GOALKEEPER_EXTENSIONS, SETTINGS

# Set by the `nix` command itself, not by configuration.
_NIX_COMMAND_ONLY = {"pure-eval"}


def _load(conf_dir: Path, overrides=(), **env) -> tuple[Settings, list[str]]:
    warnings: list[str] = []
    environ = {"NIX_USER_CONF_FILES": "", "HOME": str(conf_dir), **env}
    settings = Settings.load(str(conf_dir), overrides, warnings.append, environ)
    return settings, warnings


def _real_show_config(run_nix, conf_dir: Path, *options: str, check=True, **env):
    environ = {**os.environ, "NIX_CONF_DIR": str(conf_dir), "NIX_USER_CONF_FILES": "", **env}
    return run_nix("nix", "--extra-experimental-features", "nix-command", "show-config", *options,
                   env=environ, check=check)


def _without(text: str, names: set[str]) -> list[str]:
    return [line for line in text.splitlines() if line and line.split(" = ")[0] not in names]


def _write(conf_dir: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (conf_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (conf_dir / name).write_text(text)


def test_defaults_without_files():
    settings = Settings(environ={})
    assert settings.get("max-jobs") == 1
    assert settings.get("sandbox") is SandboxMode.ENABLED
    assert settings.get("sandbox-build-dir") == "/build"
    assert settings.get("sandbox-dev-shm-size") == "50%"
    assert settings.get("sandbox-paths") == frozenset()
    assert settings.get("substituters") == ("https://cache.nixos.org/",)
    assert settings.get("require-sigs") is True
    assert settings.get("build-repeat") == 0  # an alias of "repeat"
    assert settings.max_silent_time == 0 and settings.keep_going is False
    assert settings.get("cores") == max(1, os.cpu_count() or 1)
    assert settings.get("store") == "auto"
    assert settings.get("netrc-file") == "/etc/nix/netrc"
    assert settings.experimental_features == frozenset()
    assert settings.overridden() == {}


@pytest.mark.nix
def test_table_matches_nix_show_config_json(run_nix, tmp_path):
    real = json.loads(_real_show_config(run_nix, tmp_path, "--json").stdout)
    assert set(real) == set(SETTINGS) - GOALKEEPER_EXTENSIONS
    ours = Settings(environ={})
    for name, info in real.items():
        kind, default, aliases = SETTINGS[name]
        assert set(aliases) == set(info["aliases"]), name
        if default is not None:
            assert _json_default(ours, name) == info["defaultValue"], name


def _json_default(settings: Settings, name: str):
    value = settings.get(name)
    if isinstance(value, SandboxMode):
        return {"true": True, "false": False}.get(value.value, value.value)
    if isinstance(value, (tuple, frozenset)):
        return sorted(value) if isinstance(value, frozenset) else list(value)
    if name == "experimental-features":
        return sorted(value)
    return value


@pytest.mark.nix
def test_defaults_match_nix_show_config(run_nix, tmp_path):
    real = _real_show_config(run_nix, tmp_path).stdout.decode()
    ours, warnings = _load(tmp_path, [("extra-experimental-features", "nix-command")])
    assert _without(ours.show_config(), _NIX_COMMAND_ONLY) == _without(real, _NIX_COMMAND_ONLY)
    assert warnings == []


CONFIG_CASES = {
    "extra-appends-and-plain-resets": {
        "nix.conf": "extra-substituters = a\nsubstituters = b   c # comment\nextra-substituters = d\n"
                    "include sub/x.conf\n",
        "sub/x.conf": "extra-substituters = e\n!include ../nope.conf\ninclude y.conf\n",
        "sub/y.conf": "cores = +3\nlog-lines = 11\nextra-trusted-substituters = z a\nsandbox-paths = /b /a=/x /a\n",
    },
    "aliases-and-types": {
        "nix.conf": "build-max-jobs = auto\nbuild-use-sandbox = relaxed\nkeep-failed = yes\nfallback = 0\n"
                    "max-silent-time = -1\ngc-reserved-space = 007\naccess-tokens = h=1 h=2 g=3 junk\n"
                    "extra-access-tokens = h=9 k=1\nextra-build-sandbox-paths = /p\ndiff-hook = /a/./b//c/../d\n"
                    "\t  sandbox-dev-shm-size\t=  10%\r\nexperimental-features = flakes ca-derivations\n"
                    "extra-experimental-features = nix-command\nbuilders =\n",
    },
}


@pytest.mark.nix
@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_files_match_nix(run_nix, tmp_path, case):
    _write(tmp_path, CONFIG_CASES[case])
    real = _real_show_config(run_nix, tmp_path).stdout.decode()
    ours, warnings = _load(tmp_path, [("extra-experimental-features", "nix-command")])
    assert _without(ours.show_config(), _NIX_COMMAND_ONLY) == _without(real, _NIX_COMMAND_ONLY)
    assert warnings == []


@pytest.mark.nix
def test_user_files_nix_config_and_options_in_order(run_nix, tmp_path):
    _write(tmp_path, {"nix.conf": "cores = 3\nlog-lines = 4\n", "user1.conf": "cores = 4\nmax-jobs = 9\n",
                      "user2.conf": "cores = 5\nmax-jobs = 8\ntimeout = 6\n"})
    env = {"NIX_USER_CONF_FILES": f"{tmp_path}/user1.conf:{tmp_path}/user2.conf", "NIX_CONFIG": "timeout = 7"}
    real = _real_show_config(run_nix, tmp_path, "--option", "log-lines", "12", **env).stdout.decode()
    ours, _ = _load(tmp_path, [("extra-experimental-features", "nix-command"), ("log-lines", "12")], **env)
    assert _without(ours.show_config(), _NIX_COMMAND_ONLY) == _without(real, _NIX_COMMAND_ONLY)
    # The first user file wins (they are applied last to first); nix.conf is not "overridden".
    assert ours.get("cores") == 4 and ours.get("max-jobs") == 9 and ours.get("timeout") == 7
    assert ours.overridden() == {"cores": "4", "experimental-features": "nix-command", "log-lines": "12",
                                 "max-jobs": "9", "timeout": "7"}


@pytest.mark.nix
def test_xdg_config_files(run_nix, tmp_path):
    _write(tmp_path, {"home/nix/nix.conf": "cores = 4\n", "xdg1/nix/nix.conf": "cores = 5\nlog-lines = 3\n",
                      "xdg2/nix/nix.conf": "log-lines = 2\ntimeout = 1\n"})
    env = {"XDG_CONFIG_HOME": f"{tmp_path}/home", "XDG_CONFIG_DIRS": f"{tmp_path}/xdg1:{tmp_path}/xdg2"}
    environ = {k: v for k, v in os.environ.items() if k != "NIX_USER_CONF_FILES"}
    real = run_nix("nix", "--extra-experimental-features", "nix-command", "show-config",
                   env={**environ, "NIX_CONF_DIR": str(tmp_path), **env}).stdout.decode()
    ours = Settings.load(str(tmp_path), [("extra-experimental-features", "nix-command")], None,
                         {"HOME": str(tmp_path), **env})
    assert (ours.get("cores"), ours.get("log-lines"), ours.get("timeout")) == (4, 3, 1)
    assert _without(ours.show_config(), _NIX_COMMAND_ONLY) == _without(real, _NIX_COMMAND_ONLY)


BAD_CONFIGS = [
    "keep-failed = maybe\n",
    "keep-failed = True\n",
    "max-jobs = x\n",
    "max-jobs = -1\n",
    "max-jobs = 4294967296\n",
    "cores = -1\n",
    "max-silent-time = 0x10\n",
    "max-silent-time = 1e3\n",
    "gc-reserved-space = 9223372036854775808\n",
    "sandbox = maybe\n",
    "keep-failed\n",
    "keep-failed : true\n",
    "include a b\n",
    "include nope.conf\n",
    "diff-hook = ./hook\n",
]


@pytest.mark.nix
@pytest.mark.parametrize("text", BAD_CONFIGS)
def test_bad_config_is_the_same_error_as_nix(run_nix, tmp_path, text):
    _write(tmp_path, {"nix.conf": text})
    real = _real_show_config(run_nix, tmp_path, check=False)
    assert real.returncode == 1
    message = real.stderr.decode().splitlines()[0]
    assert message.startswith("error: ")
    with pytest.raises(BadSetting) as raised:
        _load(tmp_path)
    assert f"error: {raised.value}" == message


@pytest.mark.nix
def test_bad_option_value_names_the_setting_like_nix(run_nix, tmp_path):
    # Nix 2.8 only warns ("warning: error: ...") for --option; we refuse, in the same words.
    real = _real_show_config(run_nix, tmp_path, "--option", "timeout", "soon").stderr.decode()
    assert "warning: error: setting 'timeout' has invalid value 'soon'" in real
    with pytest.raises(BadSetting, match=r"^setting 'timeout' has invalid value 'soon'$"):
        _load(tmp_path, [("build-timeout", "soon")])


@pytest.mark.nix
def test_unknown_settings_warn_like_nix(run_nix, tmp_path, local_store):
    _write(tmp_path, {"nix.conf": "zzz = 1\nfoo = bar\nextra-max-jobs = 2\n"})
    real = run_nix("nix-store", *local_store.args, "--option", "extra-nope", "1", "--version",
                   env={**os.environ, "NIX_CONF_DIR": str(tmp_path)})
    expected = ["warning: unknown setting 'extra-max-jobs'", "warning: unknown setting 'extra-nope'",
                "warning: unknown setting 'foo'", "warning: unknown setting 'zzz'"]
    assert real.stderr.decode().splitlines() == expected
    _, warnings = _load(tmp_path, [("extra-nope", "1")])
    assert [f"warning: {w}" for w in warnings] == expected


@pytest.mark.nix
def test_unknown_experimental_feature_warns_like_nix(run_nix, tmp_path):
    _write(tmp_path, {"nix.conf": "experimental-features = flakes warp-drive\n"})
    real = _real_show_config(run_nix, tmp_path)
    assert "warning: unknown experimental feature 'warp-drive'" in real.stderr.decode().splitlines()
    ours, warnings = _load(tmp_path)
    assert warnings == ["unknown experimental feature 'warp-drive'"]
    assert ours.experimental_features == {"flakes"}


def test_missing_conf_dir_and_unreadable_include_are_ignored(tmp_path):
    settings, warnings = _load(tmp_path / "nowhere")
    assert settings.show_config() == Settings(conf_dir=str(tmp_path / "nowhere"), environ={}).show_config()
    (tmp_path / "dir.conf").mkdir()
    _write(tmp_path, {"nix.conf": "include dir.conf\ncores = 2\n"})
    assert _load(tmp_path)[0].get("cores") == 2


def test_set_get_and_overridden():
    settings = Settings(environ={})
    assert settings.set("build-max-jobs", "4") is True
    assert settings.set("extra-sandbox-paths", "/bin/sh=/x") is True
    assert settings.set("extra-build-chroot-dirs", "/y") is True  # extra- + an alias
    assert settings.set("nope", "1") is False
    assert settings.get("max-jobs") == 4 and settings.max_jobs == 4
    assert settings.get("sandbox-paths") == {"/bin/sh=/x", "/y"}
    assert settings.overridden() == {"max-jobs": "4", "sandbox-paths": "/bin/sh=/x /y"}
    with pytest.raises(KeyError):
        settings.get("nope")
    with pytest.raises(AttributeError):
        settings.no_such_setting  # noqa: B018


def test_a_failed_set_leaves_the_value_alone():
    settings = Settings(environ={})
    with pytest.raises(BadSetting, match="^Boolean setting 'keep-going' has invalid value ''$"):
        settings.set("keep-going", "")
    assert settings.get("keep-going") is False and settings.overridden() == {}


def test_require_experimental_feature():
    settings = Settings(environ={})
    with pytest.raises(MissingExperimentalFeature) as raised:
        settings.require_experimental_feature("ca-derivations")
    assert isinstance(raised.value, StoreError)
    assert str(raised.value) == ("experimental Nix feature 'ca-derivations' is disabled; "
                                 "use '--extra-experimental-features ca-derivations' to override")
    settings.set("extra-experimental-features", "ca-derivations")
    settings.require_experimental_feature("ca-derivations")
    assert settings.is_experimental_feature_enabled("ca-derivations")
    with pytest.raises(ValueError):
        settings.require_experimental_feature("warp-drive")


def test_environment_defaults(tmp_path):
    settings = Settings(conf_dir=str(tmp_path), environ={"NIX_REMOTE": "daemon", "NIX_REMOTE_SYSTEMS": "/a:/b"})
    assert settings.get("store") == "daemon"
    assert settings.get("builders") == "@/a @/b"
    assert settings.get("netrc-file") == f"{tmp_path}/netrc"
    assert settings.get("build-users-group") == ("nixbld" if os.getuid() == 0 else "")
