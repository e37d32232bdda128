"""Derivations (libstore/derivations.cc): the `.drv` ATerm, output kinds, derivation types.

A `Derivation` is what a `.drv` file holds; `BasicDerivation` is the same
without `input_drvs` (what a resolved derivation, or the worker protocol,
carries). Both are frozen; their dicts must not be mutated after construction
(use `dataclasses.replace`).

Printing (`unparse`) is byte-exact with Nix 2.8 (spec §2.1) and parsing
(`Derivation.parse`) accepts exactly what 2.8's `parseDerivation` accepts
(§2.2). Hashing modulo and output paths live in `derivation_hash.py`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Collection, Iterable, Mapping, Union

from .aterm import ATermReader, encode_text, escaped, escaped_list, unescaped, unescaped_list
from .errors import BadDerivation, BadHash, BadStorePath, StoreError  # noqa: F401 (BadDerivation re-exported)
from .hashes import Hash, check_algo, sha256
from .paths import DRV_EXTENSION, StoreDir, StorePath, output_path_name
from .settings import MissingExperimentalFeature  # the one Settings.require_experimental_feature raises

CA_DERIVATIONS = "ca-derivations"
IMPURE_DERIVATIONS = "impure-derivations"
METHODS = ("flat", "recursive")


class DerivationError(StoreError):
    """A derivation that parses but that Nix refuses to use (e.g. mixed output kinds)."""


def require_feature(features: Collection[str] | None, feature: str) -> None:
    """`settings.requireExperimentalFeature`; `features=None` means "don't check"."""
    if features is not None and feature not in features:
        raise MissingExperimentalFeature(feature)


def _method_prefix(method: str) -> str:
    """`makeFileIngestionPrefix`."""
    return "r:" if method == "recursive" else ""


# -- output kinds ----------------------------------------------------------------------------


def parse_method_algo(text: str) -> tuple[str, str]:
    """Split a drv output's hashAlgo field, `[r:]<algo>`, into (method, algo); BadHash if unknown."""
    method = "flat"
    if text.startswith("r:"):
        method, text = "recursive", text[2:]
    return method, check_algo(text)


@dataclass(frozen=True, slots=True)
class InputAddressed:
    """An output whose path is fixed by the derivation's (masked) hash."""

    path: StorePath


@dataclass(frozen=True, slots=True)
class CAFixed:
    """A fixed-output output: the content hash is known in advance."""

    method: str  # "flat" | "recursive"
    hash: Hash

    def print_method_algo(self) -> str:
        """`FixedOutputHash::printMethodAlgo`: `sha256`, `r:sha1`."""
        return _method_prefix(self.method) + self.hash.algo

    def path(self, store_dir: StoreDir, drv_name: str, output_name: str) -> StorePath:
        return store_dir.make_fixed_output_path(
            self.method == "recursive", self.hash, output_path_name(drv_name, output_name)
        )


@dataclass(frozen=True, slots=True)
class CAFloating:
    """A content-addressed output whose hash is only known after the build."""

    method: str
    algo: str

    def print_method_algo(self) -> str:
        return _method_prefix(self.method) + self.algo


@dataclass(frozen=True, slots=True)
class Deferred:
    """An input-addressed output whose path waits on CA inputs being built."""


@dataclass(frozen=True, slots=True)
class Impure:
    """An output of an impure derivation (experimental)."""

    method: str
    algo: str

    def print_method_algo(self) -> str:
        return _method_prefix(self.method) + self.algo


DerivationOutput = Union[InputAddressed, CAFixed, CAFloating, Deferred, Impure]


def output_path(output: DerivationOutput, store_dir: StoreDir, drv_name: str, output_name: str) -> StorePath | None:
    """`DerivationOutput::path`: the output's path if known before building."""
    if isinstance(output, InputAddressed):
        return output.path
    if isinstance(output, CAFixed):
        return output.path(store_dir, drv_name, output_name)
    return None


def _output_fields(output: DerivationOutput, store_dir: StoreDir, drv_name: str, name: str, mask: bool) -> tuple[str, str, str]:
    """(path, hashAlgo, hash) as written in the drv (spec §2.1 table)."""
    if isinstance(output, InputAddressed):
        return ("" if mask else store_dir.print(output.path)), "", ""
    if isinstance(output, CAFixed):
        path = "" if mask else store_dir.print(output.path(store_dir, drv_name, name))
        return path, output.print_method_algo(), output.hash.base16()
    if isinstance(output, CAFloating):
        return "", output.print_method_algo(), ""
    if isinstance(output, Deferred):
        return "", "", ""
    return "", output.print_method_algo(), "impure"


# -- derivation type -------------------------------------------------------------------------


class DerivationType(enum.Enum):
    """Nix's `DerivationType`, flattened to its five reachable cases."""

    INPUT_ADDRESSED = "input-addressed"
    DEFERRED = "deferred"  # InputAddressed { deferred = true }
    CA_FIXED = "fixed"  # ContentAddressed { sandboxed = false, fixed = true }
    CA_FLOATING = "floating"  # ContentAddressed { sandboxed = true, fixed = false }
    IMPURE = "impure"

    @property
    def is_ca(self) -> bool:
        return self in (DerivationType.CA_FIXED, DerivationType.CA_FLOATING, DerivationType.IMPURE)

    @property
    def is_fixed(self) -> bool:
        return self is DerivationType.CA_FIXED

    @property
    def has_known_output_paths(self) -> bool:
        return self in (DerivationType.INPUT_ADDRESSED, DerivationType.CA_FIXED)

    @property
    def is_sandboxed(self) -> bool:
        return self in (DerivationType.INPUT_ADDRESSED, DerivationType.DEFERRED, DerivationType.CA_FLOATING)

    @property
    def is_pure(self) -> bool:
        return self is not DerivationType.IMPURE


_KIND_OF = {
    InputAddressed: DerivationType.INPUT_ADDRESSED,
    CAFixed: DerivationType.CA_FIXED,
    CAFloating: DerivationType.CA_FLOATING,
    Deferred: DerivationType.DEFERRED,
    Impure: DerivationType.IMPURE,
}


# -- the derivation --------------------------------------------------------------------------


def _byte_sorted(keys: Iterable[str]) -> list[str]:
    """Sort as std::map<std::string> does: by UTF-8 bytes (differs from str order only for raw bytes)."""
    return sorted(keys, key=encode_text)


@dataclass(frozen=True, slots=True, kw_only=True)
class BasicDerivation:
    """`BasicDerivation`: a derivation without input derivations.

    Attributes:
        name: the derivation name (the `.drv` file name without `.drv`).
        outputs: output name -> output kind.
        input_srcs: store paths the builder needs that are not derivation outputs.
        platform, builder, args, env: as in the `.drv`.
    """

    name: str
    outputs: dict[str, DerivationOutput]
    input_srcs: frozenset[StorePath] = frozenset()
    platform: str = ""
    builder: str = ""
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.input_srcs, frozenset):
            object.__setattr__(self, "input_srcs", frozenset(self.input_srcs))
        if not isinstance(self.args, tuple):
            object.__setattr__(self, "args", tuple(self.args))

    def type(self) -> DerivationType:
        """`BasicDerivation::type`, with Nix's error messages."""
        kinds: dict[DerivationType, list[str]] = {}
        floating_algo = None
        for name, output in self.outputs.items():
            kind = _KIND_OF[type(output)]
            kinds.setdefault(kind, []).append(name)
            if kind is DerivationType.CA_FLOATING:
                if floating_algo is None:
                    floating_algo = output.algo
                elif floating_algo != output.algo:
                    raise DerivationError("all floating outputs must use the same hash type")
        if not kinds:
            raise DerivationError("must have at least one output")
        if len(kinds) > 1:
            raise DerivationError("can't mix derivation output types")
        ((kind, names),) = kinds.items()
        if kind is DerivationType.CA_FIXED:
            if len(names) > 1:
                raise DerivationError("only one fixed output is allowed for now")
            if names[0] != "out":
                raise DerivationError('single fixed output must be named "out"')
        return kind

    def is_builtin(self) -> bool:
        """`isBuiltin`: the builder is `builtin:<name>`, run inside Nix."""
        return self.builder.startswith("builtin:")

    def output_names(self) -> list[str]:
        return _byte_sorted(self.outputs)

    def outputs_and_opt_paths(self, store_dir: StoreDir) -> dict[str, tuple[DerivationOutput, StorePath | None]]:
        """`outputsAndOptPaths`: each output with its path if known in advance."""
        return {
            name: (output, output_path(output, store_dir, self.name, name))
            for name, output in self.outputs.items()
        }

    def unparse(
        self,
        store_dir: StoreDir,
        mask_outputs: bool = False,
        actual_inputs: Mapping[str, Iterable[str]] | None = None,
    ) -> bytes:
        """`Derivation::unparse`: the exact `.drv` bytes (spec §2.1).

        Args:
            mask_outputs: print output paths and output env vars as "" (for hashing).
            actual_inputs: replace inputDrvs by this map (hash modulo's `inputs2`).
        """
        parts = ["Derive(["]
        outs = []
        for name in _byte_sorted(self.outputs):
            path, algo, digest = _output_fields(self.outputs[name], store_dir, self.name, name, mask_outputs)
            outs.append(f'("{name}","{path}","{algo}","{digest}")')
        parts.append(",".join(outs))
        parts.append("],[")
        if actual_inputs is not None:
            inputs = [(k, actual_inputs[k]) for k in sorted(actual_inputs)]
        else:
            inputs = [(store_dir.print(p), wanted) for p, wanted in sorted(self._input_drvs().items())]
        parts.append(",".join([f"({unescaped(p)},{unescaped_list(_byte_sorted(o))})" for p, o in inputs]))
        parts.append("],")
        parts.append(unescaped_list([store_dir.print(p) for p in sorted(self.input_srcs)]))
        parts.append(f",{unescaped(self.platform)},{escaped(self.builder)},{escaped_list(self.args)},[")
        env = self.env
        outputs = self.outputs
        parts.append(
            ",".join(
                [
                    f"({escaped(k)},{escaped('' if mask_outputs and k in outputs else env[k])})"
                    for k in _byte_sorted(env)
                ]
            )
        )
        parts.append("])")
        return encode_text("".join(parts))

    def _input_drvs(self) -> Mapping[StorePath, frozenset[str]]:
        return {}


@dataclass(frozen=True, slots=True, kw_only=True)
class Derivation(BasicDerivation):
    """`Derivation`: a `BasicDerivation` plus the input derivations and which outputs of each it uses."""

    input_drvs: dict[StorePath, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_basic(cls, drv: BasicDerivation) -> "Derivation":
        """The `Derivation` without input derivations a `BasicDerivation` stands for
        (a resolved derivation, or one a client sent whole)."""
        return cls(name=drv.name, outputs=dict(drv.outputs), input_srcs=drv.input_srcs, platform=drv.platform,
                   builder=drv.builder, args=drv.args, env=dict(drv.env))

    def __post_init__(self) -> None:
        BasicDerivation.__post_init__(self)  # explicit: zero-arg super() breaks in slotted dataclasses
        if not all(isinstance(o, frozenset) for o in self.input_drvs.values()):
            object.__setattr__(self, "input_drvs", {p: frozenset(o) for p, o in self.input_drvs.items()})

    def _input_drvs(self) -> Mapping[StorePath, frozenset[str]]:
        return self.input_drvs

    def references(self) -> frozenset[StorePath]:
        """What `writeDerivation` registers as references: inputSrcs ∪ inputDrvs (never outputs)."""
        return self.input_srcs | frozenset(self.input_drvs)

    def drv_path(self, store_dir: StoreDir, text: bytes | None = None) -> StorePath:
        """The path `writeDerivation` gives this derivation: text path `<name>.drv`."""
        if text is None:
            text = self.unparse(store_dir)
        return store_dir.make_text_path(self.name + DRV_EXTENSION, sha256(text), self.references())

    @classmethod
    def parse(
        cls,
        text: bytes | str,
        name: str,
        store_dir: StoreDir,
        experimental_features: Collection[str] | None = None,
        source: str | None = None,
    ) -> "Derivation":
        """`parseDerivation`: read `.drv` text as Nix 2.8 does.

        Args:
            text: the file contents.
            name: the derivation name (see `StorePath.derivation_name`).
            store_dir: the logical store all paths must be in.
            experimental_features: the enabled features; CA floating outputs need
                `ca-derivations` and impure ones `impure-derivations`. None skips the check.
            source: what to name in errors (usually the drv path).

        Raises:
            BadDerivation: malformed text, with the byte offset.
            MissingExperimentalFeature: an output kind whose feature is off.
        """
        if isinstance(text, str):
            text = encode_text(text)
        return _Parser(ATermReader(text, source), name, store_dir, experimental_features).derivation()


def write_derivation(store, drv: Derivation) -> StorePath:
    """`writeDerivation`: add the drv to `store` (anything with `add_text_to_store`)."""
    return store.add_text_to_store(drv.name + DRV_EXTENSION, drv.unparse(store.store_dir), drv.references())


# -- parsing ---------------------------------------------------------------------------------


class _Parser:
    """`parseDerivation` over an `ATermReader`, mapping every failure to `BadDerivation`."""

    def __init__(self, reader: ATermReader, name: str, store_dir: StoreDir, features: Collection[str] | None):
        self.r = reader
        self.name = name
        self.store_dir = store_dir
        self.features = features

    def store_path(self, text: str, position: int) -> StorePath:
        try:
            return self.store_dir.parse(text)
        except BadStorePath as e:
            raise self.r.fail(str(e), position) from e

    def derivation(self) -> Derivation:
        r = self.r
        r.expect(b"Derive([")
        outputs: dict[str, DerivationOutput] = {}
        while not r.end_of_list():
            r.expect(b"(")
            out_name = r.string()
            output = self.output()
            outputs.setdefault(out_name, output)  # std::map::emplace keeps the first

        r.expect(b",[")
        input_drvs: dict[StorePath, frozenset[str]] = {}
        while not r.end_of_list():
            r.expect(b"(")
            start = r.pos
            drv_path = self.store_path(r.path(), start)
            r.expect(b",[")
            input_drvs[drv_path] = frozenset(r.strings())  # insert_or_assign: the last wins
            r.expect(b")")

        r.expect(b",[")
        input_srcs = set()
        while not r.end_of_list():
            start = r.pos
            input_srcs.add(self.store_path(r.path(), start))
        r.expect(b",")
        platform = r.string()
        r.expect(b",")
        builder = r.string()
        r.expect(b",[")
        args = r.strings()
        r.expect(b",[")
        env: dict[str, str] = {}
        while not r.end_of_list():
            r.expect(b"(")
            key = r.string()
            r.expect(b",")
            env[key] = r.string()
            r.expect(b")")
        r.expect(b")")
        # Nix ignores whatever follows the closing parenthesis.
        return Derivation(
            name=self.name,
            outputs=outputs,
            input_drvs=input_drvs,
            input_srcs=frozenset(input_srcs),
            platform=platform,
            builder=builder,
            args=tuple(args),
            env=env,
        )

    def output(self) -> DerivationOutput:
        """`parseDerivationOutput`: classify by which of path/hashAlgo/hash are empty."""
        r = self.r
        r.expect(b",")
        path_pos = r.pos
        path = r.string()
        r.expect(b",")
        algo_pos = r.pos
        algo = r.string()
        r.expect(b",")
        hash_pos = r.pos
        digest = r.string()
        r.expect(b")")
        if algo:
            try:
                method, algo = parse_method_algo(algo)
            except BadHash as e:
                raise r.fail(str(e), algo_pos) from e
            if digest == "impure":
                require_feature(self.features, IMPURE_DERIVATIONS)
                if path:
                    raise r.fail("impure output must not have a path", path_pos)
                return Impure(method, algo)
            if digest:
                self._validate_path(path, path_pos)  # checked, then ignored: printing recomputes it
                try:
                    return CAFixed(method, Hash.parse_non_sri_unprefixed(digest, algo))
                except BadHash as e:
                    raise r.fail(str(e), hash_pos) from e
            require_feature(self.features, CA_DERIVATIONS)
            if path:
                raise r.fail("floating content-addressed output must not have a path", path_pos)
            return CAFloating(method, algo)
        if not path:
            return Deferred()
        self._validate_path(path, path_pos)
        return InputAddressed(self.store_path(path, path_pos))

    def _validate_path(self, path: str, position: int) -> None:
        if not path.startswith("/"):
            raise self.r.fail(f"bad path '{path}' in derivation", position)


# -- placeholders ----------------------------------------------------------------------------


def hash_placeholder(output_name: str) -> str:
    """`hashPlaceholder`: what the evaluator puts in env for an output whose path is unknown."""
    return "/" + sha256(b"nix-output:" + encode_text(output_name)).base32()


def downstream_placeholder(drv_path: StorePath, output_name: str) -> str:
    """`downstreamPlaceholder`: stands for an output of a CA/deferred input until resolution."""
    clear = f"nix-upstream-output:{drv_path.hash_part}:{output_path_name(drv_path.derivation_name(), output_name)}"
    return "/" + sha256(encode_text(clear)).base32()

