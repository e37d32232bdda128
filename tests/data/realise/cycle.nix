# Two outputs referring to each other: Nix refuses the cycle.
let inherit (import ./lib.nix) mk;
in mk "cycle" ''mkdir -p $out $dev; echo $dev > $out/r; echo $out > $dev/r'' { outputs = [ "out" "dev" ]; }
