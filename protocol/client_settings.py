"""A daemon client's settings: what SetOptions may change (daemon.cc `ClientSettings::apply`).

Nix's daemon forks per client and applies the client's options to its own global
settings.  goalkeeper's daemon serves every client from one engine, so it derives a
`Settings` per client instead and hands it to the engine's `realise(settings=...)`.
Goals are shared only between callers passing the same `Settings` object, so clients
sending the same options must get the same object: `ClientSettingsCache` keeps one per
distinct set of options.
"""

from __future__ import annotations

import collections
import copy
import threading
from collections.abc import Callable, Mapping

from goalkeeper.store.errors import StoreError
from goalkeeper.store.settings import Settings

from . import stderr

# What an untrusted client may still set: Nix compares the canonical names
# (settings.buildTimeout.name is "timeout", buildRepeat's "repeat").
UNPRIVILEGED_SETTINGS = frozenset({"timeout", "repeat", "connect-timeout"})
_SUBSTITUTERS = ("substituters", "binary-caches")  # settings.substituters and its alias
MAX_CACHED = 64  # distinct option sets kept; a client with another one gets a new Settings

Log = Callable[[str, int], None]


def accept_overrides(overrides: Mapping[str, str], *, trusted: bool, settings: Settings,
                     log: Log) -> dict[str, str]:
    """The overrides `apply` takes (name -> value, in the order sent), saying what it says."""
    accepted: dict[str, str] = {}
    for name, value in overrides.items():
        if name == "ssh-auth-sock":  # obsolete
            continue
        if name == "experimental-features":
            # not forwarded to the daemon: "that could cause some pretty weird stuff"
            log("Ignoring the client-specified experimental features", stderr.LVL_DEBUG)
        elif trusted or name in UNPRIVILEGED_SETTINGS or (name == "builders" and value == ""):
            accepted[name] = value
        elif name in _SUBSTITUTERS:
            accepted[name] = " ".join(_trusted_substituters(value, settings, log))
        else:
            log(f"ignoring the client-specified setting '{name}', because it is a restricted setting and "
                "you are not a trusted user", stderr.LVL_DEBUG)
    return accepted


def _trusted_substituters(value: str, settings: Settings, log: Log) -> list[str]:
    trusted = set(settings.get("trusted-substituters")) | set(settings.get("substituters"))
    subs = []
    for s in value.split():
        if s in trusted:
            subs.append(s)
        elif not s.endswith("/") and s + "/" in trusted:
            subs.append(s + "/")
        else:
            log(f"warning: ignoring untrusted substituter '{s}'", stderr.LVL_WARN)
    return subs


def _fixed(options) -> tuple[tuple[str, str], ...]:
    """The fields every SetOptions carries, as the settings `apply` assigns them."""
    return (("keep-failed", _bool(options.keep_failed)), ("keep-going", _bool(options.keep_going)),
            ("fallback", _bool(options.try_fallback)), ("max-jobs", str(options.max_build_jobs)),
            ("max-silent-time", str(options.max_silent_time)), ("cores", str(options.build_cores)),
            ("substitute", _bool(options.use_substitutes)))


def _bool(value: bool) -> str:
    return "true" if value else "false"


class ClientSettingsCache:
    """One derived `Settings` per distinct set of client options, on top of ``base``.

    Args:
        base: the daemon's settings (never changed).
        warn: where a value the settings refuse is reported (Nix: `warn(e.what())`).
    """

    def __init__(self, base: Settings, warn: Callable[[str], None] | None = None):
        self.base = base
        self._warn = warn or (lambda text: None)
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, options) -> Settings:
        """The settings a client with these `ClientOptions` builds with (`overrides`: accepted ones)."""
        key = _fixed(options) + tuple(options.overrides.items())
        with self._lock:
            settings = self._cache.get(key)
            if settings is not None:
                self._cache.move_to_end(key)
                return settings
        settings = _copy(self.base)
        for name, value in key:
            try:
                settings.set(name, value)
            except StoreError as e:  # a value the setting refuses (Nix: UsageError -> warn)
                self._warn(f"warning: {e}")
        with self._lock:
            # Another thread may have made one meanwhile: keep the first, so both share goals.
            settings = self._cache.setdefault(key, settings)
            self._cache.move_to_end(key)
            while len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
        return settings


def _copy(base: Settings) -> Settings:
    # Settings has no copy() yet (store/settings.py is not ours): copy its value tables so
    # the derived object's set() leaves the daemon's untouched.
    derived = copy.copy(base)
    derived._values = dict(base._values)
    derived._overridden = set(base._overridden)
    derived._unknown = dict(base._unknown)
    return derived
