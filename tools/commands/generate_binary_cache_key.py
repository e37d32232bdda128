"""`goalkeeper generate-binary-cache-key NAME SECRET PUBLIC`: `nix-store --generate-binary-cache-key`.

Writes an Ed25519 key pair in Nix's format, `NAME:base64`, without a trailing
newline: SECRET holds the 64-byte libsodium secret key (seed, then public key),
PUBLIC the 32-byte public key. Real Nix signs and verifies with either file.
"""

from __future__ import annotations

import argparse
import os

from goalkeeper.store.errors import StoreError
from goalkeeper.store.signatures import SecretKey

NAME = "generate-binary-cache-key"
HELP = "create an Ed25519 key pair for signing binary caches, like 'nix-store --generate-binary-cache-key'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the key's name (e.g. cache.example.org-1)")
    parser.add_argument("secret", metavar="SECRET", help="file to write the secret key to")
    parser.add_argument("public", metavar="PUBLIC", help="file to write the public key to")


def _write(path: str, text: str, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError as err:
        raise StoreError(f"opening file '{path}': {err.strerror}") from err


def run(args: argparse.Namespace, ctx) -> int:
    key = SecretKey.generate(args.name)
    _write(args.secret, key.to_string(), 0o600)  # a secret: unlike Nix (0666 & umask), not world-readable
    _write(args.public, key.to_public_key().to_string(), 0o666)
    return 0
