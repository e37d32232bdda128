#!/usr/bin/env bash
# Install everything, then run the main job: build the example graph
# (examples/graph.nix: a chain, a fan-in, a multiple-output and a fixed-output
# derivation) with real Nix 2.8 and with goalkeeper, and compare the results.
#
#  1. Real Nix in a fresh store in a temporary directory D:
#     nix-instantiate examples/graph.nix, then nix-store -r -j 2 of all its
#     derivations; record each output's NAR hash, references and deriver.
#     Then move that store aside.
#  2. goalkeeper in a fresh store at the same D (output paths depend on the
#     store dir): `goalkeeper instantiate examples/graph.json` (Nix's own JSON
#     for graph.nix, written for /nix/store; goalkeeper relocates it) must give
#     the same .drv paths, then `goalkeeper realise -j 2` of them.
#  3. Compare: exit statuses (0), stdout, stderr lines, and per output the NAR
#     hash, references and deriver -- goalkeeper's store queried with real
#     nix-store, so Nix must read it too; `nix-store --verify --check-contents`
#     of goalkeeper's store; show-derivation from both tools on both stores.
#
# The stores are `local?store=D/store&state=D/var/nix&log=D/var/log/nix`
# with the sandbox off: Nix 2.8 forces a chroot for chroot stores (`--store
# T`), and then /bin/sh is not there for the builders.
# Prints OK/FAILED lines; exits 1 if anything differs. Set KEEP=1 to keep D.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
unset NIX_REMOTE NIX_CONFIG  # the job's stores are named explicitly; no user configuration

work=$(mktemp -d /tmp/goalkeeper-example.XXXXXX)
if [ "${KEEP:-}" != 1 ]; then trap 'rm -rf "$work"' EXIT; fi
D="$work/d"
uri="local?store=$D/store&state=$D/var/nix&log=$D/var/log/nix"
options=(--store "$uri" --option sandbox false --option build-users-group '' --option substituters '')
nix_cmd=(nix --extra-experimental-features nix-command)
failures=0

ok() { echo "OK: $*"; }
failed() { echo "FAILED: $*"; failures=$((failures + 1)); }

fresh_store() {
    rm -rf "$D"
    mkdir -p "$D/store" "$D/var/nix" "$D/var/log/nix"
}

now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# Every output of the derivations "$@", one line each: path, NAR hash,
# references, deriver -- all as real nix-store reports them.
describe_outputs() {
    local drv out
    for drv in "$@"; do
        for out in $(nix-store "${options[@]}" -q --outputs "$drv"); do
            nix-store "${options[@]}" --check-validity "$out"
            printf '%s\n  hash %s\n  references %s\n  deriver %s\n' "$out" \
                "$(nix-store "${options[@]}" -q --hash "$out")" \
                "$(nix-store "${options[@]}" -q --references "$out" | sort | tr '\n' ' ')" \
                "$(nix-store "${options[@]}" -q --deriver "$out")"
        done
    done
}

# Runs "$@" with stdout and stderr to $work/$side.{out,err}, then prints both;
# sets status and elapsed.
run_side() {
    local side=$1
    shift
    local start
    start=$(now)
    status=0
    "$@" >"$work/$side.out" 2>"$work/$side.err" || status=$?
    elapsed=$(seconds "$start" "$(now)")
    cat "$work/$side.err"
    sed 's/^/[stdout] /' "$work/$side.out"
}

echo "== 1. real Nix 2.8, store $uri"
fresh_store
top=$(nix-instantiate "${options[@]}" examples/graph.nix 2>"$work/nix-instantiate.err") \
    || { cat "$work/nix-instantiate.err" >&2; exit 1; }
mapfile -t drvs < <(nix-store "${options[@]}" -q --requisites "$top" | grep '\.drv$')
echo "nix-instantiate examples/graph.nix: $top (${#drvs[@]} derivations in its closure)"
echo "-- nix-store -r -j 2 <the ${#drvs[@]} derivations>"
run_side nix nix-store "${options[@]}" -r -j 2 "${drvs[@]}"
nix_status=$status nix_time=$elapsed
if [ "$nix_status" -ne 0 ]; then
    echo "FAILED: nix-store -r exited with $nix_status; nothing to compare with" >&2
    exit 1
fi
describe_outputs "${drvs[@]}" >"$work/nix.outputs"
"${nix_cmd[@]}" show-derivation "${options[@]}" -r "${drvs[@]}" >"$work/nix.show.json"
mv "$D" "$work/nix-store"

echo
echo "== 2. goalkeeper, a fresh store at the same place"
fresh_store
gk=(.venv/bin/goalkeeper "${options[@]}")
mapfile -t gk_drvs < <("${gk[@]}" instantiate examples/graph.json)
echo "goalkeeper instantiate examples/graph.json:"
printf '  %s\n' "${gk_drvs[@]}"
if [ "$(printf '%s\n' "${gk_drvs[@]}" | sort)" = "$(printf '%s\n' "${drvs[@]}" | sort)" ]; then
    ok "the same ${#gk_drvs[@]} .drv paths as nix-instantiate examples/graph.nix"
else
    printf 'FAILED: nix-instantiate gave:\n%s\n' "$(printf '  %s\n' "${drvs[@]}")" >&2
    exit 1
fi
echo "-- goalkeeper realise -j 2 <the same ${#drvs[@]} derivations, in the same order>"
run_side gk "${gk[@]}" realise -j 2 "${drvs[@]}"
gk_status=$status gk_time=$elapsed

echo
echo "== 3. comparison"
if [ "$gk_status" -eq 0 ]; then ok "both exited with status 0"; else failed "goalkeeper realise exited with $gk_status"; fi
if cmp -s "$work/nix.out" "$work/gk.out"; then
    ok "the same $(wc -l <"$work/gk.out") output paths on stdout, in the same order"
else
    failed "stdout differs:"; diff -u "$work/nix.out" "$work/gk.out" || true
fi
if cmp -s "$work/nix.err" "$work/gk.err"; then
    ok "stderr identical to nix-store's"
elif cmp -s <(sort "$work/nix.err") <(sort "$work/gk.err"); then
    ok "stderr has nix-store's lines; builds started in another order (-j 2)"
else
    failed "stderr lines differ:"; diff -u "$work/nix.err" "$work/gk.err" || true
fi
if describe_outputs "${drvs[@]}" >"$work/gk.outputs" 2>"$work/gk.outputs.err" \
        && cmp -s "$work/nix.outputs" "$work/gk.outputs"; then
    ok "real nix-store reports the same NAR hash, references and deriver for all $(grep -c '^/' "$work/gk.outputs") outputs"
else
    failed "outputs differ as nix-store sees them:"
    cat "$work/gk.outputs.err"; diff -u "$work/nix.outputs" "$work/gk.outputs" || true
fi
# Its stderr has only the progress lines ("reading the Nix store...", "checking ...") when all is well.
if nix-store "${options[@]}" --verify --check-contents 2>"$work/verify.err" \
        && ! grep -qv -e '^reading the Nix store\.\.\.$' -e '^checking .*\.\.\.$' "$work/verify.err"; then
    ok "nix-store --verify --check-contents accepts goalkeeper's store"
else
    failed "nix-store --verify --check-contents:"; cat "$work/verify.err"
fi
"${gk[@]}" show-derivation -r "${drvs[@]}" >"$work/gk.show.json"
"${nix_cmd[@]}" show-derivation "${options[@]}" -r "${drvs[@]}" >"$work/nix-on-gk.show.json"
if cmp -s "$work/nix.show.json" "$work/gk.show.json" && cmp -s "$work/nix.show.json" "$work/nix-on-gk.show.json"; then
    ok "show-derivation -r prints the same, goalkeeper's and Nix's, on either store"
else
    failed "show-derivation differs:"
    diff -u "$work/nix.show.json" "$work/gk.show.json" || true
    diff -u "$work/nix.show.json" "$work/nix-on-gk.show.json" || true
fi
echo "wall time of the build: nix-store -r ${nix_time} s, goalkeeper realise ${gk_time} s"

if [ "${KEEP:-}" = 1 ]; then echo "kept: Nix's store in $work/nix-store, goalkeeper's in $D"; fi
if ((failures)); then
    echo "FAILED: $failures check(s)"
    exit 1
fi
echo "OK: goalkeeper built examples/graph.nix as Nix 2.8 does"
