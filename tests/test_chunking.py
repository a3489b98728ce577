"""Chunk frames and their reassembly: round trips, any order, duplicates, resends, bounds."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_swarm.swarm.chunking import (
    HEADER_SIZE,
    MAGIC,
    MAX_MISSING_PER_REQUEST,
    ChunkError,
    Reassembler,
    chunk_count,
    encode_resend_request,
    is_chunk,
    message_id,
    parse_chunk,
    parse_resend_request,
    split,
)
from edge_swarm.swarm.topics import TopicError, TopicKind, Topics

MB = 1024 * 1024
FRAME = 256 * 1024


def reasm(**kw: float) -> Reassembler:
    args: dict[str, float] = dict(
        max_bytes=64 * MB, max_messages=8, retry_after_s=2.0, give_up_after_s=30.0
    )
    args.update(kw)
    return Reassembler(**args)  # type: ignore[arg-type]


def feed_all(r: Reassembler, frames: list[bytes], now: float = 0.0, source: str = "") -> list:
    out = []
    for f in frames:
        m = r.add(parse_chunk(f), now, source)
        if m is not None:
            out.append(m)
    return out


# --------------------------------------------------------------------------- frames


def test_golden_frame() -> None:
    frames = split(b"hello", HEADER_SIZE + 2)
    mid = hashlib.sha256(b"hello").digest()
    assert frames == [
        MAGIC + b"\x01" + mid + struct.pack("<IIQ", 0, 3, 5) + b"he",
        MAGIC + b"\x01" + mid + struct.pack("<IIQ", 1, 3, 5) + b"ll",
        MAGIC + b"\x01" + mid + struct.pack("<IIQ", 2, 3, 5) + b"o",
    ]
    assert HEADER_SIZE == 53
    assert all(is_chunk(f) for f in frames) and not is_chunk(b"ESWD...")


@pytest.mark.parametrize("size", [0, 1, FRAME - HEADER_SIZE, 3 * (FRAME - HEADER_SIZE), 5 * MB])
def test_round_trip(size: int) -> None:
    message = os.urandom(size)
    frames = split(message, FRAME)
    assert len(frames) == chunk_count(size, FRAME) == max(1, -(-size // (FRAME - HEADER_SIZE)))
    assert all(len(f) <= FRAME for f in frames)
    r = reasm()
    assert feed_all(r, frames) == [message]
    assert r.stats.buffered_bytes == 0 and r.stats.partial_messages == 0


def test_small_payload_limit_refused() -> None:
    with pytest.raises(ValueError):
        split(b"x", HEADER_SIZE)


@settings(max_examples=200, deadline=None)
@given(
    message=st.binary(max_size=2000),
    frame=st.integers(HEADER_SIZE + 1, HEADER_SIZE + 300),
    seed=st.integers(0, 2**32 - 1),
    dup=st.integers(0, 5),
)
def test_shuffled_duplicated_reassembles_exactly_once(
    message: bytes, frame: int, seed: int, dup: int
) -> None:
    frames = split(message, frame)
    rng = random.Random(seed)
    stream = frames + [rng.choice(frames) for _ in range(dup)] + frames  # late duplicates too
    rng.shuffle(stream)
    r = reasm(max_bytes=4096)
    assert feed_all(r, stream) == [message]
    assert r.stats.completed == 1 and r.stats.buffered_bytes == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_chunk_error(data: bytes) -> None:
    for candidate in (data, MAGIC + b"\x01" + data):
        try:
            chunk = parse_chunk(candidate)
        except ChunkError:
            continue
        assert 0 <= chunk.index < chunk.count


@settings(max_examples=300, deadline=None)
@given(message=st.binary(max_size=500), frame=st.integers(HEADER_SIZE + 1, 200), data=st.data())
def test_mutated_frames_raise_only_chunk_error(
    message: bytes, frame: int, data: st.DataObject
) -> None:
    f = bytearray(data.draw(st.sampled_from(split(message, frame))))
    pos = data.draw(st.integers(0, len(f) - 1))
    f[pos] = data.draw(st.integers(0, 255))
    r = reasm(max_bytes=4096)
    with contextlib.suppress(ChunkError):
        r.add(parse_chunk(bytes(f)), 0.0)


@pytest.mark.parametrize("bad", [None, "ESCH", 3, [1]])
def test_non_bytes_refused(bad: object) -> None:
    with pytest.raises(ChunkError):
        parse_chunk(bad)


# --------------------------------------------------------------------------- contradictions


def test_other_message_with_colliding_index_does_not_corrupt() -> None:
    a, b = os.urandom(1000), os.urandom(1000)
    fa, fb = split(a, 253), split(b, 253)
    r = reasm()
    out = feed_all(r, [fa[0], fb[0], fb[1], fa[1], fa[2], fb[2], fa[3], fb[3], fb[4]])
    out += feed_all(r, [fa[4]])
    assert out == [b, a]


def test_forged_chunk_under_same_id_is_detected_then_healed() -> None:
    a = os.urandom(1000)
    fa = split(a, 253)
    forged = fa[1][:HEADER_SIZE] + bytes(len(fa[1]) - HEADER_SIZE)
    r = reasm()
    feed_all(r, [forged, fa[0], fa[2], fa[3]])
    with pytest.raises(ChunkError, match="differs"):
        r.add(parse_chunk(fa[1]), 0.0)  # the real one conflicts with the forged one held
    with pytest.raises(ChunkError, match="does not match"):
        r.add(parse_chunk(fa[4]), 0.0)  # complete, but the hash is wrong: all pieces dropped
    assert r.missing(message_id(a)) == [0, 1, 2, 3, 4]
    assert r.due_resends(2.0)[0].missing == [0, 1, 2, 3, 4]
    assert feed_all(r, fa, now=2.5) == [a]


def test_mismatching_count_or_total_refused() -> None:
    a = os.urandom(1000)
    fa = split(a, 253)
    r = reasm()
    r.add(parse_chunk(fa[0]), 0.0)
    other_layout = split(a, 353)  # same id, other count
    with pytest.raises(ChunkError):
        r.add(parse_chunk(other_layout[1]), 0.0)
    assert r.missing(message_id(a)) == [1, 2, 3, 4]
    assert feed_all(r, fa[1:]) == [a]


def test_same_id_from_another_source_is_another_message() -> None:
    a = os.urandom(600)
    fa = split(a, 253)
    r = reasm()
    assert feed_all(r, fa[:2], source="t/1") == []
    assert feed_all(r, fa[2:], source="t/2") == []
    assert feed_all(r, fa[2:], source="t/1") == [a]


# --------------------------------------------------------------------------- resends


def test_dropped_chunk_is_asked_for_after_retry_not_before() -> None:
    a = os.urandom(5000)
    fa = split(a, 553)
    r = reasm(retry_after_s=2.0, give_up_after_s=10.0)
    assert feed_all(r, [f for i, f in enumerate(fa) if i not in (3, 7)], now=100.0) == []
    assert r.due_resends(100.0) == []
    assert r.due_resends(101.9) == []
    due = r.due_resends(102.0)
    assert [(d.message_id, d.missing, d.source) for d in due] == [(message_id(a), [3, 7], "")]
    assert r.due_resends(103.0) == []  # asked at 102: not again before 104
    assert r.due_resends(104.0)[0].missing == [3, 7]
    assert r.add(parse_chunk(fa[3]), 104.5) is None  # progress: the clock restarts
    assert r.due_resends(106.0) == []
    assert r.due_resends(106.5)[0].missing == [7]
    assert r.add(parse_chunk(fa[7]), 107.0) == a
    assert r.due_resends(200.0) == []


def test_give_up_after_no_progress() -> None:
    a = os.urandom(1000)
    fa = split(a, 253)
    r = reasm(retry_after_s=1.0, give_up_after_s=5.0)
    feed_all(r, fa[:2], now=0.0)
    assert r.due_resends(4.9)[0].missing == [2, 3, 4]
    assert r.due_resends(5.0) == []
    assert r.stats.gave_up == 1 and r.stats.buffered_bytes == 0
    assert r.missing(message_id(a)) is None


def test_forget_drops_partial_state() -> None:
    a = os.urandom(1000)
    fa = split(a, 253)
    r = reasm()
    feed_all(r, fa[:2])
    assert r.forget(message_id(a)) is True and r.forget(message_id(a)) is False
    assert r.stats.buffered_bytes == 0 and r.due_resends(100.0) == []


def test_completed_ids_are_remembered_boundedly() -> None:
    msgs = [os.urandom(300) for _ in range(3)]
    r = reasm(max_completed=2)
    for m in msgs:
        assert feed_all(r, split(m, 253)) == [m]
    assert feed_all(r, split(msgs[2], 253)) == []  # remembered: late duplicates ignored
    assert r.stats.late_duplicates == 2
    assert feed_all(r, split(msgs[0], 253)) == [msgs[0]]  # forgotten (bounded memory)


def test_missing_list_is_capped_per_request() -> None:
    a = os.urandom(3000)
    fa = split(a, HEADER_SIZE + 1)  # 3000 one-byte chunks
    r = reasm()
    r.add(parse_chunk(fa[0]), 0.0)
    (due,) = r.due_resends(2.0)
    assert due.missing == list(range(1, MAX_MISSING_PER_REQUEST + 1))


# --------------------------------------------------------------------------- memory bounds


def test_bytes_bound_evicts_oldest_partial() -> None:
    msgs = [os.urandom(1000) for _ in range(3)]
    frames = [split(m, 253) for m in msgs]  # 5 chunks of 200 bytes each
    r = reasm(max_bytes=2000)
    for t, fs in enumerate(frames):
        feed_all(r, fs[:4], now=float(t))  # 800 bytes each; the third evicts the first
        assert r.stats.buffered_bytes <= 2000
    assert r.stats.evicted == 1
    assert r.missing(message_id(msgs[0])) is None
    assert feed_all(r, [frames[1][4], frames[2][4]], now=5.0) == msgs[1:]


def test_message_count_bound_evicts_oldest_progress() -> None:
    msgs = [os.urandom(600) for _ in range(3)]
    frames = [split(m, 253) for m in msgs]
    r = reasm(max_messages=2)
    r.add(parse_chunk(frames[0][0]), 0.0)
    r.add(parse_chunk(frames[1][0]), 1.0)
    r.add(parse_chunk(frames[0][1]), 2.0)  # message 0 progressed last: message 1 is oldest
    r.add(parse_chunk(frames[2][0]), 3.0)
    assert r.stats.partial_messages == 2 and r.stats.evicted == 1
    assert r.missing(message_id(msgs[1])) is None
    assert r.missing(message_id(msgs[0])) == [2]


def test_message_larger_than_budget_refused_at_first_chunk() -> None:
    r = reasm(max_bytes=999)
    with pytest.raises(ChunkError, match="budget"):
        r.add(parse_chunk(split(os.urandom(1000), 253)[0]), 0.0)
    assert r.stats.partial_messages == 0


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 800), min_size=1, max_size=12),
    seed=st.integers(0, 2**32 - 1),
)
def test_bounds_hold_under_any_interleaving(sizes: list[int], seed: int) -> None:
    rng = random.Random(seed)
    stream = [f for s in sizes for f in split(rng.randbytes(s), 153)]
    rng.shuffle(stream)
    r = reasm(max_bytes=1000, max_messages=3)
    for f in stream:
        r.add(parse_chunk(f), 0.0)
        st_ = r.stats
        assert st_.buffered_bytes <= 1000 and st_.partial_messages <= 3


# --------------------------------------------------------------------------- resend requests


def test_resend_request_round_trip() -> None:
    mid = message_id(b"x")
    data = encode_resend_request(mid, [3, 7], "es/v1/s/round/1/delta/n")
    req = parse_resend_request(data)
    assert (req.message_id, req.missing, req.topic) == (mid, (3, 7), "es/v1/s/round/1/delta/n")


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"[]",
        b"\xff",
        b'{"id":"00","missing":[1],"topic":"t"}',
        b'{"id":"' + b"A" * 64 + b'","missing":[1],"topic":"t"}',
        b'{"id":"' + b"0" * 64 + b'","missing":[],"topic":"t"}',
        b'{"id":"' + b"0" * 64 + b'","missing":[-1],"topic":"t"}',
        b'{"id":"' + b"0" * 64 + b'","missing":[true],"topic":"t"}',
        b'{"id":"' + b"0" * 64 + b'","missing":[1,1],"topic":"t"}',
        b'{"id":"' + b"0" * 64 + b'","missing":[1],"topic":""}',
        b'{"id":"' + b"0" * 64 + b'","missing":[1]}',
        b"[" * 100_000,
    ],
)
def test_bad_resend_requests_refused(bad: bytes) -> None:
    with pytest.raises(ChunkError):
        parse_resend_request(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_random_resend_requests_raise_only_chunk_error(data: bytes) -> None:
    with contextlib.suppress(ChunkError):
        parse_resend_request(data)


# --------------------------------------------------------------------------- the resend topic


def test_resend_topic_kind() -> None:
    t = Topics("clinic-a")
    assert t.resend(3, "pi-7") == "es/v1/clinic-a/round/3/resend/pi-7"
    assert t.resend_filter() == "es/v1/clinic-a/round/+/resend/+"
    assert t.resend_filter("pi-7") == "es/v1/clinic-a/round/+/resend/pi-7"
    parsed = t.parse("es/v1/clinic-a/round/3/resend/pi-7")
    assert (parsed.kind, parsed.round, parsed.node) == (TopicKind.RESEND, 3, "pi-7")
    assert t.parse(t.delta(3, "pi-7")).kind == TopicKind.DELTA
    for bad in ("es/v1/clinic-a/round/03/resend/n", "es/v1/clinic-a/round/1/resend/n/x"):
        with pytest.raises(TopicError):
            t.parse(bad)
    with pytest.raises(TopicError):
        t.resend_filter("a/b")


def test_delta_requests_round_trip_and_refuse_anything_else() -> None:
    from edge_swarm.swarm.chunk_resend import (
        encode_delta_request,
        is_delta_request,
        parse_delta_request,
    )

    sha = "ab" * 32
    data = encode_delta_request(sha)
    assert is_delta_request(data) and parse_delta_request(data) == sha
    for bad in (b"", b"[]", b'{"sha256":"x","want":"delta"}', b'{"sha256":' + b"[" * 300, b"\xff"):
        with pytest.raises(ChunkError):
            parse_delta_request(bad)
    with pytest.raises(ValueError):
        encode_delta_request("nope")
    chunk_request = encode_resend_request(b"\0" * 32, [1], "t")
    assert not is_delta_request(chunk_request)


def test_model_requests_round_trip_and_are_told_apart_from_delta_requests() -> None:
    from edge_swarm.swarm.chunk_resend import (
        encode_delta_request,
        encode_model_request,
        is_delta_request,
        is_model_request,
        parse_delta_request,
        parse_model_request,
    )

    h = "cd" * 32
    data = encode_model_request(h)
    assert is_model_request(data) and not is_delta_request(data)
    assert parse_model_request(data) == h
    with pytest.raises(ChunkError):
        parse_delta_request(data)  # a model request is not a delta request, and back
    with pytest.raises(ChunkError):
        parse_model_request(encode_delta_request(h))
    for bad in (
        b'{"model_hash":"' + b"c" * 64 + b'","want":"delta"}',
        b'{"model_hash":"' + b"C" * 64 + b'","want":"model"}',
        b'{"model_hash":' + b"[" * 300,
        b'{"model_hash":"' + b"c" * 400 + b'"}',
    ):
        with pytest.raises(ChunkError):
            parse_model_request(bad)
    with pytest.raises(ValueError):
        encode_model_request("nope")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_model_request_parser_raises_only_chunk_error(data: bytes) -> None:
    from edge_swarm.swarm.chunk_resend import parse_model_request

    with contextlib.suppress(ChunkError):
        assert len(parse_model_request(b'{"model_hash":' + data)) == 64
