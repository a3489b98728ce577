"""An agent's local data, read again when its source changes.

A clinic adds records every day: an agent whose data path is a directory takes new ``.npz`` or
``.csv`` files in it at the next round it trains, with the same bounds and validation as at
start (``learn/data.load_local``), so the sample count it commits follows its data. A copy in
progress may be caught half-written: the read fails, the agent logs why once and keeps
training on what it had, and the next change is tried again. Files should arrive by rename
(write ``x.npz.part``, then rename it to ``x.npz``): only ``.npz`` and ``.csv`` names are read.

Checking costs one ``stat`` per file per round; nothing is read unless a name, size or
modification time changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_swarm.learn.data import DataError, load_local
from edge_swarm.learn.model import ModelSpec
from edge_swarm.learn.poison import Attack, poison_labels

log = logging.getLogger(__name__)

MAX_FILES = 10_000  # a data directory listing beyond this is refused, not walked
_SUFFIXES = (".npz", ".csv")

Arrays = tuple[np.ndarray, np.ndarray]
Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(path: Path) -> Fingerprint:
    """Names, sizes and modification times of the data files at ``path`` (a file or a
    directory); raises DataError when it cannot be listed."""
    try:
        if not path.is_dir():
            st = path.stat()
            return ((path.name, st.st_size, st.st_mtime_ns),)
        rows = []
        for i, p in enumerate(sorted(path.iterdir())):
            if i >= MAX_FILES:
                raise DataError(f"{path}: more than {MAX_FILES} entries in the data directory")
            if p.suffix.lower() in _SUFFIXES:
                st = p.stat()
                rows.append((p.name, st.st_size, st.st_mtime_ns))
        return tuple(rows)
    except OSError as exc:
        raise DataError(f"{path}: cannot list: {exc}") from exc


class LocalData:
    """The raw arrays of an agent's data path, and what the agent trains on.

    ``prepare`` turns raw arrays into training arrays (the genesis's frozen backbone, a test
    harness's poisoned labels); it is set once the genesis is known and applied again to
    every new read, so new data is treated exactly as the first.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = fingerprint(path)
        self.raw: Arrays = load_local(path)  # refused at start: the agent does not run
        self._tried = self._seen
        self._error = ""
        self.prepare: Callable[[np.ndarray, np.ndarray], Arrays] = lambda X, y: (X, y)

    def refresh(self) -> Arrays | None:
        """The new training arrays if the data changed and reads cleanly, else None."""
        try:
            now = fingerprint(self.path)
        except DataError as exc:
            return self._failed(None, exc)
        if now in (self._seen, self._tried):
            return None
        try:
            X, y = load_local(self.path, self.raw[0].shape[1])
        except DataError as exc:
            return self._failed(now, exc)
        before = len(self.raw[1])
        self.raw, self._seen, self._tried = (X, y), now, now
        log.info("local data changed: %d samples now (was %d)", len(y), before)
        return self.prepare(X, y)

    def _failed(self, tried: Fingerprint | None, exc: DataError) -> None:
        if str(exc) != self._error:  # once per cause, not once per round
            log.warning("local data changed but cannot be read (%s); training on what we had", exc)
            self._error = str(exc)
        if tried is not None:
            self._tried = tried
        return None


def genesis_prepare(
    device: Any, backbone_ref: object, spec: ModelSpec, attack: Attack | None
) -> Callable[[np.ndarray, np.ndarray], Arrays]:
    """What an agent trains on, from raw arrays: the frozen backbone's features of X with
    ``device``'s engine (``DeviceModel.backbone_features``) when the genesis names a backbone,
    and (a test harness only) an attacker's poisoned labels."""

    def prepare(X: np.ndarray, y: np.ndarray) -> Arrays:
        if backbone_ref is not None:
            X = device.backbone_features(backbone_ref, spec, X)
        if attack is not None:
            y = poison_labels(attack, y, spec.n_outputs)
        return X, y

    return prepare
