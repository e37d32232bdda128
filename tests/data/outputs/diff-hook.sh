#!/bin/sh
# tests/actors/test_outputs_vs_nix.py: print what Nix's handleDiffHook passes (the build dir masked)
echo "diff-hook: a=$1 b=$2 drv=$3 cwd=$(pwd) a-exists=$(test -e "$1" && echo y || echo n)"
echo "second line"
