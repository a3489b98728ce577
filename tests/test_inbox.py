"""The envelope inbox: every check, the early-envelope hold, and what ``take`` hands out."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_swarm.swarm import inbox as inbox_mod
from edge_swarm.swarm.codec import (
    CODEC_FLOAT32,
    FLAG_SEALED,
    SIGNATURE_LEN,
    EnvelopeHeader,
    encode_envelope,
)
from edge_swarm.swarm.inbox import (
    EARLY_ROUNDS_AHEAD,
    MAX_PER_SENDER,
    Accepted,
    Dropped,
    EnvelopeInbox,
    RoundView,
)
from ledger_lite import SigningKey

SWARM = "clinic"
N = 6
BASE = hashlib.sha256(b"base model of round 1").hexdigest()
OTHER_BASE = hashlib.sha256(b"some other model").hexdigest()
KEYS = {node: SigningKey.generate() for node in ("pi-1", "pi-2", "pi-3")}
OUTSIDER = SigningKey.generate()
MAX_SIZE = 4096


def pubkey(node: str) -> str | None:
    key = KEYS.get(node)
    return None if key is None else key.public_hex


def header(node: str = "pi-1", rnd: int = 1, **kw: object) -> EnvelopeHeader:
    fields: dict[str, object] = dict(
        swarm=SWARM,
        round=rnd,
        node=node,
        base_hash=BASE,
        codec=CODEC_FLOAT32,
        n_params=N,
        n_samples=40,
    )
    fields.update(kw)
    return EnvelopeHeader(**fields)  # type: ignore[arg-type]


def frame(
    node: str = "pi-1",
    rnd: int = 1,
    delta: np.ndarray | None = None,
    key: SigningKey | None = None,
    **kw: object,
) -> bytes:
    h = header(node, rnd, **kw)
    if delta is None:
        delta = np.linspace(-1.0, 1.0, h.n_params, dtype=np.float32)
    signer = key if key is not None else KEYS.get(node, OUTSIDER)
    return encode_envelope(h, delta, signer.sign)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def with_body(good: bytes, body: bytes, key: SigningKey) -> bytes:
    """Replace the body of a signed float32 frame (same length) and sign it again.

    ``encode_envelope`` refuses NaN, so a frame carrying one is built by hand here.
    """
    signed = good[: -(1 + SIGNATURE_LEN)]
    assert len(body) == 4 * N
    new_signed = signed[: len(signed) - 4 * N] + body
    return new_signed + bytes([SIGNATURE_LEN]) + key.sign(new_signed)


def make_inbox(*rounds: int, max_size: int = MAX_SIZE) -> EnvelopeInbox:
    box = EnvelopeInbox(SWARM, N, pubkey, max_size)
    for r in rounds:
        assert box.expect(RoundView(r, BASE)) == []
    return box


def drop_reason(box: EnvelopeInbox, payload: bytes, rnd: int = 1, node: str = "pi-1") -> str:
    with pytest.raises(Dropped) as info:
        box.offer(payload, rnd, node)
    return info.value.reason


# --------------------------------------------------------------------------- accept


def test_accepts_a_good_envelope_and_keeps_its_delta() -> None:
    box = make_inbox(1)
    data = frame()
    ok = box.offer(data, 1, "pi-1")
    assert ok == Accepted(1, "pi-1", sha(data))
    assert box.has(1, "pi-1", sha(data))
    assert not box.has(1, "pi-2", sha(data))
    assert not box.drops
    [c] = box.take(1, (("pi-1", sha(data)),), {"pi-1": 40})
    assert c.node == "pi-1" and c.n_samples == 40
    assert c.delta.dtype == np.float32
    np.testing.assert_array_equal(c.delta, np.linspace(-1.0, 1.0, N, dtype=np.float32))


def test_the_same_envelope_twice_is_accepted_twice_and_kept_once() -> None:
    box = make_inbox(1)
    data = frame()
    assert box.offer(data, 1, "pi-1") == box.offer(data, 1, "pi-1")
    for i in range(MAX_PER_SENDER - 1):  # the duplicate used no flooding slot
        box.offer(frame(delta=np.full(N, i, np.float32)), 1, "pi-1")


def test_a_closed_round_still_accepts_until_forgotten() -> None:
    box = make_inbox(1, 2)
    assert box.offer(frame(rnd=1), 1, "pi-1") is not None


# --------------------------------------------------------------------------- drops


def test_oversized_is_dropped_before_parsing() -> None:
    data = frame()
    box = make_inbox(1, max_size=len(data) - 1)
    assert drop_reason(box, data) == "oversized"
    assert drop_reason(box, b"\x00" * len(data)) == "oversized"
    exact = make_inbox(1, max_size=len(data))
    assert exact.offer(data, 1, "pi-1") is not None


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"ESWD", b"\x00" * 64],
    ids=["empty", "text", "magic only", "zeros"],
)
def test_malformed(data: bytes) -> None:
    assert drop_reason(make_inbox(1), data) == "malformed"


def test_truncated_and_trailing_frames_are_malformed() -> None:
    box = make_inbox(1)
    data = frame()
    assert drop_reason(box, data[:-1]) == "malformed"
    assert drop_reason(box, data + b"\x00") == "malformed"


@pytest.mark.parametrize("rnd, node", [(2, "pi-1"), (1, "pi-2")])
def test_topic_mismatch(rnd: int, node: str) -> None:
    box = make_inbox(1, 2)
    assert drop_reason(box, frame("pi-1", 1), rnd, node) == "topic mismatch"


def test_wrong_swarm() -> None:
    assert drop_reason(make_inbox(1), frame(swarm="other-swarm")) == "wrong swarm"


def test_wrong_round_behind_and_too_far_ahead() -> None:
    box = make_inbox(3)
    assert drop_reason(box, frame(rnd=2), 2) == "wrong round"
    far = 3 + EARLY_ROUNDS_AHEAD + 1
    assert drop_reason(box, frame(rnd=far), far) == "wrong round"


def test_unknown_node() -> None:
    assert drop_reason(make_inbox(1), frame("pi-9"), 1, "pi-9") == "unknown node"


def test_wrong_base() -> None:
    assert drop_reason(make_inbox(1), frame(base_hash=OTHER_BASE)) == "wrong base"


def test_wrong_length() -> None:
    data = frame(n_params=N + 1)
    assert drop_reason(make_inbox(1), data) == "wrong length"


@pytest.mark.parametrize("how", ["outsider", "peer", "unsigned"])
def test_bad_signature(how: str) -> None:
    h = header()
    delta = np.zeros(N, np.float32)
    sign = {"outsider": OUTSIDER.sign, "peer": KEYS["pi-2"].sign, "unsigned": None}[how]
    data = encode_envelope(h, delta, sign)
    box = make_inbox(1)
    assert drop_reason(box, data) == ("unsigned" if how == "unsigned" else "bad signature")
    assert not box.has(1, "pi-1", sha(data))


@pytest.mark.parametrize(
    "claim", [{"base_hash": OTHER_BASE}, {"n_params": N + 1}, {"n_samples": 0}], ids=str
)
def test_signature_is_checked_before_the_header_is_believed(claim: dict[str, object]) -> None:
    assert drop_reason(make_inbox(1), frame(key=OUTSIDER, **claim)) == "bad signature"


def test_bad_values_nan_and_inf_in_a_signed_frame() -> None:
    good = frame()
    for bad in (np.nan, np.inf, -np.inf):
        values = np.zeros(N, dtype="<f4")
        values[2] = bad
        data = with_body(good, values.tobytes(), KEYS["pi-1"])
        box = make_inbox(1)
        assert drop_reason(box, data) == "bad values"
        assert not box.has(1, "pi-1", sha(data))
    # the hand-built frame is right: the same surgery with finite values is accepted
    fine = with_body(good, np.ones(N, dtype="<f4").tobytes(), KEYS["pi-1"])
    assert make_inbox(1).offer(fine, 1, "pi-1") is not None


def test_zero_samples_is_dropped() -> None:
    """A delta that weighs nothing cannot be merged (Contribution wants n_samples >= 1);
    letting it in would make ``take`` fail with something other than KeyError."""
    box = make_inbox(1)
    data = frame(n_samples=0)
    assert drop_reason(box, data) == "no samples"
    assert not box.has(1, "pi-1", sha(data))


def test_flooding_after_max_per_sender_distinct_envelopes() -> None:
    box = make_inbox(1)
    frames = [frame(delta=np.full(N, i, np.float32)) for i in range(MAX_PER_SENDER + 1)]
    for f in frames[:MAX_PER_SENDER]:
        assert box.offer(f, 1, "pi-1") is not None
    assert drop_reason(box, frames[-1]) == "flooding"
    assert not box.has(1, "pi-1", sha(frames[-1]))
    # the ones kept stay usable, and other senders and rounds have their own budget
    assert box.offer(frames[0], 1, "pi-1") is not None
    assert box.offer(frame("pi-2"), 1, "pi-2") is not None


def test_drops_are_counted_by_reason() -> None:
    box = make_inbox(1)
    for data in (b"x", b"y", frame(swarm="nope")):
        with pytest.raises(Dropped):
            box.offer(data, 1, "pi-1")
    box.offer(frame(), 1, "pi-1")
    assert box.drops == {"malformed": 2, "wrong swarm": 1}


def test_dropped_carries_reason_and_detail() -> None:
    exc = Dropped("wrong base", "abc")
    assert exc.reason == "wrong base" and str(exc) == "wrong base: abc"
    assert str(Dropped("flooding")) == "flooding"


# --------------------------------------------------------------------------- early envelopes


def test_early_envelope_is_held_then_accepted_by_expect() -> None:
    box = make_inbox(1)
    data = frame(rnd=2)
    assert box.offer(data, 2, "pi-1") is None
    assert not box.has(2, "pi-1", sha(data))
    assert box.expect(RoundView(2, BASE)) == [Accepted(2, "pi-1", sha(data))]
    assert box.has(2, "pi-1", sha(data))
    assert box.expect(RoundView(2, BASE)) == []  # handed out once


def test_early_envelopes_come_back_sorted_by_node() -> None:
    box = make_inbox(1)
    for node in ("pi-3", "pi-1", "pi-2"):
        assert box.offer(frame(node, 2), 2, node) is None
    assert [a.node for a in box.expect(RoundView(2, BASE))] == ["pi-1", "pi-2", "pi-3"]


def test_early_hold_reaches_exactly_early_rounds_ahead() -> None:
    box = make_inbox(1)
    for rnd in range(2, 2 + EARLY_ROUNDS_AHEAD):
        assert box.offer(frame(rnd=rnd), rnd, "pi-1") is None
    too_far = 2 + EARLY_ROUNDS_AHEAD
    assert drop_reason(box, frame(rnd=too_far), too_far) == "wrong round"
    # each held round waits for its own round_open
    for rnd in range(2, 2 + EARLY_ROUNDS_AHEAD):
        [ok] = box.expect(RoundView(rnd, BASE))
        assert ok.round == rnd


def test_held_envelope_is_checked_again_when_its_round_opens() -> None:
    box = make_inbox(1)
    data = frame(rnd=2)  # made on BASE, but round 2 opens on another model
    assert box.offer(data, 2, "pi-1") is None
    assert box.expect(RoundView(2, OTHER_BASE)) == []
    assert box.drops == {"wrong base": 1}
    assert not box.has(2, "pi-1", sha(data))


def test_held_envelope_from_an_unknown_node_is_dropped_on_expect() -> None:
    box = make_inbox(1)
    assert box.offer(frame("pi-9", 2), 2, "pi-9") is None
    assert box.expect(RoundView(2, BASE)) == []
    assert box.drops == {"unknown node": 1}


def test_early_hold_keeps_the_latest_per_sender() -> None:
    box = make_inbox(1)
    first, second = frame(rnd=2), frame(rnd=2, delta=np.ones(N, np.float32))
    box.offer(first, 2, "pi-1")
    box.offer(second, 2, "pi-1")
    assert box.expect(RoundView(2, BASE)) == [Accepted(2, "pi-1", sha(second))]


def test_a_sender_may_replace_its_held_envelope_at_the_byte_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = frame(rnd=2), frame(rnd=2, delta=np.ones(N, np.float32))
    monkeypatch.setattr(inbox_mod, "MAX_EARLY_BYTES", len(first))
    box = make_inbox(1)
    assert box.offer(first, 2, "pi-1") is None
    assert box.offer(second, 2, "pi-1") is None  # replaces, so it needs no extra bytes
    assert drop_reason(box, frame("pi-2", 2), 2, "pi-2") == "wrong round"
    assert box.expect(RoundView(2, BASE)) == [Accepted(2, "pi-1", sha(second))]


def test_before_any_round_is_known_any_round_is_held() -> None:
    box = make_inbox()
    assert box.offer(frame(rnd=5), 5, "pi-1") is None
    assert box.offer(frame("pi-2", 1), 1, "pi-2") is None
    assert [a.node for a in box.expect(RoundView(1, BASE))] == ["pi-2"]
    assert [a.node for a in box.expect(RoundView(5, BASE))] == ["pi-1"]


def test_early_hold_is_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    data = frame(rnd=2)
    monkeypatch.setattr(inbox_mod, "MAX_EARLY_BYTES", 2 * len(data))
    box = make_inbox(1)
    assert box.offer(data, 2, "pi-1") is None
    assert box.offer(frame("pi-2", 2), 2, "pi-2") is None
    assert drop_reason(box, frame("pi-3", 2), 2, "pi-3") == "wrong round"
    assert len(box.expect(RoundView(2, BASE))) == 2
    # opening the round freed the bytes
    assert box.offer(frame("pi-3", 3), 3, "pi-3") is None


def test_held_envelopes_for_rounds_passed_over_are_freed() -> None:
    box = make_inbox()
    box.offer(frame(rnd=1), 1, "pi-1")
    box.expect(RoundView(2, BASE))  # round 1 never opens here: its envelope goes
    assert box.expect(RoundView(1, BASE)) == []


def test_junk_held_for_far_rounds_does_not_block_the_hold_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before a node knows any round it holds envelopes for any round; once a round opens,
    those beyond the hold window can never be wanted and must give their bytes back."""
    data = frame(rnd=2)
    monkeypatch.setattr(inbox_mod, "MAX_EARLY_BYTES", len(data))
    box = make_inbox()
    far = 10_000
    assert box.offer(frame("pi-9", far), far, "pi-9") is None
    assert box.expect(RoundView(1, BASE)) == []
    assert box.offer(data, 2, "pi-1") is None
    assert box.expect(RoundView(2, BASE)) == [Accepted(2, "pi-1", sha(data))]


# --------------------------------------------------------------------------- take / forget


def _three(box: EnvelopeInbox, rnd: int = 1) -> dict[str, str]:
    out = {}
    for i, node in enumerate(("pi-1", "pi-2", "pi-3")):
        data = frame(node, rnd, delta=np.full(N, i + 1, np.float32), n_samples=10 * (i + 1))
        out[node] = box.offer(data, rnd, node).sha256  # type: ignore[union-attr]
    return out


def test_take_returns_contributions_in_included_order() -> None:
    box = make_inbox(1)
    shas = _three(box)
    included = (("pi-3", shas["pi-3"]), ("pi-1", shas["pi-1"]))
    got = box.take(1, included, {"pi-1": 10, "pi-2": 20, "pi-3": 30})
    assert [(c.node, c.n_samples) for c in got] == [("pi-3", 30), ("pi-1", 10)]
    np.testing.assert_array_equal(got[0].delta, np.full(N, 3, np.float32))
    np.testing.assert_array_equal(got[1].delta, np.full(N, 1, np.float32))
    assert box.take(1, (), {}) == []


def test_take_picks_the_envelope_the_ledger_names() -> None:
    box = make_inbox(1)
    a = box.offer(frame(delta=np.zeros(N, np.float32)), 1, "pi-1")
    b = box.offer(frame(delta=np.ones(N, np.float32)), 1, "pi-1")
    assert a is not None and b is not None
    [c] = box.take(1, (("pi-1", b.sha256),), {"pi-1": 40})
    np.testing.assert_array_equal(c.delta, np.ones(N, np.float32))


def test_take_raises_key_error_for_a_missing_envelope() -> None:
    box = make_inbox(1)
    shas = _three(box)
    with pytest.raises(KeyError, match="never arrived"):
        box.take(1, (("pi-1", shas["pi-1"]), ("pi-2", "ab" * 32)), {"pi-1": 10, "pi-2": 20})
    with pytest.raises(KeyError):
        box.take(2, (("pi-1", shas["pi-1"]),), {"pi-1": 10})
    with pytest.raises(KeyError):
        box.take(1, (("pi-4", shas["pi-1"]),), {"pi-4": 10})


def test_take_raises_key_error_when_sample_counts_disagree() -> None:
    box = make_inbox(1)
    shas = _three(box)
    with pytest.raises(KeyError, match="disagree"):
        box.take(1, (("pi-2", shas["pi-2"]),), {"pi-2": 21})


def test_take_raises_key_error_without_a_ledger_sample_count() -> None:
    box = make_inbox(1)
    shas = _three(box)
    with pytest.raises(KeyError, match="pi-2"):
        box.take(1, (("pi-2", shas["pi-2"]),), {"pi-1": 10})


def test_forget_before_frees_older_rounds() -> None:
    box = make_inbox(1, 2, 3)
    old = _three(box, 1)
    new = _three(box, 3)
    box.forget_before(3)
    assert set(box.rounds) == {3}
    assert not any(box.has(1, n, s) for n, s in old.items())
    assert all(box.has(3, n, s) for n, s in new.items())
    assert not box._kept.get((1, "pi-1")) and all(k[0] >= 3 for k in box._samples)
    with pytest.raises(KeyError):
        box.take(1, (("pi-1", old["pi-1"]),), {"pi-1": 10})
    # a late envelope for a forgotten round is refused, not held
    assert drop_reason(box, frame(rnd=1)) == "wrong round"
    assert len(box.take(3, tuple(sorted(new.items())), {"pi-1": 10, "pi-2": 20, "pi-3": 30})) == 3


# --------------------------------------------------------------------------- properties


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.integers(0, 5), st.sampled_from(["pi-1", "pi-2", "pi-9"]))
def test_arbitrary_bytes_raise_only_dropped(data: bytes, rnd: int, node: str) -> None:
    box = make_inbox(1)
    try:
        result = box.offer(data, rnd, node)
    except Dropped as exc:
        assert box.drops[exc.reason] == 1
        return
    assert result is None or isinstance(result, Accepted)


_GOOD = frame()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(_GOOD)), st.binary(max_size=120))
def test_valid_prefixes_with_garbage_raise_only_dropped(cut: int, tail: bytes) -> None:
    box = make_inbox(1)
    data = _GOOD[:cut] + tail
    try:
        box.offer(data, 1, "pi-1")
    except Dropped:
        return
    assert data == _GOOD


def test_every_single_byte_flip_is_dropped() -> None:
    for i in range(len(_GOOD)):
        data = bytearray(_GOOD)
        data[i] ^= 0x01
        box = make_inbox(1, 2)
        with pytest.raises(Dropped):
            box.offer(bytes(data), 1, "pi-1")


def test_a_forged_sample_count_breaks_the_signature() -> None:
    """n_samples is signed: a relay cannot inflate a node's weight."""
    data = bytearray(_GOOD)
    at = len(_GOOD) - (1 + SIGNATURE_LEN) - 4 * N - 8  # n_samples sits before body_len
    assert struct.unpack_from("<I", data, at)[0] == 40
    struct.pack_into("<I", data, at, 4000)
    assert drop_reason(make_inbox(1), bytes(data)) == "bad signature"


def test_replays_of_a_forgotten_round_are_refused_not_held() -> None:
    box = make_inbox(1)
    data = frame()
    assert box.offer(data, 1, "pi-1") is not None
    box.expect(RoundView(2, BASE))
    box.forget_before(2)  # round 1 merged
    assert drop_reason(box, data) == "wrong round"


# -- sealed swarms ----------------------------------------------------------------------

DATA_KEYS = {0: bytes(range(32)), 1: bytes(range(1, 33))}


def sealed_inbox(*views: RoundView, keys: dict[int, bytes] | None = None) -> EnvelopeInbox:
    held = DATA_KEYS if keys is None else keys
    box = EnvelopeInbox(SWARM, N, pubkey, MAX_SIZE, security="sealed", data_key=held.get)
    for view in views:
        box.expect(view)
    return box


def sealed_frame(
    node: str = "pi-1", rnd: int = 1, epoch: int = 0, key: bytes | None = None
) -> bytes:
    h = header(node, rnd, flags=FLAG_SEALED, epoch=epoch)
    delta = np.linspace(-1.0, 1.0, N, dtype=np.float32)
    return encode_envelope(h, delta, KEYS[node].sign, data_key=key or DATA_KEYS[epoch])


def test_sealed_envelope_is_opened_and_kept() -> None:
    box = sealed_inbox(RoundView(1, BASE, epoch=0))
    data = sealed_frame()
    ok = box.offer(data, 1, "pi-1")
    assert ok == Accepted(1, "pi-1", sha(data))
    [c] = box.take(1, (("pi-1", sha(data)),), {"pi-1": 40})
    np.testing.assert_array_equal(c.delta, np.linspace(-1.0, 1.0, N, dtype=np.float32))


def test_sealed_swarm_refuses_each_kind_of_bad_seal() -> None:
    box = sealed_inbox(RoundView(1, BASE, epoch=1), RoundView(2, BASE, epoch=None))
    assert drop_reason(box, frame()) == "unsealed"  # a plaintext frame, validly signed
    assert drop_reason(box, sealed_frame(epoch=0)) == "wrong epoch"  # an older epoch's key
    assert drop_reason(box, sealed_frame(epoch=1, key=bytes(32))) == "undecryptable"
    assert drop_reason(box, sealed_frame(rnd=2, epoch=1), rnd=2) == "wrong epoch"  # none valid
    assert set(box.drops) == {"unsealed", "wrong epoch", "undecryptable"}


def test_a_node_without_the_epoch_key_cannot_read_the_round() -> None:
    """A device revoked before epoch 1 holds only epoch 0's key: round 2 stays closed to it."""
    revoked_view = sealed_inbox(RoundView(2, BASE, epoch=1), keys={0: DATA_KEYS[0]})
    assert drop_reason(revoked_view, sealed_frame(rnd=2, epoch=1), rnd=2) == "no key"


def test_signature_is_checked_before_decryption() -> None:
    box = sealed_inbox(RoundView(1, BASE, epoch=0))
    h = header("pi-1", 1, flags=FLAG_SEALED, epoch=0)
    delta = np.zeros(N, np.float32)
    forged = encode_envelope(h, delta, OUTSIDER.sign, data_key=DATA_KEYS[0])
    assert drop_reason(box, forged) == "bad signature"


def test_unsigned_swarm_takes_unsigned_frames_and_no_sealed_ones() -> None:
    box = EnvelopeInbox(SWARM, N, pubkey, MAX_SIZE, security="none")
    box.expect(RoundView(1, BASE))
    h = header()
    data = encode_envelope(h, np.zeros(N, np.float32), None)
    assert box.offer(data, 1, "pi-1") == Accepted(1, "pi-1", sha(data))
    signed_box = make_inbox(1)
    assert drop_reason(signed_box, data) == "unsigned"
    assert drop_reason(signed_box, sealed_frame()) == "no key"


def test_sealed_inbox_needs_a_key_source() -> None:
    with pytest.raises(ValueError, match="data_key"):
        EnvelopeInbox(SWARM, N, pubkey, MAX_SIZE, security="sealed")


def test_a_revoked_sender_is_told_from_an_unknown_one() -> None:
    box = EnvelopeInbox(SWARM, N, lambda n: None, MAX_SIZE, revoked=lambda n: n == "pi-1")
    box.expect(RoundView(1, BASE))
    assert drop_reason(box, frame("pi-1")) == "revoked node"
    assert drop_reason(box, frame("pi-2"), node="pi-2") == "unknown node"
