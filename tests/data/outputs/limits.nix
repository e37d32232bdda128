# timeout, max-silent-time and max-build-log-size in one nix-store -r -k run
# (tests/actors/test_outputs_vs_nix.py sets timeout 2, max-silent-time 1, max-build-log-size 2000).
let inherit (import ../realise/lib.nix) mk;
in [
  (mk "chatty" "while :; do echo tick; sleep 0.2; done" {})
  (mk "silent" "echo started; sleep 30" {})
  (mk "loud" "i=0; while [ $i -lt 300 ]; do echo 0123456789abcdef; i=$((i+1)); done; sleep 30" {})
]
