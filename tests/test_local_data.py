"""An agent's data read again when new files arrive, and the demo's staged arrivals."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from edge_swarm.learn.data import DataError
from edge_swarm.node.local_data import LocalData
from edge_swarm.site.data_arrivals import stage


def _save(path: Path, n: int, d: int = 3, label: int = 0) -> None:
    np.savez(path, X=np.full((n, d), float(label), np.float32), y=np.full(n, label, np.int64))


def test_new_files_are_taken_and_nothing_is_read_without_a_change(tmp_path: Path) -> None:
    _save(tmp_path / "a.npz", 4)
    data = LocalData(tmp_path)
    assert len(data.raw[1]) == 4
    assert data.refresh() is None
    _save(tmp_path / "b.npz", 6, label=1)
    X, y = data.refresh() or (None, None)
    assert X is not None and y is not None
    assert len(y) == 10 and sorted(set(y.tolist())) == [0, 1]
    assert data.refresh() is None


def test_prepare_is_applied_to_every_new_read(tmp_path: Path) -> None:
    _save(tmp_path / "a.npz", 2)
    data = LocalData(tmp_path)
    data.prepare = lambda X, y: (X * 0 + 7, y + 1)
    _save(tmp_path / "b.npz", 1)
    X, y = data.refresh() or (None, None)
    assert X is not None and y is not None
    assert (X == 7).all() and (y == 1).all()
    assert (data.raw[0] == 0).all()  # the raw arrays stay raw


def test_a_half_written_file_is_skipped_with_one_warning_then_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _save(tmp_path / "a.npz", 4)
    data = LocalData(tmp_path)
    _save(tmp_path / "full.npz", 5)
    whole = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "full.npz").unlink()
    (tmp_path / "b.npz").write_bytes(whole[: len(whole) // 2])  # a copy caught mid-way
    with caplog.at_level(logging.WARNING):
        assert data.refresh() is None
        assert data.refresh() is None  # the same bad state: not read or logged again
    assert len([r for r in caplog.records if "cannot be read" in r.message]) == 1
    assert len(data.raw[1]) == 4  # still training on what it had
    (tmp_path / "b.npz").write_bytes(whole)  # the copy completes
    fresh = data.refresh()
    assert fresh is not None and len(fresh[1]) == 9


def test_a_file_of_other_features_is_refused_and_the_old_data_kept(tmp_path: Path) -> None:
    _save(tmp_path / "a.npz", 4, d=3)
    data = LocalData(tmp_path)
    _save(tmp_path / "b.npz", 4, d=5)
    assert data.refresh() is None
    assert data.raw[0].shape == (4, 3)


def test_a_vanished_directory_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    _save(d / "a.npz", 4)
    data = LocalData(d)
    (d / "a.npz").unlink()
    d.rmdir()
    assert data.refresh() is None
    assert len(data.raw[1]) == 4


def test_a_missing_path_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        LocalData(tmp_path / "nowhere")


def test_staged_arrivals_split_each_partition_and_release_by_rename(tmp_path: Path) -> None:
    files = []
    for i, n in enumerate((40, 9, 3), start=1):
        f = tmp_path / f"agent-{i:02d}.npz"
        X = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
        np.savez(f, X=X, y=np.arange(n) % 3)
        files.append(f)
    arr = stage(files, steps=3, first_fraction=0.25, seed=0)
    assert arr.first == [10, 2, 1]
    assert arr.samples_after(3) == [40, 9, 3]
    assert [LocalData(d).raw[0].shape[0] for d in arr.dirs] == arr.first
    watchers = [LocalData(d) for d in arr.dirs]
    for step in (1, 2, 3):
        arr.release(step)
        arr.release(step)  # asked twice: moved once
        got = [len((w.refresh() or w.raw)[1]) for w in watchers]
        assert got == arr.samples_after(step)
    # Every sample arrived exactly once.
    for f, d in zip(files, arr.dirs, strict=True):
        with np.load(f) as z:
            want = sorted(map(tuple, z["X"].tolist()))
        assert sorted(map(tuple, LocalData(d).raw[0].tolist())) == want
    assert not any(p.exists() for step in arr.pending for p in step if p is not None)
    assert all(os.listdir(tmp_path / "pending" / d.name) == [] for d in arr.dirs)
