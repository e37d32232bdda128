# A failing base under a chain of three: each level reports its failed dependency.
let inherit (import ./lib.nix) mk;
    base = mk "base" "echo failing base; exit 2" {};
    l1 = mk "l1" "cat ${base} > $out" {};
    l2 = mk "l2" "cat ${l1} > $out" {};
in mk "l3" "cat ${l2} > $out" {}
