# Derivations whose outputs tests/actors/test_register_outputs.py registers with goalkeeper and
# compares with what real Nix 2.8 registers (or the error it reports) for the same outputs.
# The test builds them live in a chroot store (sandbox-paths "/bin /lib /lib64 /usr"), with
# --option extra-experimental-features ca-derivations; nothing is stored from those builds.
let
  mk = attrs: derivation ({ system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/bin"; } // attrs);
  input = builtins.toFile "input" "some input\n";
  fixed = name: mode: algo: hash: script:
    mk { inherit name; outputHashMode = mode; outputHashAlgo = algo; outputHash = hash; args = [ "-c" script ]; };
  tree = "mkdir $out; echo a > $out/a; printf '#!x\\n' > $out/exe; chmod +x $out/exe; ln -s a $out/l";
in rec {
  # input-addressed, referring to itself
  self = mk { name = "self"; args = [ "-c" "echo $out > $out" ]; };
  # out -> dev -> lib -> lib, and out -> input
  multi = mk {
    name = "multi"; outputs = [ "out" "dev" "lib" ];
    args = [ "-c" "mkdir $lib; echo $lib > $lib/self; echo $lib > $dev; mkdir $out; echo $dev ${input} > $out/refs; ln -s refs $out/link" ];
  };
  cycle = mk { name = "cycle"; outputs = [ "out" "dev" ]; args = [ "-c" "echo $dev > $out; echo $out > $dev" ]; };
  missing = mk { name = "missing"; outputs = [ "out" "dev" ]; args = [ "-c" "echo $out > $out" ]; };

  flat = fixed "flat" "flat" "sha256" (builtins.hashString "sha256" "flat\n") "echo flat > $out";
  rec-sha256 = fixed "rec-sha256" "recursive" "sha256" "08cdb566d0e23406c95aca49dda22a1766356a1d8b9222014c08250ab5167ec2" tree;
  rec-sha1 = fixed "rec-sha1" "recursive" "sha1" "7a37de7bbe6ed005f38c318d1c4b2aec72f8e94d" "echo one > $out";
  mismatch = fixed "mismatch" "flat" "sha256" (builtins.hashString "sha256" "specified\n") "echo got > $out";
  flat-exec = fixed "flat-exec" "flat" "sha256" (builtins.hashString "sha256" "x\n") "echo x > $out; chmod +x $out";
  # a flat fixed output naming itself: Nix registers it under its actual hash with a self reference
  fod-self = fixed "fod-self" "flat" "sha256" (builtins.hashString "sha256" "x\n") "echo $out > $out";

  allowed = mk { name = "allowed"; allowedReferences = [ "out" ]; args = [ "-c" "echo $out ${input} > $out" ]; };
  dep = mk { name = "dep"; args = [ "-c" "echo ${input} > $out" ]; };
  requisites = mk { name = "requisites"; disallowedRequisites = [ input ]; args = [ "-c" "echo ${dep} > $out" ]; };
  maxsize = mk {
    name = "maxsize"; builder = "/bin/bash"; __structuredAttrs = true; outputChecks.out.maxSize = 16;
    args = [ "-c" ". ./.attrs.sh; echo 'more than sixteen bytes' > \${outputs[out]}" ];
  };
  closure = mk {
    name = "closure"; builder = "/bin/bash"; __structuredAttrs = true; outputChecks.out.maxClosureSize = 300;
    args = [ "-c" ". ./.attrs.sh; echo ${dep} > \${outputs[out]}" ];
  };
  illegal = mk { name = "illegal"; allowedRequisites = [ "dev" ]; args = [ "-c" "echo > $out" ]; };
  badattr = mk {
    name = "badattr"; builder = "/bin/bash"; __structuredAttrs = true; outputChecks.out.allowedReferences = [ 1 ];
    args = [ "-c" ". ./.attrs.sh; echo > \${outputs[out]}" ];
  };
  badsize = mk {
    name = "badsize"; builder = "/bin/bash"; __structuredAttrs = true; outputChecks.out.maxSize = "x";
    args = [ "-c" ". ./.attrs.sh; echo > \${outputs[out]}" ];
  };

  nondet = mk { name = "nondet"; args = [ "-c" "date +%s%N > $out" ]; };

  # floating content-addressed (ca-derivations): the builder writes a scratch path naming itself
  ca = mk {
    name = "ca"; __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256";
    args = [ "-c" "mkdir $out; echo $out > $out/self; echo ${input} > $out/input" ];
  };
}
