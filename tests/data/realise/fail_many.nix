# Several requested derivations fail: "build of '…', '…' failed".
let inherit (import ./lib.nix) mk;
    bad = mk "bad" "echo bad; exit 3" {};
in [ (mk "a" "cat ${bad} > $out" {}) (mk "b" "exit 1" {}) (mk "c" "echo fine > $out" {}) ]
