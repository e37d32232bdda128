# Fixed outputs, flat and recursive, and a derivation using both.
let inherit (import ./lib.nix) mk;
  flat = mk "flat.txt" "printf hello > $out" {
    outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = builtins.hashString "sha256" "hello"; };
  tree = mk "tree" "mkdir $out; printf hello > $out/f" {
    outputHashMode = "recursive"; outputHashAlgo = "sha256";
    outputHash = "1mxwk8ndcfriz93lpnpslb928xzxv1w6ki67ck4dkk47khfx2ym1"; };
in mk "usesfixed" "cat ${flat} ${tree}/f > $out" {}
