# Three outputs referring to each other (out -> dev, lib; dev -> lib; lib -> itself).
let inherit (import ./lib.nix) mk;
in mk "multi" ''
  mkdir -p $out $dev $lib
  echo "dev=$dev lib=$lib" > $out/refs
  echo "lib=$lib" > $dev/refs
  echo "self=$lib" > $lib/self
  ln -s $lib/self $lib/link
'' { outputs = [ "out" "dev" "lib" ]; }
