# Derivations for the store interop tests (spec §1.6 examples a and b).
let
  txt = builtins.toFile "greeting" "hello\n";
  a = derivation { name = "a"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo hello > $out"]; };
  b = derivation { name = "b"; system = "x86_64-linux"; builder = "/bin/sh"; outputs = ["out" "dev"];
                   args = ["-c" "echo ${a} > $out; echo ${txt} > $dev"]; };
in { inherit a b; }
