"""The delta envelope: round trips, golden bytes, and fuzzing of the decoder."""

from __future__ import annotations

import contextlib
import hashlib
import struct
from collections.abc import Callable

import numpy as np
import pytest
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_swarm.swarm import quantize
from edge_swarm.swarm.codec import (
    CODEC_FLOAT32,
    CODEC_INT8,
    DEFAULT_MAX,
    FLAG_SEALED,
    FLAG_TOPK,
    MAGIC,
    SIGNATURE_LEN,
    Envelope,
    EnvelopeError,
    EnvelopeHeader,
    decode_delta,
    decode_envelope,
    encode_envelope,
    envelope_aad,
    open_envelope,
)
from edge_swarm.trust.payload import OVERHEAD, delta_aad

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
        "flags": frame[:6] + b"\x40" + frame[7:],  # 0x80 is FLAG_SEALED, 0x40 reserved
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


# --------------------------------------------------------------------------- sealed frames

DATA_KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
EPOCH = 3


def sealed_header(n: int = 5, **kw: object) -> EnvelopeHeader:
    fields: dict[str, object] = dict(flags=FLAG_SEALED, epoch=EPOCH)
    fields.update(kw)
    return header(n, **fields)


def assemble(
    h: EnvelopeHeader, body: bytes, signer: Callable[[bytes], bytes] | None = None
) -> bytes:
    """A frame built by hand from the documented layout, independent of ``_pack_header``.

    Lets a test put any body (e.g. a sealed blob lifted from another frame) under any header.
    """
    swarm, node = h.swarm.encode(), h.node.encode()
    signed = (
        MAGIC
        + struct.pack("<BBB", 1, h.codec, h.flags)
        + bytes([len(swarm)])
        + swarm
        + struct.pack("<I", h.round)
        + bytes([len(node)])
        + node
        + bytes.fromhex(h.base_hash)
        + struct.pack("<III", h.n_params, h.n_samples, len(body))
        + (b"" if h.epoch is None else struct.pack("<I", h.epoch))
        + body
    )
    sig = b"" if signer is None else signer(signed)
    return signed + bytes([len(sig)]) + sig


def test_hand_assembled_unsealed_frame_matches() -> None:
    """Sealing support changed nothing for unsealed frames (with the golden test above)."""
    body = quantize.encode(np.linspace(-1, 1, 9, dtype=np.float32), quantize.CodecSpec("int8"))
    h = header(9, codec=CODEC_INT8)
    assert encode_envelope(h, body, sign) == assemble(h, body, sign)


SPECS = {
    "float32-array": None,
    "int8": quantize.CodecSpec("int8", chunk=4),
    "int8-topk": quantize.CodecSpec("int8", chunk=4, topk=0.25),
    "sign1-topk-bitmap": quantize.CodecSpec("sign1", topk=0.5, index_packing="bitmap"),
}


@pytest.mark.parametrize("name", SPECS)
def test_sealed_round_trip(name: str) -> None:
    spec = SPECS[name]
    n = 16
    vec = np.linspace(-3, 2, n, dtype=np.float32)
    if spec is None:
        h = sealed_header(n)
        delta: np.ndarray | bytes = vec
        plain = quantize.encode(vec, quantize.CodecSpec("float32"))
        expected = vec
    else:
        h = sealed_header(n, codec=spec.codec_id, flags=spec.flags | FLAG_SEALED)
        plain = delta = quantize.encode(vec, spec)
        expected = quantize.decode(plain, spec.codec_id, spec.flags, n)
    frame = encode_envelope(h, delta, sign, DATA_KEY)
    env = decode_envelope(frame)
    assert env.header == h and env.header.sealed and env.header.epoch == EPOCH
    assert env.header.codec_flags == (0 if spec is None else spec.flags)
    assert len(env.body) == len(plain) + OVERHEAD
    assert env.verify(PUB)  # the signature covers the ciphertext
    # Layout pin: epoch right after the counts, then the sealed blob (Ed25519 is deterministic).
    assert frame == assemble(h, env.body, sign)
    body = open_envelope(env, DATA_KEY)
    assert body == plain
    np.testing.assert_array_equal(decode_delta(env, n, body), expected)
    with pytest.raises(EnvelopeError, match="open it first"):
        decode_delta(env, n)


def test_sealing_is_randomized() -> None:
    """Fresh nonce per seal: the same delta never gives the same ciphertext twice."""
    a = decode_envelope(encode_envelope(sealed_header(), np.ones(5, np.float32), None, DATA_KEY))
    b = decode_envelope(encode_envelope(sealed_header(), np.ones(5, np.float32), None, DATA_KEY))
    assert a.body != b.body
    assert open_envelope(a, DATA_KEY) == open_envelope(b, DATA_KEY)


def test_sealed_frame_does_not_contain_the_plaintext() -> None:
    vec = np.random.default_rng(1).standard_normal(64).astype(np.float32)
    plain = quantize.encode(vec, quantize.CodecSpec("float32"))
    frame = encode_envelope(sealed_header(64), vec, sign, DATA_KEY)
    windows = {plain[i : i + 8] for i in range(len(plain) - 7)}
    assert not any(w in frame for w in windows)


REFRAMES = {
    "swarm": {"swarm": "clinic-b"},
    "round": {"round": 8},
    "node": {"node": "pi-4"},
    "base": {"base_hash": hashlib.sha256(b"other base").hexdigest()},
    "n_samples": {"n_samples": 121},
    "epoch": {"epoch": EPOCH + 1},
    "n_params": {"n_params": 6},
    "codec": {"codec": CODEC_INT8},
}


@pytest.mark.parametrize("name", REFRAMES)
def test_ciphertext_reframed_under_another_header_does_not_open(name: str) -> None:
    """A validly signed frame carrying a ciphertext sealed for another header must not open.

    Everyone holding the signing key could do this, so the AAD, not the signature, is what
    stops a ciphertext from being replayed under another round, node, swarm, base or epoch.
    """
    original = decode_envelope(
        encode_envelope(sealed_header(), np.ones(5, np.float32), sign, DATA_KEY)
    )
    moved = decode_envelope(assemble(sealed_header(**REFRAMES[name]), original.body, sign))
    assert moved.verify(PUB) and moved.body == original.body
    with pytest.raises(EnvelopeError, match="^undecryptable"):
        open_envelope(moved, DATA_KEY)
    # Control: the same blob re-framed under its own header opens.
    same = decode_envelope(assemble(sealed_header(), original.body, sign))
    assert open_envelope(same, DATA_KEY) == open_envelope(original, DATA_KEY)


def test_wrong_key_does_not_open() -> None:
    env = decode_envelope(encode_envelope(sealed_header(), np.ones(5, np.float32), sign, DATA_KEY))
    with pytest.raises(EnvelopeError, match="^undecryptable"):
        open_envelope(env, OTHER_KEY)


def test_every_byte_flip_of_the_sealed_body_fails_to_open() -> None:
    frame = encode_envelope(sealed_header(4), np.arange(4, dtype=np.float32), sign, DATA_KEY)
    env = decode_envelope(frame)
    start = len(env.signed_bytes) - len(env.body)
    assert frame[start : len(env.signed_bytes)] == env.body
    for i in range(start, len(env.signed_bytes)):
        data = bytearray(frame)
        data[i] ^= 0x01
        flipped = decode_envelope(bytes(data))  # same lengths: still a well-formed frame
        with pytest.raises(EnvelopeError, match="^undecryptable"):
            open_envelope(flipped, DATA_KEY)


@pytest.mark.parametrize(
    "kw",
    [
        {"epoch": 1},  # an epoch without the flag
        {"epoch": 0},
        {"flags": FLAG_SEALED},  # the flag without an epoch
        {"flags": FLAG_SEALED | FLAG_TOPK, "codec": CODEC_INT8},
        {"flags": FLAG_SEALED, "epoch": -1},
        {"flags": FLAG_SEALED, "epoch": 2**32},
        {"flags": FLAG_SEALED, "epoch": True},
        {"flags": FLAG_SEALED, "epoch": "1"},
        {"flags": FLAG_SEALED, "epoch": 1.0},
        {"flags": 0x40, "epoch": 1},
    ],
)
def test_sealed_header_invariants(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        header(**kw)


def test_sealed_header_properties() -> None:
    h = sealed_header(16, codec=CODEC_INT8, flags=FLAG_SEALED | FLAG_TOPK, epoch=2**32 - 1)
    assert h.sealed and h.codec_flags == FLAG_TOPK
    plain = header(16, codec=CODEC_INT8, flags=FLAG_TOPK)
    assert not plain.sealed and plain.codec_flags == FLAG_TOPK and plain.epoch is None
    assert h.max_body_len == plain.max_body_len + OVERHEAD
    assert h.max_body_len == quantize.max_body_len(CODEC_INT8, FLAG_TOPK, 16) + OVERHEAD


def test_envelope_aad() -> None:
    h = sealed_header()
    assert envelope_aad(h) == delta_aad(
        h.swarm, h.round, h.node, h.base_hash, h.codec, h.flags, h.n_params, h.n_samples, EPOCH
    )
    with pytest.raises(ValueError):
        envelope_aad(header())


def test_sealed_encode_refuses_misuse() -> None:
    delta = np.ones(5, np.float32)
    with pytest.raises(ValueError, match="data key"):
        encode_envelope(sealed_header(), delta, sign)
    with pytest.raises(ValueError, match="data key"):
        encode_envelope(header(), delta, sign, DATA_KEY)
    with pytest.raises(ValueError):
        encode_envelope(sealed_header(), delta, sign, DATA_KEY[:31])
    # The codec maximum still applies; the seal overhead is no room for a longer body.
    with pytest.raises(ValueError, match="exceeds"):
        encode_envelope(sealed_header(), b"\x00" * 24, sign, DATA_KEY)
    with pytest.raises(ValueError, match="quantize"):
        encode_envelope(sealed_header(codec=CODEC_INT8), delta, sign, DATA_KEY)


def test_open_envelope_of_an_unsealed_frame_is_its_body() -> None:
    env = decode_envelope(encode_envelope(header(), np.ones(5, np.float32), sign))
    assert open_envelope(env, DATA_KEY) == env.body
    np.testing.assert_array_equal(decode_delta(env, 5, open_envelope(env, DATA_KEY)), np.ones(5))


def test_sealed_body_len_bounds() -> None:
    h = sealed_header()
    with pytest.raises(EnvelopeError, match="body_len"):
        decode_envelope(assemble(h, b"\x00" * (20 + OVERHEAD + 1)))
    with pytest.raises(EnvelopeError, match="body_len"):
        decode_envelope(assemble(h, b"\x00" * (OVERHEAD - 1)))
    # The sealed maximum is accepted by the framer and fails only when opened.
    env = decode_envelope(assemble(h, b"\x00" * (20 + OVERHEAD)))
    with pytest.raises(EnvelopeError, match="^undecryptable"):
        open_envelope(env, DATA_KEY)


def test_every_truncation_of_a_sealed_frame_is_refused() -> None:
    frame = encode_envelope(sealed_header(3), np.ones(3, np.float32), sign, DATA_KEY)
    for cut in range(len(frame)):
        with pytest.raises(EnvelopeError):
            decode_envelope(frame[:cut])


SEALED_PLAIN = quantize.encode(np.arange(4, dtype=np.float32), quantize.CodecSpec("float32"))
SEALED_FRAME = encode_envelope(sealed_header(4), SEALED_PLAIN, sign, DATA_KEY)
SEALED_SIGNED = decode_envelope(SEALED_FRAME).signed_bytes


def check_mutant(data: bytes) -> None:
    """A mutant of SEALED_FRAME raises only EnvelopeError, or opens only if nothing signed moved."""
    try:
        env = decode_envelope(data)
        body = open_envelope(env, DATA_KEY)
    except EnvelopeError:
        return
    if env.header.sealed:
        # Every signed byte is bound by the tag or the AAD: only the signature may differ.
        assert env.signed_bytes == SEALED_SIGNED and body == SEALED_PLAIN
    else:
        # Clearing FLAG_SEALED is a downgrade; the signature covers the flags byte.
        assert not env.verify(PUB)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, len(SEALED_FRAME) - 1), st.integers(0, 255)),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_sealed_frames_raise_only_envelope_error(edits: list[tuple[int, int]]) -> None:
    data = bytearray(SEALED_FRAME)
    for pos, value in edits:
        data[pos] = value
    check_mutant(bytes(data))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(SEALED_FRAME)), st.binary(max_size=120))
def test_sealed_prefix_with_garbage_raises_only_envelope_error(cut: int, tail: bytes) -> None:
    check_mutant(SEALED_FRAME[:cut] + tail)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 4), st.binary(max_size=300))
def test_random_sealed_looking_bytes_raise_only_envelope_error(codec: int, tail: bytes) -> None:
    check_mutant(MAGIC + bytes([1, codec, FLAG_SEALED]) + tail)
