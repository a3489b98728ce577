"""A poisoning harness for tests and benchmarks: agents that lie about their training.

An agent given ``[agent] attack = { name = "...", strength = ... }`` trains as usual and then
turns its honest delta into a hostile one (or trains on flipped labels), so that the robust
merge rules can be measured against the attacks the literature uses:

- ``sign_flip``: ``-strength * delta`` (default 4): pulls the model the other way, harder;
- ``scale``: ``strength * delta`` (default 10): a boosted update that a mean follows;
- ``noise``: Gaussian noise of ``strength`` times the delta's standard deviation (default 5),
  in place of the delta;
- ``huge``: ``strength`` in every coordinate, with the honest delta's signs (default 1000):
  large but finite, so it passes every check a malformed envelope would fail;
- ``label_flip``: trains on labels ``c -> n_classes - 1 - c``; the delta itself is honest work
  on the wrong task.

Pure numpy; the agent logs a loud warning when it runs one. Never set on a real device.

Two more attacks are *colluding and omniscient*: the poisoners see every honest delta of the
round before they send theirs, as the papers assume. They run in the benchmark's simulation
only (`colluding_delta`); a real agent cannot wait for the others' deltas of its own round:

- ``alie`` ("A Little Is Enough", Baruch et al. 2019): the honest mean minus z standard
  deviations per coordinate, z the largest that still keeps the value among the majority
  (`alie_z`); it hides inside the honest spread, where distance-based rules cannot see it;
- ``ipm`` (inner-product manipulation, Xie et al. 2020): ``-strength * honest mean`` (default
  0.1), small enough to sit near the honest deltas yet pointing the other way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ATTACKS = ("sign_flip", "scale", "noise", "huge", "label_flip")
DEFAULT_STRENGTH = {
    "sign_flip": 4.0,
    "scale": 10.0,
    "noise": 5.0,
    "huge": 1000.0,
    "label_flip": 1.0,
}


@dataclass(frozen=True)
class Attack:
    """Which attack an agent runs, and how hard."""

    name: str
    strength: float = 0.0  # 0: the attack's default
    from_round: int = 0  # honest before this round (a swarm that goes bad midway; tests)

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise ValueError(f"attack must be one of {list(ATTACKS)}, got {self.name!r}")
        s = float(self.strength) or DEFAULT_STRENGTH[self.name]
        if not np.isfinite(s) or s <= 0:
            raise ValueError(f"attack strength must be a positive number, got {self.strength!r}")
        object.__setattr__(self, "strength", s)
        if isinstance(self.from_round, bool) or not isinstance(self.from_round, int):
            raise ValueError(f"attack from_round must be a round number, got {self.from_round!r}")

    @classmethod
    def from_dict(cls, obj: Any) -> Attack:
        keys = {"name", "strength", "from_round"}
        if not isinstance(obj, dict) or set(obj) - keys or "name" not in obj:
            raise ValueError('attack is a table { name = "...", strength = ..., from_round = ... }')
        return cls(str(obj["name"]), float(obj.get("strength", 0.0)), obj.get("from_round", 0))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "strength": self.strength}
        return out | ({"from_round": self.from_round} if self.from_round else {})


def poison_delta(attack: Attack, delta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The hostile delta (float32) an attacking agent sends instead of ``delta``."""
    d = np.asarray(delta, dtype=np.float32)
    if attack.name == "sign_flip":
        out = -attack.strength * d
    elif attack.name == "scale":
        out = attack.strength * d
    elif attack.name == "noise":
        std = float(np.std(d)) or 1e-3
        out = rng.normal(0.0, attack.strength * std, size=d.shape)
    elif attack.name == "huge":
        out = attack.strength * np.where(d >= 0, 1.0, -1.0)
    else:  # label_flip: the poison is in the labels it trained on
        out = d
    return np.asarray(out, dtype=np.float32)


def poison_labels(attack: Attack, y: np.ndarray, n_classes: int) -> np.ndarray:
    """The labels an attacking agent trains on (unchanged unless ``label_flip``)."""
    if attack.name != "label_flip":
        return y
    return (n_classes - 1 - np.asarray(y)).astype(y.dtype)


COLLUDING = ("alie", "ipm")
DEFAULT_IPM_EPSILON = 0.1


def alie_z(n_total: int, n_bad: int) -> float:
    """Baruch et al.'s z_max: with s = floor(n/2 + 1) - f honest agents needed to reach a
    majority, the z whose normal tail leaves n - s of n on the right side."""
    if not 0 < n_bad < n_total:
        raise ValueError(f"need 0 < n_bad < n_total, got {n_bad} of {n_total}")
    from statistics import NormalDist  # here: every agent imports this module (issue 20)

    s = n_total // 2 + 1 - n_bad
    return NormalDist().inv_cdf((n_total - s) / n_total)


def colluding_delta(
    name: str,
    honest: Sequence[np.ndarray],
    n_total: int,
    n_bad: int,
    strength: float = 0.0,
) -> np.ndarray:
    """The delta every colluding poisoner sends, given the round's honest deltas (float32).

    ``strength``: z for ``alie`` (0: `alie_z`), epsilon for ``ipm`` (0: 0.1)."""
    if name not in COLLUDING:
        raise ValueError(f"colluding attack must be one of {list(COLLUDING)}, got {name!r}")
    if not honest:
        raise ValueError("a colluding attack needs the honest deltas")
    H = np.stack([np.asarray(h, dtype=np.float64) for h in honest])
    mu = H.mean(axis=0)
    if name == "alie":
        z = strength or alie_z(n_total, n_bad)
        out = mu - z * H.std(axis=0)
    else:
        out = -(strength or DEFAULT_IPM_EPSILON) * mu
    return out.astype(np.float32)
