"""What a merge becomes under the genesis's ``privacy`` (swarm/privacy.py), and what the
coordinator records of the privacy spent.

With secure aggregation the inbox holds masked ring elements, not deltas: the round's
contribution is the one unmasked sum (``SecureRounds.unmask``), decoded from fixed point and
divided by the included agents' weights, so the merge rule (a mean, ``privacy.check_merge``)
sees the weighted mean update and nothing of any single agent. Under DP alone each update
(clipped and noised by its agent) counts equally: its sensitivity is the clip bound, not its
sample count.

``PrivacyRecord`` is the coordinator's account: the effective noise multiplier of every
finalised round (fewer agents than expected means less noise: ``dp.effective_multiplier``),
folded from the ``privacy`` of each ``model_final`` on the ledger, so a restarted gateway
rebuilds it exactly; ``record`` gives the next ``model_final``'s ``privacy`` (ε so far at the
genesis's δ, and ε after one more round at the nominal multiplier, which the coordinator's
budget check reads).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_swarm.swarm.merge import Contribution
from edge_swarm.swarm.privacy import PrivacyPolicy
from edge_swarm.swarm.rounds import Merge

SUM_NODE = "secure-sum"  # the one contribution of a securely aggregated round


def private_contributions(
    policy: PrivacyPolicy, inbox: Any, secure: Any, action: Merge
) -> tuple[list[Contribution], dict[str, float]]:
    """The contributions the merge rule gets for ``action`` and each node's weight in them.
    Raises KeyError while an envelope or (secure aggregation) a reveal is missing."""
    counts = action.sample_counts
    if not policy.secagg:
        plain = inbox.take(action.round, action.included, counts)
        equal = [Contribution(c.node, np.asarray(c.delta), 1) for c in plain]
        return equal, {c.node: 1.0 / len(equal) for c in equal}
    from edge_swarm.swarm import secagg

    masked = inbox.take_raw(action.round, action.included, counts)
    total = secure.unmask(action.round, masked)
    weights = {n: policy.weight(counts[n]) for n in masked}
    assert policy.scale is not None
    summed = secagg.decode_fixed(total, scale=policy.scale, bits=policy.bits)
    whole = sum(weights.values())
    mean = (summed / whole).astype(np.float32)
    return [Contribution(SUM_NODE, mean, 1)], {n: w / whole for n, w in weights.items()}


class PrivacyRecord:
    """The privacy spent so far, folded from the ledger's ``model_final`` entries."""

    def __init__(self, policy: PrivacyPolicy) -> None:
        self.policy = policy
        self.multipliers: list[float] = []

    def fold_final(self, payload: dict[str, Any]) -> None:
        spent = payload.get("privacy")
        if isinstance(spent, dict) and isinstance(spent.get("z"), (int, float)):
            self.multipliers.append(float(spent["z"]))

    def record(self, n_included: int, n_expected: int) -> dict[str, Any]:
        """The ``privacy`` of a round's ``model_final`` that ``n_included`` of
        ``n_expected`` agents contributed noise to."""
        from edge_swarm.swarm import dp

        pol = self.policy
        z = dp.effective_multiplier(pol.noise_multiplier, max(n_expected, 1), n_included)
        z = round(z, 6)  # what the ledger holds is what every later ε is computed from
        spent = [*self.multipliers, z]
        return {
            "mode": pol.mode,
            "z": z,
            "n": n_included,
            "expected": n_expected,
            "delta": pol.delta,
            "epsilon": round(dp.epsilon(spent, pol.delta), 6),
            "epsilon_next": round(dp.epsilon([*spent, pol.noise_multiplier], pol.delta), 6),
        }
