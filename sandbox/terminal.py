"""A build's pty, as Nix's startBuilder opens it: raw mode, and the build user's."""

from __future__ import annotations

import os
import termios


def make_raw(fd: int) -> None:
    """cfmakeraw(3) exactly, so a builder sees the same termios as under Nix (no \\r\\n)."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
               | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag &= ~(termios.CSIZE | termios.PARENB)
    cflag |= termios.CS8
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


def open_pty() -> tuple[int, int]:
    """(master, slave), both O_CLOEXEC and O_NOCTTY, the slave in raw mode."""
    master, slave = os.openpty()
    try:
        make_raw(slave)
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    return master, slave


def give_pty(slave: int, owner: int) -> None:
    """Nix's startBuilder with a build user: chmod(slave, 0600); chown(slave, uid, 0).

    Before the child runs, so that the builder may reopen it (echo > /dev/stderr).
    """
    os.fchmod(slave, 0o600)
    os.fchown(slave, owner, 0)
