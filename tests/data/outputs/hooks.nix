# Builds with output for the log and hook cases of tests/actors/test_outputs_vs_nix.py.
let inherit (import ../realise/lib.nix) mk;
in [
  (mk "logged" "echo 'first line'; printf 'progress 10%%\\rprogress 100%%\\n'; echo '@nix {\"action\":\"msg\",\"level\":0,\"msg\":\"from builder\"}'; echo last >&2; echo done > $out" {})
  (mk "multi" "echo building multi; echo $out > $out; echo $dev > $dev" { outputs = [ "out" "dev" ]; })
]
