let inherit (import ./lib.nix) mk;
in mk "selfref" "mkdir $out; echo $out > $out/me; ln -s $out/me $out/link; printf x > $out/plain" {}
