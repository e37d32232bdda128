"""Worker protocol versions and the named feature thresholds of Nix 2.8 (spec §7.3).

A version is `major << 8 | minor`; 2.8 speaks 1.34. Each side formats what it
sends by the *other* side's minor, so every branch in the codecs asks one of
these predicates rather than comparing numbers inline.
"""

from __future__ import annotations

PROTOCOL_VERSION = 0x122  # 1.34, Nix 2.8.0
MIN_CLIENT_VERSION = 0x10A  # the 2.8 daemon refuses older clients ("the Nix client version is too old")
MIN_DAEMON_MINOR = 10  # the 2.8 client refuses older daemons ("the Nix daemon version is too old")
NIX_VERSION = "2.8.0"  # what our daemon reports after the hello (minor ≥ 33)


def major(version: int) -> int:
    return version & 0xFF00


def minor(version: int) -> int:
    return version & 0x00FF


def sends_reserve_space(m: int) -> bool:
    return m >= 11


def has_setting_overrides(m: int) -> bool:
    return m >= 12


def has_build_mode(m: int) -> bool:
    return m >= 15


def sends_affinity(m: int) -> bool:
    return m >= 14


def has_path_info_ca(m: int) -> bool:
    """ValidPathInfo carries ultimate, sigs and ca."""
    return m >= 16


def has_valid_flag_in_path_info(m: int) -> bool:
    """QueryPathInfo's reply starts with a validity bool (else an invalid path is an error)."""
    return m >= 17


def forwards_activities(m: int) -> bool:
    """The daemon forwards activities and results (else plain log lines only)."""
    return m >= 20


def has_read_pulled_nar(m: int) -> bool:
    """AddToStoreNar's NAR arrives through STDERR_READ pulls (21 and 22 only)."""
    return 21 <= m < 23


def has_substitutable_ca_map(m: int) -> bool:
    """QuerySubstitutablePathInfos sends a path -> CA map (else a path set)."""
    return m >= 22


def has_framed_nar(m: int) -> bool:
    """AddToStoreNar's NAR arrives as a framed stream."""
    return m >= 23


def has_ca_add_to_store(m: int) -> bool:
    """AddToStore takes (name, camStr, refs, repair, framed data) and answers a ValidPathInfo."""
    return m >= 25


def has_structured_errors(m: int) -> bool:
    return m >= 26


def has_substitute_flag(m: int) -> bool:
    """QueryValidPaths carries a `substitute` bool."""
    return m >= 27


def has_built_outputs(m: int) -> bool:
    """BuildDerivation's reply includes builtOutputs."""
    return m >= 28


def has_build_times(m: int) -> bool:
    """BuildDerivation's reply includes timesBuilt, isNonDeterministic, startTime, stopTime."""
    return m >= 29


def has_derived_paths(m: int) -> bool:
    """DerivedPath strings (`drv!*`) instead of StorePathWithOutputs."""
    return m >= 30


def has_realisation_json(m: int) -> bool:
    return m >= 31


def sends_nix_version(m: int) -> bool:
    """The daemon sends its Nix version string after the hello."""
    return m >= 33
