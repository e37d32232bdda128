"""Nix's syscall filter as a declarative policy, compiled with libseccomp (pyseccomp).

The spawner compiles each distinct policy once and keeps it (``compile_policy`` is cached);
a child only calls ``load()`` on the compiled filter, which is one prctl/seccomp syscall.
"""

from __future__ import annotations

import errno
import functools
import platform
import stat

import pyseccomp

from .spec import SeccompPolicy, SeccompRule


@functools.lru_cache(maxsize=8)  # a frozen value, asked for once per build
def nix_policy(*, allow_new_privileges: bool = False, required: bool = True) -> SeccompPolicy:
    """The rules of Nix's setupSeccomp().

    Builders may not create setuid/setgid files (chmod, fchmod, fchmodat with S_ISUID or
    S_ISGID set in the mode -> EPERM) nor extended attributes or ACLs, which a NAR cannot
    represent (setxattr, lsetxattr, fsetxattr -> ENOTSUP).  On x86_64 the i386 and x32
    syscall tables get the same rules, or a 32-bit builder would slip past them.
    """
    rules = []
    for perm in (stat.S_ISUID, stat.S_ISGID):
        rules.append(SeccompRule(syscall="chmod", errno=errno.EPERM, arg=1, mask=perm))
        rules.append(SeccompRule(syscall="fchmod", errno=errno.EPERM, arg=1, mask=perm))
        rules.append(SeccompRule(syscall="fchmodat", errno=errno.EPERM, arg=2, mask=perm))
    for name in ("setxattr", "lsetxattr", "fsetxattr"):
        rules.append(SeccompRule(syscall=name, errno=errno.ENOTSUP))
    machine = platform.machine()
    arches = ("X86", "X32") if machine == "x86_64" else ("ARM",) if machine == "aarch64" else ()
    return SeccompPolicy(rules=tuple(rules), extra_arches=arches,
                         allow_new_privileges=allow_new_privileges, required=required)


@functools.lru_cache(maxsize=16)
def compile_policy(policy: SeccompPolicy) -> pyseccomp.SyscallFilter:
    """A loadable filter for ``policy`` (cached: policies are frozen and hashable)."""
    filt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for arch in policy.extra_arches:
        filt.add_arch(getattr(pyseccomp.Arch, arch))
    for rule in policy.rules:
        args = ()
        if rule.arg is not None:
            args = (pyseccomp.Arg(rule.arg, pyseccomp.MASKED_EQ, rule.mask, rule.mask),)
        filt.add_rule(pyseccomp.ERRNO(rule.errno), rule.syscall, *args)
    filt.set_attr(pyseccomp.Attr.CTL_NNP, 0 if policy.allow_new_privileges else 1)
    return filt
