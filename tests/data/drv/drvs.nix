# Golden derivations for tests/store/test_derivation*.py (regenerate: GOALKEEPER_ACCEPT=1 pytest tests/store/test_derivation.py).
# Nothing here is ever built; the hashes only need the right lengths.
let
  mk = attrs: derivation ({ system = "x86_64-linux"; builder = "/bin/sh"; } // attrs);
  h = {
    md5 = "b1946ac92492d2347c6235b4d2611184";
    sha1 = "f572d396fae9206628714fb2ce00f72e94f2258f";
    sha256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
    sha512 = "a8b64babd0aca91a59bdbb7761b421d4f2bb38280d3a75ba0f21f2bebc45583d446c598660c94ce680c47d19c30783a7d6a4a1e3b1aa3e0d8b3e97e2fb01ebb2";
  };
  fixed = mode: algo: mk { name = "fixed-${mode}-${algo}"; outputHashMode = mode; outputHashAlgo = algo; outputHash = h.${algo}; };
  greeting = builtins.toFile "greeting" "hello\n";
  ctl = builtins.fromJSON ''"c\u0001\u001f\u007fd"'';
in rec {
  simple = mk { name = "simple"; args = [ "-c" "echo hello > $out; echo 'q\"x' > /dev/null" ]; };
  multi = mk { name = "multi"; outputs = [ "out" "dev" "lib" "bin" ]; args = [ "-c" "echo ${simple} > $out" ]; };
  flat-md5 = fixed "flat" "md5";
  flat-sha1 = fixed "flat" "sha1";
  flat-sha256 = fixed "flat" "sha256";
  flat-sha512 = fixed "flat" "sha512";
  rec-md5 = fixed "recursive" "md5";
  rec-sha1 = fixed "recursive" "sha1";
  rec-sha256 = fixed "recursive" "sha256";
  rec-sha512 = fixed "recursive" "sha512";
  sri = mk { name = "sri"; outputHash = "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM="; outputHashMode = "recursive"; };
  structured = mk {
    name = "structured"; __structuredAttrs = true; outputs = [ "out" "doc" ];
    list = [ 1 "two" true null 2.5 ]; nested = { a.b = "c"; x = [ ]; }; flag = false;
    requiredSystemFeatures = [ "kvm" "big-parallel" ]; preferLocalBuild = true; dep = simple;
    weird = "tab\tquote\"é";
  };
  passfile = mk { name = "passfile"; passAsFile = [ "big" "other" ]; big = "line1\nline2\n"; other = "x"; };
  escapes = mk {
    name = "escapes"; weird = "q\"b\\s\nn\rr\tt$d é ü 日本"; inherit ctl;
    args = [ "-c" "printf '%s\\n' \"$weird\"" "back\\slash" "" ctl ];
    "key with \"quotes\" and\ttab" = "v";
  };
  tofile = mk { name = "tofile"; src = greeting; args = [ "-c" "cat ${greeting} > $out" ]; };
  uses-fixed = mk { name = "uses-fixed"; args = [ "-c" "read x < ${flat-sha256}; read y < ${multi.dev}; echo $x $y ${rec-sha1} > $out" ]; };
  diamond-left = mk { name = "diamond-left"; inp = "${simple} ${multi.lib}"; };
  diamond-right = mk { name = "diamond-right"; inp = "${simple} ${multi.bin} ${flat-sha1}"; };
  diamond = mk { name = "diamond"; l = diamond-left; r = diamond-right; both = "${multi.out}${multi.dev}"; s = tofile; };
  drvpath = mk { name = "drvpath"; p = simple.drvPath; };
  booleans = mk { name = "booleans"; t = true; f = false; n = null; i = 42; fl = 1.5; l = [ "a" 1 [ "b" ] ]; __ignoreNulls = true; };
}
