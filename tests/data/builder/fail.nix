# Builders that fail (tests/actors/test_build_runner.py compares goalkeeper's messages and
# logs with real nix-store -r's).
{ salt ? "" }:
let mk = name: script: derivation {
  inherit name salt; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
}; in
{
  exit3 = mk "exit3" ''
    i=0; while [ $i -lt 12 ]; do echo "line $i"; i=$((i+1)); done
    printf 'abc\rXY\n'
    echo '@nix {"action":"setPhase","phase":"buildPhase"}'
    printf 'partial'
    exit 3
  '';
  killed = mk "killed" "echo dying; kill -9 $$";
  closes = mk "closes" "echo bye; exec >&- 2>&-; /usr/bin/sleep 30; echo x > $out";
  silent = mk "silent" "echo started; /usr/bin/sleep 30";
  chatty = mk "chatty" "echo 0123456789abcdef; echo started; /usr/bin/sleep 30";
}
