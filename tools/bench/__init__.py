"""Benchmarks comparing goalkeeper with real Nix 2.8."""
