"""Client-level differential privacy: clipping, each agent's share of the noise, the accountant.

How it works
------------
DP-FedAvg (McMahan et al. 2018) at the level of a whole agent: each agent clips its update
to the L2 bound ``C`` fixed at genesis (``clip``), so adding or removing one agent moves the
sum by at most ``C``. The sum then carries Gaussian noise of standard deviation ``z * C``
(``z``: the noise multiplier). Nobody adds it centrally: each of the ``n`` expected agents
adds a share of standard deviation ``z * C / sqrt(n)`` (independent shares add up in
variance), so no one, the committee included, ever sees an update without noise.

What the guarantee covers depends on secure aggregation. With it, the committee sees only
the sum, which carries the full ``z``. Without it ("dp" alone) the committee sees each
update with its own share only, i.e. at multiplier ``z / sqrt(n)``: ``z`` then protects the
model that leaves the swarm, not an update against the committee that merges it.

- Without secure aggregation the share is a float Gaussian (``gaussian_share``).
- With it, the share is added to the fixed-point integers before masking: a discrete
  Gaussian (Canonne, Kamath, Steinke 2020) of ``sigma = z * Delta / sqrt(n)`` where
  ``Delta = C * scale + sqrt(d) / 2`` is the L2 sensitivity of the *integer* sum (rounding
  each of ``d`` coordinates moves the norm by up to ``sqrt(d) / 2``) (``discrete_share``).
  This is the distributed discrete Gaussian of Kairouz et al. 2021: a sum of ``n`` discrete
  Gaussians of parameter ``sigma`` is within ``tau = 10 * sum_{k<n} exp(-2 pi^2 sigma^2
  k/(k+1))`` of a discrete Gaussian, whose Renyi DP is at most the continuous one's. Each
  term is below ``exp(-pi^2 sigma^2)``, so ``tau < 1e-30`` from ``sigma = 3`` for up to a
  million agents (our ``sigma`` is ~1e6): the accountant treats the sum as the Gaussian
  mechanism and ignores ``tau``.

The accountant (``epsilon``) composes one ``dp_accounting.GaussianDpEvent(z)`` per round in
Google's RDP accountant: every agent takes part in every round (no subsampling, so no
amplification is claimed), add-or-remove-one-agent adjacency. A round in which fewer agents
contributed noise than expected is accounted at ``effective_multiplier``.

Invariants and limits
---------------------
- ``clip`` returns a vector whose float64 L2 norm is ``<= bound`` exactly, never above by an
  ulp, and leaves one within the bound unchanged.
- Noise comes only from ``new_rng`` (seeded by the OS): it must never be reproducible from
  public data such as a round hash.
- The guarantee assumes every included agent clips and adds its share honestly; a device
  that lies about either weakens it (docs/SECURITY.md). Float Gaussian noise has the known
  floating-point weaknesses (Mironov 2012); the discrete path does not.

Pure: no sockets, threads or logging. ``dp_accounting`` is imported only inside the
accountant functions (gateways and the operator's machine need it, devices never do).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

__all__ = [
    "DPError",
    "clip",
    "discrete_gaussian",
    "discrete_share",
    "effective_multiplier",
    "epsilon",
    "gaussian_share",
    "integer_sensitivity",
    "new_rng",
    "noise_for_epsilon",
]


class DPError(ValueError):
    """A differential-privacy parameter or value that makes no sense (the message says which)."""


def _positive(value: object, what: str, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise DPError(f"{what} must be a number, not {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not zero):
        raise DPError(f"{what} must be finite and {'>=' if zero else '>'} 0, not {value!r}")
    return v


def _count(value: object, what: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise DPError(f"{what} must be an int >= {low}, not {value!r}")
    return int(value)


def _shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    for d in dims:
        _count(d, "a dimension", 0)
    return tuple(int(d) for d in dims)


# --------------------------------------------------------------------------- clipping


def clip(delta: np.ndarray, bound: float) -> tuple[np.ndarray, float]:
    """Scale ``delta`` down to L2 norm ``<= bound``; return ``(clipped, original norm)``.

    The result is float64 whatever came in: the clip is the DP guarantee's premise, and a
    float32 round-trip could push the norm an ulp over the bound. Raises DPError on a bound
    that is not finite and > 0, or a delta with NaN or infinity.
    """
    b = _positive(bound, "bound")
    x = np.array(delta, dtype=np.float64)  # a copy: the caller's array is never touched
    if not np.all(np.isfinite(x)):
        raise DPError("cannot clip a delta with NaN or infinity")
    work = x
    with np.errstate(over="ignore"):  # an overflow is handled just below
        norm = inner = float(np.linalg.norm(x))
    if math.isinf(norm):  # the squares overflow (|x| near 1e154): clip the rescaled vector
        big = float(np.abs(x).max())
        work = x / big
        inner = float(np.linalg.norm(work))
        norm = big * inner  # the reported norm may itself be inf
    if norm <= b:
        return x, norm
    factor = b / inner
    out = work * factor
    while float(np.linalg.norm(out)) > b:  # rounding can leave it an ulp over: step down
        factor = math.nextafter(factor, 0.0)
        out = work * factor
    return out, norm


# --------------------------------------------------------------------------- noise


def new_rng() -> np.random.Generator:
    """A generator seeded with 256 bits from the OS, for noise nobody can reproduce."""
    return np.random.default_rng(int.from_bytes(os.urandom(32), "little"))


def gaussian_share(
    shape: int | Sequence[int],
    *,
    noise_multiplier: float,
    clip: float,
    n_agents: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """One agent's float noise share: N(0, (z * C)^2 / n) per coordinate, float64, so that
    ``n`` shares sum to N(0, (z * C)^2)."""
    z = _positive(noise_multiplier, "noise_multiplier", zero=True)
    c = _positive(clip, "clip")
    n = _count(n_agents, "n_agents")
    return rng.normal(0.0, z * c / math.sqrt(n), size=_shape(shape))


def discrete_gaussian(
    shape: int | Sequence[int], *, sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """Samples of the discrete Gaussian N_Z(0, sigma^2) (P(k) ~ exp(-k^2 / (2 sigma^2))), int64.

    Algorithm 3 of Canonne, Kamath, Steinke 2020, vectorised: draw discrete Laplace
    ``Y = G1 - G2`` (two geometrics of parameter ``1 - exp(-1/t)``, ``t = floor(sigma) + 1``)
    and accept with probability ``exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2))``, in batches until
    every coordinate has a sample. The acceptance test is in float64, not the paper's exact
    Bernoulli arithmetic: the float error is ~1e-16 relative, far below what the accountant
    or any statistical test could see, and it keeps 2,410 samples at sigma 1e5 well under
    a millisecond. sigma = 0 gives zeros.
    """
    s = _positive(sigma, "sigma", zero=True)
    dims = _shape(shape)
    size = math.prod(dims)
    if s == 0 or size == 0:
        return np.zeros(dims, dtype=np.int64)
    t = math.floor(s) + 1
    p = -math.expm1(-1.0 / t)  # 1 - exp(-1/t), accurate for large t
    shift = s * s / t
    out = np.empty(size, dtype=np.int64)
    filled = 0
    while filled < size:
        need = size - filled
        m = int(need * 1.6) + 32  # acceptance is about 0.7 or more; one batch usually does
        y = rng.geometric(p, m) - rng.geometric(p, m)
        keep = rng.random(m) < np.exp(-((np.abs(y) - shift) ** 2) / (2 * s * s))
        got = y[keep][:need]
        out[filled : filled + got.size] = got
        filled += got.size
    return out.reshape(dims)


def integer_sensitivity(clip: float, scale: float, dim: int) -> float:
    """L2 sensitivity of the fixed-point sum: ``clip * scale`` plus ``sqrt(dim) / 2`` for the
    rounding of each coordinate to the nearest integer."""
    return (
        _positive(clip, "clip") * _positive(scale, "scale") + math.sqrt(_count(dim, "dim", 0)) / 2
    )


def discrete_share(
    shape: int | Sequence[int],
    *,
    noise_multiplier: float,
    clip: float,
    scale: float,
    n_agents: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """One agent's integer noise share, int64: discrete Gaussian of ``sigma = z * Delta /
    sqrt(n)``, ``Delta = integer_sensitivity(clip, scale, d)`` with ``d`` the number of
    coordinates. Add it to the encoded update before masking (``secagg.add_mod``)."""
    z = _positive(noise_multiplier, "noise_multiplier", zero=True)
    n = _count(n_agents, "n_agents")
    dims = _shape(shape)
    delta = integer_sensitivity(clip, scale, math.prod(dims))
    return discrete_gaussian(dims, sigma=z * delta / math.sqrt(n), rng=rng)


def effective_multiplier(z: float, n_expected: int, n_included: int) -> float:
    """The noise multiplier a round actually delivered when ``n_included`` of the
    ``n_expected`` agents' noise shares are in the sum.

    Each share has variance ``(z C)^2 / n_expected``; the sum of ``n_included`` of them has
    variance ``n_included (z C)^2 / n_expected``, while the sensitivity is still ``C`` (one
    agent's clipped update). Its standard deviation over ``C`` is
    ``z * sqrt(n_included / n_expected)``: dropouts take their noise with them, so a round
    with fewer agents spends more privacy. (More agents than expected gives more noise.)
    """
    zf = float(z) if isinstance(z, (int, float)) and not isinstance(z, bool) else math.nan
    if math.isnan(zf) or zf < 0:
        raise DPError(f"z must be a number >= 0, not {z!r}")
    expected = _count(n_expected, "n_expected")
    included = _count(n_included, "n_included", 0)
    if math.isinf(zf):
        return math.inf if included else 0.0  # no agent, no noise, and no output either
    return zf * math.sqrt(included / expected)


# --------------------------------------------------------------------------- accounting


def _check_delta(delta: object) -> float:
    d = _positive(delta, "delta")
    if d >= 1:
        raise DPError(f"delta must be in (0, 1), not {delta!r}")
    return d


def epsilon(noise_multipliers: Sequence[float], delta: float) -> float:
    """The epsilon at ``delta`` after one full-participation round per noise multiplier.

    Composes ``dp_accounting.GaussianDpEvent(z)`` once per round, in order, in
    ``dp_accounting.rdp.RdpAccountant()`` (default orders, add-or-remove-one). No rounds
    gives 0. A round with ``z = 0`` released an update without noise: epsilon is infinite
    from then on. ``z = inf`` released nothing and costs nothing (it is skipped). Raises
    DPError on a negative or NaN multiplier or ``delta`` outside (0, 1); ImportError if the
    ``privacy`` extra is not installed.
    """
    d = _check_delta(delta)
    zs: list[float] = []
    for z in noise_multipliers:
        try:
            zf = float(z)
        except (TypeError, ValueError):
            zf = math.nan
        if isinstance(z, bool) or math.isnan(zf) or zf < 0:
            raise DPError(f"a noise multiplier must be a number >= 0, not {z!r}")
        zs.append(zf)
    if any(z == 0 for z in zs):
        return math.inf
    import dp_accounting  # lazy: only gateways and the operator account
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    for z in zs:
        if math.isfinite(z):
            accountant.compose(dp_accounting.GaussianDpEvent(z))
    return float(accountant.get_epsilon(d))


def noise_for_epsilon(target: float, rounds: int, delta: float, *, rtol: float = 1e-4) -> float:
    """The smallest noise multiplier (to relative ``rtol``) whose ``rounds`` rounds spend at
    most ``target`` epsilon at ``delta``: bisection on ``epsilon([z] * rounds, delta)``,
    which falls as ``z`` grows. The result satisfies ``epsilon(...) <= target``."""
    goal = _positive(target, "target")
    r = _count(rounds, "rounds")
    d = _check_delta(delta)
    tol = _positive(rtol, "rtol")

    def spent(z: float) -> float:
        return epsilon([z] * r, d)

    lo, hi = 1e-3, 1.0
    while spent(hi) > goal:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise DPError(f"no noise multiplier up to 1e6 reaches epsilon {goal}")
    if spent(lo) <= goal:
        return lo  # the target is so loose that a token amount of noise meets it
    while hi - lo > tol * hi:
        mid = math.sqrt(lo * hi)  # geometric: z spans orders of magnitude
        if spent(mid) > goal:
            lo = mid
        else:
            hi = mid
    return hi
