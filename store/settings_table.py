"""Nix 2.8's settings: name -> (kind, default, aliases), as data.

Generated once from `nix show-config --json` (names, aliases, defaults) with
each kind taken from the C++ declaration (`Setting<bool>`, `Setting<Strings>`,
`PathSetting`, ... in globals.hh, eval.hh, fetch-settings.hh, filetransfer.hh,
archive.cc, logging.hh, develop.cc). tests/store/test_settings.py checks the
names, aliases and static defaults against the installed binary.

Kinds:
    bool      "true"/"yes"/"1" or "false"/"no"/"0"
    u32 u64   unsigned integers of that width; i64 signed (time_t, off_t)
    string    any text; path: canonicalised, may be empty (PathSetting)
    strings   whitespace-separated list, order kept (Strings)
    set       whitespace-separated, sorted and deduplicated (StringSet, PathSet)
    map       whitespace-separated key=value pairs (StringMap)
    sandbox   "true", "relaxed" or "false"
    max-jobs  an unsigned int or "auto"
    features  a set of experimental features

Defaults are Nix's textual form; None means computed from the machine or the
environment (see settings.py `_computed_defaults`).
"""

SETTINGS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "accept-flake-config": ("bool", "false", ()),
    "access-tokens": ("map", "", ()),
    "allow-dirty": ("bool", "true", ()),
    "allow-import-from-derivation": ("bool", "true", ()),
    "allow-new-privileges": ("bool", "false", ()),
    "allow-symlinked-store": ("bool", None, ()),
    "allow-unsafe-native-code-during-evaluation": ("bool", "false", ()),
    "allowed-impure-host-deps": ("set", "", ()),
    "allowed-uris": ("strings", "", ()),
    "allowed-users": ("strings", "*", ()),
    "auto-optimise-store": ("bool", "false", ()),
    "bash-prompt": ("string", "", ()),
    "bash-prompt-suffix": ("string", "", ()),
    "build-hook": ("path", None, ()),
    "build-poll-interval": ("u32", "5", ()),
    "build-users-group": ("string", None, ()),
    "builders": ("string", None, ()),
    "builders-use-substitutes": ("bool", "false", ()),
    "commit-lockfile-summary": ("string", "", ()),
    "compress-build-log": ("bool", "true", ("build-compress-log",)),
    "connect-timeout": ("u64", "0", ()),
    "cores": ("u32", None, ("build-cores",)),
    "diff-hook": ("path", "", ()),
    "download-attempts": ("u32", "5", ()),
    "enforce-determinism": ("bool", "true", ()),
    "eval-cache": ("bool", "true", ()),
    "experimental-features": ("features", "", ()),
    "extra-platforms": ("set", None, ()),
    "fallback": ("bool", "false", ("build-fallback",)),
    "filter-syscalls": ("bool", "true", ()),
    "flake-registry": ("string", "https://github.com/NixOS/flake-registry/raw/master/flake-registry.json", ()),
    "fsync-metadata": ("bool", "true", ()),
    "gc-reserved-space": ("i64", "8388608", ()),
    "hashed-mirrors": ("strings", "", ()),
    "http-connections": ("u64", "25", ("binary-caches-parallel-connections",)),
    "http2": ("bool", "true", ()),
    "ignored-acls": ("set", "security.selinux system.nfs4_acl", ()),
    "impersonate-linux-26": ("bool", "false", ("build-impersonate-linux-26",)),
    "keep-build-log": ("bool", "true", ("build-keep-log",)),
    "keep-derivations": ("bool", "true", ("gc-keep-derivations",)),
    "keep-env-derivations": ("bool", "false", ("env-keep-derivations",)),
    "keep-failed": ("bool", "false", ()),
    "keep-going": ("bool", "false", ()),
    "keep-outputs": ("bool", "false", ("gc-keep-outputs",)),
    "log-lines": ("u64", "10", ()),
    "max-build-log-size": ("u64", "0", ("build-max-log-size",)),
    "max-free": ("u64", "18446744073709551615", ()),
    "max-jobs": ("max-jobs", "1", ("build-max-jobs",)),
    "max-substitution-jobs": ("u32", "16", ("substitution-max-jobs",)),
    "max-silent-time": ("i64", "0", ("build-max-silent-time",)),
    "min-free": ("u64", "0", ()),
    "min-free-check-interval": ("u64", "5", ()),
    "nar-buffer-size": ("u64", "33554432", ()),
    "narinfo-cache-negative-ttl": ("u32", "3600", ()),
    "narinfo-cache-positive-ttl": ("u32", "2592000", ()),
    "netrc-file": ("string", None, ()),
    "nix-path": ("strings", "", ()),
    "plugin-files": ("strings", "", ()),
    "post-build-hook": ("string", "", ()),
    "pre-build-hook": ("string", "", ()),
    "preallocate-contents": ("bool", "false", ()),
    "print-missing": ("bool", "true", ()),
    "pure-eval": ("bool", "false", ()),
    "repeat": ("u64", "0", ("build-repeat",)),
    "require-sigs": ("bool", "true", ()),
    "restrict-eval": ("bool", "false", ()),
    "run-diff-hook": ("bool", "false", ()),
    "sandbox": ("sandbox", "true", ("build-use-chroot", "build-use-sandbox")),
    "sandbox-build-dir": ("string", "/build", ()),
    "sandbox-dev-shm-size": ("string", "50%", ()),
    "sandbox-fallback": ("bool", "true", ()),
    "sandbox-paths": ("set", "", ("build-chroot-dirs", "build-sandbox-paths")),
    "secret-key-files": ("strings", "", ()),
    "show-trace": ("bool", "false", ()),
    "stalled-download-timeout": ("u64", "300", ()),
    "store": ("string", None, ()),
    "substitute": ("bool", "true", ("build-use-substitutes",)),
    "substituters": ("strings", "https://cache.nixos.org/", ("binary-caches",)),
    "sync-before-registering": ("bool", "false", ()),
    "system": ("string", None, ()),
    "system-features": ("set", None, ()),
    "tarball-ttl": ("u32", "3600", ()),
    "timeout": ("i64", "0", ("build-timeout",)),
    "trace-function-calls": ("bool", "false", ()),
    "trusted-public-keys": ("strings", "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=", ("binary-cache-public-keys",)),
    "trusted-substituters": ("set", "", ("trusted-binary-caches",)),
    "trusted-users": ("strings", "root", ()),
    "use-case-hack": ("bool", "false", ()),
    "use-registries": ("bool", "true", ()),
    "use-sqlite-wal": ("bool", None, ()),
    "user-agent-suffix": ("string", "", ()),
    "warn-dirty": ("bool", "true", ()),
}

# Settings goalkeeper has and Nix 2.8 does not. max-substitution-jobs: Nix 2.9's setting,
# name and default (2.8 counts substitutions as builds, against max-jobs).
GOALKEEPER_EXTENSIONS = frozenset({"max-substitution-jobs"})

#: Nix 2.8's experimental features (experimental-features.cc).
EXPERIMENTAL_FEATURES = frozenset(
    {
        "ca-derivations",
        "impure-derivations",
        "flakes",
        "nix-command",
        "recursive-nix",
        "no-url-literals",
        "fetch-closure",
    }
)
