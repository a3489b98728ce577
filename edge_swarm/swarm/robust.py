"""Aggregators over stacked deltas: mean, median, trimmed mean, geometric median, Krum,
Multi-Krum and Bulyan, plus two pre-steps: norm clipping and nearest-neighbour mixing.

How it works:
    Every aggregator takes ``X``, an (n, d) float64 matrix whose rows are the peers' deltas in
    node-id order, and returns an `Aggregate`: the d-vector, each row's share in it (summing
    to 1, 0 for a row left out) and a note when it had to fall back.

    - mean:          sample-weighted mean, accumulated row by row.
    - median:        coordinate-wise median (the mean of the two middle values for even n).
    - trimmed_mean:  per coordinate, drop the k lowest and k highest values, average the rest.
    - geomed:        sample-weighted geometric median by Weiszfeld's iteration, started at the
                     weighted mean, with distances floored at GEOMED_EPS.
    - krum:          the row with the smallest sum of squared distances to its n-f-2 nearest
                     neighbours (Blanchard et al. 2017).
    - multikrum:     sample-weighted mean of the m best-scored rows.
    - bulyan:        select n-2f rows by iterated Krum, then per coordinate average the
                     n-4f selected values closest to their median (El Mhamdi et al. 2018).

    Nearest-neighbour mixing (`nnm`, Allouah et al. 2023, "Fixing by Mixing") replaces each
    row by the mean of its n-f nearest rows (itself included) before the aggregator runs.
    Honest deltas of a non-IID swarm are far apart, and a coordinate-wise or selecting rule
    then throws away or biases honest information; after mixing, every honest row is close
    to the honest mean while a poisoner's row is pulled toward the honest ones, so the median,
    trimmed mean, Krum and Bulyan lose far less to heterogeneity and to attacks.

Invariants:
    - Pure functions of (X, sample counts, parameters); no randomness. Rows are in node-id
      order and every tie (equal values, equal scores) is broken by row index, i.e. node id.
    - Every reduction has a fixed order: elementwise float64 operations, numpy's pairwise sum
      along one row, stable sorts, and sums of order statistics taken in ascending order. No
      BLAS (``@``, ``np.dot``, ``np.linalg.norm``): its kernels sum in a CPU-dependent order,
      so two honest nodes could disagree in the last bit.
    - Median, trimmed mean and Bulyan return, per coordinate, a value inside the [min, max] of
      the values they kept.
    - An input set too small for ``f`` is not an error (the swarm must not stall): the rule
      falls back to the coordinate-wise median and says so in ``note``. ValueError only for
      misuse (bad parameters or shapes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

AGGREGATORS = ("mean", "median", "trimmed_mean", "geomed", "krum", "multikrum", "bulyan")

# Weiszfeld divides by each row's distance to the estimate; a row equal to the estimate
# would divide by zero. Floored, it gets a huge finite weight and holds the estimate there.
GEOMED_EPS = 1e-12

# float64 elements of row differences held at once by `pairwise_sq_distances` (16 MiB), so
# 64 peers of a large model do not need an (n, n, d)-sized or (n, d)-sized temporary each.
_CHUNK_ELEMENTS = 1 << 21


@dataclass(frozen=True, eq=False)
class Aggregate:
    """An aggregator's output: the float64 ``vector``, each row's share in it (float64,
    summing to 1, 0 for a row left out) and a ``note`` saying why it fell back, if it did."""

    vector: np.ndarray
    weights: np.ndarray
    note: str = ""


def shares(samples: Sequence[int], rows: Sequence[int]) -> list[float]:
    """``samples[i] / sum(samples[rows])`` for each i in ``rows``.

    Computed on Python ints: the total is exact however large the counts, and each quotient
    is correctly rounded, so it does not depend on numpy's integer width."""
    total = sum(samples[i] for i in rows)
    return [samples[i] / total for i in rows]


def weighted_sum(X: np.ndarray, rows: Sequence[int], weights: Sequence[float]) -> np.ndarray:
    """``sum(w * X[i])`` over ``rows`` in the given order, in float64."""
    acc = np.zeros(X.shape[1], dtype=np.float64)
    for i, w in zip(rows, weights, strict=True):
        acc += w * X[i]
    return acc


def sq_norms(X: np.ndarray) -> np.ndarray:
    """Squared L2 norm of each row (pairwise sum along the row, no BLAS)."""
    return np.square(X).sum(axis=1)


def clip_rows(X: np.ndarray, clip: float) -> np.ndarray:
    """Scale each row of ``X`` in place to L2 norm <= ``clip``; return each row's scale
    ``min(1, clip / norm)`` (1.0 for a row left as it was, including a zero row)."""
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a finite number > 0, got {clip!r}")
    norms = np.sqrt(sq_norms(X))
    scales = np.ones(X.shape[0], dtype=np.float64)
    over = norms > clip
    scales[over] = np.minimum(1.0, clip / norms[over])
    X[over] *= scales[over, None]
    return scales


def mean(X: np.ndarray, samples: Sequence[int]) -> Aggregate:
    """Sample-weighted mean; row i weighs ``samples[i] / sum(samples)``."""
    rows = range(X.shape[0])
    w = shares(samples, rows)
    return Aggregate(weighted_sum(X, rows, w), np.array(w, dtype=np.float64))


def _mean_kept(X: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per column j, the mean of ``X[idx[:, j], j]`` summed in the order of ``idx``."""
    kept = np.take_along_axis(X, idx, axis=0)
    acc = kept[0].copy()
    for row in kept[1:]:
        acc += row
    acc /= kept.shape[0]
    # A rounded sum can step an ulp outside the values it averages (three 0.1s average to
    # 0.10000000000000002): clamp, so an order statistic never leaves its range.
    return np.clip(acc, kept.min(axis=0), kept.max(axis=0))


def _share_of_columns(idx: np.ndarray, n: int) -> np.ndarray:
    """Each row's share of the (row, column) slots in ``idx``, summing to 1."""
    counts = np.bincount(idx.ravel(), minlength=n).astype(np.float64)
    return counts / counts.sum()


def trimmed_mean(X: np.ndarray, k: int) -> Aggregate:
    """Per coordinate, the mean of the values ranked k .. n-k-1 (ascending; equal values
    ranked by row), summed in ascending order. A row's weight is the fraction of coordinates
    where it was kept. ValueError unless 0 <= k and 2k < n."""
    n = X.shape[0]
    if k < 0 or 2 * k >= n:
        raise ValueError(f"cannot trim {k} from each end of {n} values")
    idx = np.argsort(X, axis=0, kind="stable")[k : n - k]
    return Aggregate(_mean_kept(X, idx), _share_of_columns(idx, n))


def median(X: np.ndarray) -> Aggregate:
    """Coordinate-wise median: the middle value, or the mean of the two middle values for even
    n (the same numbers as ``np.median``). A row's weight is the fraction of coordinates where
    it was a middle value."""
    return trimmed_mean(X, (X.shape[0] - 1) // 2)


def geometric_median(X: np.ndarray, samples: Sequence[int], iters: int, tol: float) -> Aggregate:
    """Sample-weighted geometric median by Weiszfeld's iteration from the weighted mean.

    Stops when a step moves the estimate less than ``tol`` (L2) or after ``iters`` steps
    (then says so in the note). Weights are the last step's normalized Weiszfeld weights."""
    rows = range(X.shape[0])
    w = np.array(shares(samples, rows), dtype=np.float64)
    z = weighted_sum(X, rows, w.tolist())
    beta, step = w, math.inf
    for _ in range(iters):
        dist = np.sqrt(sq_norms(X - z))
        beta = w / np.maximum(dist, GEOMED_EPS)
        beta = beta / beta.sum()
        nxt = weighted_sum(X, rows, beta.tolist())
        step = math.sqrt(float(np.square(nxt - z).sum()))
        z = nxt
        if step < tol:
            return Aggregate(z, beta)
    note = f"geomed: stopped after {iters} iterations, last step {step:.3g} >= tol {tol:g}"
    return Aggregate(z, beta, note)


def pairwise_sq_distances(X: np.ndarray) -> np.ndarray:
    """Symmetric (n, n) matrix of squared L2 distances between rows, zero diagonal."""
    n, d = X.shape
    D = np.zeros((n, n), dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // max(d, 1))
    for i in range(n - 1):
        for lo in range(i + 1, n, step):
            hi = min(n, lo + step)
            diff = X[lo:hi] - X[i]
            D[i, lo:hi] = np.square(diff, out=diff).sum(axis=1)
    # Mirroring (rather than computing both halves) makes D[i, j] == D[j, i] bit for bit.
    return D + D.T


def krum_scores(D: np.ndarray, rows: Sequence[int], f: int) -> list[float]:
    """Krum score of each row in ``rows`` among ``rows``: the sum (ascending order) of its k
    smallest squared distances to the others, k = len(rows) - f - 2.

    k is clamped to [1, len(rows) - 1] so that Bulyan's last iterated-Krum steps, run on
    fewer rows than Krum's bound, still rank rows; a single row scores 0."""
    m = len(rows)
    k = min(max(m - f - 2, 1), m - 1)
    sub = D[np.ix_(list(rows), list(rows))]
    scores = []
    for a in range(m):
        others = np.sort(np.delete(sub[a], a))[:k]
        scores.append(float(others.sum()))
    return scores


def _ranked(scores: Sequence[float]) -> list[int]:
    """Positions by ascending score, equal scores by position (i.e. by node id)."""
    return sorted(range(len(scores)), key=lambda a: (scores[a], a))


def _fallback(X: np.ndarray, why: str) -> Aggregate:
    agg = median(X)
    return Aggregate(agg.vector, agg.weights, f"{why}: used the coordinate-wise median")


def min_rows(name: str, f: int, trim: float | None = None) -> int:
    """The fewest rows aggregator ``name`` needs to run under its ``f`` bound (with fewer it
    falls back to the median): trimmed mean 2f + 1 (1 with a ``trim`` fraction), Krum and
    multi-Krum 2f + 3, Bulyan 4f + 3, the others 1."""
    if name == "trimmed_mean":
        return 1 if trim is not None else 2 * f + 1
    return {"krum": 2 * f + 3, "multikrum": 2 * f + 3, "bulyan": 4 * f + 3}.get(name, 1)


def nnm_min_rows(f: int) -> int:
    """The fewest rows mixing needs: more than 2f, so honest rows are a majority of any
    row's n - f neighbours' pool."""
    return 2 * f + 1


def krum(X: np.ndarray, f: int) -> Aggregate:
    """The row with the smallest Krum score (ties: lowest node id); weight 1, others 0.
    Falls back to the median when n < 2f + 3."""
    n = X.shape[0]
    if n < min_rows("krum", f):
        return _fallback(X, f"krum needs n >= 2f+3 = {2 * f + 3} deltas, got {n}")
    best = _ranked(krum_scores(pairwise_sq_distances(X), range(n), f))[0]
    weights = np.zeros(n, dtype=np.float64)
    weights[best] = 1.0
    return Aggregate(X[best].copy(), weights)


def multikrum(X: np.ndarray, samples: Sequence[int], f: int, m: int | None) -> Aggregate:
    """Sample-weighted mean of the m best Krum-scored rows (m None: n - f), accumulated in
    node-id order. Falls back to the median when n < 2f + 3; m > n - f is lowered to n - f
    (and noted), since more would have to include a row Krum ranks as suspect."""
    n = X.shape[0]
    if m is not None and m < 1:
        raise ValueError(f"multikrum m must be >= 1, got {m}")
    if n < min_rows("multikrum", f):
        return _fallback(X, f"multikrum needs n >= 2f+3 = {2 * f + 3} deltas, got {n}")
    note = ""
    if m is None:
        m = n - f
    elif m > n - f:
        note = f"multikrum: m = {m} lowered to n - f = {n - f}"
        m = n - f
    chosen = sorted(_ranked(krum_scores(pairwise_sq_distances(X), range(n), f))[:m])
    w = shares(samples, chosen)
    weights = np.zeros(n, dtype=np.float64)
    weights[chosen] = w
    return Aggregate(weighted_sum(X, chosen, w), weights, note)


def bulyan(X: np.ndarray, f: int) -> Aggregate:
    """Bulyan: θ = n - 2f rows chosen by iterated Krum (each pick leaves the pool), then per
    coordinate the mean of the β = θ - 2f chosen values closest to their median (ties: node
    id), summed closest first. Falls back to the median when n < 4f + 3."""
    n = X.shape[0]
    if n < min_rows("bulyan", f):
        return _fallback(X, f"bulyan needs n >= 4f+3 = {4 * f + 3} deltas, got {n}")
    theta, beta = n - 2 * f, n - 4 * f
    D = pairwise_sq_distances(X)
    pool, chosen = list(range(n)), []
    for _ in range(theta):
        chosen.append(pool.pop(_ranked(krum_scores(D, pool, f))[0]))
    chosen.sort()
    S = X[chosen]
    mid = median(S).vector
    idx = np.argsort(np.abs(S - mid), axis=0, kind="stable")[:beta]
    weights = np.zeros(n, dtype=np.float64)
    weights[chosen] = _share_of_columns(idx, theta)
    return Aggregate(_mean_kept(S, idx), weights)


def nnm(X: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour mixing: row i of the result is the mean of the n - f rows closest to
    X[i] (L2; X[i] itself at distance 0 first, then ascending distance, ties by node id),
    summed in node-id order. Returns ``(mixed, M)`` with ``M[i, j] = 1 / (n - f)`` when row j
    is among row i's neighbours, else 0, so that ``weights @ M`` turns an aggregator's shares
    of the mixed rows into shares of the original rows. ValueError unless 1 <= f < n."""
    n = X.shape[0]
    if not 1 <= f < n:
        raise ValueError(f"nnm needs 1 <= f < n, got f = {f}, n = {n}")
    D = pairwise_sq_distances(X)
    k = n - f
    mixed = np.empty_like(X)
    M = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        # Self first even when another row is identical: a row always keeps its own voice.
        order = sorted(range(n), key=lambda j: (j != i, D[i, j], j))
        rows = sorted(order[:k])
        mixed[i] = weighted_sum(X, rows, [1.0 / k] * k)
        M[i, rows] = 1.0 / k
    return mixed, M


def unmix(weights: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Shares of the mixed rows -> shares of the original rows (``weights @ M``, summed in
    row order without BLAS)."""
    out = np.zeros(M.shape[1], dtype=np.float64)
    for w, row in zip(weights, M, strict=True):
        out += w * row
    return out


def aggregate(
    name: str,
    X: np.ndarray,
    samples: Sequence[int],
    *,
    f: int = 0,
    trim: float | None = None,
    geomed_iters: int = 100,
    geomed_tol: float = 1e-6,
    multikrum_m: int | None = None,
) -> Aggregate:
    """Run aggregator ``name`` (one of AGGREGATORS) on the rows of ``X`` (n >= 1, float64,
    node-id order) with their positive sample counts.

    ``trim`` (trimmed_mean) drops floor(trim * n) values from each end, else ``f`` are
    dropped; ``f`` is ignored by mean, median and geomed. ValueError on misuse."""
    if name not in AGGREGATORS:
        raise ValueError(f"aggregator must be one of {AGGREGATORS}, got {name!r}")
    if X.dtype != np.float64 or X.ndim != 2 or X.shape[0] < 1 or X.shape[0] != len(samples):
        raise ValueError(f"X must be (n >= 1, d) float64 with n sample counts, got {X.shape}")
    if f < 0:
        raise ValueError(f"f must be >= 0, got {f}")
    n = X.shape[0]
    if name == "mean":
        return mean(X, samples)
    if name == "median":
        return median(X)
    if name == "trimmed_mean":
        k = math.floor(trim * n) if trim is not None else f
        if 2 * k >= n:
            return _fallback(X, f"trimmed_mean cannot drop {k} from each end of {n} deltas")
        return trimmed_mean(X, k)
    if name == "geomed":
        return geometric_median(X, samples, geomed_iters, geomed_tol)
    if name == "krum":
        return krum(X, f)
    if name == "multikrum":
        return multikrum(X, samples, f, multikrum_m)
    return bulyan(X, f)
