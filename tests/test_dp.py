"""Client-level DP: a clip that never overshoots, noise shares that add up to the configured
multiplier, a discrete Gaussian with the right law and speed, and an accountant that says
exactly what dp-accounting says.

Numbers (one core of a shared 2-core x86-64 VM, numpy 2.4, dp-accounting 0.6): 2,410 discrete
Gaussian samples take about 0.13 ms at sigma 1e5 (and at 1e7); after 20 full-participation
rounds at delta 1e-5 the RDP accountant gives epsilon 1 at z ~ 18.09, 3 at z ~ 6.68 and 8 at
z ~ 2.85 (``test_noise_for_epsilon_inverts_epsilon`` pins them to 1%).
"""

from __future__ import annotations

import math
import time

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge_swarm.swarm.dp import (
    DPError,
    clip,
    discrete_gaussian,
    discrete_share,
    effective_multiplier,
    epsilon,
    gaussian_share,
    integer_sensitivity,
    new_rng,
    noise_for_epsilon,
)

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


# --------------------------------------------------------------------------- clip


@given(
    arrays(np.float64, st.integers(0, 60), elements=finite)
    | arrays(np.float32, 7, elements=st.floats(-1e3, 1e3, width=32)),
    st.floats(1e-6, 1e4),
)
def test_clip_never_overshoots_and_keeps_direction(x, bound) -> None:
    before = x.copy()
    out, norm = clip(x, bound)
    assert out.dtype == np.float64 and np.array_equal(x, before)  # input untouched
    assert norm == pytest.approx(float(np.linalg.norm(x.astype(np.float64))))
    assert float(np.linalg.norm(out)) <= bound  # exactly, not approximately
    if norm <= bound:
        assert np.array_equal(out, x.astype(np.float64))
    else:
        assert float(np.linalg.norm(out)) == pytest.approx(bound, rel=1e-12)
        assert np.allclose(out * norm / bound, x, rtol=1e-9, atol=1e-9 * norm)


def test_clip_statistics_on_random_updates() -> None:
    """No model, no gradients: 20,000 random 2,410-coordinate "updates" whose norms straddle
    the bound. The clipped share equals the share of norms above it, clipped norms are
    min(norm, C), and clipping isotropic updates adds no bias in any direction."""
    rng = np.random.default_rng(11)
    n, d, c = 20_000, 2410, 1.0
    scales = rng.lognormal(mean=0.0, sigma=0.5, size=n) / math.sqrt(d)
    norms, clipped_norms, total = [], [], np.zeros(d)
    for s in scales:
        out, norm = clip(rng.normal(size=d) * s, c)
        norms.append(norm)
        clipped_norms.append(float(np.linalg.norm(out)))
        total += out
    norms_a, clipped_a = np.array(norms), np.array(clipped_norms)
    assert np.allclose(clipped_a, np.minimum(norms_a, c), rtol=1e-12)
    assert 0.4 < float(np.mean(norms_a > c)) < 0.6  # the straddle worked
    # Each coordinate of the mean has std <= c / sqrt(d * n); 5 sigma over all of them.
    assert float(np.abs(total / n).max()) < 5 * c / math.sqrt(d * n) * 1.2


def test_clip_refuses_bad_input() -> None:
    with pytest.raises(DPError, match="NaN"):
        clip(np.array([np.nan]), 1.0)
    for bad in (0.0, -1.0, math.inf, math.nan, True, "1"):
        with pytest.raises(DPError):
            clip(np.ones(3), bad)


# --------------------------------------------------------------------------- noise


def exact_moments(sigma: float) -> tuple[float, float]:
    """Mean and variance of N_Z(0, sigma^2) by summing its mass function."""
    k = np.arange(-int(40 * sigma) - 10, int(40 * sigma) + 11, dtype=np.float64)
    w = np.exp(-(k**2) / (2 * sigma**2))
    w /= w.sum()
    return float((w * k).sum()), float((w * k * k).sum())


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0, 10.0, 1e3, 1e5, 1e7])
def test_discrete_gaussian_moments(sigma) -> None:
    rng = np.random.default_rng(int(sigma * 10))
    x = discrete_gaussian(100_000, sigma=sigma, rng=rng)
    assert x.dtype == np.int64 and x.shape == (100_000,)
    var = exact_moments(sigma)[1] if sigma < 100 else sigma**2
    assert abs(float(x.mean())) < 5 * math.sqrt(var / x.size)
    assert float(x.var()) / var == pytest.approx(1.0, abs=0.03)  # SE of the ratio is 0.45%


@pytest.mark.parametrize("sigma", [0.8, 1.5, 4.0])
def test_discrete_gaussian_law(sigma) -> None:
    """Chi-square against the exact mass function (bins with >= 5 expected, tails pooled)."""
    rng = np.random.default_rng(3)
    n = 100_000
    x = discrete_gaussian(n, sigma=sigma, rng=rng)
    k = np.arange(-int(12 * sigma) - 2, int(12 * sigma) + 3)
    p = np.exp(-(k.astype(np.float64) ** 2) / (2 * sigma**2))
    p /= p.sum()
    keep = p * n >= 5
    lo, hi = k[keep][0], k[keep][-1]
    observed = [np.sum(x < lo)] + [np.sum(x == v) for v in range(lo, hi + 1)] + [np.sum(x > hi)]
    expected = [p[k < lo].sum() * n] + list(p[keep] * n) + [p[k > hi].sum() * n]
    obs, exp = np.array(observed, dtype=float), np.array(expected)
    mask = exp > 0
    chi2 = float((((obs - exp) ** 2)[mask] / exp[mask]).sum())
    dof = int(mask.sum()) - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof)  # ~ the 99.99% quantile


def test_discrete_gaussian_is_fast() -> None:
    rng = new_rng()
    for sigma in (1e5, 1e7):
        best = math.inf
        for _ in range(10):
            t = time.perf_counter()
            discrete_gaussian(2410, sigma=sigma, rng=rng)
            best = min(best, time.perf_counter() - t)
        assert best < 0.010, f"{best * 1e3:.2f} ms at sigma {sigma:g}"  # 50 ms is the limit


def test_discrete_gaussian_edges() -> None:
    rng = np.random.default_rng(0)
    assert discrete_gaussian((3, 4), sigma=0.0, rng=rng).tolist() == [[0] * 4] * 3
    assert discrete_gaussian((2, 5), sigma=2.0, rng=rng).shape == (2, 5)
    assert discrete_gaussian(0, sigma=2.0, rng=rng).shape == (0,)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(DPError):
            discrete_gaussian(3, sigma=bad, rng=rng)


def test_noise_shares_add_up_to_the_multiplier() -> None:
    rng = np.random.default_rng(5)
    z, c, n, d = 1.3, 0.5, 8, 50_000
    total = sum(
        gaussian_share(d, noise_multiplier=z, clip=c, n_agents=n, rng=rng) for _ in range(n)
    )
    assert float(np.std(total)) == pytest.approx(z * c, rel=0.02)
    scale = 1e6
    delta = integer_sensitivity(c, scale, d)
    assert delta == c * scale + math.sqrt(d) / 2
    itotal = sum(
        discrete_share(d, noise_multiplier=z, clip=c, scale=scale, n_agents=n, rng=rng)
        for _ in range(n)
    )
    assert itotal.dtype == np.int64
    assert float(np.std(itotal)) == pytest.approx(z * delta, rel=0.02)
    assert not discrete_share(
        4, noise_multiplier=0.0, clip=c, scale=scale, n_agents=n, rng=rng
    ).any()


def test_effective_multiplier_matches_the_noise_actually_summed() -> None:
    rng = np.random.default_rng(9)
    z, c, expected, included = 2.0, 1.0, 8, 5
    shares = [
        gaussian_share(40_000, noise_multiplier=z, clip=c, n_agents=expected, rng=rng)
        for _ in range(included)
    ]
    z_eff = effective_multiplier(z, expected, included)
    assert z_eff == pytest.approx(z * math.sqrt(5 / 8))
    assert float(np.std(sum(shares))) / c == pytest.approx(z_eff, rel=0.02)
    assert effective_multiplier(z, 8, 8) == z
    assert effective_multiplier(math.inf, 8, 0) == 0.0
    with pytest.raises(DPError):
        effective_multiplier(-1.0, 8, 5)
    with pytest.raises(DPError):
        effective_multiplier(1.0, 0, 5)


def test_new_rng_is_never_the_same_twice() -> None:
    assert new_rng().integers(0, 2**63) != new_rng().integers(0, 2**63)


# --------------------------------------------------------------------------- accountant


def direct(zs: list[float], delta: float) -> float:
    accountant = RdpAccountant()
    for z in zs:
        accountant.compose(dp_accounting.GaussianDpEvent(z))
    return accountant.get_epsilon(delta)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.3, 50.0), min_size=1, max_size=30), st.sampled_from([1e-3, 1e-5, 1e-7]))
def test_epsilon_is_what_dp_accounting_says(zs, delta) -> None:
    assert epsilon(zs, delta) == direct(zs, delta)


def test_epsilon_grows_with_rounds_and_handles_the_edges() -> None:
    eps = [epsilon([1.1] * r, 1e-5) for r in range(1, 30)]
    assert all(a < b for a, b in zip(eps, eps[1:], strict=False))
    assert epsilon([], 1e-5) == 0.0
    assert epsilon([2.0, 0.0, 2.0], 1e-5) == math.inf  # a round without noise
    assert epsilon([2.0, math.inf, 2.0], 1e-5) == direct([2.0, 2.0], 1e-5)  # a round with no output
    for bad in ([-1.0], [math.nan]):
        with pytest.raises(DPError):
            epsilon(bad, 1e-5)
    for bad_delta in (0.0, 1.0, -1e-5, math.nan):
        with pytest.raises(DPError):
            epsilon([1.0], bad_delta)


@pytest.mark.parametrize(("target", "z_pinned"), [(1.0, 18.09), (3.0, 6.678), (8.0, 2.852)])
def test_noise_for_epsilon_inverts_epsilon(target, z_pinned) -> None:
    z = noise_for_epsilon(target, 20, 1e-5)
    spent = epsilon([z] * 20, 1e-5)
    assert spent <= target and spent == pytest.approx(target, rel=0.01)
    assert z == pytest.approx(z_pinned, rel=0.01)
    assert epsilon([z * 0.99] * 20, 1e-5) > target  # and it is (nearly) the smallest such z


def test_noise_for_epsilon_refuses_nonsense() -> None:
    for args in ((0.0, 20, 1e-5), (1.0, 0, 1e-5), (1.0, 20, 2.0)):
        with pytest.raises(DPError):
            noise_for_epsilon(*args)


def test_clip_survives_a_norm_that_overflows() -> None:
    x = np.array([1e200, -1e200, 3e199])
    out, norm = clip(x, 2.0)
    assert math.isinf(norm) or norm > 1e200
    assert float(np.linalg.norm(out)) <= 2.0
    assert np.allclose(out / np.linalg.norm(out), x / 1e200 / np.linalg.norm(x / 1e200))
