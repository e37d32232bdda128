# A chain of 30: each link refers to the one before it.
{ n ? 30 }:
let inherit (import ./lib.nix) mk;
    link = prev: i: mk "link-${toString i}"
      "echo link ${toString i}; { echo ${toString i}; ${if prev == null then "true" else "echo ${prev}"}; } > $out" {};
    go = prev: i: if i == n then prev else go (link prev i) (i + 1);
in go null 0
