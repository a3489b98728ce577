"""Tests for edge_swarm.swarm.merge: weighted means, order independence, FedAvgM state."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_swarm.swarm.merge import (
    Contribution,
    MergeRule,
    MergeState,
    merge,
    weighted_mean,
)

N = 6


def contribution(node: str, values: list[float], n: int) -> Contribution:
    return Contribution(node, np.array(values, dtype=np.float32), n)


def test_fedavg_equals_hand_computed_weighted_mean() -> None:
    base = np.array([1.0, 2.0, 3.0], np.float32)
    contribs = [
        contribution("b", [3.0, 0.0, -3.0], 3),
        contribution("a", [1.0, 1.0, 1.0], 1),
    ]
    result = merge(MergeRule("fedavg"), base, contribs, MergeState())
    # weights a: 1/4, b: 3/4 -> avg = [2.5, 0.25, -2.0]
    np.testing.assert_array_equal(result.params, np.array([3.5, 2.25, 1.0], np.float32))
    assert result.weights == {"a": 0.25, "b": 0.75}
    assert list(result.weights) == ["a", "b"]
    assert result.params.dtype == np.float32
    half = merge(MergeRule("fedavg", server_lr=0.5), base, contribs).params
    np.testing.assert_array_equal(half, np.array([2.25, 2.125, 2.0], np.float32))


def test_fedavgm_velocity_and_bytes_round_trip() -> None:
    rule = MergeRule("fedavgm", server_lr=1.0, momentum=0.5)
    base = np.zeros(3, np.float32)
    contribs = [contribution("a", [2.0, -2.0, 0.0], 5)]
    first = merge(rule, base, contribs, MergeState())
    np.testing.assert_array_equal(first.state.velocity, [2.0, -2.0, 0.0])
    raw = first.state.to_bytes()
    assert raw == np.array([2.0, -2.0, 0.0], "<f4").tobytes()
    restored = MergeState.from_bytes(raw, 3)
    assert restored.state_hash() == first.state.state_hash()
    second = merge(rule, first.params, contribs, restored)
    np.testing.assert_array_equal(second.state.velocity, [3.0, -3.0, 0.0])
    np.testing.assert_array_equal(second.params, [5.0, -5.0, 0.0])
    assert MergeState.from_bytes(b"", 3).velocity is None
    assert MergeState().state_hash() == MergeState.from_bytes(b"", 3).state_hash()
    for bad in (b"\x00" * 8, np.array([np.nan, 0, 0], "<f4").tobytes()):
        with pytest.raises(ValueError):
            MergeState.from_bytes(bad, 3)


def test_empty_contributions_leave_params_and_state() -> None:
    base = np.arange(4, dtype=np.float32)
    state = MergeState(np.ones(4, np.float32))
    result = merge(MergeRule("fedavgm"), base, [], state)
    np.testing.assert_array_equal(result.params, base)
    assert result.params is not base
    assert result.state is state and result.weights == {}


def test_invalid_inputs() -> None:
    base = np.zeros(3, np.float32)
    with pytest.raises(ValueError):
        merge(MergeRule(), base, [contribution("a", [1.0, 2.0], 1)])
    with pytest.raises(ValueError):
        merge(MergeRule(), base, [contribution("a", [1, 2, 3], 1), contribution("a", [1, 2, 3], 1)])
    with pytest.raises(ValueError):
        merge(MergeRule(), base.astype(np.float64), [])
    with pytest.raises(ValueError):
        merge(MergeRule("fedavgm"), base, [], MergeState(np.zeros(4, np.float32)))
    with pytest.raises(ValueError):
        weighted_mean([])
    for args in (("", [1.0], 1), ("a", [1.0], 0), ("a", [1.0], True), ("a", [np.inf], 1)):
        with pytest.raises(ValueError):
            contribution(*args)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Contribution("a", np.zeros(2, np.float64), 1)
    with pytest.raises(ValueError):
        MergeState(np.zeros((2, 2), np.float32))


def test_contribution_delta_is_read_only() -> None:
    c = contribution("a", [1.0, 2.0], 1)
    with pytest.raises(ValueError):
        c.delta[0] = 5.0


def test_rule_validation_and_round_trip() -> None:
    rule = MergeRule("fedavgm", server_lr=0.5, momentum=0.7)
    assert MergeRule.from_dict(rule.to_dict()) == rule
    assert MergeRule.from_dict({}) == MergeRule()
    for bad in (
        {"name": "fedmedian"},
        {"server_lr": 0},
        {"server_lr": float("inf")},
        {"momentum": 1.0},
        {"momentum": -0.1},
        {"momentum": "0.9"},
        {"other": 1},
    ):
        with pytest.raises(ValueError):
            MergeRule.from_dict(bad)
    with pytest.raises(ValueError):
        MergeRule.from_dict("fedavg")


finite32 = st.floats(-1e3, 1e3, allow_nan=False, width=32)
peers = st.lists(
    st.tuples(
        st.text("abcdefgh0123456789-_.", min_size=1, max_size=8),
        st.lists(finite32, min_size=N, max_size=N),
        st.integers(1, 10_000),
    ),
    min_size=1,
    max_size=8,
    unique_by=lambda p: p[0],
)


@settings(max_examples=150, deadline=None)
@given(
    peers=peers,
    perm_seed=st.integers(0, 2**32 - 1),
    rule_name=st.sampled_from(["fedavg", "fedavgm"]),
    velocity=st.none() | st.lists(finite32, min_size=N, max_size=N),
)
def test_merge_is_independent_of_input_order(
    peers: list[tuple[str, list[float], int]],
    perm_seed: int,
    rule_name: str,
    velocity: list[float] | None,
) -> None:
    contribs = [contribution(node, values, n) for node, values, n in peers]
    shuffled = [contribs[i] for i in np.random.default_rng(perm_seed).permutation(len(contribs))]
    base = np.linspace(-1, 1, N, dtype=np.float32)
    state = MergeState(None if velocity is None else np.array(velocity, np.float32))
    rule = MergeRule(rule_name, server_lr=0.7, momentum=0.9)
    a = merge(rule, base, contribs, state)
    b = merge(rule, base, shuffled, state)
    assert a.params.tobytes() == b.params.tobytes()
    assert a.state.to_bytes() == b.state.to_bytes()
    assert a.weights == b.weights
    assert sum(a.weights.values()) == pytest.approx(1.0)
    total = sum(n for _, _, n in peers)
    expected = sum(np.array(v, np.float64) * n / total for _, v, n in peers)
    if rule_name == "fedavg":
        np.testing.assert_allclose(a.params, base + 0.7 * expected, rtol=1e-5, atol=1e-3)


# sha256 of params and state after three rounds, computed by merge.py before aggregators and
# adaptive server rules were added: mean with fedavg / fedavgm must keep these bytes.
GOLDEN = {
    "fedavg": (
        "d15f4792fb5288abdd7e5dff19c9b6878ba8cc1b54e14b25f844b6ba4a403cfa",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ),
    "fedavgm": (
        "2d9d6ac18a4a5732b69f37341788152dad3aec96ab8247b746f4a8258c7e8763",
        "d23da10ad18774f4a49574d792807f9d9ddf413db2d733829a40666a46ff2d75",
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_mean_rules_keep_their_pre_aggregator_bytes(name: str) -> None:
    rng = np.random.default_rng(20240611)
    d = 1000
    base = rng.normal(0, 1, d).astype(np.float32)
    contribs = [
        Contribution(
            f"node-{i}", rng.normal(0, 0.1, d).astype(np.float32), int(rng.integers(1, 500))
        )
        for i in range(7)
    ]
    rule = MergeRule.from_dict({"name": name, "server_lr": 0.7, "momentum": 0.5})
    params, state = base, MergeState()
    for r in range(3):
        result = merge(rule, params, contribs[r:], state)
        params, state = result.params, result.state
        assert result.clipped == {} and result.note == ""
    assert (hashlib.sha256(params.tobytes()).hexdigest(), state.state_hash()) == GOLDEN[name]
