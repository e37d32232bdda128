# Builders that exit 0 without producing (all) outputs.
let inherit (import ./lib.nix) mk;
in [ (mk "noout" "echo not making it" {}) (mk "halfout" "echo hi > $out" { outputs = [ "out" "dev" ]; }) ]
