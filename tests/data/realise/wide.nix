# 30 leaves and a root that reads them all.
{ n ? 30 }:
let inherit (import ./lib.nix) mk;
    leaves = builtins.genList (i: mk "leaf-${toString i}" "echo leaf ${toString i}; echo ${toString i} > $out" {}) n;
in mk "root" "echo root; cat ${toString leaves} > $out" {}
