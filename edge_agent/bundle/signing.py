"""ed25519 keys and signatures for bundles (`cryptography`), torch-free.

Keys are PEM files: private keys PKCS#8 (unencrypted unless a passphrase is given, written with mode 0600),
public keys SubjectPublicKeyInfo. `manifest.sig` holds the raw 64-byte ed25519 signature over `manifest.json`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.bundle.errors import BundleError, SignatureError

logger = logging.getLogger(__name__)

SIGNATURE_LENGTH = 64
PublicKeyLike = Ed25519PublicKey | str | os.PathLike


def generate_keypair(
    private_path: str | os.PathLike,
    public_path: str | os.PathLike,
    *,
    overwrite: bool = False,
    passphrase: bytes | None = None,
) -> Ed25519PublicKey:
    """Create an ed25519 key pair as PEM files; refuses to overwrite existing files unless asked."""
    private_path, public_path = Path(private_path), Path(public_path)
    for path in (private_path, public_path):
        if path.exists() and not overwrite:
            raise BundleError(f"{path} already exists; pass overwrite=True (--force) to replace it")
    key = Ed25519PrivateKey.generate()
    encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_key = key.public_key()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    # Create the private key file 0600 from the start, not chmod after: no window where others can read it.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_key_pem(public_key))
    logger.info("wrote key pair %s / %s (key id %s)", private_path, public_path, key_id(public_key))
    return public_key


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: str | os.PathLike, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """Load a PEM ed25519 private key; raise `BundleError` naming the file if it is not one."""
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=passphrase)
    except FileNotFoundError as exc:
        raise BundleError(f"private key {path} does not exist") from exc
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{path} is not a readable PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path} holds a {type(key).__name__}, not an ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    """Load a PEM ed25519 public key; raise `BundleError` naming the file if it is not one."""
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError as exc:
        raise BundleError(f"public key {path} does not exist") from exc
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{path} is not a readable PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path} holds a {type(key).__name__}, not an ed25519 public key")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short stable id of a public key (first 16 hex digits of sha256 over its raw bytes), for logs and reports."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def as_public_keys(keys: PublicKeyLike | Iterable[PublicKeyLike]) -> list[Ed25519PublicKey]:
    """Normalise one key / PEM path or a collection of them to a list of public keys."""
    if isinstance(keys, (Ed25519PublicKey, str, os.PathLike)):
        keys = [keys]
    loaded = [k if isinstance(k, Ed25519PublicKey) else load_public_key(k) for k in keys]
    if not loaded:
        raise SignatureError("no trusted public keys given: a bundle can only be accepted against at least one")
    return loaded


def sign(private_key: Ed25519PrivateKey, data: bytes) -> bytes:
    return private_key.sign(data)


def verify_signature(data: bytes, signature: bytes, trusted_keys: Iterable[Ed25519PublicKey]) -> Ed25519PublicKey:
    """Return the trusted key that verifies ``signature`` over ``data``; raise `SignatureError` if none does."""
    if len(signature) != SIGNATURE_LENGTH:
        raise SignatureError(f"signature must be {SIGNATURE_LENGTH} bytes of ed25519, got {len(signature)} bytes")
    keys = list(trusted_keys)
    for key in keys:
        try:
            key.verify(signature, data)
        except InvalidSignature:
            continue
        return key
    ids = ", ".join(key_id(k) for k in keys)
    raise SignatureError(f"signature does not verify with any of the {len(keys)} trusted key(s) ({ids})")
