# Golden content-addressed / deferred derivations (need --extra-experimental-features ca-derivations).
let
  mk = attrs: derivation ({ system = "x86_64-linux"; builder = "/bin/sh"; } // attrs);
  plain = import ./drvs.nix;
in rec {
  ca = mk { name = "ca"; args = [ "-c" "echo ${placeholder "out"} > $out" ]; __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; };
  ca-flat = mk { name = "ca-flat"; __contentAddressed = true; outputHashMode = "flat"; outputHashAlgo = "sha1"; };
  ca-multi = mk { name = "ca-multi"; outputs = [ "out" "dev" ]; __contentAddressed = true; x = "${ca}"; };
  ca-sha512 = mk { name = "ca-sha512"; __contentAddressed = true; outputHashAlgo = "sha512"; };
  dep = mk { name = "dep"; args = [ "-c" "read x < ${ca}; echo $x > $out" ]; };
  dep2 = mk { name = "dep2"; outputs = [ "out" "man" ]; x = "${dep} ${ca-multi.dev} ${plain.simple}"; };
  dep-fixed = mk { name = "dep-fixed"; x = "${ca-flat}"; outputHashAlgo = "sha256"; outputHash = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"; };
  ca-on-ia = mk { name = "ca-on-ia"; __contentAddressed = true; x = "${plain.multi.dev}"; };
  ca-structured = mk { name = "ca-structured"; __contentAddressed = true; __structuredAttrs = true; y = [ dep ]; };
}
