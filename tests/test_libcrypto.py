"""ledger_lite/libcrypto.py: the system OpenSSL through ctypes, held to the RFCs' vectors and
to ``cryptography`` (the package it replaces on devices) on random inputs."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_lite import libcrypto as lc

ROOT = Path(__file__).resolve().parents[1]
key32 = st.binary(min_size=32, max_size=32)
data = st.binary(max_size=2048)


def test_the_system_libcrypto_is_the_backend_here() -> None:
    """On Linux CPython links libcrypto for hashlib: the agent must not fall back to a
    second OpenSSL (that is the 7.7 MiB this module exists to save)."""
    assert lc.BACKEND.startswith("system libcrypto "), lc.BACKEND
    maps = Path("/proc/self/maps").read_text()
    assert len({ln.split()[-1] for ln in maps.splitlines() if "/libcrypto.so" in ln}) == 1


# --------------------------------------------------------------------------- RFC vectors


def test_rfc8032_ed25519_vectors() -> None:
    vectors = [  # RFC 8032 section 7.1, TEST 1 and TEST 2: seed, public, message, signature
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
    ]
    for seed, public, msg, sig in map(lambda v: [bytes.fromhex(x) for x in v], vectors):
        assert lc.ed25519_public(seed) == public
        assert lc.ed25519_sign(seed, msg) == sig
        assert lc.ed25519_verify(public, sig, msg)
        assert not lc.ed25519_verify(public, sig, msg + b"!")
        assert not lc.ed25519_verify(public, sig[:-1] + bytes([sig[-1] ^ 1]), msg)


def test_rfc7748_x25519_vector() -> None:
    a = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    b = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    a_pub = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    b_pub = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert lc.x25519_public(a) == a_pub and lc.x25519_public(b) == b_pub
    assert lc.x25519(a, b_pub) == shared == lc.x25519(b, a_pub)


def test_x25519_refuses_low_order_peer_keys() -> None:
    for low in (bytes(32), (1).to_bytes(32, "little")):
        with pytest.raises(ValueError):
            lc.x25519(os.urandom(32), low)
    with pytest.raises(ValueError):
        lc.x25519(os.urandom(32), bytes(31))


def test_rfc5869_hkdf_sha256_vectors() -> None:
    okm = lc.hkdf_sha256(
        bytes([0x0B] * 22), 42, salt=bytes(range(13)), info=bytes(range(0xF0, 0xFA))
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )
    okm = lc.hkdf_sha256(bytes([0x0B] * 22), 42)  # test case 3: no salt, no info
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )
    for bad in (0, 255 * 32 + 1, True):
        with pytest.raises(ValueError):
            lc.hkdf_sha256(b"x", bad)


def test_gcm_vectors_and_tampering() -> None:
    # NIST GCM test cases 13 and 14: AES-256, zero key, zero 96-bit IV.
    key, nonce = bytes(32), bytes(12)
    assert lc.aesgcm_seal(key, nonce, b"").hex() == "530f8afbc74536b9a963b4f1c4cb738b"
    sealed = lc.aesgcm_seal(key, nonce, bytes(16))
    assert sealed.hex() == "cea7403d4d606b6e074ec5d3baf39d18" + "d0d1c8a799996bf0265b98b5d48ab919"
    assert lc.aesgcm_open(key, nonce, sealed) == bytes(16)
    for i in range(len(sealed)):
        flipped = bytearray(sealed)
        flipped[i] ^= 0x01
        assert lc.aesgcm_open(key, nonce, bytes(flipped)) is None
    assert lc.aesgcm_open(key, nonce, sealed, b"aad") is None
    assert lc.aesgcm_open(key, b"\x01" * 12, sealed) is None
    assert lc.aesgcm_open(b"\x01" * 32, nonce, sealed) is None
    assert lc.aesgcm_open(key, nonce, sealed[:15]) is None
    with pytest.raises(ValueError):
        lc.aesgcm_seal(bytes(16), nonce, b"x")
    with pytest.raises(ValueError):
        lc.aesgcm_seal(key, bytes(8), b"x")
    with pytest.raises(TypeError):
        lc.aesgcm_seal(key, nonce, "text")  # type: ignore[arg-type]


def test_failures_leave_no_error_on_openssls_queue() -> None:
    """The ssl module reads the same per-thread queue: a refused key or a bad tag here must
    not surface later as an unrelated TLS error."""
    path = lc._mapped_libcrypto()
    assert path is not None
    lib = ctypes.CDLL(path)
    lib.ERR_peek_error.restype = ctypes.c_ulong
    lc.aesgcm_open(bytes(32), bytes(12), bytes(40))
    assert not lc.ed25519_verify(b"\xff" * 32, bytes(64), b"m")
    with pytest.raises(ValueError):
        lc.x25519(os.urandom(32), bytes(32))
    assert lib.ERR_peek_error() == 0


# --------------------------------------------------------------------------- against cryptography


@settings(max_examples=150, deadline=None)
@given(seed=key32, msg=data)
def test_ed25519_matches_cryptography(seed: bytes, msg: bytes) -> None:
    ref = Ed25519PrivateKey.from_private_bytes(seed)
    public = ref.public_key().public_bytes_raw()
    assert lc.ed25519_public(seed) == public
    assert lc.ed25519_sign(seed, msg) == ref.sign(msg)
    assert lc.ed25519_verify(public, ref.sign(msg), msg)


@settings(max_examples=200, deadline=None)
@given(public=key32, sig=st.binary(min_size=64, max_size=64), msg=data)
def test_ed25519_verify_agrees_with_cryptography_on_garbage(
    public: bytes, sig: bytes, msg: bytes
) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(sig, msg)
        expected = True
    except Exception:  # noqa: BLE001 - InvalidSignature, or not a point
        expected = False
    assert lc.ed25519_verify(public, sig, msg) is expected


@settings(max_examples=100, deadline=None)
@given(a=key32, b=key32)
def test_x25519_matches_cryptography(a: bytes, b: bytes) -> None:
    ref_b_pub = X25519PrivateKey.from_private_bytes(b).public_key()
    assert lc.x25519_public(b) == ref_b_pub.public_bytes_raw()
    expected = X25519PrivateKey.from_private_bytes(a).exchange(ref_b_pub)
    assert lc.x25519(a, lc.x25519_public(b)) == expected


@settings(max_examples=100, deadline=None)
@given(a=key32, peer=key32)
def test_x25519_on_arbitrary_peer_bytes_matches_cryptography(a: bytes, peer: bytes) -> None:
    try:
        expected: bytes | None = X25519PrivateKey.from_private_bytes(a).exchange(
            X25519PublicKey.from_public_bytes(peer)
        )
    except ValueError:
        expected = None
    try:
        got: bytes | None = lc.x25519(a, peer)
    except ValueError:
        got = None
    assert got == expected


@settings(max_examples=150, deadline=None)
@given(key=key32, nonce=st.binary(min_size=12, max_size=12), body=data, aad=st.binary(max_size=64))
def test_aesgcm_matches_cryptography(key: bytes, nonce: bytes, body: bytes, aad: bytes) -> None:
    sealed = lc.aesgcm_seal(key, nonce, body, aad)
    assert sealed == AESGCM(key).encrypt(nonce, body, aad)
    assert lc.aesgcm_open(key, nonce, sealed, aad) == body


@settings(max_examples=100, deadline=None)
@given(
    key=st.sampled_from([16, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    block=st.binary(min_size=16, max_size=16),
    body=data,
)
def test_aes_ctr_matches_cryptography(key: bytes, block: bytes, body: bytes) -> None:
    enc = Cipher(algorithms.AES(key), modes.CTR(block)).encryptor()
    assert lc.aes_ctr(key, block, body) == enc.update(body) + enc.finalize()


@settings(max_examples=100, deadline=None)
@given(
    ikm=data,
    salt=st.binary(min_size=1, max_size=64),
    info=st.binary(max_size=64),
    n=st.integers(1, 255 * 32),
)
def test_hkdf_matches_cryptography(ikm: bytes, salt: bytes, info: bytes, n: int) -> None:
    ref = HKDF(algorithm=hashes.SHA256(), length=n, salt=salt, info=info).derive(ikm)
    assert lc.hkdf_sha256(ikm, n, salt=salt, info=info) == ref


# --------------------------------------------------------------------------- use


def test_threads_share_the_library() -> None:
    """ctypes drops the GIL in each call: 4 threads signing and verifying at once agree."""
    seed = os.urandom(32)
    public = lc.ed25519_public(seed)
    wrong: list[int] = []

    def work(k: int) -> None:
        for i in range(300):
            msg = f"{k}:{i}".encode()
            sig = lc.ed25519_sign(seed, msg)
            key = bytes([k]) * 32
            sealed = lc.aesgcm_seal(key, bytes(12), msg)
            if (
                not lc.ed25519_verify(public, sig, msg)
                or lc.aesgcm_open(key, bytes(12), sealed) != msg
            ):
                wrong.append(i)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads) and not wrong


def test_fallback_to_cryptography_gives_the_same_bytes() -> None:
    """LEDGER_LITE_CRYPTO=cryptography (or a Python without a mapped libcrypto) runs the
    same functions on ``cryptography``: signatures, seals and secrets are identical."""
    probe = (
        "from ledger_lite import libcrypto as lc\n"
        "s = bytes(range(32))\n"
        "print(lc.BACKEND)\n"
        "print(lc.ed25519_sign(s, b'm').hex(), lc.x25519(s, lc.x25519_public(s[::-1])).hex(),"
        " lc.aesgcm_seal(s, s[:12], b'body', b'aad').hex(), lc.aes_ctr(s, s[:16], bytes(9)).hex())"
    )
    outs = {}
    for backend in ("", "cryptography"):
        env = {**os.environ, "LEDGER_LITE_CRYPTO": backend}
        outs[backend] = subprocess.run(
            [sys.executable, "-c", probe],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.splitlines()
    assert outs[""][0].startswith("system libcrypto") and outs["cryptography"][0] == "cryptography"
    assert outs[""][1] == outs["cryptography"][1]
