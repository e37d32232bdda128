"""The hello exchange (spec §7.2), both sides.

    C→D u64 WORKER_MAGIC_1, D→C u64 WORKER_MAGIC_2, u64 daemon version,
    C→D u64 client version, [≥14] u64 affinity flag (+ u64 cpu), [≥11] u64 reserveSpace,
    D→C [≥33] str Nix version, then stderr messages up to STDERR_LAST.

Both functions take a `WireReader` and a `send(bytes)` callable, so they run
over sockets and scripted transcripts alike. The trailing STDERR_LAST belongs
to the daemon's logger (startWork/stopWork around the connection's start) and
is sent/consumed by the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import version
from .errors import BadWireData, UnsupportedVersion
from .wire import WireReader, WireWriter

WORKER_MAGIC_1 = 0x6E697863  # "cxin" (sent little-endian: b"cxin")
WORKER_MAGIC_2 = 0x6478696F  # "oixd"


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What the daemon learnt from the client's hello."""

    version: int
    affinity: int | None = None  # the CPU the client asked the daemon to pin to (obsolete)

    @property
    def minor(self) -> int:
        return version.minor(self.version)


def server_handshake(r: WireReader, send: Callable[[bytes], object], *,
                     daemon_version: int = version.PROTOCOL_VERSION,
                     nix_version: str = version.NIX_VERSION) -> ClientHello:
    """The daemon's side, up to (not including) the first STDERR_LAST.

    Raises:
        BadWireData: the first word is not WORKER_MAGIC_1 ("protocol mismatch").
        UnsupportedVersion: the client is older than 1.10.
    """
    if r.u64() != WORKER_MAGIC_1:
        raise BadWireData("protocol mismatch")
    send(WireWriter().u64(WORKER_MAGIC_2).u64(daemon_version).take())
    client_version = r.u64()
    if client_version < version.MIN_CLIENT_VERSION:
        raise UnsupportedVersion("the Nix client version is too old")
    # Each side formats by the other's minor, but never beyond what it speaks itself.
    minor = min(version.minor(client_version), version.minor(daemon_version))
    affinity = None
    if version.sends_affinity(minor) and r.bool():
        affinity = r.u64()
    if version.sends_reserve_space(minor):
        r.u64()  # obsolete reserveSpace
    if version.sends_nix_version(minor):
        send(WireWriter().string(nix_version).take())
    return ClientHello(client_version, affinity)


@dataclass(frozen=True, slots=True)
class DaemonHello:
    """What the client learnt from the daemon's hello."""

    version: int
    nix_version: str | None

    @property
    def minor(self) -> int:
        return version.minor(self.version)


def client_handshake(r: WireReader, send: Callable[[bytes], object], *,
                     client_version: int = version.PROTOCOL_VERSION) -> DaemonHello:
    """The client's side, up to (not including) the stderr messages before the first STDERR_LAST.

    Raises:
        BadWireData: the daemon did not answer WORKER_MAGIC_2.
        UnsupportedVersion: the daemon's major is not 1 or its minor is below 10.
    """
    send(WireWriter().u64(WORKER_MAGIC_1).take())
    if r.u64() != WORKER_MAGIC_2:
        raise BadWireData("protocol mismatch")
    daemon_version = r.u64()
    if version.major(daemon_version) != version.major(version.PROTOCOL_VERSION):
        raise UnsupportedVersion("Nix daemon protocol version not supported")
    if version.minor(daemon_version) < version.MIN_DAEMON_MINOR:
        raise UnsupportedVersion("the Nix daemon version is too old")
    w = WireWriter().u64(client_version)
    minor = min(version.minor(daemon_version), version.minor(client_version))
    if version.sends_affinity(minor):
        w.u64(0)  # no CPU affinity
    if version.sends_reserve_space(minor):
        w.u64(0)
    send(w.take())
    nix_version = r.string(1 << 10) if version.sends_nix_version(minor) else None
    return DaemonHello(daemon_version, nix_version)
