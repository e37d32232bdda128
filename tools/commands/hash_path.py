"""`goalkeeper hash-path`: the hash of a path's NAR serialisation, or of a file (`nix-hash`).

Unlike `nix-hash` (md5 in base-16 by default) our default is sha256 in Nix
base-32, the form store paths and `outputHash` use. `--base16 --type md5` prints
exactly what a plain `nix-hash PATH` prints; `--base32` matches `nix-hash --base32`.
"""

from __future__ import annotations

import argparse
import base64

from goalkeeper.store import nixbase32
from goalkeeper.store.hashes import ALGOS, Hash, check_algo, compress_hash
from goalkeeper.store.nar import hash_flat, hash_path

NAME = "hash-path"
HELP = (
    "print the hash of the NAR serialisation of each PATH (default: sha256 in Nix base-32); "
    "'--base16' prints what 'nix-hash --type ALGO' prints, '--base32' what 'nix-hash --type ALGO --base32' prints"
)
TRUNCATED_SIZE = 20  # `nix-hash --truncate`: hashes longer than 160 bits are folded to 160 bits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--type", dest="algo", default="sha256", metavar="ALGO",
                        help=f"hash algorithm, one of {', '.join(ALGOS)} (default: sha256)")
    base = parser.add_mutually_exclusive_group()
    base.add_argument("--base16", dest="base", action="store_const", const="base16",
                      help="print in hexadecimal (nix-hash's default)")
    base.add_argument("--base32", dest="base", action="store_const", const="base32",
                      help="print in Nix base-32 (the default)")
    base.add_argument("--sri", dest="base", action="store_const", const="sri",
                      help="print as an SRI hash, ALGO-<base64>")
    parser.add_argument("--flat", action="store_true",
                        help="hash the contents of a regular file instead of its NAR serialisation")
    parser.add_argument("--truncate", action="store_true",
                        help="fold hashes longer than 160 bits to 160 bits (as nix-hash --truncate)")
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.set_defaults(base="base32")


def format_hash(h: Hash, base: str, truncate: bool = False) -> str:
    """The text nix-hash prints for `h`: no type prefix, except SRI's."""
    digest = h.digest
    if truncate and len(digest) > TRUNCATED_SIZE:
        digest = compress_hash(digest, TRUNCATED_SIZE)
    if base == "base16":
        return digest.hex()
    if base == "base32":
        return nixbase32.encode(digest)
    return f"{h.algo}-{base64.b64encode(digest).decode()}"


def run(args: argparse.Namespace, ctx) -> int:
    algo = check_algo(args.algo)
    for path in args.paths:
        h = hash_flat(path, algo) if args.flat else hash_path(path, algo)[0]
        ctx.stdout.write(f"{format_hash(h, args.base, args.truncate)}\n".encode())
    return 0
