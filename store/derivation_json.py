"""`nix show-derivation` JSON (Nix 2.8, src/nix/show-derivation.cc), written and read.

Writing is byte-exact with 2.8: its `JSONWriter` with indentation (two spaces,
`"key": value`, `{}`/`[]` when empty), keys in the order show-derivation emits
them, and its `toJSON` string escaping (`\\"`, `\\\\`, `\\n`, `\\r`, `\\t`,
other bytes below 0x20 as `\\u00XX`, everything else raw, including non-UTF-8
bytes and DEL).

Reading accepts that format as a *description* of derivations, the way the
evaluator would produce them: the drv-path keys, the outputs' `path` fields and
the output env variables may be missing or wrong, because `recompute` derives
them again (`fill_in_outputs`). Entries may depend on each other through
`inputDrvs` keys that name another entry's given key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .aterm import decode_text, encode_text
from .derivation import (
    parse_method_algo,
    CAFixed,
    CAFloating,
    Deferred,
    Derivation,
    DerivationError,
    DerivationOutput,
    Impure,
    InputAddressed,
)
from .derivation_hash import DrvHashCache, fill_in_outputs
from .errors import BadHash, BadJSON, BadStorePath
from .hashes import Hash
from .paths import StoreDir, StorePath

# -- writing ---------------------------------------------------------------------------------

_JSON_SPECIAL = re.compile(r'["\\\x00-\x1f]')
_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _json_escape_char(m: re.Match) -> str:
    c = m.group()
    return _JSON_ESCAPES.get(c) or f"\\u{ord(c):04x}"


def json_string(s: str) -> str:
    """Nix's `toJSON(std::string)`."""
    return '"' + _JSON_SPECIAL.sub(_json_escape_char, s) + '"'


def _render(value: Any, depth: int, out: list[str]) -> None:
    """`JSONWriter` with indent: dicts (ordered) are objects, lists are lists, str and bool scalars."""
    if isinstance(value, str):
        out.append(json_string(value))
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        inner = "\n" + "  " * (depth + 1)
        out.append("{")
        first = True
        for key, item in value.items():
            out.append(inner if first else "," + inner)
            first = False
            out.append(json_string(key))
            out.append(": ")
            _render(item, depth + 1, out)
        out.append("\n" + "  " * depth + "}")
    else:
        if not value:
            out.append("[]")
            return
        inner = "\n" + "  " * (depth + 1)
        out.append("[")
        out.append(inner)
        out.append(("," + inner).join([json_string(s) for s in value]))
        out.append("\n" + "  " * depth + "]")


def _output_json(output: DerivationOutput, store_dir: StoreDir, drv_name: str, name: str) -> dict:
    if isinstance(output, InputAddressed):
        return {"path": store_dir.print(output.path)}
    if isinstance(output, CAFixed):
        return {
            "path": store_dir.print(output.path(store_dir, drv_name, name)),
            "hashAlgo": output.print_method_algo(),
            "hash": output.hash.base16(),
        }
    if isinstance(output, CAFloating):
        return {"hashAlgo": output.print_method_algo()}
    if isinstance(output, Impure):
        return {"hashAlgo": output.print_method_algo(), "impure": True}
    return {}


def derivation_json(store_dir: StoreDir, drv: Derivation) -> dict:
    """One derivation as show-derivation structures it (ordered dicts)."""
    key = encode_text  # std::map / std::set order: bytes
    return {
        "outputs": {
            name: _output_json(drv.outputs[name], store_dir, drv.name, name)
            for name in sorted(drv.outputs, key=key)
        },
        "inputSrcs": [store_dir.print(p) for p in sorted(drv.input_srcs)],
        "inputDrvs": {
            store_dir.print(p): sorted(drv.input_drvs[p], key=key) for p in sorted(drv.input_drvs)
        },
        "system": drv.platform,
        "builder": drv.builder,
        "args": list(drv.args),
        "env": {k: drv.env[k] for k in sorted(drv.env, key=key)},
    }


def show_derivations(store_dir: StoreDir, drvs: Iterable[tuple[StorePath, Derivation]]) -> bytes:
    """The whole `nix show-derivation` output (with its final newline) for `drvs`, sorted by path."""
    root = {store_dir.print(path): derivation_json(store_dir, drv) for path, drv in sorted(drvs, key=lambda x: x[0])}
    out: list[str] = []
    _render(root, 0, out)
    out.append("\n")
    return encode_text("".join(out))


# -- reading ---------------------------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _child(where: str, key: str) -> str:
    """A JSONPath-like key path for error messages: `$["/nix/store/x.drv"].outputs.out`."""
    if _IDENT.match(key):
        return f"{where}.{key}"
    return f"{where}[{json.dumps(key, ensure_ascii=False)}]"


@dataclass(frozen=True, slots=True)
class JSONDerivation:
    """One entry of a show-derivation document, before recomputation.

    Attributes:
        key: the drv path it was given under (possibly wrong or not a path at all).
        where: its key path, for error messages.
        drv: the derivation with `input_drvs` empty (see `input_drv_keys`).
        input_drv_keys: inputDrvs as written: key string -> output names.
        given_output_paths: the outputs' `path` fields as written (possibly stale), so that
            dependents mentioning them can be pointed at the recomputed paths.
    """

    key: str
    where: str
    drv: Derivation
    input_drv_keys: dict[str, frozenset[str]]
    given_output_paths: dict[str, str] = field(default_factory=dict)


class _Reader:
    def __init__(self, store_dir: StoreDir, source: str | None, recompute: bool):
        self.store_dir = store_dir
        self.source = source
        self.recompute = recompute

    def fail(self, where: str, reason: str) -> BadJSON:
        return BadJSON(f"{where}: {reason}", source=self.source)

    def obj(self, value: Any, where: str) -> list[tuple[str, Any]]:
        if not isinstance(value, _Pairs):
            raise self.fail(where, "expected an object")
        return value

    def field(self, pairs: list[tuple[str, Any]], key: str, where: str) -> Any:
        found = _MISSING
        for k, v in pairs:
            if k == key:
                found = v  # a duplicate key: the last wins, as for a dict
        if found is _MISSING:
            raise self.fail(where, f"missing required field '{key}'")
        return found

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise self.fail(where, "expected a string")
        return value

    def strings(self, value: Any, where: str) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(where, "expected a list of strings")
        return [self.string(v, f"{where}[{i}]") for i, v in enumerate(value)]

    def store_path(self, text: str, where: str) -> StorePath:
        try:
            return self.store_dir.parse(text)
        except BadStorePath as e:
            raise self.fail(where, str(e)) from e

    def output(self, value: Any, where: str) -> DerivationOutput:
        pairs = dict(self.obj(value, where))
        algo = pairs.get("hashAlgo")
        if algo is not None:
            algo = self.string(algo, _child(where, "hashAlgo"))
            try:
                method, algo = parse_method_algo(algo)
            except BadHash as e:
                raise self.fail(_child(where, "hashAlgo"), str(e)) from e
            if pairs.get("impure") is True:
                return Impure(method, algo)
            digest = pairs.get("hash")
            if digest is not None and self.string(digest, _child(where, "hash")):
                try:
                    return CAFixed(method, Hash.parse_non_sri_unprefixed(digest, algo))
                except BadHash as e:
                    raise self.fail(_child(where, "hash"), str(e)) from e
            return CAFloating(method, algo)
        path = pairs.get("path")
        if self.recompute or not path:
            return Deferred()
        return InputAddressed(self.store_path(self.string(path, _child(where, "path")), _child(where, "path")))

    def entry(self, key: str, value: Any, where: str) -> JSONDerivation:
        pairs = self.obj(value, where)
        f = lambda name: (self.field(pairs, name, where), _child(where, name))  # noqa: E731
        outputs_v, outputs_w = f("outputs")
        outputs = {
            name: self.output(v, _child(outputs_w, name)) for name, v in self.obj(outputs_v, outputs_w)
        }
        srcs_v, srcs_w = f("inputSrcs")
        input_srcs = frozenset(
            self.store_path(s, f"{srcs_w}[{i}]") for i, s in enumerate(self.strings(srcs_v, srcs_w))
        )
        drvs_v, drvs_w = f("inputDrvs")
        input_drv_keys = {
            k: frozenset(self.strings(v, _child(drvs_w, k))) for k, v in self.obj(drvs_v, drvs_w)
        }
        system = self.string(*f("system"))
        builder = self.string(*f("builder"))
        args = self.strings(*f("args"))
        env_v, env_w = f("env")
        env = {k: self.string(v, _child(env_w, k)) for k, v in self.obj(env_v, env_w)}
        name = self.name(key, env, where)
        drv = Derivation(
            name=name, outputs=outputs, input_srcs=input_srcs, platform=system, builder=builder,
            args=tuple(args), env=env,
        )
        given = {}
        for out_name, v in self.obj(outputs_v, outputs_w):
            path = dict(self.obj(v, _child(outputs_w, out_name))).get("path")
            if isinstance(path, str) and path.startswith("/"):
                given[out_name] = path
        return JSONDerivation(key, where, drv, input_drv_keys, given)

    def name(self, key: str, env: dict[str, str], where: str) -> str:
        """The derivation name: env `name` (or `__json`'s), else the key's."""
        name = env.get("name")
        if name is None and "__json" in env:
            try:
                name = json.loads(env["__json"]).get("name")
            except (ValueError, AttributeError):
                name = None
        if isinstance(name, str) and name:
            return name
        try:
            return self.store_dir.parse(key).derivation_name()
        except BadStorePath:
            raise self.fail(where, "cannot tell the derivation's name (no env.name, key is not a .drv path)") from None


class _Pairs(list):
    """A JSON object as its (key, value) pairs, in document order."""


_MISSING = object()


def read_show_derivation(
    data: bytes | str, store_dir: StoreDir, source: str | None = None, recompute: bool = True
) -> list[JSONDerivation]:
    """Parse a show-derivation document into its entries, in document order.

    Args:
        recompute: ignore output paths (they will be recomputed); otherwise
            input-addressed outputs must carry a valid `path`.

    Raises:
        BadJSON: invalid JSON (with the byte offset) or a structural problem (with the key path).
    """
    text = decode_text(data) if isinstance(data, bytes) else data
    try:
        doc = json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as e:
        position = len(encode_text(text[: e.pos]))
        raise BadJSON(e.msg, source=source, position=position) from e
    reader = _Reader(store_dir, source, recompute)
    entries = []
    seen = set()
    for key, value in reader.obj(doc, "$"):
        where = f"$[{json.dumps(key, ensure_ascii=False)}]"  # always bracketed: keys are paths
        if key in seen:
            raise reader.fail(where, "duplicate derivation key")
        seen.add(key)
        entries.append(reader.entry(key, value, where))
    return entries


def recompute(
    entries: list[JSONDerivation],
    store_dir: StoreDir,
    read_drv: Callable[[StorePath], Derivation],
    cache: DrvHashCache | None = None,
    source: str | None = None,
) -> list[tuple[JSONDerivation, StorePath, Derivation]]:
    """Recompute outputs, output env vars and drv paths of `entries`.

    An inputDrvs key equal to another entry's given key means that entry (under
    its recomputed path); any other key must be a drv path `read_drv` can read.

    Returns:
        (entry, drv path, derivation) in topological order: every entry after
        the entries it depends on (the order to write them to a store in).
    """
    cache = {} if cache is None else cache
    by_key = {e.key: e for e in entries}
    computed: dict[StorePath, Derivation] = {}
    path_of: dict[str, StorePath] = {}
    # Stale paths of earlier entries (their given key and output paths) -> recomputed ones:
    # a dependent's builder, args and env mention them as the evaluator wrote them.
    rewrites = _Rewrites()

    def read(path: StorePath) -> Derivation:
        drv = computed.get(path)
        return drv if drv is not None else read_drv(path)

    def fail(where: str, reason: str) -> BadJSON:
        return BadJSON(f"{where}: {reason}", source=source)

    results = []
    for entry in _topological(entries, by_key, fail):
        input_drvs: dict[StorePath, frozenset[str]] = {}
        for key, wanted in entry.input_drv_keys.items():
            where = _child(_child(entry.where, "inputDrvs"), key)
            if key in by_key:
                path = path_of[key]
            else:
                try:
                    path = store_dir.parse(key)
                except BadStorePath as e:
                    raise fail(where, str(e)) from e
                if not path.is_derivation():
                    raise fail(where, f"'{key}' is not a derivation")
            input_drvs[path] = input_drvs.get(path, frozenset()) | wanted
        drv = Derivation(
            name=entry.drv.name, outputs=entry.drv.outputs, input_srcs=entry.drv.input_srcs,
            platform=entry.drv.platform, builder=rewrites(entry.drv.builder),
            args=tuple(rewrites(a) for a in entry.drv.args),
            env={k: rewrites(v) for k, v in entry.drv.env.items()}, input_drvs=input_drvs,
        )
        try:
            filled = fill_in_outputs(store_dir, drv, read, cache)
        except DerivationError as e:
            raise fail(entry.where, str(e)) from e
        path = filled.drv_path(store_dir)
        computed[path] = filled
        path_of[entry.key] = path
        _note_rewrites(rewrites, entry, store_dir, path, filled)
        results.append((entry, path, filled))
    return results


def _note_rewrites(rewrites: "_Rewrites", entry: JSONDerivation, store_dir: StoreDir,
                   path: StorePath, drv: Derivation) -> None:
    new_paths = {name: p for name, (_, p) in drv.outputs_and_opt_paths(store_dir).items() if p is not None}
    rewrites.add(entry.key, store_dir.print(path))
    for name, old in entry.given_output_paths.items():
        new = new_paths.get(name)
        if new is not None:
            rewrites.add(old, store_dir.print(new))


_PATH_SHAPE = re.compile(r"(.*/)([0-9a-df-np-sv-z]{32})-[^/]+")
_HASH_AFTER_SLASH = re.compile(r"/([0-9a-df-np-sv-z]{32})-")


class _Rewrites:
    """Stale store paths -> recomputed ones, indexed by hash part.

    Grows by two or so paths per entry, so it must not be rebuilt per entry (a regex
    alternating over every path so far made a 1,000-entry graph take minutes): a
    string is scanned once for `/<hash>-` and only the paths with that hash are tried.
    """

    def __init__(self) -> None:
        self._by_hash: dict[str, list[tuple[int, str, str]]] = {}

    def add(self, old: str, new: str) -> None:
        m = _PATH_SHAPE.fullmatch(old)
        if m is None or old == new:
            return  # not a store path: nothing in a dependent can refer to it
        candidates = self._by_hash.setdefault(m.group(2), [])
        candidates.append((len(m.group(1)) - 1, old, new))  # offset of the '/' before the hash
        candidates.sort(key=lambda c: -len(c[1]))  # longest first, as an alternation would

    def __call__(self, s: str) -> str:
        if not self._by_hash:
            return s
        out: list[str] = []
        pos = 0
        for m in _HASH_AFTER_SLASH.finditer(s):
            for offset, old, new in self._by_hash.get(m.group(1), ()):
                start = m.start() - offset
                if start >= pos and s.startswith(old, start):
                    out += (s[pos:start], new)
                    pos = start + len(old)
                    break
        if not out:
            return s
        out.append(s[pos:])
        return "".join(out)


def _topological(entries: list[JSONDerivation], by_key: dict[str, JSONDerivation], fail) -> list[JSONDerivation]:
    """Entries with their in-document dependencies first (iterative DFS; errors on cycles)."""
    order: list[JSONDerivation] = []
    state: dict[str, int] = {}  # 1 = in progress, 2 = done
    for root in entries:
        if state.get(root.key) == 2:
            continue
        stack = [(root, False)]
        while stack:
            entry, done = stack.pop()
            if done:
                state[entry.key] = 2
                order.append(entry)
                continue
            if state.get(entry.key) == 2:
                continue
            if state.get(entry.key) == 1:
                raise fail(entry.where, "derivations in the file depend on each other in a cycle")
            state[entry.key] = 1
            stack.append((entry, True))
            for key in entry.input_drv_keys:
                dep = by_key.get(key)
                if dep is not None and state.get(key) != 2:
                    if state.get(key) == 1:
                        raise fail(dep.where, "derivations in the file depend on each other in a cycle")
                    stack.append((dep, False))
    return order

