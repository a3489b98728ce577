"""New records arriving at the agents during a run, as at a clinic that adds patients daily.

Each agent's partition file is split into a first share (in the agent's data directory from
the start) and ``steps`` later parts, held aside in ``pending/`` and moved into the agent's
directory one step at a time (``release``). A move is a rename within one file system, so an
agent never reads a half-written part. The split is a seeded shuffle of each partition, so
every step brings a sample of the same label mix and two runs stage the same parts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PENDING = "pending"


@dataclass(frozen=True)
class Arrivals:
    """Where each agent's data lives and which parts are still to come."""

    dirs: list[Path]  # one data directory per agent, in agent order
    pending: list[list[Path | None]]  # per step, the part files to move (None: no samples)
    first: list[int]  # samples per agent at the start
    sizes: list[list[int]]  # per step, samples per agent it brings

    @property
    def steps(self) -> int:
        return len(self.pending)

    def release(self, step: int) -> None:
        """Move step ``step``'s parts (1-based) into the agents' directories."""
        for part, agent_dir in zip(self.pending[step - 1], self.dirs, strict=True):
            if part is not None and part.exists():  # once only, also when asked again
                os.replace(part, agent_dir / part.name)

    def samples_after(self, released: int) -> list[int]:
        """Samples per agent once ``released`` steps have arrived."""
        return [f + sum(s[i] for s in self.sizes[:released]) for i, f in enumerate(self.first)]


def stage(agent_files: list[Path], steps: int, first_fraction: float, seed: int) -> Arrivals:
    """Split each ``agent-NN.npz`` into ``agent-NN/part-0.npz`` (``first_fraction`` of its
    samples, at least one) and ``steps`` equal later parts under ``pending/``."""
    if steps < 1 or not 0 < first_fraction < 1:
        raise ValueError(f"need steps >= 1 and 0 < first < 1, got {steps}, {first_fraction}")
    dirs: list[Path] = []
    first: list[int] = []
    pending: list[list[Path | None]] = [[] for _ in range(steps)]
    sizes: list[list[int]] = [[] for _ in range(steps)]
    for i, path in enumerate(agent_files):
        with np.load(path) as z:
            X, y = z["X"], z["y"]
        order = np.random.default_rng([seed, i]).permutation(len(y))
        n0 = max(1, round(first_fraction * len(y)))
        later = np.array_split(order[n0:], steps)
        agent_dir = path.with_suffix("")
        agent_dir.mkdir(exist_ok=True)
        np.savez(agent_dir / "part-0.npz", X=X[order[:n0]], y=y[order[:n0]])
        hold = path.parent / PENDING / agent_dir.name
        hold.mkdir(parents=True, exist_ok=True)
        for k, idx in enumerate(later, start=1):
            part = hold / f"part-{k}.npz" if len(idx) else None  # a file holds 1 sample or more
            if part is not None:
                np.savez(part, X=X[idx], y=y[idx])
            pending[k - 1].append(part)
            sizes[k - 1].append(len(idx))
        dirs.append(agent_dir)
        first.append(n0)
    return Arrivals(dirs, pending, first, sizes)
