"""The primitives a device needs, from the OpenSSL its Python already loaded.

Ed25519 (sign, verify), X25519, AES-256-GCM, AES-CTR and HKDF-SHA256 as plain functions
over bytes. Every CPython on Linux maps the system's ``libcrypto`` for ``hashlib`` and
``ssl`` (paho imports ``ssl``, so an agent always has it); these functions call it through
``ctypes``.

Why by hand rather than ``cryptography``: that package links its own copy of OpenSSL, so an
agent held two. Its extension alone was 7.7 MiB of an agent's 56 MiB peak RSS and ~40 ms of
each start-up (issue 20: 45 MiB on a Pi), for five primitives a few EVP calls each. Keys,
nonces and tags are checked here before OpenSSL sees them, every pointer is freed in a
``finally``, and ``tests/test_libcrypto.py`` holds each function to RFC 8032 / 7748 / 5869
and GCM vectors and to ``cryptography`` on random inputs.

Where no OpenSSL 1.1.1+ is mapped (a Python with OpenSSL linked statically, another OS) or
``LEDGER_LITE_CRYPTO=cryptography`` is set, the same functions come from ``cryptography``
(imported then, not before). ``BACKEND`` says which one a process runs.
"""

from __future__ import annotations

import ctypes
import hmac
import os
import types
from collections.abc import Callable
from typing import Any

__all__ = [
    "BACKEND",
    "aes_ctr",
    "aesgcm_open",
    "aesgcm_seal",
    "ed25519_public",
    "ed25519_sign",
    "ed25519_verify",
    "hkdf_sha256",
    "x25519",
    "x25519_public",
]

KEY_LEN = 32
SIG_LEN = 64
GCM_NONCE_LEN = 12
GCM_TAG_LEN = 16
# OpenSSL takes int lengths; payloads are far smaller (the wire caps them at a few MiB).
_MAX_LEN = 2**31 - 1 - GCM_TAG_LEN

_NID_X25519 = 1034
_NID_ED25519 = 1087
_CTRL_GCM_GET_TAG = 0x10
_CTRL_GCM_SET_TAG = 0x11
_MIN_VERSION = 0x10101000  # 1.1.1: raw keys and one-shot EVP_DigestSign/Verify


# --------------------------------------------------------------------------- arguments


def _buf(value: object, what: str, length: int | None = None) -> bytes:
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise ValueError(f"{what} must be {length} bytes, got {len(value)}")
    if len(value) > _MAX_LEN:
        raise ValueError(f"{what} is too long ({len(value)} bytes)")
    return value


def hkdf_sha256(ikm: bytes, length: int, salt: bytes | None = None, info: bytes = b"") -> bytes:
    """RFC 5869 HKDF-SHA256: ``length`` (1..8160) bytes from ``ikm``. An absent or empty
    ``salt`` is 32 zero bytes, as the RFC says. Two HMAC calls per 32 bytes, from ``hmac``
    (OpenSSL underneath), so no backend is involved."""
    ikm, info = _buf(ikm, "ikm"), _buf(info, "info")
    if isinstance(length, bool) or not isinstance(length, int) or not 0 < length <= 255 * 32:
        raise ValueError(f"HKDF-SHA256 gives 1..8160 bytes, not {length!r}")
    prk = hmac.digest(_buf(salt, "salt") if salt else bytes(32), ikm, "sha256")
    okm, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.digest(prk, block + info + bytes([i]), "sha256")
        okm += block
    return okm[:length]


# --------------------------------------------------------------------------- system OpenSSL


def _mapped_libcrypto() -> str | None:
    """The path of the libcrypto this process already mapped (for ``hashlib``), if any:
    loading that one again adds nothing to memory, where a search could find another."""
    try:
        import _hashlib  # noqa: F401  (maps libcrypto, if this Python links it dynamically)

        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) == 6 and "/libcrypto.so" in fields[5]:
                    return fields[5].strip()
    except (ImportError, OSError):
        pass
    return None


class _OpenSSL:
    """libcrypto's EVP calls with their C signatures (ctypes would otherwise truncate the
    64-bit pointers they return to int)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        p, i, sz, buf = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_char_p
        psz, pint = ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_int)
        self.c: Any = types.SimpleNamespace()  # the typed C functions, by their C names
        lib.OpenSSL_version_num.restype = ctypes.c_ulong
        lib.OpenSSL_version_num.argtypes = []
        self.version = int(lib.OpenSSL_version_num())
        if self.version < _MIN_VERSION:
            raise OSError(f"libcrypto {self.version:#x} predates 1.1.1")
        sigs: dict[str, tuple[Any, list[Any]]] = {
            "EVP_PKEY_new_raw_private_key": (p, [i, p, buf, sz]),
            "EVP_PKEY_new_raw_public_key": (p, [i, p, buf, sz]),
            "EVP_PKEY_get_raw_public_key": (i, [p, buf, psz]),
            "EVP_PKEY_free": (None, [p]),
            "EVP_MD_CTX_new": (p, []),
            "EVP_MD_CTX_free": (None, [p]),
            "EVP_DigestSignInit": (i, [p, p, p, p, p]),
            "EVP_DigestSign": (i, [p, buf, psz, buf, sz]),
            "EVP_DigestVerifyInit": (i, [p, p, p, p, p]),
            "EVP_DigestVerify": (i, [p, buf, sz, buf, sz]),
            "EVP_PKEY_CTX_new": (p, [p, p]),
            "EVP_PKEY_CTX_free": (None, [p]),
            "EVP_PKEY_derive_init": (i, [p]),
            "EVP_PKEY_derive_set_peer": (i, [p, p]),
            "EVP_PKEY_derive": (i, [p, buf, psz]),
            "EVP_CIPHER_CTX_new": (p, []),
            "EVP_CIPHER_CTX_free": (None, [p]),
            "EVP_CIPHER_CTX_ctrl": (i, [p, i, i, buf]),
            "EVP_aes_256_gcm": (p, []),
            "EVP_aes_128_ctr": (p, []),
            "EVP_aes_256_ctr": (p, []),
            "EVP_EncryptInit_ex": (i, [p, p, p, buf, buf]),
            "EVP_EncryptUpdate": (i, [p, buf, pint, buf, i]),
            "EVP_EncryptFinal_ex": (i, [p, buf, pint]),
            "EVP_DecryptInit_ex": (i, [p, p, p, buf, buf]),
            "EVP_DecryptUpdate": (i, [p, buf, pint, buf, i]),
            "EVP_DecryptFinal_ex": (i, [p, buf, pint]),
            "ERR_clear_error": (None, []),
        }
        for name, (restype, argtypes) in sigs.items():
            fn = getattr(lib, name)  # AttributeError: not a usable libcrypto
            fn.restype, fn.argtypes = restype, argtypes
            setattr(self.c, name, fn)

    # A failed call leaves errors on this thread's OpenSSL queue, where the ssl module
    # would later find and misreport them: every failure path clears it.
    def fail(self, exc: Exception) -> Exception:
        self.c.ERR_clear_error()
        return exc

    def _pkey(self, nid: int, raw: bytes, private: bool) -> int:
        make = (
            self.c.EVP_PKEY_new_raw_private_key if private else self.c.EVP_PKEY_new_raw_public_key
        )
        key = make(nid, None, raw, len(raw))
        if not key:
            raise self.fail(ValueError("OpenSSL refused the key"))
        return int(key)

    def raw_public(self, nid: int, private: bytes) -> bytes:
        key = self._pkey(nid, private, True)
        try:
            out, n = ctypes.create_string_buffer(KEY_LEN), ctypes.c_size_t(KEY_LEN)
            if (
                self.c.EVP_PKEY_get_raw_public_key(key, out, ctypes.byref(n)) != 1
                or n.value != KEY_LEN
            ):
                raise self.fail(ValueError("OpenSSL gave no public key"))
            return out.raw
        finally:
            self.c.EVP_PKEY_free(key)

    def sign(self, seed: bytes, msg: bytes) -> bytes:
        key = self._pkey(_NID_ED25519, seed, True)
        ctx = self.c.EVP_MD_CTX_new()
        try:
            out, n = ctypes.create_string_buffer(SIG_LEN), ctypes.c_size_t(SIG_LEN)
            if (
                not ctx
                or self.c.EVP_DigestSignInit(ctx, None, None, None, key) != 1
                or self.c.EVP_DigestSign(ctx, out, ctypes.byref(n), msg, len(msg)) != 1
                or n.value != SIG_LEN
            ):
                raise self.fail(ValueError("Ed25519 signing failed"))
            return out.raw
        finally:
            self.c.EVP_MD_CTX_free(ctx)
            self.c.EVP_PKEY_free(key)

    def verify(self, public: bytes, sig: bytes, msg: bytes) -> bool:
        try:
            key = self._pkey(_NID_ED25519, public, False)
        except ValueError:
            return False
        ctx = self.c.EVP_MD_CTX_new()
        try:
            ok = (
                bool(ctx)
                and self.c.EVP_DigestVerifyInit(ctx, None, None, None, key) == 1
                and self.c.EVP_DigestVerify(ctx, sig, len(sig), msg, len(msg)) == 1
            )
            if not ok:
                self.c.ERR_clear_error()
            return ok
        finally:
            self.c.EVP_MD_CTX_free(ctx)
            self.c.EVP_PKEY_free(key)

    def derive(self, private: bytes, peer: bytes) -> bytes:
        key = self._pkey(_NID_X25519, private, True)
        pctx, other = None, None
        try:
            other = self._pkey(_NID_X25519, peer, False)
            pctx = self.c.EVP_PKEY_CTX_new(key, None)
            out, n = ctypes.create_string_buffer(KEY_LEN), ctypes.c_size_t(KEY_LEN)
            if (
                not pctx
                or self.c.EVP_PKEY_derive_init(pctx) != 1
                or self.c.EVP_PKEY_derive_set_peer(pctx, other) != 1
                or self.c.EVP_PKEY_derive(pctx, out, ctypes.byref(n)) != 1
                or n.value != KEY_LEN
            ):
                # OpenSSL refuses the all-zero secret of a low-order peer key here.
                raise self.fail(ValueError("X25519 agreement failed (a low-order peer key?)"))
            return out.raw
        finally:
            if pctx:
                self.c.EVP_PKEY_CTX_free(pctx)
            if other:
                self.c.EVP_PKEY_free(other)
            self.c.EVP_PKEY_free(key)

    def cipher(
        self,
        kind: Callable[[], int],
        key: bytes,
        iv: bytes,
        data: bytes,
        aad: bytes,
        tag: bytes | None,
        encrypt: bool,
    ) -> tuple[bytes, bytes] | None:
        """One EVP cipher pass. GCM when ``kind`` is aes_256_gcm: seal gives (ct, tag),
        open (``tag`` given) gives (pt, b"") or None for a bad tag. CTR: (out, b"")."""
        init, update, final = (
            (self.c.EVP_EncryptInit_ex, self.c.EVP_EncryptUpdate, self.c.EVP_EncryptFinal_ex)
            if encrypt
            else (self.c.EVP_DecryptInit_ex, self.c.EVP_DecryptUpdate, self.c.EVP_DecryptFinal_ex)
        )
        gcm = kind == self.c.EVP_aes_256_gcm
        ctx = self.c.EVP_CIPHER_CTX_new()
        if not ctx:
            raise MemoryError("OpenSSL could not allocate a cipher context")
        try:
            n = ctypes.c_int(0)
            out = ctypes.create_string_buffer(len(data) + 16)
            if init(ctx, kind(), None, key, iv) != 1:
                raise self.fail(ValueError("OpenSSL refused the key or nonce"))
            if aad and update(ctx, None, ctypes.byref(n), aad, len(aad)) != 1:
                raise self.fail(ValueError("OpenSSL refused the associated data"))
            if update(ctx, out, ctypes.byref(n), data, len(data)) != 1 or n.value != len(data):
                raise self.fail(ValueError("OpenSSL cipher update failed"))
            if tag is not None:
                tag_buf = ctypes.create_string_buffer(tag, GCM_TAG_LEN)
                if self.c.EVP_CIPHER_CTX_ctrl(ctx, _CTRL_GCM_SET_TAG, GCM_TAG_LEN, tag_buf) != 1:
                    raise self.fail(ValueError("OpenSSL refused the tag"))
            rest = ctypes.c_int(0)
            if final(ctx, ctypes.create_string_buffer(16), ctypes.byref(rest)) != 1:
                if tag is not None:
                    self.c.ERR_clear_error()
                    return None  # the tag did not match: forged, damaged or the wrong key
                raise self.fail(ValueError("OpenSSL cipher final failed"))
            body = out.raw[: len(data)]
            if gcm and encrypt:
                got = ctypes.create_string_buffer(GCM_TAG_LEN)
                if self.c.EVP_CIPHER_CTX_ctrl(ctx, _CTRL_GCM_GET_TAG, GCM_TAG_LEN, got) != 1:
                    raise self.fail(ValueError("OpenSSL gave no tag"))
                return body, got.raw
            return body, b""
        finally:
            self.c.EVP_CIPHER_CTX_free(ctx)


def _system() -> _OpenSSL | None:
    if os.environ.get("LEDGER_LITE_CRYPTO", "").strip().lower() == "cryptography":
        return None
    path = _mapped_libcrypto()
    if path is None:
        return None
    try:
        return _OpenSSL(ctypes.CDLL(path))
    except (OSError, AttributeError):
        return None


_ossl = _system()
BACKEND = "cryptography"
if _ossl is not None:
    _v = _ossl.version
    BACKEND = f"system libcrypto {_v >> 28}.{(_v >> 20) & 0xFF}.{(_v >> 4) & 0xFF}"


# --------------------------------------------------------------------------- the functions


def ed25519_public(seed: bytes) -> bytes:
    """The 32-byte Ed25519 public key of a 32-byte seed."""
    seed = _buf(seed, "Ed25519 seed", KEY_LEN)
    if _ossl is not None:
        return _ossl.raw_public(_NID_ED25519, seed)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


def ed25519_sign(seed: bytes, msg: bytes) -> bytes:
    """The 64-byte RFC 8032 (pure) Ed25519 signature of ``msg`` under a 32-byte seed."""
    seed, msg = _buf(seed, "Ed25519 seed", KEY_LEN), _buf(msg, "message")
    if _ossl is not None:
        return _ossl.sign(seed, msg)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(seed).sign(msg)


def ed25519_verify(public: bytes, sig: bytes, msg: bytes) -> bool:
    """True iff ``sig`` is a valid Ed25519 signature of ``msg`` under ``public``. A key or
    signature of the wrong length, or a key that is no curve point, is simply False."""
    try:
        public, sig, msg = _buf(public, "public key"), _buf(sig, "signature"), _buf(msg, "message")
    except (TypeError, ValueError):
        return False
    if len(public) != KEY_LEN or len(sig) != SIG_LEN:
        return False
    if _ossl is not None:
        return _ossl.verify(public, sig, msg)
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public).verify(sig, msg)
        return True
    except (InvalidSignature, ValueError):
        return False


def x25519_public(private: bytes) -> bytes:
    """The 32-byte X25519 public key of a 32-byte private key."""
    private = _buf(private, "X25519 private key", KEY_LEN)
    if _ossl is not None:
        return _ossl.raw_public(_NID_X25519, private)
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def x25519(private: bytes, peer_public: bytes) -> bytes:
    """The 32-byte X25519 shared secret. ValueError for a peer key of the wrong length or
    of low order (whose secret would be all zeros: a hostile key, never an honest one)."""
    private = _buf(private, "X25519 private key", KEY_LEN)
    peer_public = _buf(peer_public, "X25519 public key", KEY_LEN)
    if _ossl is not None:
        shared = _ossl.derive(private, peer_public)
    else:
        from cryptography.hazmat.primitives.asymmetric.x25519 import (
            X25519PrivateKey,
            X25519PublicKey,
        )

        shared = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    if not any(shared):  # belt and braces: both backends refuse it already
        raise ValueError("X25519 agreement gave the all-zero secret (a low-order peer key)")
    return shared


def aesgcm_seal(key: bytes, nonce: bytes, data: bytes, aad: bytes = b"") -> bytes:
    """AES-256-GCM: ``ciphertext || tag`` (16 bytes) of ``data`` under a 12-byte nonce."""
    key, nonce = _buf(key, "AES-256 key", KEY_LEN), _buf(nonce, "nonce", GCM_NONCE_LEN)
    data, aad = _buf(data, "plaintext"), _buf(aad, "associated data")
    if _ossl is not None:
        sealed = _ossl.cipher(_ossl.c.EVP_aes_256_gcm, key, nonce, data, aad, None, True)
        assert sealed is not None  # only an open returns None
        return sealed[0] + sealed[1]
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key).encrypt(nonce, data, aad)


def aesgcm_open(key: bytes, nonce: bytes, sealed: bytes, aad: bytes = b"") -> bytes | None:
    """The plaintext of ``aesgcm_seal``'s output, or None if the tag does not match (a
    forged or damaged message, the wrong key, nonce or associated data, or too short)."""
    key, nonce = _buf(key, "AES-256 key", KEY_LEN), _buf(nonce, "nonce", GCM_NONCE_LEN)
    sealed, aad = _buf(sealed, "ciphertext"), _buf(aad, "associated data")
    if len(sealed) < GCM_TAG_LEN:
        return None
    body, tag = sealed[:-GCM_TAG_LEN], sealed[-GCM_TAG_LEN:]
    if _ossl is not None:
        opened = _ossl.cipher(_ossl.c.EVP_aes_256_gcm, key, nonce, body, aad, tag, False)
        return None if opened is None else opened[0]
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        return AESGCM(key).decrypt(nonce, sealed, aad)
    except InvalidTag:
        return None


def aes_ctr(key: bytes, counter_block: bytes, data: bytes) -> bytes:
    """AES-CTR (AES-128 or AES-256 by the key's length; the 16-byte counter block
    increments big-endian) applied to ``data``: the keystream when ``data`` is zeros."""
    key = _buf(key, "AES key")
    if len(key) not in (16, 32):
        raise ValueError(f"an AES key is 16 or 32 bytes, got {len(key)}")
    counter_block, data = _buf(counter_block, "counter block", 16), _buf(data, "data")
    if _ossl is not None:
        kind = _ossl.c.EVP_aes_256_ctr if len(key) == 32 else _ossl.c.EVP_aes_128_ctr
        out = _ossl.cipher(kind, key, counter_block, data, b"", None, True)
        assert out is not None
        return out[0]
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    enc = Cipher(algorithms.AES(key), modes.CTR(counter_block)).encryptor()
    return enc.update(data) + enc.finalize()
