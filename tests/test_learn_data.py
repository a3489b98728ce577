"""Tests for edge_swarm.learn.data: the standard workload, partitions, and load_local."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edge_swarm.learn.data import (
    WORKLOADS,
    DataError,
    Workload,
    dirichlet_partition,
    load_local,
    standard_workload,
    write_partitions,
)

STANDARD_SIZES = [72, 338, 239, 246, 103, 236, 83, 120]


@pytest.fixture(scope="module")
def digits() -> Workload:
    return standard_workload()


def test_standard_workload_shapes(digits: Workload) -> None:
    assert digits.X_train.shape == (1437, 64) and digits.X_test.shape == (360, 64)
    assert digits.X_train.dtype == np.float32 and digits.y_train.dtype == np.int64
    assert digits.X_train.min() >= 0.0 and digits.X_train.max() <= 1.0
    assert digits.n_features == 64 and digits.n_classes == 10


def test_standard_partition_sizes_exact(digits: Workload) -> None:
    parts = dirichlet_partition(digits.y_train, 8, 0.5, 0)
    assert [len(p) for p in parts] == STANDARD_SIZES
    every = np.concatenate(parts)
    assert np.array_equal(np.sort(every), np.arange(1437))
    assert all(np.all(np.diff(p) > 0) for p in parts)


def test_breast_cancer_workload_is_standardised() -> None:
    wl = WORKLOADS["breast_cancer"]()
    assert wl.X_train.shape == (455, 30) and wl.X_test.shape == (114, 30)
    assert wl.n_classes == 2 and wl.X_train.dtype == np.float32
    np.testing.assert_allclose(wl.X_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(wl.X_train.std(axis=0), 1, atol=1e-4)


def test_write_and_load_partitions(digits: Workload, tmp_path: Path) -> None:
    paths = write_partitions(digits, 8, 0.5, 0, tmp_path / "parts")
    assert [p.name for p in paths] == [f"agent-{i:02d}.npz" for i in range(1, 9)] + ["test.npz"]
    sizes = []
    for path in paths[:-1]:
        X, y = load_local(path, n_features=64)
        assert X.dtype == np.float32 and y.dtype == np.int64
        sizes.append(len(y))
    assert sizes == STANDARD_SIZES
    X, y = load_local(paths[-1])
    np.testing.assert_array_equal(X, digits.X_test)
    np.testing.assert_array_equal(y, digits.y_test)


def test_load_csv_with_and_without_header(tmp_path: Path) -> None:
    rows = "0.5,1,0\n2,3.25,1\n\n4,5,2\n"
    (tmp_path / "plain.csv").write_text(rows)
    (tmp_path / "header.csv").write_text("a,b,label\n" + rows)
    for name in ("plain.csv", "header.csv"):
        X, y = load_local(tmp_path / name)
        np.testing.assert_array_equal(X, np.array([[0.5, 1], [2, 3.25], [4, 5]], np.float32))
        np.testing.assert_array_equal(y, np.array([0, 1, 2]))


def npz_bytes(**arrays: object) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


BAD_NPZ = {
    "nan.npz": npz_bytes(X=np.array([[np.nan, 1.0]]), y=np.array([0])),
    "inf.npz": npz_bytes(X=np.array([[np.inf, 1.0]]), y=np.array([0])),
    "huge.npz": npz_bytes(X=np.array([[1e300, 1.0]]), y=np.array([0])),
    "rows.npz": npz_bytes(X=np.zeros((3, 2)), y=np.zeros(2, np.int64)),
    "x1d.npz": npz_bytes(X=np.zeros(3), y=np.zeros(3, np.int64)),
    "y2d.npz": npz_bytes(X=np.zeros((3, 2)), y=np.zeros((3, 1), np.int64)),
    "empty.npz": npz_bytes(X=np.zeros((0, 2)), y=np.zeros(0, np.int64)),
    "nolabel.npz": npz_bytes(X=np.zeros((3, 2))),
    "negative.npz": npz_bytes(X=np.zeros((2, 2)), y=np.array([0, -1])),
    "fraction.npz": npz_bytes(X=np.zeros((2, 2)), y=np.array([0.0, 0.5])),
    "strings.npz": npz_bytes(X=np.array([["a", "b"]]), y=np.array([0])),
    "object.npz": npz_bytes(X=np.array([[1.0, {"x": 1}]], dtype=object), y=np.array([0])),
    "notzip.npz": b"definitely not a zip file",
}
BAD_CSV = {
    "ragged.csv": "1,2,0\n1,0\n",
    "text.csv": "1,2,0\n1,two,0\n",
    "nan.csv": "1,nan,0\n",
    "onecol.csv": "0\n1\n",
    "headeronly.csv": "a,b,label\n",
    "fraction.csv": "1,2,0.5\n",
}


@pytest.mark.parametrize("name", sorted(BAD_NPZ))
def test_bad_npz_raises_data_error(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(BAD_NPZ[name])
    with pytest.raises(DataError):
        load_local(tmp_path / name)


@pytest.mark.parametrize("name", sorted(BAD_CSV))
def test_bad_csv_raises_data_error(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text(BAD_CSV[name])
    with pytest.raises(DataError):
        load_local(tmp_path / name)


def test_pickled_npy_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickle.npz"
    with zipfile.ZipFile(path, "w") as zf:
        buf = io.BytesIO()
        np.save(buf, np.array([object()], dtype=object), allow_pickle=True)
        zf.writestr("X.npy", buf.getvalue())
        zf.writestr("y.npy", npz_bytes())  # garbage member as well
    with pytest.raises(DataError, match="not a valid .npz"):
        load_local(path)


def test_other_failures(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        load_local(tmp_path / "missing.npz")
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(DataError, match="unsupported"):
        load_local(tmp_path / "data.json")
    (tmp_path / "ok.csv").write_text("1,2,0\n")
    with pytest.raises(DataError, match="expects 64"):
        load_local(tmp_path / "ok.csv", n_features=64)
    assert issubclass(DataError, ValueError)


def test_partition_validation_and_empty_agents() -> None:
    with pytest.raises(ValueError):
        dirichlet_partition(np.zeros(5, np.int64), 0, 0.5, 0)
    with pytest.raises(ValueError):
        dirichlet_partition(np.zeros(5, np.int64), 2, 0.0, 0)
    parts = dirichlet_partition(np.zeros(3, np.int64), 10, 0.5, 0)
    assert sum(len(p) for p in parts) == 3 and all(p.dtype == np.int64 for p in parts)


def test_load_local_reads_a_directory_of_files_in_name_order(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    np.savez(d / "b.npz", X=np.ones((2, 3), np.float32), y=np.array([1, 1]))
    (d / "a.csv").write_text("f1,f2,f3,label\n0,0,0,0\n")
    X, y = load_local(d)
    assert X.shape == (3, 3) and list(y) == [0, 1, 1]
    np.savez(d / "c.npz", X=np.ones((2, 4), np.float32), y=np.array([1, 1]))
    with pytest.raises(DataError):
        load_local(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no .npz or .csv"):
        load_local(empty)


def test_a_minimum_per_agent_tops_up_the_smallest_and_leaves_a_fair_split_alone() -> None:
    y = standard_workload().y_train
    standard = dirichlet_partition(y, 8, 0.5, 0)
    assert [len(p) for p in standard] == [72, 338, 239, 246, 103, 236, 83, 120]
    same = dirichlet_partition(y, 8, 0.5, 0, min_samples=72)  # WORKLOAD.md's split stays
    assert all(np.array_equal(a, b) for a, b in zip(standard, same, strict=True))
    big = dirichlet_partition(y, 200, 0.5, 0)
    assert min(len(p) for p in big) == 0  # why the minimum exists
    topped = dirichlet_partition(y, 200, 0.5, 0, min_samples=5)
    assert min(len(p) for p in topped) == 5
    every = np.concatenate(topped)
    assert len(every) == len(y) and len(np.unique(every)) == len(y)  # a partition still
    assert all(np.all(np.diff(p) > 0) for p in topped)  # each sorted
    with pytest.raises(ValueError, match="cannot give"):
        dirichlet_partition(np.zeros(9, np.int64), 10, 0.5, 0, min_samples=1)
