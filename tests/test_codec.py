"""The delta envelope: round trips, golden bytes, and fuzzing of the decoder."""

from __future__ import annotations

import contextlib
import hashlib
import struct

import numpy as np
import pytest
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_swarm.swarm.codec import (
    CODEC_FLOAT32,
    DEFAULT_MAX,
    MAGIC,
    SIGNATURE_LEN,
    Envelope,
    EnvelopeError,
    EnvelopeHeader,
    decode_delta,
    decode_envelope,
    encode_envelope,
)

BASE = hashlib.sha256(b"base model").hexdigest()


def make_key() -> tuple[ECC.EccKey, str]:
    key = ECC.generate(curve="Ed25519")
    return key, key.public_key().export_key(format="raw").hex()


KEY, PUB = make_key()


def sign(msg: bytes) -> bytes:
    return eddsa.new(KEY, "rfc8032").sign(msg)


def header(n: int = 5, **kw: object) -> EnvelopeHeader:
    fields: dict[str, object] = dict(
        swarm="clinic-a",
        round=7,
        node="pi-3",
        base_hash=BASE,
        codec=CODEC_FLOAT32,
        n_params=n,
        n_samples=120,
    )
    fields.update(kw)
    return EnvelopeHeader(**fields)  # type: ignore[arg-type]


def test_round_trip_signed() -> None:
    delta = np.linspace(-1, 1, 5, dtype=np.float32)
    frame = encode_envelope(header(), delta, sign)
    env = decode_envelope(frame)
    assert env.header == header()
    assert env.sha256 == hashlib.sha256(frame).hexdigest()
    assert env.signed_bytes == frame[: -1 - SIGNATURE_LEN]
    assert env.is_signed and env.verify(PUB)
    out = decode_delta(env, 5)
    assert out.dtype == np.float32 and out.flags.writeable
    np.testing.assert_array_equal(out, delta)


def test_unsigned_never_verifies() -> None:
    env = decode_envelope(encode_envelope(header(), np.zeros(5, np.float32), None))
    assert env.signature == b"" and not env.is_signed
    assert not env.verify(PUB)


def test_verify_is_false_for_other_or_garbage_keys() -> None:
    env = decode_envelope(encode_envelope(header(), np.ones(5, np.float32), sign))
    assert not env.verify(make_key()[1])
    for bad in ["", "zz", "00" * 31, "ff" * 32, PUB + "00"]:
        assert not env.verify(bad)


def test_golden_prefix_bytes() -> None:
    """The frame layout is a wire contract: these bytes must never change for version 1."""
    delta = np.array([1.0, -2.0], dtype=np.float32)
    frame = encode_envelope(header(2, round=0x01020304, n_samples=9), delta, None)
    expected = (
        b"ESWD"
        + bytes([1, 0, 0])  # version, codec float32, flags
        + bytes([8])
        + b"clinic-a"
        + bytes([4, 3, 2, 1])  # round, u32 little-endian
        + bytes([4])
        + b"pi-3"
        + bytes.fromhex(BASE)
        + bytes([2, 0, 0, 0])  # n_params
        + bytes([9, 0, 0, 0])  # n_samples
        + bytes([8, 0, 0, 0])  # body_len
        + bytes.fromhex("0000803f" + "000000c0")  # 1.0, -2.0 as little-endian float32
        + bytes([0])  # unsigned
    )
    assert frame == expected


@pytest.mark.parametrize(
    "kw",
    [
        {"swarm": "a/b"},
        {"node": ""},
        {"round": -1},
        {"round": 2**32},
        {"base_hash": "AB" * 32},
        {"base_hash": "ab"},
        {"codec": 9},  # no such codec
        {"codec": True},
        {"flags": 2},  # no such flag
        {"n_params": 0},
        {"n_samples": -1},
        {"n_samples": 2**32},
    ],
)
def test_header_validated_when_built(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        header(**kw)


def test_encode_refuses_misuse() -> None:
    with pytest.raises(ValueError):
        encode_envelope(header(), np.zeros(4, np.float32), None)
    with pytest.raises(ValueError):
        encode_envelope(header(), np.zeros((5, 1), np.float32), None)
    with pytest.raises(ValueError):
        encode_envelope(header(), np.array([0, 0, np.nan, 0, 0], np.float32), None)
    with pytest.raises(ValueError):
        encode_envelope(header(), np.zeros(5, np.float32), lambda m: b"short")
    with pytest.raises(ValueError):  # overflows float32
        encode_envelope(header(), np.array([0, 0, 1e300, 0, 0]), None)
    with pytest.raises(ValueError, match="quantize"):  # a quantized header needs a body
        encode_envelope(header(codec=2), np.zeros(5, np.float32), None)


def test_oversized_refused_before_parsing() -> None:
    frame = encode_envelope(header(), np.zeros(5, np.float32), sign)
    with pytest.raises(EnvelopeError, match="exceeds"):
        decode_envelope(frame, max_size=len(frame) - 1)
    # Garbage over the limit is refused for its size, not for its content.
    with pytest.raises(EnvelopeError, match="exceeds"):
        decode_envelope(b"\x00" * (DEFAULT_MAX + 1))
    assert decode_envelope(frame, max_size=len(frame)).header == header()


def test_structural_errors() -> None:
    frame = encode_envelope(header(), np.zeros(5, np.float32), sign)
    cases = {
        "bad magic": b"XXXX" + frame[4:],
        "version": frame[:4] + b"\x02" + frame[5:],
        "codec": frame[:5] + b"\x09" + frame[6:],
        "flags": frame[:6] + b"\x80" + frame[7:],
        "truncated": frame[:-1],
        "trailing": frame + b"\x00",
    }
    for reason, data in cases.items():
        with pytest.raises(EnvelopeError, match=reason):
            decode_envelope(data)
    with pytest.raises(EnvelopeError):
        decode_envelope("not bytes")  # type: ignore[arg-type]


def test_body_len_bounded_by_codec_and_n_params() -> None:
    frame = bytearray(encode_envelope(header(), np.zeros(5, np.float32), None))
    off = frame.index(struct.pack("<III", 5, 120, 20))
    frame[off + 8 : off + 12] = struct.pack("<I", 24)
    with pytest.raises(EnvelopeError, match="body_len"):
        decode_envelope(bytes(frame))


def test_a_short_body_frames_but_does_not_decode() -> None:
    env = decode_envelope(encode_envelope(header(), b"\x00" * 16, None))
    with pytest.raises(EnvelopeError, match="codec body"):
        decode_delta(env, 5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_decode_delta_refuses_non_finite(bad: float) -> None:
    frame = bytearray(encode_envelope(header(), np.zeros(5, np.float32), None))
    value = np.array([bad], dtype="<f4").tobytes()
    frame[-1 - 8 : -1 - 4] = value  # the fourth parameter
    env = decode_envelope(bytes(frame))
    with pytest.raises(EnvelopeError, match="NaN or Inf"):
        decode_delta(env, 5)


def test_decode_delta_refuses_wrong_length() -> None:
    env = decode_envelope(encode_envelope(header(), np.zeros(5, np.float32), None))
    with pytest.raises(EnvelopeError):
        decode_delta(env, 6)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_envelope_error(data: bytes) -> None:
    try:
        env = decode_envelope(data)
    except EnvelopeError:
        return
    assert isinstance(env, Envelope)


@settings(max_examples=300)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=200))
def test_prefixed_garbage_raises_only_envelope_error(tail: bytes, cut: int) -> None:
    """Valid-looking prefixes reach deeper into the parser than random bytes do."""
    frame = encode_envelope(header(3), np.ones(3, np.float32), sign)
    data = frame[: min(cut, len(frame))] + tail
    with contextlib.suppress(EnvelopeError):
        decode_envelope(data)


def test_every_single_byte_flip_fails_decode_or_verify() -> None:
    frame = encode_envelope(header(4), np.arange(4, dtype=np.float32), sign)
    for i in range(len(frame)):
        for mask in (0x01, 0x80, 0xFF):
            data = bytearray(frame)
            data[i] ^= mask
            try:
                env = decode_envelope(bytes(data))
            except EnvelopeError:
                continue
            assert not env.verify(PUB), f"flip {mask:#x} at byte {i} still verifies"


def test_magic_constant() -> None:
    assert MAGIC == b"ESWD"
