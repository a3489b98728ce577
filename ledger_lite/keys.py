"""Ed25519 keys and signatures (RFC 8032 pure Ed25519, through the system's OpenSSL).

A public key travels as the 64-char lowercase hex of its 32 raw bytes; a signature is 64
raw bytes (128 hex chars inside entries). `verify` is the hot path of chain verification.

One crypto library: signing, payload sealing and key wrapping all call the libcrypto that
Python's `hashlib` and `ssl` already load (`libcrypto.py`, issue 20: `cryptography`'s own
OpenSSL cost an agent 7.7 MiB). Ed25519 is deterministic, so signatures are the bytes the
earlier `cryptography` and pycryptodome versions of this module made.

Key files: `save` writes a PKCS#8 PEM created with mode 0600 and moved into place
atomically; `load` reads that PEM or a bare 64-hex-char seed, and refuses a file that
group or other may access, as ssh does. The PEM is the one fixed RFC 8410 form for an
Ed25519 seed, written and read here without `cryptography`'s serialization module (2.6 MiB
of imports on a device); any other PEM is handed to that module.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
from pathlib import Path

from .errors import KeyFileError
from .files import OpenToOthersError, read_private, write_private
from .libcrypto import ed25519_public, ed25519_sign, ed25519_verify

log = logging.getLogger(__name__)

SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
SEED_BYTES = 32
# RFC 8410 PKCS#8 v1 of an Ed25519 seed: SEQUENCE { INTEGER 0, AlgorithmIdentifier
# { id-Ed25519 }, OCTET STRING { OCTET STRING seed } }; the seed's 32 bytes follow.
_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_PEM_BEGIN, _PEM_END = b"-----BEGIN PRIVATE KEY-----", b"-----END PRIVATE KEY-----"


class SigningKey:
    """An Ed25519 private key. Build with `generate()`, `from_seed()` or `load()`."""

    __slots__ = ("_seed", "_public_hex")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self._seed = bytes(seed)
        self._public_hex = ed25519_public(self._seed).hex()

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh random key."""
        return cls(secrets.token_bytes(SEED_BYTES))

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """The key whose 32-byte RFC 8032 seed is `seed`; ValueError if not 32 bytes."""
        return cls(seed)

    @property
    def public_hex(self) -> str:
        """The raw 32-byte public key as 64 lowercase hex chars."""
        return self._public_hex

    @property
    def seed(self) -> bytes:
        """The 32-byte private seed. Treat as secret."""
        return self._seed

    def sign(self, msg: bytes) -> bytes:
        """Sign `msg`; returns the 64-byte signature."""
        return ed25519_sign(self._seed, msg)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the key as PKCS#8 PEM, created with mode 0600 and moved into place
        atomically (a crash leaves either no file or the whole file).

        Raises FileExistsError if `path` exists and not `overwrite`.
        """
        write_private(Path(path), pem_of_seed(self._seed), overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Read a key written by `save` (PEM) or a file holding a 64-hex-char seed.

        Raises KeyFileError if the file is missing, accessible by group/other (fix with
        ``chmod 600``), or does not hold an Ed25519 private key.
        """
        path = Path(path)
        try:
            data = read_private(path, 16384, "key file")
        except OpenToOthersError as exc:
            raise KeyFileError(str(exc)) from None
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
        seed = seed_of_key_file(data)
        if seed is None:
            raise KeyFileError(f"key file {path} does not hold an Ed25519 private key")
        return cls(seed)

    def __repr__(self) -> str:
        return f"SigningKey(public_hex={self._public_hex[:16]}…)"


def pem_of_seed(seed: bytes, prefix: bytes = _PKCS8_PREFIX) -> bytes:
    """The PKCS#8 PEM of an Ed25519 seed, byte for byte as pycryptodome wrote it (one base64
    line, no newline after the last one); ``prefix``: another algorithm's fixed DER head
    (``edge_swarm.trust`` writes X25519 keys so)."""
    body = base64.b64encode(prefix + seed)
    return _PEM_BEGIN + b"\n" + body + b"\n" + _PEM_END


def seed_of_fixed_pem(text: bytes, prefix: bytes = _PKCS8_PREFIX) -> bytes | None:
    """The 32 bytes of a PEM in the fixed form ``pem_of_seed`` writes (any line ends), or
    None for any other text. Raises ValueError on bad base64 inside the armour."""
    text = text.strip()
    if not (text.startswith(_PEM_BEGIN) and text.endswith(_PEM_END)):
        return None
    der = base64.b64decode(b"".join(text[len(_PEM_BEGIN) : -len(_PEM_END)].split()))
    if len(der) == len(prefix) + SEED_BYTES and der.startswith(prefix):
        return der[len(prefix) :]
    return None


def seed_of_key_file(data: bytes) -> bytes | None:
    """The seed in a key file's bytes (a PKCS#8 PEM or 64 hex chars), or None."""
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            return _seed_of_pem(text)
        if len(text) == 2 * SEED_BYTES:
            return bytes.fromhex(text.decode("ascii"))
    except (ValueError, TypeError, IndexError, UnicodeDecodeError):
        pass
    return None


def _seed_of_pem(text: bytes) -> bytes | None:
    return seed_of_fixed_pem(text) or _seed_of_other_pem(text)


def _seed_of_other_pem(text: bytes) -> bytes | None:
    """Any other PEM (e.g. PKCS#8 v2 with the public key): `cryptography` parses it."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = ser.load_pem_private_key(text, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        return None
    return key.private_bytes_raw()


def verify(public_hex: str, msg: bytes, sig: bytes) -> bool:
    """True iff `sig` is a valid Ed25519 signature of `msg` under `public_hex`.

    Never raises: a malformed key, message or signature of any type gives False.
    """
    try:
        if (
            not isinstance(public_hex, str)
            or len(public_hex) != 2 * PUBLIC_KEY_BYTES
            or len(sig) != SIGNATURE_BYTES
        ):
            return False
        return ed25519_verify(bytes.fromhex(public_hex), bytes(sig), bytes(msg))
    except (ValueError, TypeError):
        return False
