"""One client connection: the hello, the op loop, and the stderr channel (daemon.cc `processConnection`).

Served by goalkeeper's daemon (`tools/daemon/`) and by the restricted store of a
recursive build (`actors/restricted_store.py`): both hand a `Connection` the op
table (`HANDLERS`, or a copy with some ops replaced), what the connection shares
with others (`services`) and its `StoreIO` (`store_io.py`).

Every op follows Nix's shape: read the request, `start_work()`, do it (log
lines and activities may flow to the client meanwhile, from any thread),
then `finish(reply)` which sends STDERR_LAST and the reply in one write.

Errors are mapped to the wire in one place, `_run_op`, as Nix's daemon does:
an op that fails after `start_work` sends one STDERR_ERROR and the connection
goes on; one that fails before it (a malformed request, a bad store path, an
unknown op) or after `finish` sends STDERR_ERROR twice and the connection
ends. Wire-level damage (oversized strings, bad frames, a vanished client)
always ends the connection; the daemon and its other connections live on.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from goalkeeper.protocol import stderr, version
from goalkeeper.protocol.errors import EndOfStream, ProtocolError, UnknownOp
from goalkeeper.protocol.handshake import server_handshake
from goalkeeper.protocol.ops import Op
from goalkeeper.protocol.wire import WireReader, WireWriter
from goalkeeper.store.errors import StoreError
from goalkeeper.store.signatures import public_keys

from . import add_ops, build_ops, misc_ops, query_ops

# The op table: opcode -> handler(conn, reader).
HANDLERS = {**query_ops.HANDLERS, **add_ops.HANDLERS, **build_ops.HANDLERS, **misc_ops.HANDLERS}


@dataclass(slots=True)
class ClientOptions:
    """What SetOptions told this connection (the fixed fields and the accepted overrides)."""

    keep_failed: bool = False
    keep_going: bool = False
    try_fallback: bool = False
    verbosity: int = stderr.LVL_INFO
    max_build_jobs: int = 1
    max_silent_time: int = 0
    verbose_build: bool = True
    build_cores: int = 0
    use_substitutes: bool = True
    overrides: dict[str, str] = field(default_factory=dict)


class Connection:
    """The daemon's side of one client.

    Args:
        read: returns up to n bytes from the client (b"" at end of stream).
        send: writes all bytes to the client.
        daemon: what connections share: ``settings``, ``store_dir``, ``handlers`` (the op
            table), ``note(text)`` (the server's own log), ``next_activity_id()``,
            ``public_keys()``; and ``tunnel_logs``: whether log lines and activities go
            to the client (not in recursive Nix, whose daemon keeps the global logger).
        io: the `StoreIO` this connection uses (its ``store`` is `conn.store`).
        trusted: the peer is in trusted-users (privileged ops and settings allowed).
        peer: a description for the daemon's own log.
    """

    def __init__(self, read: Callable[[int], bytes], send: Callable[[bytes], object], daemon, io, *,
                 trusted: bool, peer: str = "client"):
        self.reader = WireReader(read)
        self._send = send
        self._send_lock = threading.Lock()
        self.daemon = daemon
        self.io = io
        self.store = io.store
        self.store_dir = daemon.store_dir
        self.trusted = trusted
        self.peer = peer
        self._tunnel_logs = getattr(daemon, "tunnel_logs", True)
        self.minor = 0
        self.options = ClientOptions()
        self.can_send_stderr = False
        self._activity_lock = threading.Lock()

    def public_keys(self):
        """`getPublicKeys()`: the daemon's trusted-public-keys and secret-key-files, unless a
        trusted client overrode them with SetOptions (its overrides are this connection's settings)."""
        overrides = self.options.overrides
        if "trusted-public-keys" not in overrides and "secret-key-files" not in overrides:
            return self.daemon.public_keys()
        settings = self.daemon.settings
        trusted = overrides["trusted-public-keys"].split() if "trusted-public-keys" in overrides \
            else settings.get("trusted-public-keys")
        secret = overrides["secret-key-files"].split() if "secret-key-files" in overrides \
            else settings.get("secret-key-files")
        return public_keys(trusted, secret)

    # -- the stderr channel ------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write to the client; a client that went away is noticed by the next read."""
        with self._send_lock:
            self._send(data)

    def start_work(self) -> None:
        self.can_send_stderr = True

    def finish(self, reply: bytes | WireWriter = b"") -> None:
        """`stopWork()` and the reply, in one write."""
        if isinstance(reply, WireWriter):
            reply = reply.take()
        with self._send_lock:
            self.can_send_stderr = False
            self._send(stderr.last() + reply)

    def log(self, text: str, level: int = stderr.LVL_INFO) -> None:
        """A log line for the client (`TunnelLogger::log`); dropped outside an op, as Nix does."""
        if level > self.options.verbosity:
            return
        self._stderr(stderr.next_line(text if text.endswith("\n") else text + "\n"))

    def _stderr(self, data: bytes) -> None:
        if not self._tunnel_logs:
            return
        with self._send_lock:
            if self.can_send_stderr:
                self._send(data)

    def start_activity(self, type_: int, text: str, fields: tuple = (), level: int = stderr.LVL_INFO,
                       parent: int = 0) -> int:
        act = self.daemon.next_activity_id()
        if version.forwards_activities(self.minor):
            self._stderr(stderr.start_activity(act, level, type_, text, fields, parent))
        elif text:
            self.log(text + "...", level)
        return act

    def stop_activity(self, act: int) -> None:
        if version.forwards_activities(self.minor):
            self._stderr(stderr.stop_activity(act))

    def result(self, act: int, type_: int, fields: tuple) -> None:
        if version.forwards_activities(self.minor):
            self._stderr(stderr.result(act, type_, fields))
        elif type_ == stderr.RES_BUILD_LOG_LINE and fields:
            self.log(str(fields[0]))

    def request_data(self, max_len: int) -> bytes:
        """STDERR_READ: ask the client for up to `max_len` bytes (old AddToStoreNar)."""
        self.send(stderr.read_request(max_len))
        return self.reader.bytes(max_len, "STDERR_READ answer")

    def _error(self, message: str, status: int = 1) -> None:
        with self._send_lock:
            self.can_send_stderr = False
            self._send(stderr.error(message, self.minor, status=status))

    # -- the loop ----------------------------------------------------------------------------

    def serve(self) -> None:
        """Run the connection to its end; never raises for anything the client did."""
        try:
            hello = server_handshake(self.reader, self.send)
            self.minor = min(hello.minor, version.minor(version.PROTOCOL_VERSION))
            # Nix's daemon wraps the connection's start in startWork/stopWork (nothing to say here).
            self.start_work()
            self.finish()
            while True:
                try:
                    op = self.reader.u64()
                except EndOfStream:
                    return  # the client hung up between ops: the normal end
                self._run_op(op)
        except EndOfStream as e:
            self.daemon.note(f"{self.peer}: {e}")
        except OSError as e:  # the client vanished while we wrote
            self.daemon.note(f"{self.peer}: {e.strerror or e}")
        except _ConnectionEnds:
            pass

    def _run_op(self, op: int) -> None:
        try:
            handler = self.daemon.handlers.get(op)
            if handler is None:
                raise UnknownOp(op)
            handler(self, self.reader)
            if self.can_send_stderr:
                raise AssertionError(f"handler of op {Op(op).name} did not finish")
        except (EndOfStream, OSError):
            raise
        except ProtocolError as e:
            # The request stream can no longer be trusted: say why, twice as Nix does, and hang up.
            self._fatal(e)
        except StoreError as e:
            if not self.can_send_stderr:
                self._fatal(e)  # the request itself was bad (or the reply already begun)
            self._error(str(e), getattr(e, "exit_status", 1))
        except Exception as e:  # a bug: the client gets a message, the daemon's log the traceback
            self.daemon.note(f"{self.peer}: internal error in op {op}:\n{traceback.format_exc()}")
            self._fatal(e)

    def _fatal(self, e: Exception) -> None:
        message = str(e) or type(e).__name__
        self._error(message, getattr(e, "exit_status", 1))
        self._error(message, getattr(e, "exit_status", 1))
        self.daemon.note(f"{self.peer}: error processing connection: {message}")
        raise _ConnectionEnds() from e


class _ConnectionEnds(Exception):
    """Internal: the connection must close after an error was reported."""


def stderr_note(text: str) -> None:
    try:
        sys.stderr.write(text.rstrip("\n") + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass

