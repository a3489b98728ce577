"""The model checkpoint frame: round trips, and untrusted bytes that must be refused."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_swarm.swarm.checkpoint import (
    MAGIC,
    MAX_HEADER,
    VERSION,
    Checkpoint,
    CheckpointError,
    decode_checkpoint,
    encode_checkpoint,
)

SPEC = {"sizes": [4, 3, 2], "activation": "relu"}
PREFIX = struct.Struct("<4sBI")


def make(n: int = 23, n_state: int = 0, **kw: object) -> Checkpoint:
    fields: dict[str, object] = dict(
        swarm="clinic",
        round=7,
        spec=SPEC,
        model_hash=hashlib.sha256(b"model").hexdigest(),
        state_hash=hashlib.sha256(b"state").hexdigest(),
        params=np.linspace(-2, 2, n, dtype=np.float32),
        state=np.arange(n_state, dtype=np.float32) / 3,
    )
    fields.update(kw)
    return Checkpoint(**fields)  # type: ignore[arg-type]


def frame_with_header(header: object, body: bytes = b"", raw: bytes | None = None) -> bytes:
    hdr = raw if raw is not None else json.dumps(header).encode()
    return PREFIX.pack(MAGIC, VERSION, len(hdr)) + hdr + body


def good_header(**kw: object) -> dict[str, object]:
    h: dict[str, object] = dict(
        swarm="s", round=1, spec={}, model_hash="m", state_hash="s", n_params=2, state_len=0
    )
    h.update(kw)
    return h


def assert_same(a: Checkpoint, b: Checkpoint) -> None:
    assert (a.swarm, a.round, a.spec, a.model_hash, a.state_hash) == (
        b.swarm,
        b.round,
        b.spec,
        b.model_hash,
        b.state_hash,
    )
    for x, y in ((a.params, b.params), (a.state, b.state)):
        assert x.dtype == np.float32 and y.dtype == np.float32
        assert x.tobytes() == y.tobytes()


@pytest.mark.parametrize("n, state", [(23, 0), (23, 23), (1, 0), (0, 0)])
def test_round_trip(n: int, state: int) -> None:
    ck = make(n, state)
    data = encode_checkpoint(ck)
    back = decode_checkpoint(data)
    assert_same(back, ck)
    assert encode_checkpoint(back) == data


def test_frame_layout_is_little_endian_raw_float32() -> None:
    ck = make(3, 2)
    data = encode_checkpoint(ck)
    magic, version, hlen = PREFIX.unpack_from(data)
    assert (magic, version) == (b"ESCK", 1)
    header = json.loads(data[PREFIX.size : PREFIX.size + hlen])
    assert header["n_params"] == 3 and header["state_len"] == 2 and header["spec"] == SPEC
    body = data[PREFIX.size + hlen :]
    assert body == ck.params.astype("<f4").tobytes() + ck.state.astype("<f4").tobytes()


def test_decoded_arrays_are_writable_copies() -> None:
    data = bytearray(encode_checkpoint(make(4)))
    back = decode_checkpoint(bytes(data))
    back.params[0] = 99.0  # a native, writable array, not a view of the frame
    assert decode_checkpoint(bytes(data)).params[0] != 99.0


def test_params_of_another_dtype_are_stored_as_float32() -> None:
    ck = make(params=np.array([0.5, 1.25], dtype=np.float64))
    assert decode_checkpoint(encode_checkpoint(ck)).params.tolist() == [0.5, 1.25]


def test_size_limit() -> None:
    data = encode_checkpoint(make())
    assert_same(decode_checkpoint(data, max_size=len(data)), make())
    with pytest.raises(CheckpointError, match="exceeds"):
        decode_checkpoint(data, max_size=len(data) - 1)


def test_every_truncation_is_refused() -> None:
    data = encode_checkpoint(make(5, 2))
    for cut in range(len(data)):
        with pytest.raises(CheckpointError):
            decode_checkpoint(data[:cut])


def test_trailing_bytes_are_refused() -> None:
    data = encode_checkpoint(make(5))
    for tail in (b"\x00", b"\x00" * 4):
        with pytest.raises(CheckpointError, match="body length"):
            decode_checkpoint(data + tail)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["params", "state"])
def test_non_finite_values_are_refused(bad: float, where: str) -> None:
    ck = make(5, 5)
    arr = getattr(ck, where).copy()
    arr[3] = bad
    data = encode_checkpoint(make(5, 5, **{where: arr}))
    with pytest.raises(CheckpointError, match="non-finite"):
        decode_checkpoint(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"ESCK",
        PREFIX.pack(b"XSCK", VERSION, 0),
        PREFIX.pack(MAGIC, 2, 0),
        PREFIX.pack(MAGIC, VERSION, 10) + b"{}",
        PREFIX.pack(MAGIC, VERSION, MAX_HEADER + 1) + b" " * (MAX_HEADER + 1),
    ],
    ids=["empty", "short", "magic", "version", "short header", "huge header"],
)
def test_bad_prefix(data: bytes) -> None:
    with pytest.raises(CheckpointError):
        decode_checkpoint(data)


@pytest.mark.parametrize(
    "header",
    [
        [],
        "text",
        None,
        1,
        {},
        {k: v for k, v in good_header().items() if k != "spec"},
        good_header(n_params="two"),
        good_header(n_params=None),
        good_header(round=[1]),
        good_header(spec="relu"),
        good_header(spec=[1, 2]),
        good_header(n_params=-1, state_len=2),
        good_header(n_params=2, state_len=-2),
        good_header(n_params=1e400),
        good_header(round=float("inf")),
        good_header(state_len=float("nan")),
    ],
    ids=[
        "list",
        "str",
        "null",
        "int",
        "empty",
        "no spec",
        "str count",
        "null count",
        "list round",
        "str spec",
        "list spec",
        "negative params",
        "negative state",
        "huge float",
        "inf round",
        "nan",
    ],
)
def test_bad_header_raises_only_checkpoint_error(header: object) -> None:
    with pytest.raises(CheckpointError):
        decode_checkpoint(frame_with_header(header, np.ones(2, "<f4").tobytes()))


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"\xff\xfe", b"[" * 5000, b'{"a":' * 5000, b"1" * 5000],
    ids=["text", "utf8", "deep list", "deep object", "huge int"],
)
def test_undecodable_header_raises_only_checkpoint_error(raw: bytes) -> None:
    with pytest.raises(CheckpointError):
        decode_checkpoint(frame_with_header(None, raw=raw))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_checkpoint_or_checkpoint_error(data: bytes) -> None:
    try:
        ck = decode_checkpoint(data)
    except CheckpointError:
        return
    assert isinstance(ck, Checkpoint)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries({}, optional={k: _JSON for k in good_header()}),
    st.binary(max_size=40),
)
def test_arbitrary_headers_give_a_checkpoint_or_checkpoint_error(
    header: dict[str, object], body: bytes
) -> None:
    try:
        ck = decode_checkpoint(frame_with_header(header, body))
    except CheckpointError:
        return
    assert np.isfinite(ck.params).all() and np.isfinite(ck.state).all()
    assert 4 * (ck.params.size + ck.state.size) == len(body)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 400), st.binary(max_size=60))
def test_valid_prefix_with_garbage_gives_only_checkpoint_error(cut: int, tail: bytes) -> None:
    data = encode_checkpoint(make(5, 1))
    try:
        ck = decode_checkpoint(data[:cut] + tail)
    except CheckpointError:
        return
    assert isinstance(ck, Checkpoint)
