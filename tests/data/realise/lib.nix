# Helpers shared by the realise cases: trivial /bin/sh builders, sandbox off.
{
  # A derivation whose builder runs `script` with coreutils on PATH.
  mk = name: script: attrs: derivation ({
    inherit name;
    builder = "/bin/sh";
    args = [ "-c" "export PATH=/usr/bin:/bin; ${script}" ];
    system = builtins.currentSystem;
  } // attrs);

  # A floating content-addressed derivation (needs ca-derivations).
  ca = name: script: attrs: (import ./lib.nix).mk name script ({
    __contentAddressed = true;
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
  } // attrs);
}
