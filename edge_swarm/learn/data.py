"""Local datasets: the standard workload, non-IID partitions, and partition files.

How it works:
    `standard_workload` rebuilds shared/WORKLOAD.md's split of scikit-learn's digits;
    `dirichlet_partition` is its per-class Dirichlet label split; `write_partitions` puts
    one ``agent-XX.npz`` per agent (plus ``test.npz``) on disk and `load_local` is what an
    agent uses to read its own partition back.

Invariants:
    - scikit-learn is imported lazily inside the workload builders only: devices do not
      have it, and `load_local` needs nothing but numpy.
    - `load_local` treats every file as untrusted: ``.npz`` files are opened with
      ``allow_pickle=False`` (a pickle in a data file would run arbitrary code on load),
      and every shape, dtype and value is checked before the arrays are returned.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEST_SIZE = 0.2
SPLIT_SEED = 0
MAX_LABEL = 1_000_000


class DataError(ValueError):
    """A local data file is missing, unreadable, or not a valid (X, y) dataset."""


@dataclass(frozen=True, eq=False)
class Workload:
    """A train/test split: float32 features (n, d) and int64 labels (n,)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray

    @property
    def n_features(self) -> int:
        """Number of input features."""
        return int(self.X_train.shape[1])

    @property
    def n_classes(self) -> int:
        """Number of classes (largest label + 1)."""
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def _split(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    return train_test_split(X, y, test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED)


def standard_workload() -> Workload:
    """The standard workload: digits / 16 as float32, int64 labels, stratified 80/20 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    X_train, X_test, y_train, y_test = _split(X, y)
    return Workload(X_train, y_train, X_test, y_test)


PUBLIC_FRACTION = 0.2  # of the train split, for backbones made "from public data"


def public_private(
    workload: Workload, fraction: float = PUBLIC_FRACTION, seed: int = 0
) -> tuple[Workload, Workload]:
    """Split the train set into a public part (what a backbone is pretrained on) and a
    private rest (what the agents' partitions come from); both keep the same test set.

    Stratified, so the public part has every class; the two parts never share a sample.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    from sklearn.model_selection import train_test_split

    X_pub, X_priv, y_pub, y_priv = train_test_split(
        workload.X_train,
        workload.y_train,
        train_size=fraction,
        stratify=workload.y_train,
        random_state=seed,
    )
    public = Workload(X_pub, y_pub, workload.X_test, workload.y_test)
    private = Workload(X_priv, y_priv, workload.X_test, workload.y_test)
    return public, private


def breast_cancer_workload() -> Workload:
    """Breast cancer (30 features, 2 classes), standardised with the train set's mean/std."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    X_train, X_test, y_train, y_test = _split(data.data, data.target.astype(np.int64))
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)
    std[std == 0] = 1.0
    return Workload(
        ((X_train - mean) / std).astype(np.float32),
        y_train,
        ((X_test - mean) / std).astype(np.float32),
        y_test,
    )


WORKLOADS: dict[str, Callable[[], Workload]] = {
    "digits": standard_workload,
    "breast_cancer": breast_cancer_workload,
}


def dirichlet_partition(
    y: np.ndarray, n_agents: int, alpha: float, seed: int, min_samples: int = 0
) -> list[np.ndarray]:
    """Per-class Dirichlet split of the indices of ``y`` over ``n_agents`` agents.

    One ``default_rng(seed)``; for each class present, in ascending order: its indices
    (ascending) are shuffled, ``p = rng.dirichlet([alpha] * n_agents)``, cut at
    ``(cumsum(p) * len(idx)).astype(int)[:-1]``, and piece i goes to agent i. Returns one
    sorted int64 index array per agent (an agent may receive none).

    ``min_samples``: then, in agent order, an agent with fewer takes the highest indices of
    the agent holding the most until it has that many (the standard workload's split, whose
    smallest agent holds 72, is untouched by any minimum up to 72). With 200 agents, α = 0.5
    leaves some agents nothing to train on; a fleet that big needs this.
    """
    if n_agents < 1:
        raise ValueError(f"n_agents must be >= 1, got {n_agents}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(n_agents)]
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        rng.shuffle(idx)
        p = rng.dirichlet([alpha] * n_agents)
        cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
        for i, piece in enumerate(np.split(idx, cuts)):
            parts[i].append(piece)
    out = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
    return _top_up(out, min_samples) if min_samples > 0 else out


def _top_up(parts: list[np.ndarray], min_samples: int) -> list[np.ndarray]:
    if min_samples * len(parts) > sum(len(p) for p in parts):
        raise ValueError(
            f"{sum(map(len, parts))} samples cannot give {len(parts)} agents {min_samples} each"
        )
    for i in range(len(parts)):
        while len(parts[i]) < min_samples:
            donor = max(range(len(parts)), key=lambda j: (len(parts[j]), -j))
            take = min(min_samples - len(parts[i]), len(parts[donor]) - min_samples)
            parts[i] = np.sort(np.concatenate([parts[i], parts[donor][-take:]]))
            parts[donor] = parts[donor][:-take]
    return parts


def write_partitions(
    workload: Workload,
    n_agents: int,
    alpha: float,
    seed: int,
    out_dir: str | Path,
    min_samples: int = 0,
) -> list[Path]:
    """Write ``agent-01.npz`` ... and ``test.npz`` (keys X, y) into ``out_dir`` (the split
    of ``dirichlet_partition``, with its ``min_samples``).

    Returns the agent files in agent order followed by the test file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    split = dirichlet_partition(workload.y_train, n_agents, alpha, seed, min_samples)
    for i, idx in enumerate(split):
        path = out / f"agent-{i + 1:02d}.npz"  # numbered from 1, as node ids are
        np.savez(path, X=workload.X_train[idx], y=workload.y_train[idx])
        paths.append(path)
    test = out / "test.npz"
    np.savez(test, X=workload.X_test, y=workload.y_test)
    paths.append(test)
    return paths


def load_local(path: str | Path, n_features: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a device's local data: a ``.npz`` file (arrays X and y), a ``.csv`` file (last
    column = label), or a directory of such files (read in name order and concatenated).

    A CSV header line is optional (skipped if any field is not a number). Returns
    ``(X float32 (n, d), y int64 (n,))`` with n >= 1, finite X and labels >= 0; if
    ``n_features`` is given, d must equal it. Raises DataError otherwise.
    """
    path = Path(path)
    if path.is_dir():
        return _load_dir(path, n_features)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".csv"):
        raise DataError(f"{path}: unsupported file type {suffix!r} (want .npz or .csv)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    X, y = _read_npz(path, raw) if suffix == ".npz" else _read_csv(path, raw)
    return _validate(path, X, y, n_features)


def _load_dir(path: Path, n_features: int | None) -> tuple[np.ndarray, np.ndarray]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".npz", ".csv"))
    if not files:
        raise DataError(f"{path}: no .npz or .csv files in this data directory")
    parts = []
    for f in files:
        X, y = load_local(f, n_features)
        n_features = X.shape[1]  # every file must agree with the first
        parts.append((X, y))
    return np.concatenate([X for X, _ in parts]), np.concatenate([y for _, y in parts])


def _read_npz(path: Path, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        # allow_pickle=False: object arrays would be unpickled, i.e. code from the file run.
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            missing = {"X", "y"} - set(npz.files)
            if missing:
                raise DataError(f"{path}: missing arrays {sorted(missing)} (want X and y)")
            return npz["X"], npz["y"]
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a valid .npz of plain arrays: {exc}") from exc


def _read_csv(path: Path, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text: {exc}") from exc
    import csv  # here: a device with .npz data never loads it

    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(f.strip() for f in r)]
    if rows and not _is_numeric_row(rows[0]):
        rows = rows[1:]  # header
    if not rows:
        raise DataError(f"{path}: no data rows")
    width = len(rows[0])
    if width < 2:
        raise DataError(f"{path}: need at least one feature column and a label column")
    for line, row in enumerate(rows, start=1):
        if len(row) != width:
            raise DataError(f"{path}: data row {line} has {len(row)} fields, expected {width}")
        if not _is_numeric_row(row):
            raise DataError(f"{path}: data row {line} has a non-numeric field")
    table = np.array([[float(f) for f in row] for row in rows], dtype=np.float64)
    return table[:, :-1], table[:, -1]


def _is_numeric_row(row: list[str]) -> bool:
    try:
        for field in row:
            float(field)
    except ValueError:
        return False
    return True


def _validate(
    path: Path, X: np.ndarray, y: np.ndarray, n_features: int | None
) -> tuple[np.ndarray, np.ndarray]:
    if X.ndim != 2 or y.ndim != 1:
        raise DataError(f"{path}: X must be 2-D and y 1-D, got {X.shape} and {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise DataError(f"{path}: X has {X.shape[0]} rows but y has {y.shape[0]}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{path}: empty dataset {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise DataError(f"{path}: {X.shape[1]} features, the model expects {n_features}")
    if X.dtype.kind not in "iuf" or y.dtype.kind not in "iuf":
        raise DataError(f"{path}: X and y must be numeric, got {X.dtype} and {y.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        X32 = X.astype(np.float32)
    if not np.all(np.isfinite(X32)):
        raise DataError(f"{path}: X holds NaN or infinite values (or values beyond float32)")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y) & (y == np.round(y))):
        raise DataError(f"{path}: labels must be whole numbers")
    if y.min() < 0 or y.max() > MAX_LABEL:
        raise DataError(f"{path}: labels must be in 0..{MAX_LABEL}")
    return X32, y.astype(np.int64)


# -- a site's held-out validation slice (docs/VALIDATION.md)

MIN_MEANINGFUL_VAL = 10
"""Fewer held-out samples than this give an accuracy too coarse to judge a model by (one
sample moves it by more than 10 points): the slice is still used, and said to be small."""


@dataclass(frozen=True, eq=False)
class HoldOut:
    """A device's data split into what it trains on and what it validates models on."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray

    @property
    def meaningful(self) -> bool:
        """Whether the slice holds enough samples for its accuracy to mean something."""
        return len(self.y_val) >= MIN_MEANINGFUL_VAL


def holdout_mask(X: np.ndarray, y: np.ndarray, fraction: float, key: str) -> np.ndarray:
    """Which samples are held out (True) for validation: about ``fraction`` of them.

    Each sample's fate is decided by the sha256 of ``key`` and its own bytes (features as
    float32, label as int64), not by its position: a restart, a reordered data directory or
    new files added later leave every sample where it was, and two copies of one sample
    always land on the same side, so a duplicate never carries a held-out sample into
    training. At least one sample is always left to train on (the one whose hash is highest
    among them). ``key`` should name the device (its node id and the genesis seed).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    n = len(y)
    if n == 0 or fraction == 0.0:
        return np.zeros(n, dtype=bool)
    prefix = hashlib.sha256(f"edge-swarm holdout|{key}".encode()).digest()
    rows = np.ascontiguousarray(X, dtype="<f4").reshape(n, -1)
    labels = np.ascontiguousarray(y, dtype="<i8")
    draws = np.empty(n, dtype=np.float64)
    for i in range(n):
        h = hashlib.sha256(prefix + rows[i].tobytes() + labels[i].tobytes()).digest()
        draws[i] = int.from_bytes(h[:8], "big") / 2.0**64
    mask = draws < fraction
    if mask.all():  # a tiny site: keep one sample to train on
        mask[int(np.argmax(draws))] = False
    return mask


def holdout(X: np.ndarray, y: np.ndarray, fraction: float, key: str) -> HoldOut:
    """Split ``(X, y)`` by `holdout_mask`; the training part keeps the data's order."""
    mask = holdout_mask(X, y, fraction, key)
    return HoldOut(X[~mask], y[~mask], X[mask], y[mask])
