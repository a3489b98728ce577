"""The poisoning harness (edge_swarm.learn.poison): each attack does what it says, with its
default strength, and refuses what it cannot do."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_swarm.learn.poison import (
    ATTACKS,
    COLLUDING,
    DEFAULT_STRENGTH,
    Attack,
    alie_z,
    colluding_delta,
    poison_delta,
    poison_labels,
)

RNG = np.random.default_rng(0)
DELTA = RNG.normal(0, 0.01, 500).astype(np.float32)


def test_sign_flip_and_scale_are_multiples_of_the_honest_delta() -> None:
    rng = np.random.default_rng(1)
    flip = poison_delta(Attack("sign_flip"), DELTA, rng)
    assert flip.dtype == np.float32
    np.testing.assert_allclose(flip, -4.0 * DELTA, rtol=1e-6)
    np.testing.assert_allclose(poison_delta(Attack("scale", 3.0), DELTA, rng), 3 * DELTA, rtol=1e-6)


def test_noise_replaces_the_delta_with_noise_of_its_scale() -> None:
    out = poison_delta(Attack("noise"), DELTA, np.random.default_rng(2))
    assert out.shape == DELTA.shape and abs(np.corrcoef(out, DELTA)[0, 1]) < 0.2
    assert np.std(out) == pytest.approx(5 * np.std(DELTA), rel=0.15)
    zero = poison_delta(Attack("noise"), np.zeros(100, np.float32), np.random.default_rng(2))
    assert np.std(zero) > 0  # a zero delta still gets noise, not a division by zero


def test_huge_is_large_finite_and_keeps_the_signs() -> None:
    out = poison_delta(Attack("huge"), DELTA, np.random.default_rng(3))
    assert np.all(np.isfinite(out)) and np.all(np.abs(out) == 1000.0)
    assert np.all(np.sign(out[DELTA != 0]) == np.sign(DELTA[DELTA != 0]))


def test_label_flip_changes_the_labels_not_the_delta() -> None:
    y = np.array([0, 1, 2, 9, 5], dtype=np.int64)
    flipped = poison_labels(Attack("label_flip"), y, 10)
    assert flipped.tolist() == [9, 8, 7, 0, 4] and flipped.dtype == y.dtype
    assert poison_delta(Attack("label_flip"), DELTA, RNG).tobytes() == DELTA.tobytes()
    for name in ATTACKS:
        if name != "label_flip":
            assert poison_labels(Attack(name), y, 10) is y


def test_attack_defaults_and_refusals() -> None:
    for name in ATTACKS:
        assert Attack(name).strength == DEFAULT_STRENGTH[name]
        assert Attack.from_dict(Attack(name, 2.5).to_dict()) == Attack(name, 2.5)
    for bad in ("backdoor", "", "ALIE"):
        with pytest.raises(ValueError, match="attack must be one of"):
            Attack(bad)
    for strength in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="strength"):
            Attack("scale", strength)
    for obj in ([], {"strength": 1}, {"name": "scale", "other": 1}):
        with pytest.raises(ValueError, match="attack is a table"):
            Attack.from_dict(obj)


# --- colluding, omniscient attacks (simulation only) ---------------------------------------


def test_alie_z_matches_the_paper() -> None:
    # n = 50, f = 24 in Baruch et al.: s = 2, z = inv_cdf(48/50) ~ 1.75.
    assert alie_z(50, 24) == pytest.approx(NormalDist().inv_cdf(48 / 50))
    assert alie_z(8, 2) == pytest.approx(NormalDist().inv_cdf(5 / 8))  # s = 3
    for n, f in ((8, 0), (8, 8), (1, 1)):
        with pytest.raises(ValueError):
            alie_z(n, f)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_honest=st.integers(2, 10))
def test_alie_stays_inside_the_honest_spread(seed: int, n_honest: int) -> None:
    rng = np.random.default_rng(seed)
    honest = [rng.normal(0, 1, 20).astype(np.float32) for _ in range(n_honest)]
    out = colluding_delta("alie", honest, n_honest + 2, 2)
    H = np.stack(honest).astype(np.float64)
    z = alie_z(n_honest + 2, 2)
    np.testing.assert_allclose(out, H.mean(0) - z * H.std(0), rtol=1e-5, atol=1e-5)
    if z > 0:  # mean - z std lies between the mean and the mean - z std: below the mean
        assert np.all(out <= H.mean(0) + 1e-6)


def test_ipm_points_against_the_honest_mean() -> None:
    honest = [np.full(4, v, np.float32) for v in (1.0, 2.0, 3.0)]
    np.testing.assert_allclose(colluding_delta("ipm", honest, 5, 2), [-0.2] * 4)
    np.testing.assert_allclose(colluding_delta("ipm", honest, 5, 2, 1.0), [-2.0] * 4)
    assert set(COLLUDING) == {"alie", "ipm"}
    with pytest.raises(ValueError, match="colluding attack"):
        colluding_delta("sign_flip", honest, 5, 2)
    with pytest.raises(ValueError, match="needs the honest deltas"):
        colluding_delta("ipm", [], 5, 2)
