"""goalkeeper daemon: Nix worker-protocol server (re-exports only)."""
