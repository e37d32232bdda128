"""builtin:buildenv (libstore/builtins/buildenv.cc): the symlink tree of a user environment.

`nix-env` builds profiles with it: every active package's files are symlinked into
`$out`, directories merged, collisions decided by priority (lower wins; equal is an
error), then the packages they propagate (`nix-support/propagated-user-env-packages`)
at priorities from 1000 on. Messages are Nix's, word for word.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# not linked into profiles: useless there, or a source of pointless collisions
_SKIPPED_SUFFIXES = ("/propagated-build-inputs", "/nix-support", "/perllocal.pod", "/info/dir", "/log",
                     "/manifest.nix", "/manifest.json")


class BuildenvError(Exception):
    """buildenv's `Error` / `SysError`; `message` is Nix's text."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _sys_error(err: OSError, what: str) -> BuildenvError:
    return BuildenvError(f"{what}: {os.strerror(err.errno)}" if err.errno else what)


@dataclass(frozen=True, slots=True)
class Package:
    path: str
    active: bool
    priority: int


class _Profile:
    def __init__(self, warn: Callable[[str], None]):
        self.priorities: dict[str, int] = {}
        self.warn = warn

    def create_links(self, src_dir: str, dst_dir: str, priority: int) -> None:
        try:
            entries = [e.name for e in os.scandir(src_dir)]  # readDirectory: directory order
        except NotADirectoryError:
            self.warn(f"not including '{src_dir}' in the user environment because it's not a directory")
            return
        except OSError as err:
            raise _sys_error(err, f"opening directory '{src_dir}'") from err
        for name in entries:
            if name.startswith("."):
                continue  # not matched by glob
            src_file, dst_file = f"{src_dir}/{name}", f"{dst_dir}/{name}"
            try:
                src_st = os.stat(src_file)
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.ENOTDIR):
                    self.warn(f"skipping dangling symlink '{dst_file}'")
                    continue
                raise _sys_error(err, f"getting status of '{src_file}'") from err
            if src_file.endswith(_SKIPPED_SUFFIXES):
                continue
            dst_st = _lstat(dst_file)
            if stat.S_ISDIR(src_st.st_mode):
                if dst_st is not None and stat.S_ISDIR(dst_st.st_mode):
                    self.create_links(src_file, dst_file, priority)
                    continue
                if dst_st is not None and stat.S_ISLNK(dst_st.st_mode):
                    # a directory another package linked whole: make it a real one, merge both
                    target = os.path.realpath(dst_file)
                    target_st = _lstat(target)
                    if target_st is None:
                        raise BuildenvError(f"getting status of '{target}': No such file or directory")
                    if not stat.S_ISDIR(target_st.st_mode):
                        raise BuildenvError(f"collision between '{src_file}' and non-directory '{target}'")
                    _checked(os.unlink, dst_file, what=f"unlinking '{dst_file}'")
                    _checked(os.mkdir, dst_file, 0o755, what=f"creating directory '{dst_file}'")
                    self.create_links(target, dst_file, self.priorities.setdefault(dst_file, 0))
                    self.create_links(src_file, dst_file, priority)
                    continue
            elif dst_st is not None:
                if stat.S_ISLNK(dst_st.st_mode):
                    prev = self.priorities.setdefault(dst_file, 0)
                    if prev == priority:
                        raise BuildenvError(
                            f"packages '{src_file}' and '{os.readlink(dst_file)}' have the same priority "
                            f"{priority}; use 'nix-env --set-flag priority NUMBER INSTALLED_PKGNAME' to "
                            "change the priority of one of the conflicting packages (0 being the highest priority)")
                    if prev < priority:
                        continue
                    _checked(os.unlink, dst_file, what=f"unlinking '{dst_file}'")
                elif stat.S_ISDIR(dst_st.st_mode):
                    raise BuildenvError(f"collision between non-directory '{src_file}' and directory '{dst_file}'")
            _checked(os.symlink, src_file, dst_file, what=f"creating symlink from '{dst_file}' to '{src_file}'")
            self.priorities[dst_file] = priority


def build_profile(out: str, packages: list[Package], warn: Callable[[str], None]) -> None:
    """`buildProfile`: link `packages` (then what they propagate) into `out`."""
    profile = _Profile(warn)
    done: set[str] = set()
    postponed: set[str] = set()

    def add_package(pkg_dir: str, priority: int) -> None:
        if pkg_dir in done:
            return
        done.add(pkg_dir)
        profile.create_links(pkg_dir, out, priority)
        try:
            with open(f"{pkg_dir}/nix-support/propagated-user-env-packages") as f:
                propagated = f.read().replace("\n", " ").split(" ")
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise _sys_error(err, f"opening file '{pkg_dir}/nix-support/propagated-user-env-packages'") from err
            return
        postponed.update(p for p in propagated if p and p not in done)

    # explicitly installed packages first, in priority order (fewer symlinks replaced)
    for pkg in sorted(packages, key=lambda p: (p.priority, p.path)):
        if pkg.active:
            add_package(pkg.path, pkg.priority)
    # then the propagated ones: lower priority, so they lose collisions
    counter = 1000
    while postponed:
        batch, postponed = sorted(postponed), set()
        for pkg_dir in batch:
            add_package(pkg_dir, counter)
            counter += 1


def builtin_buildenv(env: Mapping[str, str], warn: Callable[[str], None]) -> None:
    """`builtinBuildenv`: `derivations` is "ACTIVE PRIORITY N PATH1..PATHN ..." per package."""
    out = _attr(env, "out")
    os.makedirs(out, exist_ok=True)
    words = env.get("derivations", None)
    if words is None:
        raise BuildenvError("attribute 'derivations' missing")
    tokens = words.split()
    packages = []
    while tokens:
        active = tokens.pop(0)
        priority, count = _stoi(tokens), _stoi(tokens)
        for _ in range(count):
            if not tokens:
                break  # Nix trusts the caller here and reads past the end; stop instead
            packages.append(Package(tokens.pop(0), active != "false", priority))
    build_profile(out, packages, warn)
    manifest = _attr(env, "manifest")
    _checked(os.symlink, manifest, f"{out}/manifest.nix",
             what=f"creating symlink from '{out}/manifest.nix' to '{manifest}'")


def _attr(env: Mapping[str, str], name: str) -> str:
    if name not in env:
        raise BuildenvError(f"attribute '{name}' missing")
    return env[name]


def _stoi(tokens: list[str]) -> int:
    """std::stoi of the next token: leading digits (with a sign); anything else is Nix's 'stoi' error."""
    text = tokens.pop(0) if tokens else ""
    digits = text.lstrip()
    end = 1 if digits[:1] in ("+", "-") else 0
    while end < len(digits) and digits[end].isdigit():
        end += 1
    try:
        return int(digits[:end])
    except ValueError:
        raise BuildenvError("stoi") from None


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise _sys_error(err, f"getting status of '{path}'") from err


def _checked(call, *args, what: str) -> None:
    try:
        call(*args)
    except OSError as err:
        raise _sys_error(err, what) from err
