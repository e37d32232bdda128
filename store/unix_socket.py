"""Unix sockets at paths longer than `sockaddr_un` holds (107 bytes).

Nix's `bind`/`connect` helpers (libutil) fork a process that chdirs into the socket's
directory and uses its base name. A multi-threaded Python process must not fork, so the
directory is reached through an `O_PATH` descriptor instead: `/proc/self/fd/N/NAME`
names the same place in a few bytes. Build dirs under a long `TMPDIR` (recursive Nix's
socket) and deep test directories hit this.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

_SUN_PATH_MAX = 107  # sizeof(sun_path) - 1 for the NUL


def bind(sock: socket.socket, path: str) -> None:
    """`sock.bind(path)`, however long `path` is."""
    _with_short_path(sock.bind, path)


def connect(sock: socket.socket, path: str) -> None:
    """`sock.connect(path)`, however long `path` is."""
    _with_short_path(sock.connect, path)


def _with_short_path(operation: Callable[[str], None], path: str) -> None:
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        operation(path)
        return
    directory, name = os.path.split(path)
    dirfd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            operation(f"/proc/self/fd/{dirfd}/{name}")
        except OSError as e:
            # the caller's errors name the path it gave, not our stand-in
            raise type(e)(e.errno, e.strerror, path) from None
    finally:
        os.close(dirfd)
