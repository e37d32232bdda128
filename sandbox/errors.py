"""The sandbox package's errors: one root, structured fields."""

from __future__ import annotations

import os


class SandboxError(Exception):
    """Root of every error raised by goalkeeper.sandbox."""


class SandboxSetupError(SandboxError):
    """The child failed while setting up the build environment, before exec.

    Attributes:
        step: the name of the step that failed ("pivot_root", "exec", ...).
        errno: the errno the kernel returned (0 if the failure was not a syscall's).
        message: the detail the child reported.
    """

    def __init__(self, step: str, errno: int, message: str):
        self.step, self.errno, self.message = step, errno, message
        name = os.strerror(errno) if errno else ""
        super().__init__(f"while setting up the build environment: {step}: {message or name}")
