# Golden impure derivations (need --extra-experimental-features "ca-derivations impure-derivations").
let
  mk = attrs: derivation ({ system = "x86_64-linux"; builder = "/bin/sh"; } // attrs);
in rec {
  impure = mk { name = "impure"; __impure = true; };
  after-impure = mk { name = "after-impure"; x = "${impure}"; };
}
