"""`goalkeeper daemon`: serve the store over Nix's worker protocol, standing in for `nix-daemon`.

    goalkeeper [--store URI] daemon [--socket PATH | --stdio]

Without `--socket` it listens where nix-daemon does: `$NIX_DAEMON_SOCKET_PATH`,
else `<state dir>/daemon-socket/socket`. The store comes from `--store` (a
local store) or, as for nix-daemon, from `NIX_STORE_DIR`, `NIX_STATE_DIR`
and `NIX_LOG_DIR`. With `--stdio` one (trusted) client talks on stdin/stdout.
It stays in the foreground and exits on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import sys

from goalkeeper.store.errors import StoreError

NAME = "daemon"
HELP = "serve the Nix store over the worker protocol (like nix-daemon)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="the Unix socket to listen on")
    where.add_argument("--stdio", action="store_true", help="serve one client on stdin/stdout")
    parser.add_argument("--quiet", action="store_true", help="don't log connections on stderr")


def run(args: argparse.Namespace, ctx) -> int:
    from goalkeeper.store.store_config import DaemonStoreConfig, Environment
    from goalkeeper.tools.daemon import Daemon, listen, run_until_signalled

    if isinstance(ctx.store_config, DaemonStoreConfig):
        if ctx.store_config.uri not in ("auto", "daemon"):
            raise StoreError(f"goalkeeper daemon serves a local store, not '{ctx.store_config.uri}'")
        # `auto` found nix-daemon's socket: the daemon itself always serves the local store.
        from goalkeeper.store.store_config import parse_store_uri

        ctx.store_config = parse_store_uri("local")
    store = ctx.open_store()
    daemon = Daemon(store, ctx.settings, quiet=args.quiet)
    if args.stdio:
        try:
            daemon.serve_connection(lambda n: os.read(0, min(n, 1 << 20)), _write_all(1), trusted=True,
                                    peer="stdio")
        finally:
            daemon.close()
        return 0
    path = args.socket or Environment.from_environ().default_daemon_socket
    sock = listen(path)
    print(f"goalkeeper daemon listening on {path}", file=sys.stderr, flush=True)
    run_until_signalled(daemon, sock)
    return 0


def _write_all(fd: int):
    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    return write
