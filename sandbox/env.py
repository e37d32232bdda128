"""The builder's environment and the sandbox's /etc files, as Nix 2.8 makes them (pure).

Translations of DerivationGoal::initEnv and initTmpDir, and of the texts startBuilder
writes into the chroot.  Inputs are plain values so the sandbox stays independent of the
derivation module; the engine adapts a derivation to them.

Checked against a real Nix 2.8 sandboxed build (tests/data/sandbox/nix-2.8-record.txt):
``TERM`` is always ``xterm-256color`` -- it is *not* inherited from the caller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from goalkeeper.store import nixbase32
from goalkeeper.store.parsed_derivation import tokenize
from goalkeeper.store.references import rewrite_strings

HOME_DIR = "/homeless-shelter"  # must not exist; see initEnv
SANDBOX_BUILD_DIR = "/build"  # settings.sandboxBuildDir
SANDBOX_UID = 1000  # sandboxUid() with a user namespace
SANDBOX_GID = 100  # sandboxGid() with a user namespace


@dataclass(frozen=True, slots=True)
class BuilderEnv:
    """The environment (sorted, as Nix's std::map is at exec) and the files to write into
    the build directory (passAsFile), relative names -> contents."""

    env: tuple[tuple[str, str], ...]
    build_dir_files: tuple[tuple[str, bytes], ...]

    def as_bytes(self) -> tuple[tuple[bytes, bytes], ...]:
        # surrogateescape: a derivation's env may hold bytes that are not UTF-8
        return tuple((k.encode(errors="surrogateescape"), v.encode(errors="surrogateescape")) for k, v in self.env)


def pass_as_file_name(attr: str) -> str:
    """``.attr-<base32 sha256 of the attribute name>``."""
    return ".attr-" + nixbase32.encode(hashlib.sha256(attr.encode()).digest())


def _rewrite(s: str, rewrites: Mapping[str, str]) -> str:
    # rewriteStrings on the bytes (non-UTF-8 bytes ride as surrogates, as the drv parser
    # decodes them): a match of valid UTF-8 always falls on character boundaries.
    if not rewrites:
        return s
    return rewrite_strings(s.encode(errors="surrogateescape"), rewrites).decode(errors="surrogateescape")


def builder_env(*, drv_env: Mapping[str, str], store_dir: str, build_cores: int,
                build_dir_in_sandbox: str, fixed_output: bool, structured_attrs: bool,
                sandboxed_type: bool | None = None, caller_env: Mapping[str, str] = {},
                rewrites: Mapping[str, str] = {}) -> BuilderEnv:
    """The environment of initEnv/initTmpDir.

    Args:
        drv_env: the derivation's env.
        store_dir: the logical store dir (NIX_STORE).
        build_cores: settings.buildCores.
        build_dir_in_sandbox: /build in a sandbox, else the host build dir.
        fixed_output: a fixed-output derivation (NIX_OUTPUT_CHECKED=1).
        structured_attrs: ``__json`` is set: the drv env is not passed (nor passAsFile).
        sandboxed_type: False for derivation types Nix does not sandbox (fixed-output and
            impure); those get ``impureEnvVars`` from ``caller_env``.  Default: not fixed.
        caller_env: the environment of the calling Nix process.
        rewrites: inputRewrites (placeholders and hash rewrites), applied to every string.
    """
    if sandboxed_type is None:
        sandboxed_type = not fixed_output
    env: dict[str, str] = {
        # Shells default PATH to /bin:/usr/bin:... when it is unset; Nix wants no PATH.
        "PATH": "/path-not-set",
        # A home that does not exist, so tools skip their rc files instead of using
        # /etc/passwd to find one.
        "HOME": HOME_DIR,
        "NIX_STORE": store_dir,
        "NIX_BUILD_CORES": str(build_cores),
    }
    files: list[tuple[str, bytes]] = []
    if not structured_attrs:
        pass_as_file = set(tokenize(drv_env.get("passAsFile", "")))
        for name, value in drv_env.items():
            if name not in pass_as_file:
                env[name] = value
            else:
                fn = pass_as_file_name(name)
                files.append((fn, _rewrite(value, rewrites).encode(errors="surrogateescape")))
                env[name + "Path"] = build_dir_in_sandbox + "/" + fn
    env["NIX_BUILD_TOP"] = build_dir_in_sandbox
    for name in ("TMPDIR", "TEMPDIR", "TMP", "TEMP"):
        env[name] = build_dir_in_sandbox
    # Explicit PWD: in a chroot, getcwd() of some libcs cannot find the mount point.
    env["PWD"] = build_dir_in_sandbox
    if fixed_output:
        env["NIX_OUTPUT_CHECKED"] = "1"  # compatibility with Nix <= 0.7's fetchurl
    if not sandboxed_type:
        # getStringsAttr: a list under structured attrs, else a whitespace-split string.
        for name in tokenize(drv_env.get("impureEnvVars", "")):
            env[name] = caller_env.get(name, "")
    env["NIX_LOG_FD"] = "2"
    env["TERM"] = "xterm-256color"
    pairs = sorted((_rewrite(k, rewrites), _rewrite(v, rewrites))
                   for k, v in env.items())
    return BuilderEnv(env=tuple(pairs), build_dir_files=tuple(files))


def etc_passwd(uid: int = SANDBOX_UID, gid: int = SANDBOX_GID,
               build_dir: str = SANDBOX_BUILD_DIR) -> bytes:
    """/etc/passwd in the chroot: root, the build user, and nobody (for Samba-in-QEMU)."""
    return (f"root:x:0:0:Nix build user:{build_dir}:/noshell\n"
            f"nixbld:x:{uid}:{gid}:Nix build user:{build_dir}:/noshell\n"
            f"nobody:x:65534:65534:Nobody:/:/noshell\n").encode()


def etc_group(gid: int = SANDBOX_GID) -> bytes:
    """/etc/group, so that `id -gn` works."""
    return f"root:x:0:\nnixbld:!:{gid}:\nnogroup:x:65534:\n".encode()


ETC_HOSTS = b"127.0.0.1 localhost\n::1 localhost\n"  # sandboxed types only
# Fixed-output builds resolve hosts through files and DNS only.
ETC_NSSWITCH_CONF = b"hosts: files dns\nservices: files\n"
