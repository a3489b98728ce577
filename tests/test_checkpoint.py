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
    MAX_CHECKPOINT,
    MAX_HEADER,
    MAX_SEALED_CHECKPOINT,
    SEALED_MAGIC,
    VERSION,
    Checkpoint,
    CheckpointError,
    SealedCheckpoint,
    decode_checkpoint,
    encode_checkpoint,
    is_sealed_checkpoint,
    open_checkpoint,
    parse_sealed_checkpoint,
    seal_checkpoint,
)
from edge_swarm.trust.payload import OVERHEAD, build_aad, seal

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


# --------------------------------------------------------------------------- sealed

DATA_KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SEALED_PREFIX = struct.Struct("<4sBII")


def reframe(swarm: str, round: int, epoch: int, blob: bytes) -> bytes:
    """A sealed frame built by hand from the documented layout around any blob."""
    raw = swarm.encode()
    return SEALED_PREFIX.pack(b"ESCS", 1, epoch, round) + bytes([len(raw)]) + raw + blob


def sealed_frame(n: int = 23, n_state: int = 3, epoch: int = 4) -> tuple[Checkpoint, bytes]:
    ck = make(n, n_state)
    return ck, seal_checkpoint(encode_checkpoint(ck), ck.swarm, ck.round, epoch, DATA_KEY)


def test_sealed_round_trip_and_layout() -> None:
    ck, data = sealed_frame()
    assert is_sealed_checkpoint(data) and not is_sealed_checkpoint(encode_checkpoint(ck))
    sealed = parse_sealed_checkpoint(data)
    assert (sealed.swarm, sealed.round, sealed.epoch) == ("clinic", 7, 4)
    assert len(sealed.blob) == len(encode_checkpoint(ck)) + OVERHEAD
    assert data == reframe("clinic", 7, 4, sealed.blob)  # layout pin
    assert_same(open_checkpoint(sealed, DATA_KEY), ck)


def test_seal_limit_constant_tracks_the_payload_overhead() -> None:
    assert MAX_SEALED_CHECKPOINT == MAX_CHECKPOINT + OVERHEAD + 512


def test_sealed_blob_is_what_payload_seal_makes() -> None:
    """The AAD is ``build_aad("checkpoint", swarm, round, epoch)``: a blob sealed by hand opens."""
    ck = make()
    blob = seal(encode_checkpoint(ck), DATA_KEY, build_aad("checkpoint", "clinic", 7, 4))
    assert_same(
        open_checkpoint(parse_sealed_checkpoint(reframe("clinic", 7, 4, blob)), DATA_KEY), ck
    )


def test_sealed_checkpoint_hides_the_parameters() -> None:
    ck = make(64, 0, params=np.random.default_rng(2).standard_normal(64).astype(np.float32))
    data = seal_checkpoint(encode_checkpoint(ck), ck.swarm, ck.round, 0, DATA_KEY)
    raw = ck.params.astype("<f4").tobytes()
    assert not any(raw[i : i + 8] in data for i in range(len(raw) - 7))
    assert b"model_hash" not in data  # the inner JSON header is sealed too


@pytest.mark.parametrize(
    "outer",
    [
        {"swarm": "clinic-b"},
        {"round": 8},
        {"round": 6},
        {"epoch": 5},
        {"epoch": 3},
    ],
    ids=["swarm", "next round", "previous round", "next epoch", "previous epoch"],
)
def test_blob_reframed_under_another_outer_header_does_not_open(outer: dict[str, object]) -> None:
    _, data = sealed_frame()
    sealed = parse_sealed_checkpoint(data)
    fields: dict[str, object] = {"swarm": "clinic", "round": 7, "epoch": 4, **outer}
    moved = parse_sealed_checkpoint(reframe(blob=sealed.blob, **fields))  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="^undecryptable"):
        open_checkpoint(moved, DATA_KEY)


def test_wrong_key_does_not_open() -> None:
    _, data = sealed_frame()
    with pytest.raises(CheckpointError, match="^undecryptable"):
        open_checkpoint(parse_sealed_checkpoint(data), OTHER_KEY)


def test_every_byte_flip_of_the_blob_fails_to_open() -> None:
    _, data = sealed_frame(3, 1)
    start = len(data) - len(parse_sealed_checkpoint(data).blob)
    for i in range(start, len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x80
        with pytest.raises(CheckpointError, match="^undecryptable"):
            open_checkpoint(parse_sealed_checkpoint(bytes(flipped)), DATA_KEY)


@pytest.mark.parametrize(
    "inner", [{"swarm": "clinic-b"}, {"round": 6}], ids=["other swarm", "other round"]
)
def test_inner_checkpoint_must_match_the_outer_header(inner: dict[str, object]) -> None:
    """A key holder who seals another swarm's or round's model under this header is refused."""
    data = seal_checkpoint(encode_checkpoint(make(**inner)), "clinic", 7, 4, DATA_KEY)
    with pytest.raises(CheckpointError, match="holds"):
        open_checkpoint(parse_sealed_checkpoint(data), DATA_KEY)


def test_sealed_plaintext_that_is_not_a_checkpoint_is_refused() -> None:
    data = seal_checkpoint(b"not a checkpoint", "clinic", 7, 4, DATA_KEY)
    with pytest.raises(CheckpointError):
        open_checkpoint(parse_sealed_checkpoint(data), DATA_KEY)


def test_every_truncation_of_a_sealed_frame_is_refused() -> None:
    _, data = sealed_frame(5, 2)
    for cut in range(len(data)):
        with pytest.raises(CheckpointError):
            open_checkpoint(parse_sealed_checkpoint(data[:cut]), DATA_KEY)
    # Short frames are refused by the parser alone, without a key.
    header_len = SEALED_PREFIX.size + 1 + len("clinic")
    for cut in range(header_len + OVERHEAD):
        with pytest.raises(CheckpointError):
            parse_sealed_checkpoint(data[:cut])


def test_sealed_size_limit_is_checked_first() -> None:
    _, data = sealed_frame()
    assert parse_sealed_checkpoint(data, max_size=len(data)).swarm == "clinic"
    with pytest.raises(CheckpointError, match="exceeds"):
        parse_sealed_checkpoint(data, max_size=len(data) - 1)
    with pytest.raises(CheckpointError, match="exceeds"):
        parse_sealed_checkpoint(b"\x00" * 101, max_size=100)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"ESCS",
        SEALED_PREFIX.pack(b"ESCK", 1, 0, 0) + b"\x01s" + b"\x00" * OVERHEAD,
        SEALED_PREFIX.pack(b"ESCS", 2, 0, 0) + b"\x01s" + b"\x00" * OVERHEAD,
        SEALED_PREFIX.pack(b"ESCS", 1, 0, 0) + b"\x00" + b"\x00" * OVERHEAD,
        SEALED_PREFIX.pack(b"ESCS", 1, 0, 0) + b"\x03a/b" + b"\x00" * OVERHEAD,
        SEALED_PREFIX.pack(b"ESCS", 1, 0, 0) + b"\x02\xff\xfe" + b"\x00" * OVERHEAD,
        SEALED_PREFIX.pack(b"ESCS", 1, 0, 0) + b"\x09s" + b"\x00" * 4,
        SEALED_PREFIX.pack(b"ESCS", 1, 0, 0) + b"\x01s" + b"\x00" * (OVERHEAD - 1),
        "ESCS not bytes",
    ],
    ids=[
        "empty",
        "magic only",
        "plain magic",
        "version",
        "empty swarm",
        "bad swarm",
        "non-ascii swarm",
        "short swarm",
        "short blob",
        "str",
    ],
)
def test_bad_sealed_frames(data: bytes) -> None:
    with pytest.raises(CheckpointError):
        parse_sealed_checkpoint(data)


def test_sealed_misuse() -> None:
    good = encode_checkpoint(make())
    for args in [
        ("a/b", 7, 4, DATA_KEY),
        ("clinic", -1, 4, DATA_KEY),
        ("clinic", 7, 2**32, DATA_KEY),
        ("clinic", 7, True, DATA_KEY),
        ("clinic", 7, 4, DATA_KEY[:16]),
    ]:
        with pytest.raises(ValueError):
            seal_checkpoint(good, *args)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        seal_checkpoint("text", "clinic", 7, 4, DATA_KEY)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SealedCheckpoint("clinic", 7, -1, b"")
    with pytest.raises(TypeError):
        open_checkpoint(encode_checkpoint(make()), DATA_KEY)  # type: ignore[arg-type]
    sealed = parse_sealed_checkpoint(sealed_frame()[1])
    with pytest.raises(ValueError):
        open_checkpoint(sealed, DATA_KEY[:31])
    assert not is_sealed_checkpoint("ESCS") and not is_sealed_checkpoint(b"ESC")


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_give_only_checkpoint_error_when_sealed(data: bytes) -> None:
    for frame in (data, SEALED_MAGIC + b"\x01" + data):
        try:
            sealed = parse_sealed_checkpoint(frame)
            open_checkpoint(sealed, DATA_KEY)
        except CheckpointError:
            continue
        raise AssertionError("random bytes opened as a sealed checkpoint")


_SEALED_SMALL = sealed_frame(3, 1)[1]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, len(_SEALED_SMALL) - 1), st.integers(0, 255)),
        min_size=1,
        max_size=4,
    ),
    st.integers(0, len(_SEALED_SMALL)),
    st.binary(max_size=40),
)
def test_mutated_sealed_frames_give_only_checkpoint_error(
    edits: list[tuple[int, int]], cut: int, tail: bytes
) -> None:
    data = bytearray(_SEALED_SMALL)
    for pos, value in edits:
        data[pos] = value
    mutant = bytes(data[:cut]) + tail if cut < len(data) else bytes(data)
    try:
        ck = open_checkpoint(parse_sealed_checkpoint(mutant), DATA_KEY)
    except CheckpointError:
        return
    assert mutant == _SEALED_SMALL  # any change to any byte fails the tag or the parse
    assert isinstance(ck, Checkpoint)
