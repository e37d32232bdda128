#!/usr/bin/env bash
# Regenerate examples/graph.json from examples/graph.nix with real Nix 2.8:
# nix-instantiate into a throw-away chroot store (logical dir /nix/store),
# then `nix show-derivation -r` of the result.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
opts=(--store "$work/root" --option build-users-group '' --option substituters '')
drv=$(nix-instantiate "${opts[@]}" examples/graph.nix 2>/dev/null)
nix --extra-experimental-features nix-command show-derivation "${opts[@]}" -r "$drv" > examples/graph.json
echo "examples/graph.json: $(grep -c '\.drv": {' examples/graph.json) derivations, top-level $drv"
