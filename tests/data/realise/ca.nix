# Floating CA derivations (ca-derivations): a, b over a (self-referring), and an
# input-addressed c over b whose output path is deferred until b is built.
let inherit (import ./lib.nix) mk ca;
  a = ca "ca-a" "echo building a; echo a > $out" {};
  b = ca "ca-b" "mkdir $out; echo $out > $out/self; cat ${a} > $out/a" {};
in mk "plain-c" "cat ${b}/a > $out; echo ${b} >> $out" {}
