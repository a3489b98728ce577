"""Quantized codec bodies: round trips, error bounds, unbiasedness, top-k, golden bytes, fuzzing."""

from __future__ import annotations

import math
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_swarm.swarm import codec
from edge_swarm.swarm.quantize import (
    CODEC_FLOAT16,
    CODEC_FLOAT32,
    CODEC_IDS,
    CODEC_INT4,
    CODEC_INT8,
    CODEC_SIGN1,
    FLAG_TOPK,
    INDEX_BITMAP,
    INDEX_DELTA,
    CodecError,
    CodecSpec,
    decode,
    encode,
    max_body_len,
    topk_count,
)

EPS32 = float(np.finfo(np.float32).eps)
FLT_MIN = float(np.finfo(np.float32).tiny)
LEVELS = {CODEC_INT8: 127, CODEC_INT4: 7}
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- helpers


def round_trip(x: np.ndarray, spec: CodecSpec, seed: int = 0) -> tuple[bytes, np.ndarray]:
    body = encode(x, spec, np.random.default_rng(seed))
    out = decode(body, spec.codec_id, spec.flags, x.size)
    assert out.dtype == np.float32 and out.shape == x.shape
    assert np.all(np.isfinite(out))
    assert len(body) <= max_body_len(spec.codec_id, spec.flags, x.size)
    return body, out


def parse_scales(body: bytes, n: int) -> tuple[int, np.ndarray]:
    """The chunk size and per-chunk scales of a dense int8/int4/sign1 body."""
    (chunk,) = struct.unpack_from("<I", body, 0)
    n_scales = -(-n // chunk)
    return chunk, np.frombuffer(body, "<f4", n_scales, 4).astype(np.float32)


def per_element(scales: np.ndarray, chunk: int, n: int) -> np.ndarray:
    return np.repeat(scales, chunk)[:n]


def parse_topk(body: bytes, n: int) -> tuple[int, int, list[int], bytes]:
    """k, index encoding, kept indices and the values body, parsed in plain Python."""
    k, encoding, index_len = struct.unpack_from("<IBI", body, 0)
    index = body[9 : 9 + index_len]
    if encoding == INDEX_BITMAP:
        idx = [i for i in range(n) if index[i // 8] >> (i % 8) & 1]
    else:
        idx, value, shift, pos = [], 0, 0, -1
        for byte in index:
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                pos += value if idx else value + 1
                idx.append(pos)
                value, shift = 0, 0
    return k, encoding, idx, body[9 + index_len :]


def reference_topk(x: np.ndarray, k: int) -> list[int]:
    """The k largest |x|, ties by lower index, by a full stable sort."""
    return sorted(np.argsort(-np.abs(x), kind="stable")[:k].tolist())


def dense(spec: CodecSpec) -> CodecSpec:
    return CodecSpec(spec.name, spec.chunk, spec.rounding, None, spec.index_packing)


def check_dense(x: np.ndarray, spec: CodecSpec, body: bytes, out: np.ndarray) -> None:
    """The per-codec error contract of a dense body."""
    cid = spec.codec_id
    if cid == CODEC_FLOAT32:
        assert out.tobytes() == x.astype("<f4").tobytes()
    elif cid == CODEC_FLOAT16:
        expected = np.clip(x, -65504, 65504).astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(out, expected)
    elif cid == CODEC_SIGN1:
        chunk, scales = parse_scales(body, x.size)
        s = per_element(scales, chunk, x.size)
        np.testing.assert_array_equal(out, np.where(x >= 0, s, -s))
        amax = np.maximum.reduceat(np.abs(x), np.arange(0, x.size, chunk))
        assert np.all(scales <= np.maximum(amax, FLT_MIN))  # mean|x| <= max|x|
    else:
        chunk, scales = parse_scales(body, x.size)
        s = per_element(scales, chunk, x.size).astype(np.float64)
        amax = np.maximum.reduceat(np.abs(x), np.arange(0, x.size, chunk)).astype(np.float64)
        step = 0.5 if spec.rounding == "nearest" else 1.0
        tol = step * s + 2 * EPS32 * per_element(amax, chunk, x.size)
        err = np.abs(x.astype(np.float64) - out.astype(np.float64))
        assert np.all(err <= tol), float(np.max(err - tol))
        # Each chunk's scale is max|x| / levels (raised to the smallest normal float32).
        want = np.where(amax > 0, np.maximum(amax / LEVELS[cid], FLT_MIN), 0)
        np.testing.assert_allclose(scales, want, rtol=2 * EPS32, atol=0)


def vectors() -> st.SearchStrategy[np.ndarray]:
    """Float32 vectors with zeros, subnormals, tiny and huge magnitudes, any length 1..700."""
    finite = st.floats(width=32, allow_nan=False, allow_infinity=False)
    shaped = st.integers(1, 700).flatmap(
        lambda n: st.one_of(
            hnp.arrays(np.float32, n, elements=finite),
            st.builds(
                lambda seed, mag, zeros: _gaussian(n, seed, mag, zeros),
                st.integers(0, 2**32 - 1),
                st.sampled_from([0.0, 1e-42, 1e-30, 1e-3, 1.0, 1e30, 3e38]),
                st.booleans(),
            ),
        )
    )
    return st.one_of(shaped, st.just(np.zeros(1, np.float32)), st.just(np.ones(1, np.float32)))


def _gaussian(n: int, seed: int, mag: float, zeros: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.clip(rng.standard_normal(n) * mag, -3.4e38, 3.4e38).astype(np.float32)
    if zeros:
        x[rng.random(n) < 0.5] = 0
    return x


specs = st.builds(
    CodecSpec,
    name=st.sampled_from(sorted(CODEC_IDS)),
    chunk=st.sampled_from([1, 3, 8, 64, 256, 1000]),
    rounding=st.sampled_from(["nearest", "stochastic"]),
    topk=st.sampled_from([None, 0.001, 0.1, 0.5, 1.0]),
    index_packing=st.sampled_from(["auto", "bitmap", "delta"]),
)


# --------------------------------------------------------------------------- spec


def test_ids_match_the_envelope() -> None:
    assert (CODEC_FLOAT32, CODEC_FLOAT16, CODEC_INT8, CODEC_INT4, CODEC_SIGN1) == (
        codec.CODEC_FLOAT32,
        codec.CODEC_FLOAT16,
        codec.CODEC_INT8,
        codec.CODEC_INT4,
        codec.CODEC_SIGN1,
    )
    assert FLAG_TOPK == codec.FLAG_TOPK


def test_spec_ids_flags_and_dict_round_trip() -> None:
    spec = CodecSpec("int4", chunk=128, rounding="stochastic", topk=1, index_packing="delta")
    assert (spec.codec_id, spec.flags, spec.topk) == (CODEC_INT4, FLAG_TOPK, 1.0)
    assert CodecSpec.from_dict(spec.to_dict()) == spec
    assert CodecSpec("sign1").flags == 0
    assert CodecSpec.from_dict({"name": "int8"}) == CodecSpec("int8")


@pytest.mark.parametrize(
    "kw",
    [
        {"name": "int16"},
        {"name": 2},
        {"name": "int8", "chunk": 0},
        {"name": "int8", "chunk": 2**24 + 1},
        {"name": "int8", "chunk": True},
        {"name": "int8", "chunk": 2.0},
        {"name": "int8", "rounding": "down"},
        {"name": "int8", "topk": 0},
        {"name": "int8", "topk": 1.5},
        {"name": "int8", "topk": float("nan")},
        {"name": "int8", "topk": True},
        {"name": "int8", "topk": "0.1"},
        {"name": "int8", "index_packing": "rle"},
    ],
)
def test_spec_refuses_bad_fields(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        CodecSpec(**kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CodecSpec.from_dict(kw)


@pytest.mark.parametrize(
    "data", [None, [], "int8", {}, {"chunk": 8}, {"name": "int8", "extra": 1}, {1: "int8"}]
)
def test_from_dict_refuses_untrusted_input(data: object) -> None:
    with pytest.raises(ValueError):
        CodecSpec.from_dict(data)


def test_topk_count() -> None:
    assert topk_count(100, 0.07) == 7
    assert topk_count(10, 0.1) == 1
    assert topk_count(10, 0.11) == 2
    assert topk_count(3, 0.001) == 1
    assert topk_count(5, 1.0) == 5


# --------------------------------------------------------------------------- round trips


@given(x=vectors(), spec=specs, seed=st.integers(0, 2**16))
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip_every_codec_and_topk(x: np.ndarray, spec: CodecSpec, seed: int) -> None:
    body, out = round_trip(x, spec, seed)
    if spec.topk is None:
        check_dense(x, spec, body, out)
        return
    k, encoding, idx, values_body = parse_topk(body, x.size)
    assert k == topk_count(x.size, spec.topk) == len(idx)
    assert idx == reference_topk(x, k)
    if spec.index_packing != "auto":
        assert encoding == {"bitmap": INDEX_BITMAP, "delta": INDEX_DELTA}[spec.index_packing]
    rest = np.ones(x.size, bool)
    rest[idx] = False
    assert not np.any(out[rest])
    kept = x[idx]
    check_dense(kept, dense(spec), values_body, out[idx])
    if spec.rounding == "nearest" or spec.codec_id not in LEVELS:
        assert values_body == encode(kept, dense(spec))


@pytest.mark.parametrize("name", sorted(CODEC_IDS))
@pytest.mark.parametrize("topk", [None, 0.1])
@pytest.mark.parametrize("n", [1, 255, 256, 257, 1000])
def test_round_trip_edges(name: str, topk: float | None, n: int) -> None:
    rng = np.random.default_rng(n)
    cases = [
        np.zeros(n, np.float32),
        np.full(n, -0.0, np.float32),
        (rng.standard_normal(n) * 1e-40).astype(np.float32),  # subnormal
        np.where(rng.random(n) < 0.5, -3.4e38, 3.4e38).astype(np.float32),
        np.full(n, np.finfo(np.float32).max),
    ]
    for rounding in ("nearest", "stochastic"):
        spec = CodecSpec(name, chunk=256, rounding=rounding, topk=topk)
        for x in cases:
            body, out = round_trip(x, spec)
            if topk is None:
                check_dense(x, spec, body, out)


def test_float16_saturates_instead_of_overflowing() -> None:
    x = np.array([1e6, -1e6, 65519.0, 1.0], np.float32)
    _, out = round_trip(x, CodecSpec("float16"))
    assert out.tolist() == [65504.0, -65504.0, 65504.0, 1.0]


def test_zero_chunk_has_zero_scale() -> None:
    x = np.zeros(300, np.float32)
    x[256:] = 1.0
    body, out = round_trip(x, CodecSpec("int8", chunk=256))
    _, scales = parse_scales(body, 300)
    assert scales[0] == 0 and np.all(out[:256] == 0) and np.all(out[256:] == 1.0)


# --------------------------------------------------------------------------- rounding


@pytest.mark.parametrize("cid", [CODEC_INT8, CODEC_INT4])
def test_nearest_error_is_at_most_half_a_step(cid: int) -> None:
    rng = np.random.default_rng(1)
    name = "int8" if cid == CODEC_INT8 else "int4"
    for n, chunk in [(1, 1), (1000, 64), (4097, 256), (65536 * 2 + 5, 256)]:
        x = (rng.standard_normal(n) * 10.0 ** rng.integers(-20, 20)).astype(np.float32)
        spec = CodecSpec(name, chunk=chunk)
        body, out = round_trip(x, spec)
        check_dense(x, spec, body, out)


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_stochastic_rounding_is_unbiased(name: str) -> None:
    """The mean of N decodings converges to the input, within a Hoeffding bound.

    Each decoded element takes one of two values ``s`` apart, so by Hoeffding's inequality
    ``P(|mean - E| >= t) <= 2 exp(-2 N t^2 / s^2)``. With a union bound over M elements and a
    total failure probability delta, ``t = s sqrt(ln(2M / delta) / (2N))``. E differs from the
    input only by float32 rounding (a few eps of max|x|). Seeds are fixed, so this cannot flake.
    """
    m, draws, delta = 256, 3000, 1e-6
    x = np.random.default_rng(7).uniform(-1, 1, m).astype(np.float32)
    stochastic = CodecSpec(name, chunk=m, rounding="stochastic")
    cid = CODEC_IDS[name]
    total = np.zeros(m, np.float64)
    for seed in range(draws):
        total += decode(encode(x, stochastic, np.random.default_rng(seed)), cid, 0, m)
    mean = total / draws
    _, (s,) = parse_scales(encode(x, stochastic, np.random.default_rng(0)), m)
    amax = float(np.abs(x).max())
    t = float(s) * math.sqrt(math.log(2 * m / delta) / (2 * draws)) + 4 * EPS32 * amax
    err = np.abs(mean - x)
    assert err.max() <= t, (err.max(), t)
    # Over all M x N draws the average error is tighter still (same inequality, M N samples).
    t_all = float(s) * math.sqrt(math.log(2 / delta) / (2 * draws * m)) + 4 * EPS32 * amax
    assert abs(float(np.mean(mean - x))) <= t_all
    # The test has power: nearest rounding is biased well beyond the bound.
    nearest = decode(encode(x, CodecSpec(name, chunk=m)), cid, 0, m)
    assert np.abs(nearest - x).max() > 3 * t


def test_stochastic_needs_an_rng() -> None:
    x = np.ones(4, np.float32)
    with pytest.raises(ValueError):
        encode(x, CodecSpec("int8", rounding="stochastic"))
    encode(x, CodecSpec("sign1", rounding="stochastic"))  # ignored where it does not apply


# --------------------------------------------------------------------------- top-k


@given(
    n=st.integers(1, 2000),
    seed=st.integers(0, 2**32 - 1),
    fraction=st.floats(1e-4, 1.0),
    levels=st.integers(1, 5),
)
@settings(max_examples=150, deadline=None)
def test_topk_keeps_exactly_the_k_largest(n: int, seed: int, fraction: float, levels: int) -> None:
    rng = np.random.default_rng(seed)
    # Few distinct magnitudes: many ties, which must go to the lower indices.
    x = (rng.integers(-levels, levels + 1, n) * 0.5).astype(np.float32)
    for packing in ("bitmap", "delta"):
        spec = CodecSpec("float32", topk=fraction, index_packing=packing)
        body, out = round_trip(x, spec)
        k, _, idx, _ = parse_topk(body, n)
        assert idx == reference_topk(x, k)
        expected = np.zeros(n, np.float32)
        expected[idx] = x[idx]
        assert out.tobytes() == expected.tobytes()


def test_topk_auto_picks_the_smaller_index() -> None:
    x = np.arange(1, 10001, dtype=np.float32)  # the top entries are contiguous: gaps of 1
    small, _ = round_trip(x, CodecSpec("float32", topk=0.01))
    assert parse_topk(small, x.size)[1] == INDEX_DELTA
    big, _ = round_trip(x, CodecSpec("float32", topk=0.9))
    assert parse_topk(big, x.size)[1] == INDEX_BITMAP


# --------------------------------------------------------------------------- golden bytes


def test_golden_int8() -> None:
    x = np.array([1.0, -0.5, 0.25, 0.0], np.float32)
    body = encode(x, CodecSpec("int8", chunk=4))
    scale = np.float32(1.0) / np.float32(127)
    # -0.5 * 127 = -63.5 rounds to even (-64); 0.25 * 127 = 31.75 rounds to 32.
    assert body == struct.pack("<If", 4, scale) + bytes([127, 256 - 64, 32, 0])
    out = decode(body, CODEC_INT8, 0, 4)
    assert out.tolist() == [np.float32(c) * scale for c in (127, -64, 32, 0)]


def test_golden_int4_and_sign1() -> None:
    x = np.array([7.0, -7.0, 1.0, 0.0, -1.0], np.float32)
    assert encode(x, CodecSpec("int4", chunk=8)) == struct.pack("<If", 8, 1.0) + bytes(
        [0x97, 0x01, 0x0F]
    )
    y = np.array([1.0, -1.0, 2.0, -2.0, 0.0], np.float32)
    body = encode(y, CodecSpec("sign1", chunk=8))
    assert body == struct.pack("<If", 8, 1.2) + bytes([0b10101])
    assert decode(body, CODEC_SIGN1, 0, 5).tolist() == [
        float(v) for v in np.float32(1.2) * np.array([1, -1, 1, -1, 1], np.float32)
    ]


def test_golden_topk() -> None:
    x = np.array([0, 3, -1, 5, 0, 0, 2, 0], np.float32)
    values = struct.pack("<2f", 3.0, 5.0)
    auto = encode(x, CodecSpec("float32", topk=0.25))
    assert auto == struct.pack("<IBI", 2, INDEX_BITMAP, 1) + bytes([0b1010]) + values
    delta = encode(x, CodecSpec("float32", topk=0.25, index_packing="delta"))
    assert delta == struct.pack("<IBI", 2, INDEX_DELTA, 2) + bytes([1, 2]) + values
    assert decode(delta, CODEC_FLOAT32, FLAG_TOPK, 8).tolist() == [0, 3, 0, 5, 0, 0, 0, 0]


def test_varint_indices_beyond_one_byte() -> None:
    x = np.zeros(3_000_000, np.float32)
    x[[5, 200, 20_000, 2_999_999]] = [1, 2, 3, 4]
    body, out = round_trip(x, CodecSpec("float32", topk=4 / x.size, index_packing="delta"))
    assert parse_topk(body, x.size)[2] == [5, 200, 20_000, 2_999_999]
    assert out.tobytes() == x.tobytes()


def test_decode_is_deterministic() -> None:
    x = np.random.default_rng(3).standard_normal(5000).astype(np.float32)
    for name in CODEC_IDS:
        for topk in (None, 0.1):
            spec = CodecSpec(name, rounding="stochastic", topk=topk)
            body = encode(x, spec, np.random.default_rng(0))
            assert body == encode(x, spec, np.random.default_rng(0))
            first = decode(body, spec.codec_id, spec.flags, x.size).tobytes()
            assert decode(bytearray(body), spec.codec_id, spec.flags, x.size).tobytes() == first
            assert decode(memoryview(body), spec.codec_id, spec.flags, x.size).tobytes() == first


# --------------------------------------------------------------------------- misuse


@pytest.mark.parametrize(
    ("vec", "exc"),
    [
        (np.array([1.0, np.nan], np.float32), ValueError),
        (np.array([np.inf], np.float32), ValueError),
        (np.array([1e39]), ValueError),  # float64 beyond float32
        (np.zeros((2, 2), np.float32), ValueError),
        (np.zeros(0, np.float32), ValueError),
        (np.zeros(3, np.int32), TypeError),
    ],
)
def test_encode_refuses_misuse(vec: np.ndarray, exc: type[Exception]) -> None:
    for name in CODEC_IDS:
        with pytest.raises(exc):
            encode(vec, CodecSpec(name))
    with pytest.raises(TypeError):
        encode(np.ones(3, np.float32), {"name": "int8"})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- untrusted bytes


def assert_decodes_or_refuses(body: bytes, cid: object, flags: object, n: object) -> None:
    try:
        out = decode(body, cid, flags, n)  # type: ignore[arg-type]
    except CodecError as exc:
        assert not str(exc).startswith("internal"), exc  # refused by a check, not by accident
        return
    assert out.dtype == np.float32 and out.shape == (n,)
    assert np.all(np.isfinite(out))


@given(
    body=st.binary(max_size=200),
    cid=st.integers(0, 5),
    flags=st.integers(0, 3),
    n=st.integers(0, 100),
)
@FUZZ
def test_any_bytes_decode_or_raise_codec_error(body: bytes, cid: int, flags: int, n: int) -> None:
    assert_decodes_or_refuses(body, cid, flags, n)


@given(data=st.data(), spec=specs, n=st.integers(1, 300), seed=st.integers(0, 2**16))
@FUZZ
def test_mutated_bodies_decode_or_raise_codec_error(
    data: st.DataObject, spec: CodecSpec, n: int, seed: int
) -> None:
    x = _gaussian(n, seed, 1.0, seed % 2 == 0)
    body = bytearray(encode(x, spec, np.random.default_rng(seed)))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["set", "cut", "grow", "u32"]))
        pos = data.draw(st.integers(0, max(0, len(body) - 1)))
        if op == "set" and body:
            body[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del body[pos:]
        elif op == "grow":
            body[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "u32" and len(body) >= pos + 4:
            body[pos : pos + 4] = struct.pack("<I", data.draw(st.integers(0, 2**32 - 1)))
    assert_decodes_or_refuses(bytes(body), spec.codec_id, spec.flags, n)


@pytest.mark.parametrize(
    ("body", "cid", "flags", "n", "why"),
    [
        (b"\0" * 4, 5, 0, 1, "codec id"),
        (b"\0" * 4, CODEC_FLOAT32, 2, 1, "flags"),
        (b"", CODEC_FLOAT32, 0, 0, "n_params"),
        (b"\0" * 4, "0", 0, 1, "integers"),
        ([0, 0, 0, 0], CODEC_FLOAT32, 0, 1, "bytes"),
        (struct.pack("<f", float("nan")), CODEC_FLOAT32, 0, 1, "NaN"),
        (b"\x00\x7c", CODEC_FLOAT16, 0, 1, "NaN or Inf"),
        (struct.pack("<IfB", 0, 1.0, 1), CODEC_INT8, 0, 1, "chunk size 0"),
        (struct.pack("<IfB", 1, -1.0, 1), CODEC_INT8, 0, 1, "scale"),
        (struct.pack("<IfB", 1, 1e-40, 1), CODEC_INT8, 0, 1, "scale"),
        (struct.pack("<IfB", 1, 3e38, 1), CODEC_INT8, 0, 1, "scale"),
        (struct.pack("<IfB", 1, 1.0, 0x80), CODEC_INT8, 0, 1, "-128"),
        (struct.pack("<IfB", 1, 1.0, 0x08), CODEC_INT4, 0, 1, "-8"),
        (struct.pack("<IfB", 1, 1.0, 0x11), CODEC_INT4, 0, 1, "padding"),
        (struct.pack("<IfB", 1, 1.0, 0x03), CODEC_SIGN1, 0, 1, "padding"),
        (struct.pack("<IfBB", 1, 1.0, 1, 0), CODEC_INT8, 0, 1, "expected"),
        (struct.pack("<IBI", 2, 1, 2) + b"\x01\x00" + b"\0" * 8, 0, 1, 4, "strictly"),
        (struct.pack("<IBI", 1, 1, 1) + b"\x04" + b"\0" * 4, 0, 1, 4, "out of range"),
        (struct.pack("<IBI", 1, 1, 2) + b"\x81\x00" + b"\0" * 4, 0, 1, 4, "shortest"),
        (struct.pack("<IBI", 5, 0, 1) + b"\x0f" + b"\0" * 20, 0, 1, 4, "k=5"),
        (struct.pack("<IBI", 1, 0, 1) + b"\x03" + b"\0" * 4, 0, 1, 4, "bits set"),
        (struct.pack("<IBI", 1, 2, 1) + b"\x01" + b"\0" * 4, 0, 1, 4, "index encoding"),
        (struct.pack("<IBI", 1, 0, 9) + b"\x01", 0, 1, 4, "overruns"),
    ],
)
def test_decode_refuses_with_a_reason(
    body: bytes, cid: object, flags: int, n: int, why: str
) -> None:
    with pytest.raises(CodecError, match=why):
        decode(body, cid, flags, n)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    "spec",
    [CodecSpec("int8"), CodecSpec("int4", rounding="stochastic"), CodecSpec("int8", topk=0.1)],
)
def test_round_trip_peak_memory_is_under_three_vectors(spec: CodecSpec) -> None:
    x = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)
    rng = np.random.default_rng(0)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        body = encode(x, spec, rng)
        out = decode(body, spec.codec_id, spec.flags, x.size)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert out.size == x.size
    assert peak <= 3 * x.nbytes, peak / x.nbytes
