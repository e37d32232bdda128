"""`ParsedDerivation` (libstore/parsed-derivations.cc): typed attributes of a derivation.

A derivation's attributes live either in its env (strings: `"1"` is true, lists
are space-separated) or, with `__structuredAttrs = true`, in one JSON object
under the env key `__json`. These helpers read both the way Nix 2.8 does.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .derivation import BasicDerivation, CA_DERIVATIONS
from .errors import StoreError
from .paths import StorePath

STRUCTURED_ATTRS_KEY = "__json"
_WHITESPACE = re.compile(r"[ \t\n\r]+")


class BadDerivationAttr(StoreError):
    """An attribute of the wrong type, or an unreadable `__json`, with Nix's message."""


class ParsedDerivation:
    """Typed access to a derivation's attributes.

    Attributes:
        drv_path: the derivation's path (named in errors).
        drv: the derivation.
        structured_attrs: the decoded `__json` object, or None.
    """

    def __init__(self, drv_path: StorePath, drv: BasicDerivation):
        self.drv_path = drv_path
        self.drv = drv
        self.structured_attrs: dict[str, Any] | None = None
        raw = drv.env.get(STRUCTURED_ATTRS_KEY)
        if raw is not None:
            try:
                self.structured_attrs = json.loads(raw)
            except ValueError as e:
                raise BadDerivationAttr(f"cannot process __json attribute of '{drv_path}': {e}") from e

    def _bad(self, name: str, what: str) -> BadDerivationAttr:
        return BadDerivationAttr(f"attribute '{name}' of derivation '{self.drv_path}' must be {what}")

    def get_string_attr(self, name: str) -> str | None:
        """`getStringAttr`."""
        if self.structured_attrs is not None:
            if name not in self.structured_attrs:
                return None
            value = self.structured_attrs[name]
            if not isinstance(value, str):
                raise self._bad(name, "a string")
            return value
        return self.drv.env.get(name)

    def get_bool_attr(self, name: str, default: bool = False) -> bool:
        """`getBoolAttr`: in env only `"1"` is true."""
        if self.structured_attrs is not None:
            if name not in self.structured_attrs:
                return default
            value = self.structured_attrs[name]
            if not isinstance(value, bool):
                raise self._bad(name, "a Boolean")
            return value
        value = self.drv.env.get(name)
        return default if value is None else value == "1"

    def get_strings_attr(self, name: str) -> list[str] | None:
        """`getStringsAttr`: a JSON list of strings, or the env value split on whitespace."""
        if self.structured_attrs is not None:
            if name not in self.structured_attrs:
                return None
            value = self.structured_attrs[name]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise self._bad(name, "a list of strings")
            return list(value)
        value = self.drv.env.get(name)
        if value is None:
            return None
        return tokenize(value)

    def required_system_features(self) -> set[str]:
        """`getRequiredSystemFeatures`: plus `ca-derivations` when output paths are not known in advance."""
        features = set(self.get_strings_attr("requiredSystemFeatures") or ())
        if not self.drv.type().has_known_output_paths:
            features.add(CA_DERIVATIONS)
        return features

    def prefer_local_build(self) -> bool:
        """The `preferLocalBuild` attribute (`willBuildLocally` also needs `canBuildLocally`)."""
        return self.get_bool_attr("preferLocalBuild")

    def substitutes_allowed(self) -> bool:
        """`substitutesAllowed`: `allowSubstitutes`, default true."""
        return self.get_bool_attr("allowSubstitutes", True)


def tokenize(s: str) -> list[str]:
    """`tokenizeString` with Nix's default separators (space, tab, newline, CR)."""
    return [t for t in _WHITESPACE.split(s) if t]
