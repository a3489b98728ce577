"""The downlink merged update: determinism, bit-identical apply, feedback, refusals, fuzzing."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_swarm.swarm.downlink import (
    MAGIC,
    VERSION,
    Downlink,
    DownlinkError,
    Update,
    UpdateKey,
    apply_update,
    make_update,
    parse_update,
    update_bytes,
)
from edge_swarm.swarm.quantize import CODEC_INT8, FLAG_TOPK, CodecSpec

SWARM = "site-a"
HASH = hashlib.sha256(b"the base model").hexdigest()
N_MLP = 2410  # the standard workload's model: MLP 64-32-10 (64*32 + 32 + 32*10 + 10)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SPECS = {
    "int8": CodecSpec("int8"),
    "int4": CodecSpec("int4"),
    "float16": CodecSpec("float16"),
    "int8+topk": CodecSpec("int8", topk=0.1),
    "int4+topk-bitmap": CodecSpec("int4", topk=0.25, index_packing="bitmap"),
    "sign1": CodecSpec("sign1"),
    "float32": CodecSpec("float32"),
    "int8-stochastic": CodecSpec("int8", rounding="stochastic"),
}


def arrays(n: int = N_MLP, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base, merged, residual) as float32, like a round of a small MLP."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 0.3, n).astype(np.float32)
    merged = (base + rng.normal(0, 0.01, n)).astype(np.float32)
    residual = rng.normal(0, 0.001, n).astype(np.float32)
    return base, merged, residual


def exact_arrays(n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """Inputs built from exact binary fractions: the same bits with any numpy or machine."""
    i = np.arange(n)
    base = (((i * 37) % 101 - 50) / 64).astype(np.float32)
    merged = base + (((i * 13) % 29 - 14) / 256).astype(np.float32)
    return base, merged


def build(spec: CodecSpec, n: int = N_MLP, residual: bool = True, **kw: object) -> Downlink:
    base, merged, res = arrays(n)
    args = {"swarm": SWARM, "round": 7, "base_model_hash": HASH}
    args.update(kw)
    return make_update(base, merged, res if residual else None, spec, **args)  # type: ignore[arg-type]


def parse(frame: bytes, **kw: int) -> Update:
    return parse_update(frame, max_size=len(frame), **kw)


KEY = UpdateKey(SWARM, 7, HASH, N_MLP)


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", list(SPECS))
def test_same_inputs_give_the_same_frame_and_params_bits(name: str) -> None:
    spec = SPECS[name]
    a, b = build(spec), build(spec)  # fresh arrays each time: nothing shared but the values
    assert a.frame == b.frame
    assert a.sha256 == b.sha256 == hashlib.sha256(a.frame).hexdigest()
    assert a.params.tobytes() == b.params.tobytes()
    assert a.residual.tobytes() == b.residual.tobytes()
    assert a.params.dtype == a.residual.dtype == np.float32
    assert not a.params.flags.writeable and not a.residual.flags.writeable


def test_stochastic_rounding_rng_is_derived_from_the_key() -> None:
    spec = SPECS["int8-stochastic"]
    assert build(spec).frame == build(spec).frame
    assert build(spec).frame != build(spec, round=8).frame  # another round, other draws
    base, merged, _ = arrays()
    other = hashlib.sha256(b"another base").hexdigest()
    a = make_update(base, merged, None, spec, SWARM, 7, HASH)
    b = make_update(base, merged, None, spec, SWARM, 7, other)
    assert a.frame[52 + len(SWARM) :] != b.frame[52 + len(SWARM) :]  # bodies differ


# Golden values: they pin the wire format and the codec's arithmetic on every machine. The
# inputs are exact binary fractions, so the expected bytes do not depend on numpy's rng.
GOLDEN = {
    "int8": "2b680c68ea2e92673b1dc86f685908bad21e3d6d3183da1837feb830639fda7f",
    "int4": "b9c16984f881f02fba1cb9f166608107d030472a496786bb4e7471f5bf276f41",
    "int8+topk": "2460d1ecbba59eb214cd990c5500ca19a4c428158493931e1063d58f8959e401",
}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_frames(name: str) -> None:
    base, merged = exact_arrays()
    d = make_update(base, merged, None, SPECS[name], SWARM, 3, HASH)
    assert d.sha256 == GOLDEN[name]


def test_frame_layout_matches_the_module_header() -> None:
    d = build(SPECS["int8"])
    n = len(SWARM)
    assert d.frame[:6] == MAGIC + bytes([VERSION, n])
    assert d.frame[6 : 6 + n] == SWARM.encode()
    rnd, raw_hash, cid, flags, n_params, body_len = struct.unpack_from("<I32sBBII", d.frame, 6 + n)
    assert (rnd, raw_hash.hex(), cid, flags, n_params) == (7, HASH, CODEC_INT8, 0, N_MLP)
    assert len(d.frame) == 52 + n + body_len
    topk = build(SPECS["int8+topk"])
    assert topk.frame[43 + n] == FLAG_TOPK


# --------------------------------------------------------------------------- apply


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("residual", [False, True])
def test_apply_on_a_parsed_frame_equals_make_update_params(name: str, residual: bool) -> None:
    d = build(SPECS[name], residual=residual)
    u = parse(d.frame, max_params=N_MLP)
    assert u.key == KEY and u.sha256 == d.sha256
    assert (u.codec_id, u.flags) == (SPECS[name].codec_id, SPECS[name].flags)
    base, _, _ = arrays()
    params = apply_update(base, u, (SWARM, 7, HASH, N_MLP))
    assert params.dtype == np.float32 and params.flags.writeable
    assert params.tobytes() == d.params.tobytes()


def test_parse_accepts_bytearray_and_memoryview() -> None:
    d = build(SPECS["int4"])
    for data in (bytearray(d.frame), memoryview(d.frame)):
        assert parse_update(data, len(d.frame)).sha256 == d.sha256  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(
    vals=hnp.arrays(
        np.float32,
        st.integers(1, 700),
        elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False),
    ),
    name=st.sampled_from(list(SPECS)),
    swarm=st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True),
    rnd=st.integers(0, 2**32 - 1),
)
def test_round_trip_property(vals: np.ndarray, name: str, swarm: str, rnd: int) -> None:
    base = np.linspace(-1, 1, vals.size, dtype=np.float32)
    merged = (base + vals).astype(np.float32)
    d = make_update(base, merged, None, SPECS[name], swarm, rnd, HASH)
    u = parse_update(d.frame, len(d.frame), max_params=vals.size)
    out = apply_update(base, u, UpdateKey(swarm, rnd, HASH, vals.size))
    assert out.tobytes() == d.params.tobytes()
    target = merged - base
    assert np.array_equal(d.residual, target - u.delta)


# --------------------------------------------------------------------------- error feedback


def feedback_run(rounds: int, carry: bool) -> tuple[list[float], list[float]]:
    """Simulate ``rounds`` of int4 downlink; return the gap |sum true - sum applied| (max over
    entries) after each round, and the per-round bound of one round's quantization error."""
    n, chunk = 512, 256
    rng = np.random.default_rng(5)
    spec = CodecSpec("int4", chunk=chunk)
    base = rng.normal(0, 0.2, n).astype(np.float32)
    residual: np.ndarray | None = None
    true_sum = np.zeros(n)
    applied_sum = np.zeros(n)
    gaps, bounds = [], []
    for t in range(rounds):
        # One large entry per chunk sets the int4 scale; the others carry a small, steady
        # drift below half a step, which plain rounding drops every round.
        u = 0.02 + 0.01 * rng.normal(size=n)
        u[::chunk] = rng.choice([-1.0, 1.0], n // chunk)
        merged = (base + u.astype(np.float32)).astype(np.float32)
        d = make_update(base, merged, residual if carry else None, spec, SWARM, t, HASH)
        true_sum += merged.astype(np.float64) - base
        applied_sum += d.params.astype(np.float64) - base
        target = merged - base + (residual if carry and residual is not None else 0)
        bounds.append(0.5 * float(np.abs(target).max()) / 7)  # half an int4 step
        assert np.abs(d.residual).max() <= bounds[-1] * (1 + 1e-6)
        residual, base = d.residual, np.array(d.params)
        gaps.append(float(np.abs(true_sum - applied_sum).max()))
    return gaps, bounds


def test_error_feedback_keeps_the_sum_of_updates_on_track() -> None:
    gaps, bounds = feedback_run(50, carry=True)
    # Within one round's quantization error (plus float32 rounding of params), at every round.
    for gap, bound in zip(gaps, bounds, strict=True):
        assert gap <= bound + 1e-4
    assert max(gaps) < 0.1


def test_without_the_residual_the_gap_grows() -> None:
    gaps, bounds = feedback_run(50, carry=False)
    assert gaps[-1] > 10 * max(bounds)  # about 50 rounds x 0.02 of dropped drift
    assert gaps[49] > 1.5 * gaps[24]  # linear drift, not a bounded error


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "expected",
    [
        ("site-b", 7, HASH, N_MLP),
        (SWARM, 8, HASH, N_MLP),
        (SWARM, 7, hashlib.sha256(b"other").hexdigest(), N_MLP),
        (SWARM, 7, HASH, N_MLP + 1),
    ],
    ids=["swarm", "round", "base-hash", "n-params"],
)
def test_apply_refuses_an_update_for_another_key(expected: tuple[str, int, str, int]) -> None:
    u = parse(build(SPECS["int8"]).frame)
    base = np.zeros(expected[3], np.float32)
    with pytest.raises(DownlinkError):
        apply_update(base, u, expected)


def test_apply_refuses_a_non_finite_result() -> None:
    n = 64
    huge = np.full(n, 3e38, np.float32)
    d = make_update(np.zeros(n, np.float32), huge, None, CodecSpec("int8"), SWARM, 1, HASH)
    u = parse(d.frame)
    with pytest.raises(DownlinkError, match="non-finite"):
        apply_update(huge, u, (SWARM, 1, HASH, n))  # a base that is not the one hashed


def test_make_update_refuses_to_publish_a_non_finite_model() -> None:
    big = np.full(8, 3e38, np.float32)
    with pytest.raises(ValueError, match="overflows"):
        make_update(big, big, np.full(8, 1e38, np.float32), CodecSpec("int8"), SWARM, 1, HASH)
    with pytest.raises(ValueError):  # the target itself overflows float32
        make_update(-big, big, None, CodecSpec("int8"), SWARM, 1, HASH)


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"swarm": "bad/id"}, ValueError),
        ({"round": -1}, ValueError),
        ({"round": 2**32}, ValueError),
        ({"base_model_hash": HASH.upper()}, ValueError),
        ({"base_model_hash": HASH[:-2]}, ValueError),
    ],
)
def test_make_update_misuse(kw: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        build(SPECS["int8"], **kw)


def test_make_update_wants_float32_vectors_of_one_length() -> None:
    base, merged, res = arrays(16)
    with pytest.raises(TypeError):
        make_update(base.astype(np.float64), merged, None, SPECS["int8"], SWARM, 1, HASH)
    with pytest.raises(ValueError):
        make_update(base, merged[:-1], None, SPECS["int8"], SWARM, 1, HASH)
    with pytest.raises(ValueError):
        make_update(base, merged, res[:-1], SPECS["int8"], SWARM, 1, HASH)


def patched(frame: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(frame)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def test_parse_refusals() -> None:
    frame = build(SPECS["int8"]).frame
    n = len(SWARM)
    bad = {
        "trailing": frame + b"\x00",
        "bad magic": b"XSUP" + frame[4:],
        "bad version": frame[:4] + b"\x02" + frame[5:],
        "bad swarm id": frame[:6] + b"site/a" + frame[12:],
        "empty swarm id": frame[:5] + b"\x00" + frame[6 + n :],
        "non-utf8 swarm id": frame[:6] + b"\xff" * n + frame[6 + n :],
        "unknown codec": patched(frame, 42 + n, "<B", 9),
        "unknown flags": patched(frame, 43 + n, "<B", 0x80),
        "zero params": patched(frame, 44 + n, "<I", 0),
        "params != body": patched(frame, 44 + n, "<I", N_MLP - 1),
        "body_len too big": patched(frame, 48 + n, "<I", 2**32 - 1),
        "body_len short": patched(frame, 48 + n, "<I", len(frame) - 53 - n),
        "bad scale": patched(frame, 52 + n + 4, "<f", float("nan")),
    }
    for what, data in bad.items():
        with pytest.raises(DownlinkError):
            parse_update(data, max_size=len(data) + 16)
            pytest.fail(what)
    for cut in range(len(frame)):
        with pytest.raises(DownlinkError):
            parse_update(frame[:cut], max_size=len(frame))
    with pytest.raises(DownlinkError, match="exceeds"):
        parse_update(frame, max_size=len(frame) - 1)
    with pytest.raises(DownlinkError):
        parse_update("not bytes", max_size=100)  # type: ignore[arg-type]


def test_parse_bounds_n_params_before_decoding() -> None:
    # A top-k body is small for any n_params: the claimed size must be refused, not allocated.
    frame = build(SPECS["int8+topk"], n=N_MLP).frame
    n = len(SWARM)
    with pytest.raises(DownlinkError):
        parse(frame, max_params=N_MLP - 1)
    huge = patched(frame, 44 + n, "<I", 2**32 - 1)
    with pytest.raises(DownlinkError, match="params outside"):
        parse(huge)  # default: at most 8 * max_size params
    with pytest.raises(DownlinkError, match="params outside"):
        parse(huge, max_params=N_MLP)


# --------------------------------------------------------------------------- fuzzing


def _parses_or_refuses(data: bytes, max_size: int = 1 << 16) -> None:
    try:
        u = parse_update(data, max_size=max_size)
    except DownlinkError:
        return
    assert u.delta.dtype == np.float32 and u.delta.shape == (u.n_params,)
    assert np.all(np.isfinite(u.delta))


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_downlink_error(data: bytes) -> None:
    _parses_or_refuses(data)


@FUZZ
@given(st.binary(max_size=256))
def test_bytes_after_a_valid_prefix_raise_only_downlink_error(tail: bytes) -> None:
    _parses_or_refuses(MAGIC + bytes([VERSION, len(SWARM)]) + SWARM.encode() + tail)


FUZZ_FRAMES = [build(SPECS[k], n=300).frame for k in ("int8", "int4+topk-bitmap", "int8+topk")]


@FUZZ
@given(
    which=st.integers(0, len(FUZZ_FRAMES) - 1),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["set", "insert", "delete"]), st.integers(0), st.integers(0, 255)
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_frames_raise_only_downlink_error(
    which: int, edits: list[tuple[str, int, int]]
) -> None:
    data = bytearray(FUZZ_FRAMES[which])
    for op, pos, byte in edits:
        pos %= len(data) + 1
        if op == "insert":
            data.insert(pos, byte)
        elif pos < len(data):
            if op == "set":
                data[pos] = byte
            else:
                del data[pos]
    _parses_or_refuses(bytes(data))


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("name", ["int8", "int4", "float16", "sign1", "int4+topk-bitmap"])
def test_update_bytes_is_exact_for_dense_and_bitmap(name: str) -> None:
    d = build(SPECS[name])
    assert update_bytes(N_MLP, SPECS[name], SWARM) == len(d.frame)
    assert update_bytes(N_MLP, SPECS[name]) == len(d.frame) + 64 - len(SWARM)


def test_update_bytes_bounds_delta_packed_top_k() -> None:
    for packing in ("auto", "delta"):
        spec = CodecSpec("int8", topk=0.1, index_packing=packing)
        assert len(build(spec).frame) <= update_bytes(N_MLP, spec, SWARM)


def test_frame_sizes_of_the_standard_model() -> None:
    # 2,410 params (MLP 64-32-10), swarm id "site-a" (header 52 + 6 = 58 bytes):
    #   int8:              body 4 + 10 * 4 scales + 2,410 codes = 2,454 -> frame 2,512 bytes
    #   int4:              body 4 + 40 + 1,205                   = 1,249 -> frame 1,307 bytes
    #   int8, top-k 10%:   241 kept; 9 + 241 (delta index) + 249 = 499   -> frame 557 bytes
    #                      (update_bytes' bound, bitmap index: 618)
    # versus 9,640 bytes of raw float32, and one such frame per round instead of one per peer.
    assert len(build(SPECS["int8"]).frame) == 2512
    assert len(build(SPECS["int4"]).frame) == 1307
    assert len(build(SPECS["int8+topk"]).frame) == 557
    assert update_bytes(N_MLP, SPECS["int8"], SWARM) == 2512
    assert update_bytes(N_MLP, SPECS["int8+topk"], SWARM) == 618


def test_update_bytes_misuse() -> None:
    with pytest.raises(ValueError):
        update_bytes(0, SPECS["int8"])
    with pytest.raises(ValueError):
        update_bytes(10, SPECS["int8"], "bad/id")
    with pytest.raises(TypeError):
        update_bytes(10, "int8")  # type: ignore[arg-type]
