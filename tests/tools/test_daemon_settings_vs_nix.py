"""A client's SetOptions reach its builds, in goalkeeper's daemon as in nix-daemon: the real
`nix-store -r --option repeat 1` of a non-deterministic derivation fails under both with
the same message, and the same derivation without it builds under both.  Unit tests of the per-client settings
cache (one Settings object per distinct set of options) follow."""

from __future__ import annotations


import pytest

from goalkeeper.protocol import stderr
from goalkeeper.protocol.client_settings import ClientSettingsCache, accept_overrides
from goalkeeper.protocol.server import ClientOptions
from goalkeeper.store.settings import Settings

NONDET = ('derivation { name = "nondet"; system = "x86_64-linux"; builder = "/bin/sh"; '
          'args = [ "-c" "read u < /proc/sys/kernel/random/uuid; echo $u > $out" ]; }')


@pytest.fixture
def sides(daemon_pair):
    return daemon_pair


@pytest.mark.nix
@pytest.mark.timeout(120)
def test_client_options_reach_the_build(sides):
    top, pair = sides
    (top / "nondet.nix").write_text(NONDET)
    seen = []
    for side in pair:
        drv = side.run("nix-instantiate", top / "nondet.nix").stdout.decode().strip()
        repeated = side.run("nix-store", "-r", drv, "--option", "repeat", "1", check=False)
        once = side.run("nix-store", "-r", drv)
        seen.append((repeated.returncode, repeated.stderr.decode().splitlines()[-1], once.stdout))
    (nix_status, nix_error, nix_out), gk = seen
    assert nix_status != 0 and nix_error.endswith("differs from previous round")
    assert gk == seen[0]


SLOW = ('derivation { name = "slow"; system = "x86_64-linux"; builder = "/bin/sh"; '
        'args = [ "-c" "while :; do :; done" ]; }')  # no coreutils in a build: no sleep


@pytest.mark.nix
@pytest.mark.timeout(120)
def test_client_timeout_reaches_the_build_runner(sides):
    """`timeout` (which Nix lets untrusted clients set) kills that client's build, in both daemons."""
    top, pair = sides
    (top / "slow.nix").write_text(SLOW)
    seen = []
    for side in pair:
        drv = side.run("nix-instantiate", top / "slow.nix").stdout.decode().strip()
        timed_out = side.run("nix-store", "-r", drv, "--option", "timeout", "1", check=False)
        lines = [line for line in timed_out.stderr.decode().splitlines() if "timed out" in line]
        seen.append((timed_out.returncode, lines))
    assert seen[0][0] != 0 and seen[0][1]  # Nix: "... timed out after 1 seconds" (exit 1 through a daemon)
    assert seen[1] == seen[0]


def _options(**overrides) -> ClientOptions:
    options = ClientOptions()
    options.overrides = dict(overrides)
    return options


def test_one_settings_object_per_distinct_options():
    base = Settings(environ={})
    cache = ClientSettingsCache(base)
    a = cache.get(_options(repeat="1"))
    assert cache.get(_options(repeat="1")) is a  # clients sending the same options share goals
    assert cache.get(_options(repeat="2")) is not a
    assert a.get("repeat") == 1 and base.get("repeat") == 0  # the daemon's own stay as they were
    keep = _options()
    keep.keep_failed = True
    assert cache.get(keep).get("keep-failed") is True and base.get("keep-failed") is False


def test_untrusted_overrides_as_nix_applies_them():
    base = Settings(environ={})
    base.set("substituters", "https://a.example https://b.example/")
    said = []
    accepted = accept_overrides(
        {"sandbox": "false", "timeout": "5", "substituters": "https://a.example https://b.example https://evil",
         "experimental-features": "nix-command", "builders": ""},
        trusted=False, settings=base, log=lambda text, level: said.append((level, text)))
    assert accepted == {"timeout": "5", "substituters": "https://a.example https://b.example/", "builders": ""}
    assert (stderr.LVL_WARN, "warning: ignoring untrusted substituter 'https://evil'") in said
    assert (stderr.LVL_DEBUG, "ignoring the client-specified setting 'sandbox', because it is a restricted "
            "setting and you are not a trusted user") in said
