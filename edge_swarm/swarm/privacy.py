"""What a swarm's genesis fixes about privacy against its own members (docs/SECURITY.md).

How it works
------------
``PrivacyPolicy`` is the genesis's ``privacy`` object. Its ``mode`` is one of:

- ``"none"``: deltas travel as before (sealed against outsiders; every member of a key epoch
  can open them).
- ``"secagg"``: secure aggregation (``swarm/secagg.py``). Each agent clips its update to
  ``clip``, weights it by its sample count (capped at ``max_samples``), turns it into
  integers modulo ``2**bits`` with the fixed-point ``scale`` and adds pairwise and self masks;
  the committee learns the sum and nothing else.
- ``"dp"``: client-level differential privacy (DP-FedAvg): each agent clips its update to
  ``clip`` and adds its share of Gaussian noise, so that the sum of the round carries noise
  of ``noise_multiplier * clip``; updates count equally. Without secure aggregation the
  committee sees each update with only its share of the noise.
- ``"secagg+dp"``: both; each agent adds its noise share in the integer domain (a discrete
  Gaussian), so nobody, the committee included, sees an update without its noise.

The privacy spent is recorded by the coordinator on every ``model_final`` (ε at ``delta``,
``swarm/dp.py``); with ``epsilon_budget`` the campaign ends before a round would overspend.

Invariants
----------
- A genesis without ``privacy`` (or with mode ``none``) behaves exactly as before.
- Secure aggregation hides every single update, so a merge rule that needs them (median,
  Krum, Bulyan, trimmed mean, nnm mixing, per-delta clipping) is refused with a message that
  names both (``check_merge``); so is DP with such a rule, whose guarantee assumes the sum.
- ``scale`` is fixed at genesis so that the integer sum of ``max_agents`` clipped updates
  plus their noise (8 standard deviations) cannot wrap around ``2**bits``.

Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["MODES", "PrivacyError", "PrivacyPolicy", "budget_stop", "check_merge"]

MODES = ("none", "secagg", "dp", "secagg+dp")
SUM_RULES = ("mean",)  # the aggregators that need nothing but the sum of the updates


class PrivacyError(ValueError):
    """A privacy setting that cannot work, with what to choose instead."""


@dataclass(frozen=True)
class PrivacyPolicy:
    """The genesis's ``privacy``; ValueError (PrivacyError) on a value out of range."""

    mode: str = "none"
    clip: float = 1.0  # L2 bound of each agent's update
    noise_multiplier: float = 0.0  # z: the round's sum carries N(0, (z * clip)^2)
    delta: float = 1e-5  # the δ at which ε is reported
    epsilon_budget: float | None = None  # the campaign ends before a round would exceed it
    bits: int = 32  # the ring of secure aggregation: integers modulo 2**bits
    max_agents: int = 1024  # the most agents a round may sum without wrapping
    max_samples: int = 10_000  # sample counts weigh up to this (secagg without DP)
    degree: int | None = None  # neighbours per agent (None: O(log n), swarm/secagg.py)
    threshold: int | None = None  # shares that rebuild a seed (None: a majority)
    scale: float | None = None  # fixed-point scale; None: the largest that cannot wrap

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            allowed = ", ".join(repr(m) for m in MODES)
            raise PrivacyError(f"privacy must be one of {allowed}, not {self.mode!r:.40}")
        for key in ("clip", "noise_multiplier", "delta"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PrivacyError(f"privacy {key} must be a number, not {value!r:.40}")
            object.__setattr__(self, key, float(value))
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise PrivacyError(f"privacy clip must be > 0, not {self.clip}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise PrivacyError(f"noise multiplier must be >= 0, not {self.noise_multiplier}")
        if self.dp and self.noise_multiplier == 0:
            raise PrivacyError(
                f"privacy {self.mode!r} needs a noise multiplier > 0 (--noise-multiplier;"
                " `edge-swarm admin init --help` shows what each gives after 20 rounds)"
            )
        if not 0 < self.delta < 1:
            raise PrivacyError(f"privacy delta must be in (0, 1), not {self.delta}")
        if self.epsilon_budget is not None:
            eps = self.epsilon_budget
            if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
                raise PrivacyError(f"epsilon budget must be > 0, not {eps!r:.40}")
            if not self.dp:
                raise PrivacyError(f"an epsilon budget needs DP; privacy {self.mode!r} has none")
            object.__setattr__(self, "epsilon_budget", float(eps))
        for key, low in (("bits", 16), ("max_agents", 2), ("max_samples", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise PrivacyError(f"privacy {key} must be an int >= {low}, not {value!r:.40}")
        if self.bits > 32:
            raise PrivacyError(f"privacy bits must be at most 32, not {self.bits}")
        for key in ("degree", "threshold"):
            value = getattr(self, key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise PrivacyError(f"privacy {key} must be an int >= 1, not {value!r:.40}")
        if self.scale is None:
            object.__setattr__(self, "scale", self._largest_scale())
        elif isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)):
            raise PrivacyError(f"privacy scale must be a number, not {self.scale!r:.40}")
        elif not 0 < self.scale <= self._largest_scale():
            raise PrivacyError(
                f"privacy scale {self.scale} lets a sum of {self.max_agents} updates wrap"
                f" around 2**{self.bits}: at most {self._largest_scale():.6g}"
            )

    def _largest_scale(self) -> float:
        # Every update is within ±clip per coordinate; the noise of the sum within 8 of its
        # standard deviations (z * clip): the sum stays inside the signed half of the ring.
        reach = self.clip * (self.max_agents + 8 * self.noise_multiplier)
        return float(math.floor((2 ** (self.bits - 1) - 1) / reach))

    @property
    def secagg(self) -> bool:
        return self.mode in ("secagg", "secagg+dp")

    @property
    def dp(self) -> bool:
        return self.mode in ("dp", "secagg+dp")

    @property
    def active(self) -> bool:
        return self.mode != "none"

    def weight(self, n_samples: int) -> float:
        """What an update weighs in the round's sum, in (0, 1]: equal under DP (its
        sensitivity is the clip bound), else its samples up to ``max_samples``."""
        if self.dp:
            return 1.0
        return min(max(int(n_samples), 1), self.max_samples) / self.max_samples

    def to_dict(self) -> dict[str, Any]:
        """The genesis form: every field, so every node reads the same numbers."""
        return asdict(self)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> PrivacyPolicy:
        """The genesis's policy (none when it has no ``privacy``); PrivacyError if bad."""
        data = params.get("privacy")
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise PrivacyError(f"privacy must be an object, not {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise PrivacyError(f"privacy has unknown keys: {sorted(map(str, unknown))}")
        return cls(**data)


def check_merge(policy: PrivacyPolicy, aggregation: str, clip: float | None, merge_by: str) -> None:
    """Refuse a merge rule or mode that ``policy`` cannot work with, naming both and what to
    choose (PrivacyError). ``aggregation`` is the rule's, e.g. ``nnm+median``."""
    if not policy.active:
        return
    if aggregation not in SUM_RULES or clip is not None:
        what = aggregation if clip is None else f"{aggregation} with per-delta clip {clip}"
        why = (
            "secure aggregation hides every single update from the committee"
            if policy.secagg
            else "its guarantee holds for the noisy sum of the updates"
        )
        raise PrivacyError(
            f"privacy {policy.mode!r} cannot run with merge {what!r}: {why}, and {what} needs"
            " the individual updates (docs/ROBUST.md). Choose --merge mean (any server"
            " optimizer: fedavg, fedavgm, fedadam…; the privacy clip bounds each update), or"
            " privacy 'none' to keep a robust rule (docs/SECURITY.md)."
        )
    if policy.secagg and merge_by != "committee":
        raise PrivacyError(
            f"privacy {policy.mode!r} needs merge_by 'committee' (the committee unmasks the"
            f" sum), not {merge_by!r}: choose --merge-by committee"
        )


def budget_stop(budget: float | None, spent: dict[str, Any] | None, last_round: int) -> str | None:
    """Why the campaign ends now: the privacy recorded on the last ``model_final`` (``spent``,
    node/private_merge.py) says one more round would take ε past ``budget``; else None."""
    if budget is None or not spent or not spent.get("epsilon_next", 0) > budget:
        return None
    return (
        f"privacy budget spent: epsilon {spent.get('epsilon', 0):.3g} at delta"
        f" {spent.get('delta', 0):g} after round {last_round}; another round would reach"
        f" {spent['epsilon_next']:.3g} > the budget {budget:g}"
    )
