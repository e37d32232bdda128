#!/usr/bin/env bash
# Install everything, then run the main job on the example graph:
# instantiate examples/graph.json (five derivations: a chain, a fan-in, a
# multiple-output and a fixed-output one) into a fresh store, show the
# derivations goalkeeper wrote, and check them against real Nix 2.8: the same
# .drv paths Nix computed for examples/graph.nix, and the same
# `show-derivation` output when Nix reads goalkeeper's store.
# The store is a chroot store under a temporary directory T (logical dir
# /nix/store, files in T/nix/store), so the paths in the example stay valid.
# Set KEEP=1 to keep it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh

work=$(mktemp -d /tmp/goalkeeper-example.XXXXXX)
if [ "${KEEP:-}" != 1 ]; then trap 'rm -rf "$work"' EXIT; fi
store="$work/root"
options=(--store "$store" --option build-users-group '')

echo "== goalkeeper instantiate examples/graph.json   (store: $store)"
output=$(.venv/bin/goalkeeper "${options[@]}" instantiate examples/graph.json)
mapfile -t drvs <<<"$output"
printf '%s\n' "${drvs[@]}"

expected=$(.venv/bin/python -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))))' examples/graph.json)
if [ "$(printf '%s\n' "${drvs[@]}" | sort)" != "$(sort <<<"$expected")" ]; then
    printf 'FAILED: expected the derivations Nix 2.8 computed:\n%s\n' "$expected" >&2
    exit 1
fi
echo "OK: the same ${#drvs[@]} .drv paths as nix-instantiate examples/graph.nix"

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
