"""What Nix 2.8's `LocalDerivationGoal::startBuilder` decides, as a :class:`BuildPlan`.

A translation of the parts of startBuilder (with initEnv, initTmpDir,
writeStructuredAttrs and makeFallbackPath) that decide things: sandbox or not, the
build directory, the scratch output paths and the input rewrites, the builder's
environment and arguments, the files written into the build directory, and the
chroot.  Running the builder is `build_runner.py`'s job; the result is a
`sandbox.spec.BuildSpec` the spawner applies.

With a build user (`user_lock.py`; the goal takes one before calling this), the
builder runs as that user: it owns the build directory and the files written for it
(chownToBuilder), the chroot and its store dir belong to root and the build users
group, the sandbox's uid 1000 and gid 100 map to it, and unsandboxed it gets its uid,
gid and supplementary groups.

A builtin builder
(`builtin:fetchurl` ...) gets a spec like any other build, plus a `BuiltinSpec`
the child runs instead of an exec (`sandbox/builtins.py`).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from goalkeeper.sandbox import env as nixenv
from goalkeeper.sandbox.layout import nix_sandbox, parse_sandbox_paths
from goalkeeper.sandbox.seccomp import nix_policy
from goalkeeper.sandbox.skeleton import SkeletonPool, skeleton_of, without_population, write_file
from goalkeeper.sandbox.spec import (ADDR_NO_RANDOMIZE, PER_LINUX32, UNAME26, BuildSpec, BuiltinSpec,
                                     Credentials, LaunchProfile)
from goalkeeper.store.aterm import encode_text
from goalkeeper.store.derivation import Derivation, hash_placeholder
from goalkeeper.store.errors import InvalidPath, StoreError
from goalkeeper.store.hashes import Hash
from goalkeeper.store.nar import delete_path
from goalkeeper.store.parsed_derivation import ParsedDerivation, tokenize
from goalkeeper.store.paths import StorePath, output_path_name
from goalkeeper.store.references import rewrite_strings
from goalkeeper.store.settings import SandboxMode, Settings

from .deferred_delete import discard, drain
from .derivation_goal_state import BuildMode, KnownOutput
from .user_lock import BuildUser

if TYPE_CHECKING:
    from goalkeeper.store.local import LocalStore

RECURSIVE_SOCKET = ".nix-socket"  # startDaemon's socketName, in the build dir
_skeletons = SkeletonPool()  # chroot skeletons made ahead, for every engine of this process
_FILE_MODE = 0o644  # writeFile's 0666 under the umask 0022 every Nix process sets
_SH_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_EXPORT_FILE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildPlan:
    """One build as startBuilder set it up.

    Attributes:
        drv_path: the derivation being built.
        build_dir: host path of the (created) build directory (Nix's tmpDir).
        chroot_root: ``<real drv path>.chroot`` when sandboxed, else None.
        use_chroot: the build runs in the sandbox.
        scratch_outputs: output name -> where the builder writes it (logical path).
        input_rewrites: hashPlaceholder(output) -> scratch path, final hash part -> scratch
            hash part; in key order, as Nix's std::map applies them.
        redirected_outputs: final -> scratch, for outputs built under another name.
        spec: what the spawner runs.
        builtin: a `builtin:` builder (its build directory is never kept).
        recursive: the derivation requires `recursive-nix`: the goal serves a restricted
            store on ``<build_dir>/.nix-socket`` while the builder runs.
        build_user: the member of build-users-group the builder runs as, or None.
    """

    drv_path: StorePath
    build_dir: str
    chroot_root: str | None
    use_chroot: bool
    scratch_outputs: dict[str, StorePath]
    input_rewrites: dict[str, str]
    redirected_outputs: dict[StorePath, StorePath]
    spec: BuildSpec
    builtin: bool = False
    recursive: bool = False
    build_user: BuildUser | None = None


class BuildSetupError(Exception):
    """startBuilder threw: the build never started.

    Attributes:
        message: Nix's error text.
        is_build_error: Nix throws a `BuildError` (the goal ends InputRejected); otherwise
            a plain `Error`, which in Nix ends the whole worker (MiscFailure here).
    """

    def __init__(self, message: str, *, is_build_error: bool = False):
        super().__init__(message)
        self.message = message
        self.is_build_error = is_build_error


def start_builder(store: LocalStore, settings: Settings, *, drv: Derivation, drv_path: StorePath,
                  initial_outputs: Mapping[str, KnownOutput | None], build_mode: BuildMode,
                  input_paths: frozenset[StorePath], build_user: BuildUser | None = None) -> BuildPlan:
    """Decide and prepare one local build, as startBuilder does up to the fork.

    Creates the build directory (and, when sandboxed, the chroot with the
    non-directory inputs linked in) and writes the passAsFile, structured-attrs and
    exportReferencesGraph files.  On failure nothing is left behind.

    Args:
        store: the `LocalStore`.
        initial_outputs: every output of ``drv`` -> its known path and status, or None
            when the path is not known in advance (floating CA).
        input_paths: the input closure (`inputPaths`).
        build_user: run the builder as this build user (it holds its uid's lock).

    Raises:
        BuildSetupError: with Nix's message.
    """
    printed = store.print(drv_path)
    try:
        parsed = ParsedDerivation(drv_path, drv)
        dtype = drv.type()
        _check_can_build_locally(settings, drv, parsed, printed)
    except StoreError as e:
        raise BuildSetupError(str(e)) from e
    use_chroot = _use_chroot(settings, parsed, dtype.is_sandboxed, printed)
    config = store.config
    if config.store_dir.path != config.real_store_dir:
        use_chroot = True  # a diverted store can only be seen at its logical path in a chroot

    build_dir = create_temp_dir(f"nix-build-{drv_path.name}")
    chroot_root = None
    try:
        _chown_to_builder(build_dir, build_user)
        build_dir_in_sandbox = settings.sandbox_build_dir if use_chroot else build_dir
        scratch, rewrites, redirected = _scratch_outputs(store, drv, drv_path, initial_outputs,
                                                         build_mode, needs_hash_rewrite=not use_chroot)
        env = _environment(store, settings, drv, parsed, dtype, build_dir, build_dir_in_sandbox,
                           rewrites, input_paths, build_user)
        sandbox = None
        if use_chroot:
            chroot_root = store.real_path(drv_path) + ".chroot"
            sandbox = _sandbox(store, settings, drv, parsed, dtype, printed, chroot_root,
                               build_dir, build_dir_in_sandbox, input_paths, build_user)
        elif os.path.exists(nixenv.HOME_DIR):
            raise BuildSetupError(f"home directory '{nixenv.HOME_DIR}' exists; please remove it to "
                                  "assure purity of builds without sandboxing")
        recursive = "recursive-nix" in parsed.required_system_features()
        if recursive:
            # startDaemon: the builder's client talks to the restricted store on this socket
            # (created by the goal, `restricted_store.py`), named as the builder sees it.
            env = sorted({**dict(env), "NIX_REMOTE": f"unix://{build_dir_in_sandbox}/{RECURSIVE_SOCKET}"}.items())
        spec = _build_spec(settings, drv, env, rewrites, build_dir, build_dir_in_sandbox, sandbox, build_user)
    except BaseException as e:
        for path in (build_dir, chroot_root):
            if path is not None:
                delete_path(path)
        if isinstance(e, StoreError):
            raise BuildSetupError(str(e)) from e
        if isinstance(e, OSError):
            raise BuildSetupError(_sys_error(e)) from e
        raise
    return BuildPlan(drv_path=drv_path, build_dir=build_dir, chroot_root=chroot_root,
                     use_chroot=use_chroot, scratch_outputs=scratch, input_rewrites=rewrites,
                     redirected_outputs=redirected, spec=spec, builtin=drv.is_builtin(), recursive=recursive,
                     build_user=build_user)


def delete_build_dir(plan: BuildPlan, *, keep: bool) -> str | None:
    """`deleteTmpDir`, and the chroot with it.

    Args:
        keep: keep-failed is set and the build failed.

    Returns:
        Nix's note naming the kept directory, or None if it was deleted.
    """
    # Both names are free at once; the trees are deleted off the goal's thread.
    if plan.chroot_root is not None:
        discard(plan.chroot_root)
    # Nix never keeps a builtin's directory: it may hold privileged things (netrc).
    if keep and not plan.builtin:
        os.chmod(plan.build_dir, 0o755)
        return f"note: keeping build directory '{plan.build_dir}'"
    discard(plan.build_dir)
    return None


def wait_for_cleanup() -> None:
    """Wait until every discarded build dir and chroot is deleted, and remove the spare
    chroot skeletons: after this nothing of past builds is left (for `Engine.close`)."""
    drain()
    _skeletons.clear()


def refill_skeletons() -> None:
    """A builder runs: make the chroot skeletons builds took since the last call.

    Not at once when taken: between start_builder and the builder's start every step is
    on the critical path of the build, and the engine's threads share one GIL; while a
    builder runs they mostly wait.
    """
    _skeletons.refill()


def create_temp_dir(prefix: str) -> str:
    """`createTempDir("", prefix, false, false, 0700)`: ``$TMPDIR/<prefix>-N``, N from 0."""
    # canonPath(tmpRoot, true) resolves symlinks.
    root = os.path.realpath(os.environ.get("TMPDIR") or "/tmp")
    counter = 0
    while True:
        path = f"{root}/{prefix}-{counter}"
        counter += 1
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        except OSError as e:
            raise BuildSetupError(_sys_error(e, f"creating directory '{path}'")) from e
        return path


def make_fallback_path(store_dir, drv_path: StorePath, drv_name: str, *, output_name: str | None = None,
                       path: StorePath | None = None) -> StorePath:
    """`makeFallbackPath`: a scratch path for an output, by name or by its final path."""
    zero = Hash("sha256", bytes(32))  # Hash(htSHA256): all zeros
    if path is None:
        return store_dir.make_store_path(f"rewrite:{drv_path.base}:name:{output_name}", zero,
                                         output_path_name(drv_name, output_name))
    return store_dir.make_store_path(f"rewrite:{drv_path.base}:{path.base}", zero, path.name)


# -- the decisions, in startBuilder's order ----------------------------------------------------


def _check_can_build_locally(settings: Settings, drv: Derivation, parsed: ParsedDerivation,
                             printed: str) -> None:
    """`ParsedDerivation::canBuildLocally`, failing with startBuilder's message."""
    features = set(settings.system_features)
    if settings.is_experimental_feature_enabled("ca-derivations"):
        features.add("ca-derivations")
    if settings.is_experimental_feature_enabled("recursive-nix"):
        features.add("recursive-nix")
    required = parsed.required_system_features()
    if ((drv.platform == settings.system or drv.platform in settings.extra_platforms or drv.is_builtin())
            and (settings.max_jobs != 0 or drv.is_builtin()) and required <= features):
        return
    raise BuildSetupError(
        f"a '{drv.platform}' with features {{{', '.join(sorted(required))}}} is required to build "
        f"'{printed}', but I am a '{settings.system}' with features {{{', '.join(sorted(features))}}}")


def _use_chroot(settings: Settings, parsed: ParsedDerivation, sandboxed_type: bool, printed: str) -> bool:
    no_chroot = parsed.get_bool_attr("__noChroot")
    mode = settings.sandbox
    if mode is SandboxMode.ENABLED:
        if no_chroot:
            raise BuildSetupError(f"derivation '{printed}' has '__noChroot' set, but that's not allowed "
                                  "when 'sandbox' is 'true'")
        return True
    if mode is SandboxMode.RELAXED:
        return sandboxed_type and not no_chroot
    return False


def _scratch_outputs(store, drv: Derivation, drv_path: StorePath,
                     initial_outputs: Mapping[str, KnownOutput | None], build_mode: BuildMode,
                     *, needs_hash_rewrite: bool):
    """Where each output is built, and the rewrites that point the builder there."""
    scratch: dict[str, StorePath] = {}
    rewrites: dict[str, str] = {}
    redirected: dict[StorePath, StorePath] = {}
    for name in drv.outputs:
        known = initial_outputs.get(name)
        if known is None:
            path = make_fallback_path(store.store_dir, drv_path, drv.name, output_name=name)
        elif (not needs_hash_rewrite  # the sandbox can always use the real path
              or not known.is_present()  # nothing there yet
              or (build_mode is not BuildMode.Repair and not known.is_valid())):  # corrupt: deleted
            path = known.path
        else:  # valid (or repairing): build beside it
            path = make_fallback_path(store.store_dir, drv_path, drv.name, path=known.path)
        scratch[name] = path
        rewrites[hash_placeholder(name)] = store.print(path)
        if known is None or known.path == path:
            continue
        # Nix deletes printStorePath(scratchPath); the file is at its real path.
        delete_path(store.real_path(path))
        rewrites[known.path.hash_part] = path.hash_part
        redirected[known.path] = path
    return scratch, dict(sorted(rewrites.items())), redirected


def _environment(store, settings: Settings, drv: Derivation, parsed: ParsedDerivation, dtype,
                 build_dir: str, build_dir_in_sandbox: str, rewrites: Mapping[str, str],
                 input_paths: frozenset[StorePath], build_user: BuildUser | None) -> list[tuple[str, str]]:
    """initEnv + writeStructuredAttrs + exportReferencesGraph: the env, files written."""
    structured = parsed.structured_attrs
    drv_env: Mapping[str, str] = drv.env
    if structured is not None:
        # Only impureEnvVars is read from the attributes then; builder_env tokenizes it.
        drv_env = {"impureEnvVars": " ".join(parsed.get_strings_attr("impureEnvVars") or ())}
    built = nixenv.builder_env(
        drv_env=drv_env, store_dir=store.store_dir.path, build_cores=settings.cores,
        build_dir_in_sandbox=build_dir_in_sandbox, fixed_output=dtype.is_fixed,
        structured_attrs=structured is not None, sandboxed_type=dtype.is_sandboxed,
        caller_env=os.environ, rewrites=rewrites)
    for name, contents in built.build_dir_files:  # passAsFile
        _write_file(f"{build_dir}/{name}", contents)
        _chown_to_builder(f"{build_dir}/{name}", build_user)
    env = dict(built.env)
    if structured is not None:
        attrs = dict(structured)
        attrs["outputs"] = {name: _rewrite(hash_placeholder(name), rewrites) for name in drv.outputs}
        export = attrs.get("exportReferencesGraph")
        if isinstance(export, dict):
            # prepareStructuredAttrs: each key becomes an attribute of its own, the closure's
            # pathInfoToJSON (no impure info, closure sizes)
            for key in sorted(export):
                roots = {_export_root(store, p) for p in _json_items(export[key])}
                attrs[key] = _path_infos_json(store, _export_references(store, roots, input_paths))
        _write_file(f"{build_dir}/.attrs.sh",
                    rewrite_strings(encode_text(structured_attrs_shell(attrs)), rewrites))
        _chown_to_builder(f"{build_dir}/.attrs.sh", build_user)
        # Nix 2.8 names the host path here, even in the sandbox (later versions fixed that).
        env["NIX_ATTRS_SH_FILE"] = f"{build_dir}/.attrs.sh"
        dumped = json.dumps(attrs, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        _write_file(f"{build_dir}/.attrs.json", rewrite_strings(encode_text(dumped), rewrites))
        _chown_to_builder(f"{build_dir}/.attrs.json", build_user)
        env["NIX_ATTRS_JSON_FILE"] = f"{build_dir}/.attrs.json"
    else:
        _export_references_graph(store, drv, build_dir, input_paths)
    return sorted(env.items())


def structured_attrs_shell(attrs: Mapping[str, object]) -> str:
    """`writeStructuredAttrsShell`: the attributes bash can represent, as `declare` lines."""
    lines = []
    for key in sorted(attrs):
        if not _SH_VAR_NAME.match(key):
            continue
        value = attrs[key]
        simple = _shell_simple(value)
        if simple is not None:
            lines.append(f"declare {key}={simple}\n")
        elif isinstance(value, list):
            items = [_shell_simple(v) for v in value]
            if None not in items:
                lines.append(f"declare -a {key}=({''.join(i + ' ' for i in items)})\n")
        elif isinstance(value, dict):
            items = [(k, _shell_simple(value[k])) for k in sorted(value)]
            if all(v is not None for _, v in items):
                lines.append(f"declare -A {key}=({''.join(f'[{_shell_escape(k)}]={v} ' for k, v in items)})\n")
    return "".join(lines)


def _shell_simple(value: object) -> str | None:
    if isinstance(value, str):
        return _shell_escape(value)
    if isinstance(value, bool):
        return "1" if value else ""
    if isinstance(value, (int, float)):
        # Nix: `f = value.get<float>(); if (ceil(f) == f) to_string(value.get<int>())`.
        try:
            f = struct.unpack("f", struct.pack("f", value))[0]
        except OverflowError:
            return None
        if math.isfinite(f) and math.ceil(f) == f:
            return str(int(value))
        return None
    if value is None:
        return "''"
    return None


def _shell_escape(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _export_references_graph(store, drv: Derivation, build_dir: str,
                             input_paths: frozenset[StorePath]) -> None:
    """`exportReferencesGraph = [name1 path1 ...]`: each closure in `--register-validity` form."""
    text = drv.env.get("exportReferencesGraph", "")
    tokens = tokenize(text)
    if len(tokens) % 2:
        raise BuildSetupError(f"odd number of tokens in 'exportReferencesGraph': '{text}'",
                              is_build_error=True)
    for file_name, path_text in zip(tokens[::2], tokens[1::2]):
        if not _EXPORT_FILE_NAME.match(file_name):
            raise BuildSetupError(f"invalid file name '{file_name}' in 'exportReferencesGraph'")
        if not store.store_dir.is_in_store(path_text):
            raise BuildSetupError(f"'exportReferencesGraph' contains a non-store path '{path_text}'",
                                  is_build_error=True)
        path = store.store_dir.to_store_path(path_text)[0]
        paths = _export_references(store, {path}, input_paths)
        out = []
        for p in sorted(paths):
            info = store.require_path_info(p)
            out.append(f"{store.print(p)}\n\n{len(info.references)}\n")
            out.extend(f"{store.print(r)}\n" for r in sorted(info.references))
        _write_file(f"{build_dir}/{file_name}", encode_text("".join(out)))


def _export_references(store, roots: set[StorePath], input_paths: frozenset[StorePath]) -> set[StorePath]:
    """`Store::exportReferences`: the closures, plus the closures of derivations' outputs."""
    paths: set[StorePath] = set()
    for path in sorted(roots):
        if path not in input_paths:
            raise BuildSetupError(f"cannot export references of path '{store.print(path)}' because it is "
                                  "not in the input closure of the derivation", is_build_error=True)
        paths |= store.compute_fs_closure(path)
    for p in list(paths):
        if p.is_derivation():
            for name, (_, out) in store.read_derivation(p).outputs_and_opt_paths(store.store_dir).items():
                if out is None:
                    raise BuildSetupError("exportReferences on CA derivations is not yet implemented")
                paths |= store.compute_fs_closure(out)
    return paths


def _json_items(value: object) -> list[object]:
    # nlohmann's iteration: an array's elements; any other value is one element
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return list(value.values())
    return [value]


def _export_root(store, value: object) -> StorePath:
    if not isinstance(value, str):
        # what nlohmann's get<std::string>() throws
        raise BuildSetupError(f"[json.exception.type_error.302] type must be string, but is {_json_type(value)}")
    return store.store_dir.parse(value)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "array" if isinstance(value, list) else "object"


def _path_infos_json(store, paths: set[StorePath]) -> list[dict]:
    """`Store::pathInfoToJSON(paths, includeImpureInfo = false, showClosureSize = true)`."""
    out = []
    for path in sorted(paths):
        info = store.require_path_info(path)
        entry: dict = {"path": store.print(path), "narHash": info.nar_hash.to_string(),
                       "narSize": info.nar_size, "references": [store.print(r) for r in sorted(info.references)]}
        if info.ca is not None:
            entry["ca"] = info.ca.render()
        entry["closureSize"] = sum(store.require_path_info(p).nar_size for p in store.compute_fs_closure(path))
        out.append(entry)
    return out


def _sandbox(store, settings: Settings, drv: Derivation, parsed: ParsedDerivation, dtype, printed: str,
             chroot_root: str, build_dir: str, build_dir_in_sandbox: str,
             input_paths: frozenset[StorePath], build_user: BuildUser | None):
    """The chroot half of startBuilder: dirsInChroot, then the chroot directory itself."""
    store_dir = store.store_dir
    sandbox_paths = parse_sandbox_paths(sorted(settings.sandbox_paths))
    closure: set[StorePath] = set()
    for source, _ in list(sandbox_paths.values()):
        if store_dir.is_in_store(source):
            try:
                closure |= store.compute_fs_closure(store_dir.to_store_path(source)[0])
            except InvalidPath:
                pass
    for p in closure:
        # Nix binds the logical path; its files are at the real one.
        sandbox_paths[store.print(p)] = (store.real_path(p), False)
    allowed = [os.path.normpath(a) for a in settings.allowed_impure_host_deps]
    for path in parsed.get_strings_attr("__impureHostDeps") or ():
        canon = os.path.normpath(path)
        if not any(canon == a or canon.startswith(a.rstrip("/") + "/") for a in allowed):
            raise BuildSetupError(f"derivation '{printed}' requested impure path '{path}', but it was "
                                  "not in allowed-impure-host-deps")
        sandbox_paths[path] = (path, True)

    input_dirs: dict[str, str] = {}
    input_files: list[tuple[str, str]] = []
    for p in sorted(input_paths):
        real = store.real_path(p)
        if stat.S_ISDIR(os.lstat(real).st_mode):
            input_dirs[store.print(p)] = real
        else:
            input_files.append((real, chroot_root + store.print(p)))
    # Rebuilding a path that is also a sandbox path (a dependency of /bin/sh): drop it.
    for _, out in drv.outputs_and_opt_paths(store_dir).values():
        if out is not None:
            sandbox_paths.pop(store.print(out), None)
            input_dirs.pop(store.print(out), None)

    def decide():
        return nix_sandbox(
            chroot_root=chroot_root, build_dir=build_dir, store_dir=store_dir.path,
            sandbox_paths=sandbox_paths, input_dirs=input_dirs,
            host_uid=build_user.uid if build_user else os.getuid(),
            host_gid=build_user.gid if build_user else os.getgid(), fixed_output=not dtype.is_sandboxed,
            kvm="kvm" in settings.system_features and os.path.exists("/dev/kvm"),
            shm_size=settings.sandbox_dev_shm_size, build_dir_in_sandbox=build_dir_in_sandbox)

    sandbox = decide()
    delete_path(chroot_root)
    hook = settings.pre_build_hook
    if not hook:
        # The build-independent part, made ahead (see sandbox/skeleton.py); the next one
        # once the builder runs (`refill_skeletons`).
        _skeletons.take(skeleton_of(sandbox, store_dir.path), chroot_root, refill=False)
        sandbox = without_population(sandbox)
    else:
        # A hook sees the chroot as before: the root and its store dir; the child
        # populates the rest.
        os.mkdir(chroot_root, 0o750)
        chroot_store = chroot_root + store_dir.path
        os.makedirs(chroot_store)
        os.chmod(chroot_store, 0o1775)
    if build_user is not None:
        # Root's, readable (and the store dir writable) by the build users group only:
        # the builder can create its outputs, nobody else can look in.
        for path in (chroot_root, chroot_root + store_dir.path):
            try:
                os.chown(path, 0, build_user.gid)
            except OSError as e:
                raise BuildSetupError(_sys_error(e, f"cannot change ownership of '{path}'")) from e
    for real, target in input_files:
        _link_or_copy(real, target)
    if hook:
        extra = _pre_build_hook(settings, printed, chroot_root)
        for target, source in extra.items():
            sandbox_paths[target] = (source, False)
        sandbox = decide()
    return sandbox


def _link_or_copy(source: str, target: str) -> None:
    # link(2) does not follow a symlink: an input that is a symlink is linked as one.
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as e:
        # Too many links (after `nix-store --optimise`), or a filesystem refusing them.
        if e.errno not in (errno.EMLINK, errno.EPERM):
            raise
        shutil.copy2(source, target, follow_symlinks=False)


def _pre_build_hook(settings: Settings, printed: str, chroot_root: str) -> dict[str, str]:
    """Run `pre-build-hook` (sandboxed builds only) and parse its extra-sandbox-paths."""
    hook = settings.pre_build_hook
    if not hook:
        return {}
    # A C-level fork+exec (no Python runs in the child), safe from a threaded process.
    proc = subprocess.run([hook, printed, chroot_root], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise BuildSetupError(f"program '{hook}' {_status_to_string(proc.returncode)}")
    extra: dict[str, str] = {}
    in_dirs = False
    lines = proc.stdout.decode(errors="surrogateescape").split("\n")[:-1]  # up to the last \n
    for line in lines:
        if not in_dirs:
            if line not in ("extra-sandbox-paths", "extra-chroot-dirs"):
                raise BuildSetupError(f"unknown pre-build hook command '{line}'")
            in_dirs = True
        elif line == "":
            in_dirs = False
        else:
            target, eq, source = line.partition("=")
            extra[target] = source if eq else target
    return extra


def _seccomp_policy(settings: Settings, *, with_build_user: bool = False):
    if not settings.filter_syscalls:
        return None
    # Nix ignores a failure to load the filter when there is no build user.
    return nix_policy(allow_new_privileges=settings.allow_new_privileges, required=with_build_user)


def launch_profile(settings: Settings) -> LaunchProfile:
    """What `_build_spec` gives every plain unsandboxed build, for the spawner to take once."""
    return LaunchProfile(seccomp=_seccomp_policy(settings), personality_or=ADDR_NO_RANDOMIZE)


def _build_spec(settings: Settings, drv: Derivation, env: list[tuple[str, str]],
                rewrites: Mapping[str, str], build_dir: str, build_dir_in_sandbox: str,
                sandbox, build_user: BuildUser | None) -> BuildSpec:
    """runChild's decisions: argv, personality, seccomp, credentials."""
    personality_set = None
    if ((drv.platform == "i686-linux" and os.uname().machine == "x86_64")
            or drv.platform in ("armv7l-linux", "armv6l-linux")):
        personality_set = PER_LINUX32
    personality_or = ADDR_NO_RANDOMIZE
    if drv.platform in ("i686-linux", "x86_64-linux") and settings.impersonate_linux_26:
        personality_or |= UNAME26
    seccomp = _seccomp_policy(settings, with_build_user=build_user is not None)
    if sandbox is not None:
        # The sandbox's own ids, which its uid_map/gid_map send to the build user (or
        # the caller).
        credentials = Credentials(uid=nixenv.SANDBOX_UID, gid=nixenv.SANDBOX_GID)
    elif build_user is not None:
        # runChild's setgroups (only when the list is not empty), setgid, setuid.
        credentials = Credentials(uid=build_user.uid, gid=build_user.gid,
                                  supplementary_gids=build_user.supplementary_gids or None)
    else:
        credentials = None
    builder = encode_text(drv.builder)
    builtin = _builtin_spec(settings, drv, rewrites) if drv.is_builtin() else None
    return BuildSpec(
        builder=builder,
        argv=(_base_name_of(builder),) + tuple(rewrite_strings(encode_text(a), rewrites) for a in drv.args),
        env=tuple((encode_text(k), encode_text(v)) for k, v in env),
        build_dir=build_dir, build_dir_in_sandbox=build_dir_in_sandbox, cwd=build_dir_in_sandbox,
        sandbox=sandbox, credentials=credentials,
        personality_set=personality_set, personality_or=personality_or, seccomp=seccomp, builtin=builtin,
        pty_owner=build_user.uid if build_user is not None else None)


def _builtin_spec(settings: Settings, drv: Derivation, rewrites: Mapping[str, str]) -> BuiltinSpec:
    """What runChild gives a builtin: the drv's env with the input rewrites, and for
    fetchurl the host's netrc (read here: the child may run where it cannot see it)."""
    netrc_data = ""
    if drv.builder == "builtin:fetchurl":
        try:
            with open(str(settings.get("netrc-file")), encoding="utf-8", errors="surrogateescape") as f:
                netrc_data = f.read()
        except OSError:
            pass  # no netrc: no credentials, as in Nix
    return BuiltinSpec(builder=drv.builder, env=tuple((k, _rewrite(v, rewrites)) for k, v in drv.env.items()),
                       netrc_data=netrc_data, hashed_mirrors=tuple(settings.get("hashed-mirrors") or ()),
                       download_attempts=int(settings.get("download-attempts")))


# -- helpers -----------------------------------------------------------------------------------


def _rewrite(s: str, rewrites: Mapping[str, str]) -> str:
    return rewrite_strings(encode_text(s), rewrites).decode("utf-8", "surrogateescape")


def _base_name_of(path: bytes) -> bytes:
    """`baseNameOf`: the last component, ignoring one trailing slash."""
    if path.endswith(b"/") and len(path) > 1:
        path = path[:-1]
    return path.rpartition(b"/")[2]


def _write_file(path: str, contents: bytes) -> None:
    write_file(path, contents, _FILE_MODE)


def _chown_to_builder(path: str, build_user: BuildUser | None) -> None:
    """`chownToBuilder`: the build user and its group own `path` (nothing without one)."""
    if build_user is None:
        return
    try:
        os.chown(path, build_user.uid, build_user.gid)
    except OSError as e:
        raise BuildSetupError(_sys_error(e, f"cannot change ownership of '{path}'")) from e


def _sys_error(e: OSError, what: str | None = None) -> str:
    """Nix's SysError text: `<what>: <strerror>`."""
    if what is None:
        what = f"'{e.filename}'" if e.filename else "system call"
    return f"{what}: {e.strerror}"


def _status_to_string(returncode: int) -> str:
    """`statusToString` for a subprocess return code (negative: killed by that signal)."""
    if returncode < 0:
        sig = -returncode
        return f"failed due to signal {sig} ({signal.strsignal(sig)})"
    return f"failed with exit code {returncode}"
