"""Ed25519 keys and signatures (pycryptodome, RFC 8032 pure Ed25519).

A public key travels as the 64-char lowercase hex of its 32 raw bytes; a signature is 64
raw bytes (128 hex chars inside entries). `verify` is the hot path of chain verification,
so imported public keys (with their verifier objects) are cached per hex string.

Key files: `save` writes a PKCS#8 PEM created with mode 0600 and moved into place
atomically; `load` reads that PEM or a bare 64-hex-char seed, and refuses a file that
group or other may access, as ssh does.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

from .errors import KeyFileError
from .files import OpenToOthersError, read_private, write_private

log = logging.getLogger(__name__)

SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32


class SigningKey:
    """An Ed25519 private key. Build with `generate()`, `from_seed()` or `load()`."""

    __slots__ = ("_key", "_signer", "_public_hex")

    def __init__(self, key: ECC.EccKey) -> None:
        if not key.has_private() or key.curve != "Ed25519":
            raise ValueError("SigningKey needs an Ed25519 private key")
        self._key = key
        self._signer = eddsa.new(key, "rfc8032")
        self._public_hex = key.public_key().export_key(format="raw").hex()

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh random key."""
        return cls(ECC.generate(curve="ed25519"))

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """The key whose 32-byte RFC 8032 seed is `seed`; ValueError if not 32 bytes."""
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(eddsa.import_private_key(seed))

    @property
    def public_hex(self) -> str:
        """The raw 32-byte public key as 64 lowercase hex chars."""
        return self._public_hex

    @property
    def seed(self) -> bytes:
        """The 32-byte private seed. Treat as secret."""
        return bytes(self._key.seed)

    def sign(self, msg: bytes) -> bytes:
        """Sign `msg`; returns the 64-byte signature."""
        return self._signer.sign(msg)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the key as PKCS#8 PEM, created with mode 0600 and moved into place
        atomically (a crash leaves either no file or the whole file).

        Raises FileExistsError if `path` exists and not `overwrite`.
        """
        path = Path(path)
        pem = self._key.export_key(format="PEM").encode("ascii")
        write_private(path, pem, overwrite=overwrite)  # never clobbers a key by accident

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
        return cls._parse(data, path)

    @classmethod
    def _parse(cls, data: bytes, path: Path) -> SigningKey:
        text = data.strip()
        try:
            if text.startswith(b"-----BEGIN"):
                return cls(ECC.import_key(text.decode("ascii")))
            if len(text) == 64:
                return cls.from_seed(bytes.fromhex(text.decode("ascii")))
        except (ValueError, TypeError, IndexError, UnicodeDecodeError):
            pass
        raise KeyFileError(f"key file {path} does not hold an Ed25519 private key")

    def __repr__(self) -> str:
        return f"SigningKey(public_hex={self._public_hex[:16]}…)"


try:  # OpenSSL's Ed25519 through `cryptography` verifies about 3x faster than pycryptodome,
    # and verification bounds the ledger's throughput and full-chain checks.
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError:  # pragma: no cover - a device without it verifies with pycryptodome
    Ed25519PublicKey = None  # type: ignore[assignment,misc]


@functools.lru_cache(maxsize=4096)
def _fast_verifier(public_hex: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))


@functools.lru_cache(maxsize=4096)
def _verifier(public_hex: str) -> eddsa.EdDSASigScheme:
    """The cached verifier for a public key; ValueError if `public_hex` is not one."""
    if len(public_hex) != 2 * PUBLIC_KEY_BYTES:
        raise ValueError("bad public key length")
    return eddsa.new(eddsa.import_public_key(bytes.fromhex(public_hex)), "rfc8032")


def verify(public_hex: str, msg: bytes, sig: bytes) -> bool:
    """True iff `sig` is a valid Ed25519 signature of `msg` under `public_hex`.

    Never raises: a malformed key, message or signature of any type gives False.
    """
    try:
        if not isinstance(public_hex, str) or len(sig) != SIGNATURE_BYTES:
            return False
        if Ed25519PublicKey is not None:
            if len(public_hex) != 2 * 32:
                return False
            try:
                _fast_verifier(public_hex).verify(bytes(sig), bytes(msg))
            except InvalidSignature:
                return False
            return True
        _verifier(public_hex).verify(msg, sig)
        return True
    except (ValueError, TypeError, IndexError):
        return False
    except Exception:  # pycryptodome may raise other types on exotic input
        log.debug("verify: unexpected error on malformed input", exc_info=True)
        return False
