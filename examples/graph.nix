# The example graph, as Nix source. examples/graph.json is what real Nix 2.8
# prints for it (regenerate with `bash tools/gen-example-graph.sh`).
# Builders use only /bin/sh and its builtins, so they can run in a sandbox
# that provides nothing but /bin/sh.
let
  system = "x86_64-linux";
  sh = script: { builder = "/bin/sh"; args = [ "-c" script ]; inherit system; };

  # the start of a chain
  greeting = derivation (sh ''echo hello > "$out"'' // { name = "greeting"; });

  # depends on greeting
  sentence = derivation (sh ''read -r word < "$greeting"; echo "$word, world" > "$out"'' // {
    name = "sentence";
    inherit greeting;
  });

  # two outputs
  library = derivation (sh ''echo "library code" > "$out"; echo "library headers" > "$dev"'' // {
    name = "library";
    outputs = [ "out" "dev" ];
  });

  # fixed-output: the content is known in advance, so its path does not depend on the builder
  fixed = derivation (sh ''printf 'fixed content\n' > "$out"'' // {
    name = "fixed.txt";
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = builtins.hashString "sha256" "fixed content\n";
  });
in
# fan-in: depends on all of the above, including both outputs of library
derivation (sh ''
  {
    read -r line < "$sentence"; echo "$line"
    read -r line < "$lib"; echo "$line"
    read -r line < "$headers"; echo "$line"
    read -r line < "$fixed"; echo "$line"
  } > "$out"
'' // {
  name = "report";
  inherit sentence fixed;
  lib = library.out;
  headers = library.dev;
})
