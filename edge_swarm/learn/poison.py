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
"""

from __future__ import annotations

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

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise ValueError(f"attack must be one of {list(ATTACKS)}, got {self.name!r}")
        s = float(self.strength) or DEFAULT_STRENGTH[self.name]
        if not np.isfinite(s) or s <= 0:
            raise ValueError(f"attack strength must be a positive number, got {self.strength!r}")
        object.__setattr__(self, "strength", s)

    @classmethod
    def from_dict(cls, obj: Any) -> Attack:
        if not isinstance(obj, dict) or set(obj) - {"name", "strength"} or "name" not in obj:
            raise ValueError('attack is a table { name = "...", strength = ... }')
        return cls(str(obj["name"]), float(obj.get("strength", 0.0)))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "strength": self.strength}


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
