let inherit (import ./lib.nix) mk;
    base = mk "base" "echo base > $out" {};
    left = mk "left" "echo left; echo ${base} > $out" {};
    right = mk "right" "echo right >&2; echo ${base} > $out" {};
in mk "top" "cat ${left} ${right} > $out" {}
