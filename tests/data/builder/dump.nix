# A builder that prints what it was given (tests/actors/test_start_builder.py runs it under
# real nix-store -r with sandbox = false and under goalkeeper, and compares the two logs).
{ salt ? "" }:
let
  dep = builtins.toFile "dep" "hello";
  script = ''
    echo "== argv0 $0 args $#"
    echo "== env"; /usr/bin/env | /usr/bin/sort
    echo "== id $(/usr/bin/id)"
    echo "== pwd $(pwd) $(/usr/bin/stat -c %a .)"; /usr/bin/ls -A
    echo "== umask $(umask)"
    echo "== fds $(/usr/bin/ls /proc/self/fd | /usr/bin/tr '\n' ' ') $(/usr/bin/readlink /proc/self/fd/0)"
    echo "== attr $(/usr/bin/stat -c %a "$bigPath")"; /usr/bin/cat "$bigPath"; echo
    echo "== refs"; /usr/bin/cat refs
    echo "== tty"; /usr/bin/stty -a <&2 | /usr/bin/head -1
    echo x > $out
    echo "== end"
  '';
in
{
  plain = derivation {
    name = "dump"; system = builtins.currentSystem; builder = "/bin/sh"; inherit salt;
    passAsFile = [ "big" ]; big = "big value ${placeholder "out"}";
    extra = "at ${placeholder "out"}/bin";
    exportReferencesGraph = [ "refs" dep ];
    args = [ "-c" script ];
  };
  structured = derivation {
    name = "dump-structured"; system = builtins.currentSystem; builder = "/bin/sh"; inherit salt;
    __structuredAttrs = true;
    outputs = [ "out" "dev" ];
    str = "it's \"quoted\"\n"; int = 42; float = 1.5; whole = 2.0; yes = true; no = false; nothing = null;
    list = [ "a" 1 true ]; nested = [ [ 1 ] ]; obj = { b = "x"; a = 2; }; "bad-name" = "skipped";
    ref = "${placeholder "dev"}/lib";
    exportReferencesGraph = { closure = [ dep ]; single = dep; };
    args = [ "-c" ''
      echo "== env"; /usr/bin/env | /usr/bin/sort
      echo "== json"; /usr/bin/cat .attrs.json; echo
      echo "== sh"; /usr/bin/cat .attrs.sh
      echo "== end"
    '' ];
  };
}
