# A fixed output whose builder produces other content: hash mismatch, exit 102.
let inherit (import ./lib.nix) mk;
  flat = mk "flat.txt" "echo fetching; printf goodbye > $out" {
    outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = builtins.hashString "sha256" "hello"; };
in mk "usesfixed" "cat ${flat} > $out" {}
