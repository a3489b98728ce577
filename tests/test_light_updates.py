"""The committee's downlink update around the pure codec (swarm/downlink.py): the merge state
that carries its residual, the model holder that merges through it, and a light agent's
handling of what arrives on model/update (node/updates.py). No sockets."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_swarm.learn.model import ModelSpec, init_params, model_hash
from edge_swarm.learn.poison import Attack
from edge_swarm.node.model import ModelHolder
from edge_swarm.node.updates import UPDATE_WAIT_S, LightUpdates, downlink_of
from edge_swarm.swarm.checkpoint import decode_checkpoint, encode_checkpoint, seal_checkpoint
from edge_swarm.swarm.merge import Contribution, MergeRule, MergeState
from edge_swarm.swarm.quantize import CodecSpec
from ledger_lite.schema import payload_problem

SPEC = ModelSpec((8, 6, 3))
RULE = MergeRule("fedavgm", momentum=0.9)
INT8 = CodecSpec("int8")
SWARM = "site"


def holder(downlink: bool = True) -> ModelHolder:
    params = init_params(SPEC, 7)
    return ModelHolder(SPEC, params, RULE, (SWARM, INT8) if downlink else None)


def deltas(seed: int, n: int = 3) -> list[Contribution]:
    rng = np.random.default_rng(seed)
    return [
        Contribution(f"a{i}", rng.normal(0, 0.05, SPEC.n_params).astype(np.float32), 10 + i)
        for i in range(n)
    ]


def backed_by(*pairs: tuple[int, str | None]) -> Callable[[int, str], bool]:
    """A stand-in for ``Participant.update_backed``: these (round, update sha256) only."""
    return lambda rnd, sha: (rnd, sha) in pairs


# ---------------------------------------------------------------------------- merge state


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    vectors=st.sampled_from(["none", "velocity", "both"]),
    seed=st.integers(0, 2**31),
)
def test_merge_state_with_a_residual_round_trips_through_bytes(
    n: int, vectors: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)

    def vec() -> np.ndarray:
        return rng.normal(size=n).astype(np.float32)

    velocity = None if vectors == "none" else vec()
    second = np.abs(vec()) if vectors == "both" else None
    state = MergeState(velocity, second, vec())
    back = MergeState.from_bytes(state.to_bytes(), n, residual=True)
    assert back.to_bytes() == state.to_bytes() and back.state_hash() == state.state_hash()
    assert np.array_equal(back.residual, state.residual)
    # Without the residual the same bytes would be read as other vectors: the flag decides.
    assert MergeState.from_bytes(b"", n, residual=True).residual is None


def test_merge_state_refuses_a_residual_of_another_size_or_non_finite() -> None:
    with pytest.raises(ValueError, match="differ"):
        MergeState(np.zeros(3, np.float32), None, np.zeros(4, np.float32))
    bad = np.array([np.nan, 0, 0], np.float32).tobytes()
    with pytest.raises(ValueError, match="non-finite"):
        MergeState.from_bytes(bad, 3, residual=True)


# ---------------------------------------------------------------------------- the holder


def test_a_merge_through_the_downlink_gives_the_model_every_light_agent_computes() -> None:
    member, light = holder(), holder()
    for rnd in (1, 2, 3):
        cand = member.merge(rnd, deltas(rnd))
        assert cand.update is not None and cand.update_sha256 == cand.update.sha256
        assert cand.state.residual is not None  # error feedback kept in the merge state
        assert cand.state_hash == cand.state.state_hash()
        # The light agent's view: the frame alone, applied to the model it holds.
        updates = LightUpdates(SWARM, SPEC, INT8, sealed=False)
        assert updates.offer(cand.update.frame, lambda e: None) is None
        backed = backed_by((rnd, cand.update_sha256))
        params, why = updates.try_apply((rnd, cand.model_hash), light.params, light.hash, backed)
        assert why is None and params is not None
        assert params.tobytes() == cand.params.tobytes()
        member.commit(rnd)
        light.take_update(rnd, params, cand.model_hash)
        assert light.hash == member.hash and not light.state_known and member.state_known


def test_the_residual_survives_a_checkpoint_so_a_new_member_merges_the_same_bytes() -> None:
    a = holder()
    a.merge(1, deltas(1))
    a.commit(1)
    b = holder()
    assert b.adopt(decode_checkpoint(encode_checkpoint(a.checkpoint(SWARM))))
    assert b.state_known and b.state.state_hash() == a.state.state_hash()
    ca, cb = a.merge(2, deltas(2)), b.merge(2, deltas(2))
    assert (ca.model_hash, ca.state_hash, ca.update_sha256) == (
        cb.model_hash,
        cb.state_hash,
        cb.update_sha256,
    )


def test_without_a_downlink_the_holder_merges_as_before() -> None:
    plain = holder(downlink=False)
    cand = plain.merge(1, deltas(1))
    assert cand.update is None and cand.update_sha256 is None and cand.state.residual is None


def test_a_spoiled_merge_lies_consistently_in_its_update() -> None:
    h = holder()
    honest = h.merge(1, deltas(1))
    lie = h.spoil(1, Attack.from_dict({"name": "scale", "strength": 10.0}))
    assert lie.model_hash != honest.model_hash and lie.update_sha256 != honest.update_sha256
    assert model_hash(SPEC, lie.params) == lie.model_hash


# ---------------------------------------------------------------------------- the light agent


def _update_of(rnd: int = 1) -> tuple[ModelHolder, ModelHolder, object]:
    member, light = holder(), holder()
    cand = member.merge(rnd, deltas(rnd))
    return member, light, cand


def test_a_sealed_update_opens_only_with_the_epochs_key_and_as_an_update() -> None:
    _, light, cand = _update_of()
    key = os.urandom(32)
    sealed = seal_checkpoint(cand.update.frame, SWARM, 1, 4, key, kind="update")
    updates = LightUpdates(SWARM, SPEC, INT8, sealed=True)
    assert "no key for epoch 4" in updates.offer(sealed, lambda e: None)
    assert "undecryptable" in updates.offer(sealed, lambda e: os.urandom(32))
    as_checkpoint = seal_checkpoint(cand.update.frame, SWARM, 1, 4, key)  # another kind
    assert "undecryptable" in updates.offer(as_checkpoint, lambda e: key)
    assert "unsealed" in updates.offer(cand.update.frame, lambda e: key)
    assert updates.offer(sealed, lambda e: key) is None
    assert updates.latest is not None and updates.latest.sha256 == cand.update_sha256


@settings(max_examples=200, deadline=None)
@given(junk=st.binary(max_size=4000))
def test_garbage_on_the_update_topic_is_dropped_with_a_reason(junk: bytes) -> None:
    updates = LightUpdates(SWARM, SPEC, INT8, sealed=False)
    why = updates.offer(junk, lambda e: None)
    assert isinstance(why, str) and why and updates.latest is None


def test_an_oversized_update_is_refused_before_parsing() -> None:
    _, _, cand = _update_of()
    updates = LightUpdates(SWARM, SPEC, INT8, sealed=False)
    assert "exceeds" in updates.offer(cand.update.frame + b"\0" * 10_000, lambda e: None)


def test_try_apply_waits_refuses_or_applies() -> None:
    _, light, cand = _update_of(2)
    updates = LightUpdates(SWARM, SPEC, INT8, sealed=False)
    want = (2, cand.model_hash)

    def backed(rnd: int, s: str) -> bool:
        return s == cand.update_sha256

    assert updates.try_apply(want, light.params, light.hash, backed) == (None, None)  # nothing
    updates.offer(cand.update.frame, lambda e: None)
    older = updates.try_apply((1, cand.model_hash), light.params, light.hash, backed)
    assert older[0] is None and "round 2" in older[1]
    unbacked = updates.try_apply(want, light.params, light.hash, lambda r, s: False)
    assert unbacked[0] is None and "quorum" in unbacked[1]
    other_base = updates.try_apply(want, light.params, "ab" * 32, backed)
    assert other_base[0] is None and "base_model_hash" in other_base[1]
    wrong_final = updates.try_apply((2, "cd" * 32), light.params, light.hash, backed)
    assert wrong_final[0] is None and "does not give the final model" in wrong_final[1]
    params, why = updates.try_apply((3, cand.model_hash), light.params, light.hash, backed)
    assert (params, why) == (None, None)  # a later round's update is still to come
    params, why = updates.try_apply(want, light.params, light.hash, backed)
    assert why is None and model_hash(SPEC, params) == cand.model_hash


def test_the_wait_for_an_update_ends_after_its_grace() -> None:
    updates = LightUpdates(SWARM, SPEC, INT8, sealed=False)
    assert not updates.gave_up(100.0)
    updates.wait(100.0)
    updates.wait(101.0)  # a second wait does not restart it
    assert not updates.gave_up(100.0 + UPDATE_WAIT_S - 0.01)
    assert updates.gave_up(100.0 + UPDATE_WAIT_S)
    updates.done()
    assert not updates.gave_up(1e9)


def test_the_genesis_names_the_downlink_only_in_committee_mode() -> None:
    assert downlink_of({"merge_by": "all", "downlink": {"name": "int8"}}, SWARM) is None
    assert downlink_of({"merge_by": "committee"}, SWARM) is None
    assert downlink_of({"merge_by": "committee", "downlink": {"name": "int4"}}, SWARM) == (
        SWARM,
        CodecSpec("int4"),
    )
    with pytest.raises(ValueError):
        downlink_of({"merge_by": "committee", "downlink": {"name": "int3"}}, SWARM)


def test_the_ledger_takes_an_attestation_with_an_update_hash_and_nothing_else_new() -> None:
    base = {"round": 1, "model_hash": "a" * 64, "state_hash": "b" * 64}
    assert payload_problem("model_attest", {**base, "update_sha256": "c" * 64}) is None
    assert payload_problem("model_attest", {**base, "update_sha256": "C" * 64}) is not None
    assert payload_problem("model_attest", {**base, "update": "c" * 64}) is not None
