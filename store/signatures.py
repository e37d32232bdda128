"""Ed25519 keys and signatures of store paths (libutil/crypto.cc, ValidPathInfo::checkSignatures).

Key files are `name:base64`, as `nix-store --generate-binary-cache-key` writes
them (no trailing newline): a secret key is 64 bytes (the 32-byte seed, then
the public key, libsodium's layout), a public key 32 bytes. A signature is
`name:base64(64-byte detached Ed25519 signature)` of the path's fingerprint
`1;<path>;<narHash>;<narSize>;<refs>` (`ValidPathInfo.fingerprint`).

The cryptography is the `cryptography` package's; Ed25519 is deterministic,
so a signature made here is byte-identical to Nix's for the same key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from typing import TYPE_CHECKING

from .errors import StoreError
from .path_info import ValidPathInfo
from .paths import StoreDir

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# `cryptography` is imported where a key is used, not here: every command imports this
# module (goals check substituted paths' signatures), and loading it cost ~20 ms of
# each command's start, for keys that a build without substituters never uses.

SECRET_KEY_BYTES = 64  # crypto_sign_SECRETKEYBYTES: seed + public key
PUBLIC_KEY_BYTES = 32  # crypto_sign_PUBLICKEYBYTES
SIGNATURE_BYTES = 64  # crypto_sign_BYTES


class BadKey(StoreError):
    """A key or signature text that is not `name:base64` of the right length."""


def _split(text: str, what: str) -> tuple[str, bytes]:
    """`Key::Key`: `name:base64`; both parts non-empty."""
    name, _, encoded = text.strip().partition(":")
    if not name or not encoded:
        raise BadKey(f"{what} is corrupt")
    try:
        return name, base64.b64decode(encoded, validate=True)
    except binascii.Error as err:
        raise BadKey(f"{what} '{name}' is not valid base64") from err


@dataclass(frozen=True, slots=True)
class PublicKey:
    name: str
    key: bytes

    @classmethod
    def parse(cls, text: str) -> "PublicKey":
        name, key = _split(text, "public key")
        if len(key) != PUBLIC_KEY_BYTES:
            raise BadKey(f"public key '{name}' is not valid")
        return cls(name, key)

    def to_string(self) -> str:
        return f"{self.name}:{base64.b64encode(self.key).decode()}"

    def verify(self, data: bytes, signature: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.key).verify(signature, data)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, slots=True)
class SecretKey:
    name: str
    key: bytes  # 64 bytes: seed, then public key

    @classmethod
    def parse(cls, text: str) -> "SecretKey":
        name, key = _split(text, "secret key")
        if len(key) != SECRET_KEY_BYTES:
            raise BadKey(f"secret key '{name}' is not valid")
        return cls(name, key)

    @classmethod
    def generate(cls, name: str) -> "SecretKey":
        """`SecretKey::generate`: a fresh random key."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

        if not name or ":" in name:
            raise BadKey(f"invalid key name '{name}'")
        private = Ed25519PrivateKey.generate()
        seed = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(name, seed + public)

    def _private(self) -> Ed25519PrivateKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return Ed25519PrivateKey.from_private_bytes(self.key[:32])

    def to_string(self) -> str:
        return f"{self.name}:{base64.b64encode(self.key).decode()}"

    def to_public_key(self) -> PublicKey:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        # Derived from the seed rather than read from the key's tail, which could disagree.
        return PublicKey(self.name, self._private().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def sign_detached(self, data: bytes) -> str:
        """`SecretKey::signDetached`: `name:base64(signature)`."""
        return f"{self.name}:{base64.b64encode(self._private().sign(data)).decode()}"


def read_secret_key_file(path: str) -> SecretKey:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise StoreError(f"opening file '{path}': {err.strerror}") from err
    try:
        return SecretKey.parse(text)
    except BadKey as err:
        raise BadKey(f"{err} (in '{path}')") from err


PublicKeys = Mapping[str, PublicKey]


def public_keys(trusted: Iterable[str], secret_key_files: Iterable[str] = ()) -> dict[str, PublicKey]:
    """`getDefaultPublicKeys`: `trusted-public-keys`, plus the public halves of `secret-key-files`."""
    keys: dict[str, PublicKey] = {}
    for text in trusted:
        key = PublicKey.parse(text)
        keys[key.name] = key
    for path in secret_key_files:
        key = read_secret_key_file(path).to_public_key()
        keys[key.name] = key
    return keys


def verify_detached(data: bytes, sig: str, keys: PublicKeys) -> bool:
    """`verifyDetached`: True if `sig` is by one of `keys` and valid for `data`."""
    name, _, encoded = sig.partition(":")
    key = keys.get(name)
    if key is None:
        return False
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        return False
    if len(raw) != SIGNATURE_BYTES:
        raise BadKey(f"signature '{sig}' is not valid")
    return key.verify(data, raw)


def sign_path_info(info: ValidPathInfo, store_dir: StoreDir, key: SecretKey) -> ValidPathInfo:
    """`ValidPathInfo::sign`: add `key`'s signature of the fingerprint."""
    sig = key.sign_detached(info.fingerprint(store_dir).encode())
    return info.replace(sigs=info.sigs | {sig})


def check_signatures(info: ValidPathInfo, store_dir: StoreDir, keys: PublicKeys) -> int:
    """`ValidPathInfo::checkSignatures`: how many of the sigs are valid; unlimited if content-addressed."""
    if info.is_content_addressed(store_dir):
        return 2**64 - 1  # maxSigs: a content address proves itself
    fingerprint = info.fingerprint(store_dir).encode()
    return sum(1 for sig in sorted(info.sigs) if verify_detached(fingerprint, sig, keys))


def path_info_is_untrusted(info: ValidPathInfo, store_dir: StoreDir, keys: PublicKeys, require_sigs: bool) -> bool:
    """`LocalStore::pathInfoIsUntrusted`."""
    return require_sigs and check_signatures(info, store_dir, keys) == 0
