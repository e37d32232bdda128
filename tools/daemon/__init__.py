"""goalkeeper daemon: Nix worker-protocol server (re-exports only)."""

from .server import Daemon, listen, match_user, run_until_signalled

__all__ = ["Daemon", "listen", "match_user", "run_until_signalled"]
