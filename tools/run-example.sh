#!/usr/bin/env bash
# Install everything, then run the main job on the example graph:
# instantiate examples/graph.json (five derivations: a chain, a fan-in, a
# multiple-output and a fixed-output one) into a fresh local store, show the
# derivations goalkeeper wrote, and check that real Nix reads them identically.
# Set KEEP=1 to keep the scratch store.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh

work=$(mktemp -d /tmp/goalkeeper-example.XXXXXX)
if [ "${KEEP:-}" != 1 ]; then trap 'rm -rf "$work"' EXIT; fi
mkdir -p "$work/store" "$work/var/nix" "$work/var/log/nix"
store="local?store=$work/store&state=$work/var/nix&log=$work/var/log/nix"
options=(--store "$store" --option build-users-group '')

echo "== goalkeeper instantiate examples/graph.json   (store: $store)"
mapfile -t drvs < <(.venv/bin/goalkeeper "${options[@]}" instantiate examples/graph.json)
printf '%s\n' "${drvs[@]}"

echo "== goalkeeper show-derivation -r ${drvs[*]}"
.venv/bin/goalkeeper "${options[@]}" show-derivation -r "${drvs[@]}" | tee "$work/goalkeeper.json"

echo "== the same with real Nix 2.8"
nix --extra-experimental-features nix-command show-derivation "${options[@]}" -r "${drvs[@]}" \
    > "$work/nix.json"
nix-store "${options[@]}" --verify --check-contents
if cmp -s "$work/goalkeeper.json" "$work/nix.json"; then
    echo "OK: real Nix reads the ${#drvs[@]} derivation(s) goalkeeper wrote, and prints them identically"
else
    diff -u "$work/nix.json" "$work/goalkeeper.json" >&2 || true
    echo "FAILED: goalkeeper's and Nix's show-derivation differ" >&2
    exit 1
fi
if [ "${KEEP:-}" = 1 ]; then echo "store kept in $work"; fi
