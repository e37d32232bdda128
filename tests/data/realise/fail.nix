# A root over five leaves, one of which fails; and an independent sibling.
let inherit (import ./lib.nix) mk;
    leaf = i: mk "leaf-${toString i}"
      (if i == 2 then "echo about to fail; echo on stderr >&2; exit 1" else "echo leaf ${toString i}; echo ${toString i} > $out") {};
    leaves = builtins.genList leaf 5;
in [ (mk "root" "cat ${toString leaves} > $out" {}) (mk "other" "echo other > $out" {}) ]
