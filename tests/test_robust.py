"""Tests for edge_swarm.swarm.robust and the robust / adaptive parts of merge: order
independence for every aggregator x server rule, order-statistic bounds, Weiszfeld, Krum's
Byzantine bound, Bulyan, clipping, fallbacks, FedAdam / FedYogi and the state's bytes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edge_swarm.swarm import robust
from edge_swarm.swarm.merge import (
    AGGREGATORS,
    RULES,
    SERVER_RULES,
    Contribution,
    MergeRule,
    MergeState,
    merge,
    parse_merge,
)

D = 5
finite32 = st.floats(-1e3, 1e3, allow_nan=False, width=32)
# Few distinct values, so ties between peers (and between scores) are common.
tied32 = st.sampled_from([-2.0, -0.5, 0.0, 0.5, 1.0, 3.0])
node_ids = st.text("abcdefgh0123456789-_.", min_size=1, max_size=8)


def peers_strategy(values: st.SearchStrategy[float], max_size: int = 11) -> st.SearchStrategy:
    return st.lists(
        st.tuples(node_ids, st.lists(values, min_size=D, max_size=D), st.integers(1, 10_000)),
        min_size=1,
        max_size=max_size,
        unique_by=lambda p: p[0],
    )


def contributions(peers: list[tuple[str, list[float], int]]) -> list[Contribution]:
    return [Contribution(node, np.array(v, np.float32), n) for node, v, n in peers]


def stacked(peers: list[tuple[str, list[float], int]]) -> np.ndarray:
    return np.array([v for _, v, _ in sorted(peers)], dtype=np.float32).astype(np.float64)


def state_for(name: str, rng: np.random.Generator) -> MergeState:
    if name == "fedavgm":
        return MergeState(rng.normal(0, 1, D).astype(np.float32))
    if name in ("fedadam", "fedyogi"):
        m = rng.normal(0, 1, D).astype(np.float32)
        return MergeState(m, np.abs(rng.normal(0, 1, D)).astype(np.float32))
    return MergeState()


# --- every aggregator x every server rule --------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    peers=peers_strategy(finite32 | tied32),
    perm_seed=st.integers(0, 2**32 - 1),
    name=st.sampled_from(SERVER_RULES),
    aggregator=st.sampled_from(AGGREGATORS),
    f=st.integers(0, 3),
    clip=st.none() | st.floats(0.5, 500),
    mix=st.sampled_from([None, "nnm"]),
    fresh=st.booleans(),
)
def test_every_rule_is_independent_of_input_order(
    peers: list[tuple[str, list[float], int]],
    perm_seed: int,
    name: str,
    aggregator: str,
    f: int,
    clip: float | None,
    mix: str | None,
    fresh: bool,
) -> None:
    rng = np.random.default_rng(perm_seed)
    contribs = contributions(peers)
    shuffled = [contribs[i] for i in rng.permutation(len(contribs))]
    state = MergeState() if fresh else state_for(name, rng)
    f = max(f, 1) if mix else f
    rule = MergeRule(name, server_lr=0.5, aggregator=aggregator, f=f, clip=clip, mix=mix)
    base = np.linspace(-1, 1, D, dtype=np.float32)
    a = merge(rule, base, contribs, state)
    b = merge(rule, base, shuffled, state)
    assert a.params.tobytes() == b.params.tobytes()
    assert a.state.to_bytes() == b.state.to_bytes()
    assert a.weights == b.weights and a.clipped == b.clipped and a.note == b.note
    assert list(a.weights) == sorted(c.node for c in contribs)
    assert sum(a.weights.values()) == pytest.approx(1.0)
    assert all(w >= 0 for w in a.weights.values())
    assert all(0 < s < 1 for s in a.clipped.values())
    assert a.params.dtype == np.float32 and np.all(np.isfinite(a.params))


# --- order statistics ---------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(peers=peers_strategy(finite32 | tied32), k_frac=st.floats(0, 0.49))
def test_median_and_trimmed_mean_stay_inside_each_coordinates_range(
    peers: list[tuple[str, list[float], int]], k_frac: float
) -> None:
    X = stacked(peers)
    lo, hi = X.min(axis=0), X.max(axis=0)
    med = robust.median(X)
    # Equal values, not bytes: np.median turns a lone -0.0 into +0.0; we keep the input's.
    assert np.array_equal(med.vector, np.median(X, axis=0))
    trimmed = robust.aggregate("trimmed_mean", X, [1] * len(X), trim=k_frac)
    for agg in (med, trimmed):
        assert np.all(lo <= agg.vector) and np.all(agg.vector <= hi)
        assert agg.weights.sum() == pytest.approx(1.0)
    # Through merge: base 0, server_lr 1 -> params are the aggregate rounded to float32,
    # and float32 rounding is monotonic, so the bounds survive it.
    zero = np.zeros(D, np.float32)
    for aggregator in ("median", "trimmed_mean"):
        rule = MergeRule(aggregator=aggregator, trim=k_frac if aggregator != "median" else None)
        params = merge(rule, zero, contributions(peers)).params.astype(np.float64)
        assert np.all(lo <= params) and np.all(params <= hi)


def test_trimmed_mean_by_hand_and_its_weights() -> None:
    X = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, -5.0], [100.0, 0.0]])
    agg = robust.aggregate("trimmed_mean", X, [1, 1, 1, 1], trim=0.25)
    np.testing.assert_array_equal(agg.vector, [2.5, 5.0])
    # kept: column 0 rows 1, 2; column 1 rows 3, 0
    np.testing.assert_array_equal(agg.weights, [0.25, 0.25, 0.25, 0.25])
    agg = robust.aggregate("trimmed_mean", X[:, :1], [1, 1, 1, 1], f=1)
    np.testing.assert_array_equal(agg.weights, [0.0, 0.5, 0.5, 0.0])
    med = robust.median(np.array([[1.0], [5.0], [2.0]]))
    np.testing.assert_array_equal(med.vector, [2.0])
    np.testing.assert_array_equal(med.weights, [0.0, 0.0, 1.0])


def test_ties_are_broken_by_node_id() -> None:
    # Three equal values: the median "uses" the middle-ranked one, and equal values rank by
    # node id; the node named first ("a") gets rank 0, "b" the middle.
    zero = np.zeros(1, np.float32)
    contribs = [Contribution(n, np.ones(1, np.float32), 1) for n in ("c", "a", "b")]
    result = merge(MergeRule(aggregator="median"), zero, contribs)
    assert result.weights == {"a": 0.0, "b": 1.0, "c": 0.0}
    result = merge(MergeRule(aggregator="krum"), zero, contribs)
    assert result.weights == {"a": 1.0, "b": 0.0, "c": 0.0}


# --- geometric median ---------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(finite32, min_size=D, max_size=D),
    samples=st.lists(st.integers(1, 10_000), min_size=1, max_size=9),
)
def test_geometric_median_of_identical_inputs_is_that_input(
    values: list[float], samples: list[int]
) -> None:
    x = np.array(values, np.float32).astype(np.float64)
    X = np.tile(x, (len(samples), 1))
    agg = robust.geometric_median(X, samples, iters=100, tol=1e-6)
    np.testing.assert_allclose(agg.vector, x, rtol=1e-6, atol=1e-6)
    assert agg.note == "" and agg.weights.sum() == pytest.approx(1.0)


def test_geometric_median_known_answers() -> None:
    # On a line the geometric median is the (weighted) median: far outliers do not pull it.
    X = np.array([[0.0], [1.0], [1e6]])
    np.testing.assert_allclose(robust.geometric_median(X, [1, 1, 1], 100, 1e-9).vector, [1.0])
    # Weighted: 3 samples at 0 outweigh 1 + 1 elsewhere.
    np.testing.assert_allclose(
        robust.geometric_median(X, [3, 1, 1], 100, 1e-9).vector, [0.0], atol=1e-6
    )
    # Four corners of a square: the centre, by symmetry, with equal weights.
    sq = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    agg = robust.geometric_median(sq, [1, 1, 1, 1], 100, 1e-12)
    np.testing.assert_allclose(agg.vector, [1.0, 1.0])
    np.testing.assert_allclose(agg.weights, [0.25] * 4)
    # A budget of one step on a slow case says so.
    assert "stopped after 1" in robust.geometric_median(X, [1, 1, 1], 1, 1e-12).note


# --- Krum, Multi-Krum, Bulyan -------------------------------------------------------------


@st.composite
def byzantine_set(draw: st.DrawFn, min_extra: int) -> tuple[np.ndarray, list[int], int]:
    """n - f honest rows within distance 1 of a centre, f arbitrary rows >= 1000 away; rows
    shuffled. Returns (X, honest row indices, f)."""
    f = draw(st.integers(0, 3))
    n = draw(st.integers(min_extra * f + 3, min_extra * f + 8))
    seed = draw(st.integers(0, 2**32 - 1))
    collude = draw(st.booleans())
    rng = np.random.default_rng(seed)
    centre = rng.normal(0, 10, D)
    honest = centre + rng.uniform(-1, 1, (n - f, D)) / math.sqrt(D)
    direction = rng.normal(0, 1, (1 if collude else f, D))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    far = centre + direction * rng.uniform(1e3, 1e6, (len(direction), 1))
    byz = np.repeat(far, f, axis=0) if collude else far
    X = np.vstack([honest, byz[:f]])
    order = rng.permutation(n)
    return X[order], sorted(int(np.where(order == i)[0][0]) for i in range(n - f)), f


@settings(max_examples=200, deadline=None)
@given(case=byzantine_set(min_extra=2))
def test_krum_and_multikrum_never_pick_a_far_outlier(
    case: tuple[np.ndarray, list[int], int],
) -> None:
    X, honest, f = case
    chosen = int(np.argmax(robust.krum(X, f).weights))
    assert chosen in honest
    multi = robust.multikrum(X, [1] * len(X), f, None)
    assert set(np.flatnonzero(multi.weights)) == set(honest)
    assert multi.weights.sum() == pytest.approx(1.0)


@settings(max_examples=150, deadline=None)
@given(case=byzantine_set(min_extra=4))
def test_bulyan_stays_within_the_honest_range_despite_outliers(
    case: tuple[np.ndarray, list[int], int],
) -> None:
    X, honest, f = case
    agg = robust.bulyan(X, f)
    assert agg.note == ""
    H = X[honest]
    assert np.all(H.min(axis=0) <= agg.vector) and np.all(agg.vector <= H.max(axis=0))
    assert agg.weights.sum() == pytest.approx(1.0)
    assert np.count_nonzero(agg.weights) <= len(X) - 2 * f


@settings(max_examples=200, deadline=None)
@given(peers=peers_strategy(finite32 | tied32, max_size=12), f=st.integers(0, 4))
def test_krum_picks_a_minimal_score(peers: list[tuple[str, list[float], int]], f: int) -> None:
    X = stacked(peers)
    assume(len(X) >= 2 * f + 3)
    agg = robust.krum(X, f)
    chosen = int(np.argmax(agg.weights))
    scores = robust.krum_scores(robust.pairwise_sq_distances(X), range(len(X)), f)
    assert scores[chosen] == min(scores)
    assert chosen == scores.index(min(scores))  # ties: the lowest node id
    assert agg.vector.tobytes() == X[chosen].tobytes()
    assert sorted(agg.weights.tolist()) == [0.0] * (len(X) - 1) + [1.0]


def test_multikrum_with_every_input_is_the_mean() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(0, 1, (6, D))
    samples = [5, 1, 7, 2, 2, 9]
    mean = robust.mean(X, samples)
    multi = robust.multikrum(X, samples, 0, None)
    assert multi.vector.tobytes() == mean.vector.tobytes()
    assert multi.weights.tobytes() == mean.weights.tobytes()
    lowered = robust.multikrum(X, samples, 1, 6)
    assert "lowered to n - f = 5" in lowered.note
    assert np.count_nonzero(lowered.weights) == 5


# --- nearest-neighbour mixing ---------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(peers=peers_strategy(finite32 | tied32, max_size=12), f=st.integers(1, 5))
def test_nnm_mixes_each_row_with_itself_and_its_nearest(
    peers: list[tuple[str, list[float], int]], f: int
) -> None:
    X = stacked(peers)
    n = len(X)
    assume(f < n)
    mixed, M = robust.nnm(X, f)
    D = robust.pairwise_sq_distances(X)
    for i in range(n):
        rows = np.flatnonzero(M[i])
        assert i in rows and len(rows) == n - f
        assert np.all(M[i, rows] == 1.0 / (n - f))
        outside = np.setdiff1d(np.arange(n), rows)
        if outside.size:  # nobody left out is nearer than someone kept
            assert D[i, outside].min() >= D[i, rows].max() or D[i, rows].max() == 0
        assert np.all(mixed[i] >= X[rows].min(axis=0) - 1e-9)
        assert np.all(mixed[i] <= X[rows].max(axis=0) + 1e-9)
    w = np.full(n, 1.0 / n)
    assert robust.unmix(w, M).sum() == pytest.approx(1.0)


@settings(max_examples=150, deadline=None)
@given(
    case=byzantine_set(min_extra=2),
    aggregator=st.sampled_from(["median", "trimmed_mean", "krum", "multikrum", "geomed"]),
)
def test_nnm_then_a_robust_rule_gives_the_honest_mean(
    case: tuple[np.ndarray, list[int], int], aggregator: str
) -> None:
    """With f far outliers, every honest row mixes with exactly the honest rows, so the n - f
    mixed honest rows are one vector, the honest mean, and a majority-respecting rule
    returns it; the outliers get no share."""
    X, honest, f = case
    assume(f >= 1)
    mixed, M = robust.nnm(X, f)
    honest_mean = robust.weighted_sum(X, honest, [1.0 / len(honest)] * len(honest))
    for i in honest:
        assert mixed[i].tobytes() == honest_mean.tobytes()
    agg = robust.aggregate(aggregator, mixed, [1] * len(X), f=f)
    if aggregator == "geomed":
        assert agg.vector == pytest.approx(honest_mean, rel=1e-6, abs=1e-6)
    else:
        if aggregator == "multikrum":  # a weighted sum of n - f copies: exact to rounding
            assert agg.vector == pytest.approx(honest_mean, rel=1e-12, abs=1e-12)
        else:
            assert agg.vector.tobytes() == honest_mean.tobytes()
        shares = robust.unmix(agg.weights, M)
        assert shares.sum() == pytest.approx(1.0)
        assert all(shares[i] == 0 for i in range(len(X)) if i not in honest)


def test_nnm_in_merge_reports_original_nodes_and_skips_when_too_few() -> None:
    rng = np.random.default_rng(5)
    honest = [Contribution(f"h{i}", rng.normal(0, 0.1, D).astype(np.float32), 10) for i in range(6)]
    bad = [Contribution(f"x{i}", np.full(D, -50.0, np.float32), 10) for i in range(2)]
    rule = MergeRule("fedavg", aggregator="median", f=2, mix="nnm")
    base = np.zeros(D, np.float32)
    res = merge(rule, base, honest + bad)
    assert set(res.weights) == {c.node for c in honest + bad}
    assert res.weights["x0"] == res.weights["x1"] == 0.0
    assert sum(res.weights.values()) == pytest.approx(1.0) and res.note == ""
    assert np.all(np.abs(res.params) < 1)
    few = merge(rule, base, honest[:4])
    assert "nnm needs more than 2f = 4 deltas, got 4: skipped" in few.note
    with pytest.raises(ValueError, match="1 <= f < n"):
        robust.nnm(np.zeros((3, D)), 3)


def test_pairwise_distances_are_symmetric_and_exact_without_blas() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(0, 1, (7, 3001))
    Dm = robust.pairwise_sq_distances(X)
    assert np.array_equal(Dm, Dm.T) and np.all(np.diag(Dm) == 0)
    np.testing.assert_allclose(Dm[2, 5], np.sum((X[2] - X[5]) ** 2), rtol=1e-12)


# --- clipping -----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(peers=peers_strategy(finite32), clip=st.floats(1e-3, 2e3))
def test_clipping_bounds_norms(peers: list[tuple[str, list[float], int]], clip: float) -> None:
    X = stacked(peers)
    norms = np.sqrt((X**2).sum(axis=1))
    Xc = X.copy()
    scales = robust.clip_rows(Xc, clip)
    assert np.all(np.sqrt((Xc**2).sum(axis=1)) <= clip * (1 + 1e-12))
    untouched = norms <= clip
    assert np.array_equal(Xc[untouched], X[untouched]) and np.all(scales[untouched] == 1)
    # Through merge: the mean of vectors in a ball stays in the ball.
    zero = np.zeros(D, np.float32)
    result = merge(MergeRule(clip=clip), zero, contributions(peers))
    assert np.sqrt((result.params.astype(np.float64) ** 2).sum()) <= clip * (1 + 1e-6)
    nodes = [p[0] for p in sorted(peers)]
    assert set(result.clipped) == {n for n, s in zip(nodes, scales, strict=True) if s < 1}
    for node, scale in result.clipped.items():
        assert scale == pytest.approx(clip / norms[nodes.index(node)])


def test_clip_applies_before_any_aggregator() -> None:
    zero = np.zeros(2, np.float32)
    contribs = [
        Contribution("a", np.array([3.0, 4.0], np.float32), 1),  # norm 5 -> scaled by 0.2
        Contribution("b", np.array([0.0, 0.5], np.float32), 1),  # norm 0.5 -> untouched
        Contribution("c", np.array([0.0, 1.0], np.float32), 1),
    ]
    result = merge(MergeRule(aggregator="median", clip=1.0), zero, contribs)
    assert result.clipped == {"a": pytest.approx(0.2)}
    # median of x (0.6, 0, 0) and y (0.8, 0.5, 1)
    np.testing.assert_allclose(result.params, [0.0, 0.8], rtol=1e-6)


# --- fallbacks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aggregator", "f", "n", "needs"),
    [
        ("krum", 1, 4, "2f+3 = 5"),
        ("multikrum", 2, 6, "2f+3 = 7"),
        ("bulyan", 1, 6, "4f+3 = 7"),
        ("krum", 0, 2, "2f+3 = 3"),
        ("trimmed_mean", 2, 4, "cannot drop 2"),
    ],
)
def test_too_few_inputs_fall_back_to_the_median_with_a_note(
    aggregator: str, f: int, n: int, needs: str
) -> None:
    rng = np.random.default_rng(n)
    contribs = [
        Contribution(f"n{i}", rng.normal(0, 1, D).astype(np.float32), i + 1) for i in range(n)
    ]
    base = np.zeros(D, np.float32)
    result = merge(MergeRule(aggregator=aggregator, f=f), base, contribs)
    assert needs in result.note and "median" in result.note
    median = merge(MergeRule(aggregator="median"), base, contribs)
    assert result.params.tobytes() == median.params.tobytes()
    assert result.weights == median.weights and median.note == ""
    enough = [*contribs, *(Contribution(f"z{i}", np.ones(D, np.float32), 1) for i in range(9))]
    assert merge(MergeRule(aggregator=aggregator, f=f), base, enough).note == ""


def test_single_contribution_is_taken_by_every_aggregator() -> None:
    delta = np.array([1.0, -2.0, 0.5], np.float32)
    for aggregator in AGGREGATORS:
        result = merge(
            MergeRule(aggregator=aggregator), np.zeros(3, np.float32), [Contribution("a", delta, 3)]
        )
        np.testing.assert_allclose(result.params, delta, rtol=1e-6)
        assert result.weights == {"a": 1.0}


# --- server optimizers --------------------------------------------------------------------


def test_fedadam_and_fedyogi_by_hand() -> None:
    base = np.array([1.0, 1.0], np.float32)
    contribs = [Contribution("a", np.array([0.5, -2.0], np.float32), 1)]
    g = np.array([0.5, -2.0])
    for name in ("fedadam", "fedyogi"):
        rule = MergeRule(name, server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
        first = merge(rule, base, contribs)
        m, v = 0.1 * g, 0.01 * g * g  # from zero state, Adam and Yogi agree
        np.testing.assert_allclose(first.state.velocity, m, rtol=1e-6)
        np.testing.assert_allclose(first.state.second, v, rtol=1e-6)
        np.testing.assert_allclose(first.params, base + 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-6)
        second = merge(rule, first.params, contribs, first.state)
        m2 = 0.9 * m + 0.1 * g
        # Here v < g^2, so Yogi grows v additively by (1 - beta2) g^2.
        yogi_v2 = v - 0.01 * g * g * np.sign(v - g * g)
        v2 = 0.99 * v + 0.01 * g * g if name == "fedadam" else yogi_v2
        np.testing.assert_allclose(second.state.velocity, m2, rtol=1e-6)
        np.testing.assert_allclose(second.state.second, v2, rtol=1e-6)
        expected = first.params + 0.1 * m2 / (np.sqrt(v2) + 1e-3)
        np.testing.assert_allclose(second.params, expected, rtol=1e-5)
        assert len(second.state.to_bytes()) == 8 * 2
    # Yogi shrinks v by (1 - beta2) g^2 when v > g^2, where Adam decays it multiplicatively.
    big = MergeState(np.zeros(2, np.float32), np.full(2, 100.0, np.float32))
    yogi = merge(MergeRule("fedyogi"), base, contribs, big)
    np.testing.assert_allclose(yogi.state.second, 100.0 - 0.01 * g * g, rtol=1e-6)


def test_server_state_must_fit_the_rule() -> None:
    base = np.zeros(2, np.float32)
    contribs = [Contribution("a", np.ones(2, np.float32), 1)]
    one = MergeState(np.ones(2, np.float32))
    two = MergeState(np.ones(2, np.float32), np.ones(2, np.float32))
    negative = MergeState(np.ones(2, np.float32), -np.ones(2, np.float32))
    for rule, state in (
        (MergeRule("fedadam"), one),
        (MergeRule("fedyogi"), one),
        (MergeRule("fedavgm"), two),
        (MergeRule("fedadam"), negative),
    ):
        with pytest.raises(ValueError):
            merge(rule, base, contribs, state)
    with pytest.raises(ValueError, match="not finite"):
        merge(
            MergeRule("fedavg", server_lr=1e30),
            base,
            [Contribution("a", np.full(2, 1e30, np.float32), 1)],
        )


# --- state bytes and rule dicts -----------------------------------------------------------


def test_merge_state_bytes_round_trip_for_0_4n_8n() -> None:
    n = 3
    m = np.array([1.0, -2.0, 0.5], np.float32)
    v = np.array([0.25, 4.0, 0.0], np.float32)
    for state in (MergeState(), MergeState(m), MergeState(m, v)):
        raw = state.to_bytes()
        assert len(raw) in (0, 4 * n, 8 * n)
        back = MergeState.from_bytes(raw, n)
        assert back.to_bytes() == raw and back.state_hash() == state.state_hash()
    assert MergeState(m, v).to_bytes() == m.astype("<f4").tobytes() + v.astype("<f4").tobytes()
    back = MergeState.from_bytes(MergeState(m, v).to_bytes(), n)
    np.testing.assert_array_equal(back.velocity, m)
    np.testing.assert_array_equal(back.second, v)
    with pytest.raises(ValueError):
        back.second[0] = 1.0  # read-only
    for bad in (
        b"\x00" * 4 * (n + 1),
        b"\x00" * 12 * n,
        np.array([0, 0, 0, 0, np.inf, 0], "<f4").tobytes(),
    ):
        with pytest.raises(ValueError):
            MergeState.from_bytes(bad, n)
    with pytest.raises(ValueError):
        MergeState(None, v)
    with pytest.raises(ValueError):
        MergeState(m, np.zeros(4, np.float32))


def test_old_rule_dicts_mean_what_they_meant() -> None:
    old = MergeRule.from_dict({"name": "fedavgm", "server_lr": 1.0, "momentum": 0.5})
    assert old.aggregator == "mean" and old.clip is None and old.f == 0
    assert old == MergeRule("fedavgm", 1.0, 0.5)
    assert RULES == SERVER_RULES


def test_to_dict_emits_every_field_and_round_trips() -> None:
    rule = MergeRule(
        "fedyogi",
        server_lr=0.03,
        aggregator="trimmed_mean",
        f=2,
        trim=0.2,
        clip=5.0,
        beta1=0.8,
        beta2=0.95,
        tau=1e-4,
        geomed_iters=7,
        geomed_tol=1e-8,
    )
    data = rule.to_dict()
    assert set(data) == {
        "name", "server_lr", "momentum", "aggregator", "f", "trim", "clip", "beta1",
        "beta2", "tau", "geomed_iters", "geomed_tol", "multikrum_m", "mix",
    }  # fmt: skip
    assert MergeRule.from_dict(data) == rule
    assert MergeRule.from_dict(MergeRule().to_dict()) == MergeRule()
    multi = MergeRule(aggregator="multikrum", f=1, multikrum_m=4)
    assert MergeRule.from_dict(multi.to_dict()) == multi


@pytest.mark.parametrize(
    "bad",
    [
        {"aggregator": "average"},
        {"aggregator": None},
        {"name": "fedprox"},
        {"f": -1},
        {"f": 1.0},
        {"f": True},
        {"aggregator": "trimmed_mean", "trim": 0.5},
        {"aggregator": "trimmed_mean", "trim": -0.1},
        {"trim": 0.1},  # trim without trimmed_mean
        {"aggregator": "trimmed_mean", "trim": "0.1"},
        {"clip": 0},
        {"clip": -1.0},
        {"clip": float("nan")},
        {"beta1": 1.0},
        {"beta2": -0.5},
        {"tau": 0},
        {"geomed_iters": 0},
        {"geomed_iters": 10**9},
        {"geomed_iters": 2.5},
        {"geomed_tol": 0},
        {"multikrum_m": 3},  # without multikrum
        {"aggregator": "multikrum", "multikrum_m": 0},
        {"mix": "nnm"},  # mixing needs f >= 1
        {"mix": "bucketing", "f": 1},
        {"mix": 1, "f": 1},
        {"velocity": 1},
        {"Name": "fedavg"},
    ],
)
def test_from_dict_refuses_bad_values_and_unknown_keys(bad: dict) -> None:
    with pytest.raises(ValueError):
        MergeRule.from_dict(bad)


# --- the command line's --merge -------------------------------------------------------------


def test_parse_merge_words_over_the_standard_rule() -> None:
    from edge_swarm.swarm.merge import STANDARD_MERGE

    assert parse_merge("") == STANDARD_MERGE
    rule = parse_merge("nnm+trimmed_mean, f=2 ,clip=2.5")
    assert (rule.name, rule.momentum, rule.aggregator, rule.mix) == (
        "fedavgm", 0.5, "trimmed_mean", "nnm",
    )  # fmt: skip
    assert (rule.f, rule.clip) == (2, 2.5)
    assert parse_merge("fedadam,server_lr=0.05,median").name == "fedadam"
    assert parse_merge("multikrum,f=1,multikrum_m=4").multikrum_m == 4
    assert parse_merge("clip=2,clip=none").clip is None
    assert parse_merge("median", MergeRule("fedavg")).name == "fedavg"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("medain", "'medain' is not a server rule"),
        ("nnm", "needs f >= 1"),
        ("f=two", "f takes an integer"),
        ("clip=big", "clip takes a number"),
        ("speed=3", "unknown field 'speed'"),
        ("trim=0.2", "trim applies to trimmed_mean only"),
    ],
)
def test_parse_merge_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_merge(text)


def test_the_cli_lists_the_poisoning_attacks_without_importing_numpy() -> None:
    from edge_swarm.cli.main import ATTACK_NAMES
    from edge_swarm.learn.poison import ATTACKS

    assert ATTACK_NAMES == ATTACKS


@pytest.mark.parametrize(
    ("rule", "need"),
    [
        (MergeRule(), 1),
        (MergeRule(aggregator="median", f=3), 1),
        (MergeRule(aggregator="trimmed_mean", f=2), 5),
        (MergeRule(aggregator="trimmed_mean", f=2, trim=0.2), 1),
        (MergeRule(aggregator="krum", f=2), 7),
        (MergeRule(aggregator="multikrum", f=1), 5),
        (MergeRule(aggregator="bulyan", f=2), 11),
        (MergeRule(aggregator="median", f=2, mix="nnm"), 5),
        (MergeRule(aggregator="bulyan", f=1, mix="nnm"), 7),
    ],
)
def test_min_deltas_is_where_the_rule_stops_falling_back(rule: MergeRule, need: int) -> None:
    assert rule.min_deltas() == need
    rng = np.random.default_rng(need)

    def run(n: int) -> str:
        contribs = [
            Contribution(f"a{i:02d}", rng.normal(0, 1, D).astype(np.float32), 10) for i in range(n)
        ]
        return merge(rule, np.zeros(D, np.float32), contribs).note

    assert "lowered" not in run(need) and "median" not in run(need) and "skipped" not in run(need)
    if need > 1:
        assert run(need - 1) != ""
