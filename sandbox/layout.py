"""The chroot Nix 2.8 builds in, as a :class:`SandboxSpec` (pure: decides, does nothing).

A translation of the filesystem half of startBuilder/runChild: the chroot directory and
its /tmp, /etc and store dir, the minimal /dev, the bind mounts of ``dirsInChroot``
(sorted by target, as Nix's std::map iterates), then /proc, /dev/shm and /dev/pts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from . import env as nixenv
from .spec import (BindMount, DevptsMount, IdMap, MakeDir, ProcMount, SandboxSpec,
                   SharedMount, Symlink, TmpfsMount, WriteFile)

_MINIMAL_DEV = ("/dev/full", "/dev/null", "/dev/random", "/dev/tty", "/dev/urandom",
                "/dev/zero")


def parse_sandbox_paths(items: list[str]) -> dict[str, tuple[str, bool]]:
    """`sandbox-paths` entries: ``target[=source][?]`` -> {target: (source, optional)}."""
    result = {}
    for item in items:
        if not item:
            continue
        optional = item.endswith("?")
        if optional:
            item = item[:-1]
        target, eq, source = item.partition("=")
        result[target] = (source if eq else target, optional)
    return result


def nix_sandbox(*, chroot_root: str, build_dir: str, store_dir: str = "/nix/store",
                sandbox_paths: Mapping[str, tuple[str, bool]] = {},
                input_dirs: Mapping[str, str] = {}, host_uid: int, host_gid: int,
                fixed_output: bool = False, private_network: bool | None = None,
                kvm: bool = False, shm_size: str = "50%",
                build_dir_in_sandbox: str = nixenv.SANDBOX_BUILD_DIR) -> SandboxSpec:
    """The sandbox of one build.

    Args:
        chroot_root: ``<real store>/<drv>.chroot`` (created here with mode 0750).
        build_dir: the host build directory, bound on ``build_dir_in_sandbox``.
        sandbox_paths: parsed `sandbox-paths` plus the closure of store paths in them.
        input_dirs: input store paths that are directories: logical path -> real path.
            (Nix hard-links non-directory inputs into the chroot store; the caller does.)
        host_uid, host_gid: what the sandbox's 1000/100 map to (build user or caller).
        fixed_output: fixed-output (network, /etc/resolv.conf, no /etc/hosts file).
        kvm: the `kvm` system feature is on and /dev/kvm exists.
    """
    if private_network is None:
        private_network = not fixed_output
    r = chroot_root.rstrip("/")
    dirs_in_chroot: dict[str, tuple[str, bool]] = dict(sandbox_paths)
    dirs_in_chroot[build_dir_in_sandbox] = (build_dir, False)
    for logical, real in input_dirs.items():
        dirs_in_chroot[logical] = (real, False)

    dirs = [MakeDir(path=r, mode=0o750), MakeDir(path=r + "/tmp", mode=0o1777),
            MakeDir(path=r + "/etc", mode=0o755), MakeDir(path=r + store_dir, mode=0o1775)]
    files = [WriteFile(path=r + "/etc/group", contents=nixenv.etc_group())]
    if not fixed_output:
        files.append(WriteFile(path=r + "/etc/hosts", contents=nixenv.ETC_HOSTS))
    files.append(WriteFile(path=r + "/etc/passwd",
                           contents=nixenv.etc_passwd(build_dir=build_dir_in_sandbox)))
    symlinks = []
    if "/dev" not in dirs_in_chroot:
        dirs += [MakeDir(path=r + "/dev/shm"), MakeDir(path=r + "/dev/pts")]
        devices = list(_MINIMAL_DEV)
        if kvm:
            devices.append("/dev/kvm")
        for dev in devices:
            dirs_in_chroot.setdefault(dev, (dev, False))
        symlinks += [Symlink(target="/proc/self/fd", path=r + "/dev/fd"),
                     Symlink(target="/proc/self/fd/0", path=r + "/dev/stdin"),
                     Symlink(target="/proc/self/fd/1", path=r + "/dev/stdout"),
                     Symlink(target="/proc/self/fd/2", path=r + "/dev/stderr")]
    if fixed_output:
        files.append(WriteFile(path=r + "/etc/nsswitch.conf",
                               contents=nixenv.ETC_NSSWITCH_CONF))
        impure = ["/etc/resolv.conf", "/etc/services", "/etc/hosts"]
        if os.path.exists("/var/run/nscd/socket"):
            impure.append("/var/run/nscd/socket")
        for path in impure:
            dirs_in_chroot.setdefault(path, (path, False))

    # The store dir is bound onto itself and made shared first, so later binds into the
    # (un-pivoted) first mount namespace propagate into the builder's.
    mounts: list = [SharedMount(target=r + store_dir)]
    for target in sorted(dirs_in_chroot):
        source, optional = dirs_in_chroot[target]
        if source == "/proc":
            continue  # backwards compatibility: /proc is always a fresh procfs
        mounts.append(BindMount(source=source, target=r + target, optional=optional))
    mounts.append(ProcMount(target=r + "/proc"))
    if os.path.exists("/dev/shm"):
        mounts.append(TmpfsMount(target=r + "/dev/shm", options=f"size={shm_size}".encode()))
    if (os.path.exists("/dev/pts/ptmx") and "/dev/pts" not in dirs_in_chroot
            and "/dev/ptmx" not in dirs_in_chroot):
        mounts.append(DevptsMount(target=r + "/dev/pts", ptmx_link=r + "/dev/ptmx"))

    return SandboxSpec(
        root=r,
        uid_map=IdMap(inside=nixenv.SANDBOX_UID, outside=host_uid),
        gid_map=IdMap(inside=nixenv.SANDBOX_GID, outside=host_gid),
        private_network=private_network,
        dirs=tuple(dirs), files=tuple(files), symlinks=tuple(symlinks), mounts=tuple(mounts))
