"""Nix 2.8 settings: names, types and defaults, read from nix.conf and `--option`.

Mirrors libutil/config.cc and libstore/globals.cc:

- `nix.conf` syntax: `name = value` (value = the remaining whitespace-separated
  tokens joined by one space), `#` comments, `include PATH` and `!include PATH`
  (relative to the including file's directory; `!include` ignores a missing
  file). Any other line shape is "illegal configuration line".
- `extra-NAME = ...` appends to a list-like setting; on any other setting the
  name is simply unknown.
- Load order: `$NIX_CONF_DIR/nix.conf` (then "overridden" is reset, so only what
  follows is sent to a daemon), user files (`$NIX_USER_CONF_FILES`, else
  `$XDG_CONFIG_HOME/nix/nix.conf` and `$XDG_CONFIG_DIRS`, lowest precedence
  first), `$NIX_CONFIG`, then the command line's `--option`s.
- Unknown names are remembered and warned about once, at the end of loading,
  sorted by name: `warning: unknown setting 'foo'`.
- A bad value is an error naming the setting, in Nix's own words per type.

Deliberate difference: Nix 2.8 only *warns* about a bad value given with
`--option` (printing `warning: error: ...`); goalkeeper refuses it, as it does
for nix.conf.
"""

from __future__ import annotations

import enum
import os
import platform
import re
from collections.abc import Callable, Iterable, Mapping

from .errors import BadSetting, StoreError
from .settings_table import EXPERIMENTAL_FEATURES, GOALKEEPER_EXTENSIONS, SETTINGS

Warn = Callable[[str], None]

_INT_RANGES = {"u32": (0, 2**32 - 1), "u64": (0, 2**64 - 1), "i64": (-(2**63), 2**63 - 1)}
_APPENDABLE = {"strings", "set", "map", "features"}
# boost::lexical_cast accepts an optional sign and decimal digits, nothing else.
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")


class SandboxMode(enum.Enum):
    """The `sandbox` setting: Nix's smEnabled / smRelaxed / smDisabled."""

    ENABLED = "true"
    RELAXED = "relaxed"
    DISABLED = "false"


class MissingExperimentalFeature(StoreError):
    """An operation needs an experimental feature that is not enabled."""

    def __init__(self, feature: str):
        self.feature = feature
        super().__init__(
            f"experimental Nix feature '{feature}' is disabled; "
            f"use '--extra-experimental-features {feature}' to override"
        )


class Settings:
    """Nix's global settings with typed values.

    `Settings()` holds the defaults only; `Settings.load()` reads the
    configuration files and command-line overrides the way Nix does.
    Values are read with `get("max-jobs")` or as attributes (`settings.max_jobs`).
    """

    def __init__(
        self,
        *,
        conf_dir: str | None = None,
        environ: Mapping[str, str] | None = None,
        warn: Warn | None = None,
    ):
        env = os.environ if environ is None else environ
        self.conf_dir = os.path.normpath(conf_dir or env.get("NIX_CONF_DIR") or "/etc/nix")
        self._environ = env
        self._warn = warn or _warn_to_stderr
        self._values: dict[str, object] = {}
        self._overridden: set[str] = set()
        self._unknown: dict[str, str] = {}
        self._aliases = {alias: name for name, (_, _, aliases) in SETTINGS.items() for alias in aliases}
        computed = _computed_defaults(self.conf_dir, env)
        for name, (kind, default, _) in SETTINGS.items():
            text = computed[name] if default is None else default
            self._values[name] = _parse(name, kind, text, None, self._warn)

    @classmethod
    def load(
        cls,
        conf_dir: str | None = None,
        overrides: Iterable[tuple[str, str]] = (),
        warn: Warn | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> "Settings":
        """Read nix.conf, the user's config files, `$NIX_CONFIG` and `overrides`, like Nix's `loadConfFile`.

        Raises:
            BadSetting: a malformed line, a missing `include`, or a bad value.
        """
        env = os.environ if environ is None else environ
        self = cls(conf_dir=conf_dir, environ=env, warn=warn)
        self.apply_config_file(os.path.join(self.conf_dir, "nix.conf"))
        # Only what the user adds on top of the system nix.conf is "overridden".
        self._overridden.clear()
        for path in reversed(_user_config_files(env)):
            self.apply_config_file(path)
        if "NIX_CONFIG" in env:
            self.apply_config(env["NIX_CONFIG"], "NIX_CONFIG")
        for name, value in overrides:
            self.set(name, value)
        self.warn_unknown_settings()
        return self

    # -- reading configuration text ------------------------------------------

    def apply_config_file(self, path: str) -> None:
        """Apply one nix.conf file; an unreadable or missing file is ignored, as in Nix."""
        try:
            with open(path, "rb") as f:
                contents = f.read().decode("utf-8", errors="surrogateescape")
        except OSError:
            return
        self.apply_config(contents, path)

    def apply_config(self, contents: str, path: str) -> None:
        """Apply configuration text in nix.conf syntax; `path` names it in errors and anchors includes."""
        for raw in contents.split("\n"):
            line = raw.split("#", 1)[0]
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) < 2:
                raise BadSetting(f"illegal configuration line '{line}' in '{path}'")
            if tokens[0] in ("include", "!include"):
                if len(tokens) != 2:
                    raise BadSetting(f"illegal configuration line '{line}' in '{path}'")
                included = os.path.normpath(os.path.join(os.path.dirname(path), tokens[1]))
                if os.path.exists(included):
                    self.apply_config_file(included)
                elif tokens[0] == "include":
                    raise BadSetting(f"file '{included}' included from '{path}' not found")
                continue
            if tokens[1] != "=":
                raise BadSetting(f"illegal configuration line '{line}' in '{path}'")
            self.set(tokens[0], " ".join(tokens[2:]))

    # -- setting and getting -------------------------------------------------

    def set(self, name: str, value: str) -> bool:
        """Set `name` (a name, an alias, or `extra-` + an appendable one) from its textual form.

        Returns False (and remembers the name for `warn_unknown_settings`) if the
        name is unknown, like Nix's `GlobalConfig::set`.

        Raises:
            BadSetting: the value is not valid for the setting's type.
        """
        canonical, append = self._resolve(name)
        if canonical is None:
            self._unknown[name] = value
            return False
        kind = SETTINGS[canonical][0]
        self._values[canonical] = _parse(canonical, kind, value, self._values[canonical] if append else None, self._warn)
        self._overridden.add(canonical)
        return True

    def get(self, name: str) -> object:
        """The typed value of a setting (by name or alias). KeyError if there is no such setting."""
        canonical = name if name in SETTINGS else self._aliases.get(name)
        if canonical is None:
            raise KeyError(name)
        value = self._values[canonical]
        return dict(value) if isinstance(value, dict) else value

    def __getattr__(self, attr: str) -> object:
        # `settings.max_silent_time` reads "max-silent-time".
        if attr.startswith("_"):
            raise AttributeError(attr)
        try:
            return self.get(attr.replace("_", "-"))
        except KeyError:
            raise AttributeError(attr) from None

    def to_string(self, name: str) -> str:
        """A setting's value in Nix's textual form (what `nix show-config` prints)."""
        canonical = name if name in SETTINGS else self._aliases[name]
        return _render(self._values[canonical])

    def show_config(self) -> str:
        """Nix's settings as `nix show-config` prints them: `name = value` lines sorted by name
        (goalkeeper's own, `GOALKEEPER_EXTENSIONS`, are left out: the output is Nix's)."""
        return "".join(f"{name} = {self.to_string(name)}\n" for name in sorted(SETTINGS)
                       if name not in GOALKEEPER_EXTENSIONS)

    def overridden(self) -> dict[str, str]:
        """Settings set explicitly (user config files, `$NIX_CONFIG`, `--option`), name -> text.

        These, not the system nix.conf, are what a client sends with SetOptions.
        """
        return {name: self.to_string(name) for name in sorted(self._overridden)}

    def warn_unknown_settings(self) -> None:
        """Warn once about every unknown name seen so far, sorted, as Nix does after parsing."""
        for name in sorted(self._unknown):
            self._warn(f"unknown setting '{name}'")
        self._unknown.clear()

    # -- experimental features -----------------------------------------------

    @property
    def experimental_features(self) -> frozenset[str]:
        """The enabled experimental features."""
        return self._values["experimental-features"]  # type: ignore[return-value]

    def is_experimental_feature_enabled(self, feature: str) -> bool:
        return feature in self.experimental_features

    def require_experimental_feature(self, feature: str) -> None:
        """Raise MissingExperimentalFeature (Nix's message) unless `feature` is enabled."""
        if feature not in EXPERIMENTAL_FEATURES:
            raise ValueError(f"'{feature}' is not a Nix 2.8 experimental feature")
        if not self.is_experimental_feature_enabled(feature):
            raise MissingExperimentalFeature(feature)

    def _resolve(self, name: str) -> tuple[str | None, bool]:
        canonical = name if name in SETTINGS else self._aliases.get(name)
        if canonical is not None:
            return canonical, False
        if name.startswith("extra-"):
            base = name[len("extra-") :]
            canonical = base if base in SETTINGS else self._aliases.get(base)
            if canonical is not None and SETTINGS[canonical][0] in _APPENDABLE:
                return canonical, True
        return None, False


def _parse(name: str, kind: str, text: str, previous: object | None, warn: Warn) -> object:
    """Parse `text` for setting `name` of `kind`; `previous` is the value to append to, if any."""
    if kind == "bool":
        if text in ("true", "yes", "1"):
            return True
        if text in ("false", "no", "0"):
            return False
        raise BadSetting(f"Boolean setting '{name}' has invalid value '{text}'")
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        value = _to_int(text, low, high)
        if value is None:
            raise BadSetting(f"setting '{name}' has invalid value '{text}'")
        return value
    if kind == "max-jobs":
        value = _default_cores() if text == "auto" else _to_int(text, *_INT_RANGES["u32"])
        if value is None:
            raise BadSetting(f"configuration setting '{name}' should be 'auto' or an integer")
        return value
    if kind == "sandbox":
        try:
            return SandboxMode(text)
        except ValueError:
            raise BadSetting(f"option '{name}' has invalid value '{text}'") from None
    if kind == "string":
        return text
    if kind == "path":
        # PathSetting with allowEmpty: "" stays empty, anything else is canonicalised.
        return _canon_path(text) if text else ""
    if kind == "strings":
        return (tuple(previous) if previous is not None else ()) + tuple(text.split())  # type: ignore[arg-type]
    if kind == "set":
        return frozenset(previous or ()) | frozenset(text.split())  # type: ignore[arg-type]
    if kind == "map":
        result = dict(previous or {})  # type: ignore[call-overload]
        for item in text.split():
            key, eq, value = item.partition("=")
            if eq:  # items without '=' are ignored, as in Nix
                result.setdefault(key, value)  # std::map::emplace keeps the first
        return result
    if kind == "features":
        features = set(previous or ())  # type: ignore[call-overload]
        # Nix tokenises into a std::set: each unknown feature is warned about once, in order
        for feature in sorted(set(text.split())):
            if feature in EXPERIMENTAL_FEATURES:
                features.add(feature)
            else:
                warn(f"unknown experimental feature '{feature}'")
        return frozenset(features)
    raise AssertionError(f"setting '{name}' has unknown kind {kind!r}")


def _render(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, SandboxMode):
        return value.value
    if isinstance(value, tuple):
        return " ".join(value)
    if isinstance(value, frozenset):
        return " ".join(sorted(value))
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in sorted(value.items()))
    return str(value)


def _to_int(text: str, low: int, high: int) -> int | None:
    # string2Int refuses a leading '-' for unsigned types before lexical_cast runs.
    if not _INTEGER.match(text) or (low == 0 and text.startswith("-")):
        return None
    value = int(text)
    return value if low <= value <= high else None


def _canon_path(path: str) -> str:
    # canonPath: absolute, no '.', '..' or repeated slashes; symlinks are not resolved.
    if not path.startswith("/"):
        raise BadSetting(f"not an absolute path: '{path}'")
    return "/" + os.path.normpath(path).lstrip("/")


def _warn_to_stderr(message: str) -> None:
    import sys

    sys.stderr.write(f"warning: {message}\n")


def _user_config_files(env: Mapping[str, str]) -> list[str]:
    """getUserConfigFiles: `$NIX_USER_CONF_FILES`, else the XDG config dirs, highest precedence first."""
    if "NIX_USER_CONF_FILES" in env:
        return [p for p in env["NIX_USER_CONF_FILES"].split(":") if p]
    home = env.get("HOME") or os.path.expanduser("~")
    dirs = [env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")]
    dirs += [d for d in env.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":") if d]
    return [os.path.join(d, "nix", "nix.conf") for d in dirs]


def _default_cores() -> int:
    # std::thread::hardware_concurrency: CPUs online, not the affinity mask.
    return max(1, os.cpu_count() or 1)


def _computed_defaults(conf_dir: str, env: Mapping[str, str]) -> dict[str, str]:
    """The defaults Nix computes at startup (globals.cc `Settings::Settings` and friends)."""
    builders = ""
    if env.get("NIX_REMOTE_SYSTEMS"):
        builders = " ".join("@" + p for p in env["NIX_REMOTE_SYSTEMS"].split(":") if p)
    else:
        builders = f"@{conf_dir}/machines"
    libexec = os.path.normpath(env.get("NIX_LIBEXEC_DIR") or "/usr/libexec")
    return {
        "cores": str(_default_cores()),
        "extra-platforms": " ".join(_default_extra_platforms()),
        "system-features": " ".join(_default_system_features()),
        "build-users-group": "nixbld" if os.getuid() == 0 else "",
        "netrc-file": f"{conf_dir}/netrc",
        "builders": builders,
        "build-hook": f"{libexec}/nix/build-remote",
        "system": _this_system(),
        "store": env.get("NIX_REMOTE") or "auto",
        "use-sqlite-wal": "false" if _is_wsl1() else "true",
        "allow-symlinked-store": "true" if env.get("NIX_IGNORE_SYMLINK_STORE") == "1" else "false",
    }


def _this_system() -> str:
    machine = platform.machine()
    cpu = {"amd64": "x86_64", "arm64": "aarch64", "i386": "i686", "i586": "i686"}.get(machine, machine)
    return f"{cpu}-{platform.system().lower()}"


def _is_wsl1() -> bool:
    return platform.release().endswith("-Microsoft")


def _default_system_features() -> list[str]:
    features = ["benchmark", "big-parallel", "nixos-test"]
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        features.append("kvm")
    return features


# compute-levels.cc: x86-64 micro-architecture levels, as /proc/cpuinfo names the flags.
_X86_64_LEVELS = (
    ("x86_64-v1", {"cmov", "cx8", "fpu", "fxsr", "mmx", "sse", "sse2"}),
    ("x86_64-v2", {"cx16", "lahf_lm", "popcnt", "pni", "ssse3", "sse4_1", "sse4_2"}),
    ("x86_64-v3", {"avx", "avx2", "f16c", "fma", "abm", "movbe"}),
    ("x86_64-v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
)


def _default_extra_platforms() -> list[str]:
    if _this_system() != "x86_64-linux":
        return []
    platforms = [] if _is_wsl1() else ["i686-linux"]
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    for level, needed in _X86_64_LEVELS:
        if not needed <= flags:
            break
        platforms.append(f"{level}-linux")
    return platforms
