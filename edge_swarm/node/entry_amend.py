"""What a coordinating gateway adds to its own round entries before it signs them: the merge
report of ``model_final`` (its own merge, which is the final model's), and under the
genesis's ``privacy`` the privacy spent (``model_final.privacy``), why secure aggregation
could not unmask an abandoned round, and ``round_close.included_bits`` for light agents
(``node/secure_rounds.py``). The coordinator machine stays unaware of all of it."""

from __future__ import annotations

from typing import Any

from edge_swarm.node.model import ModelHolder
from edge_swarm.node.private_merge import PrivacyRecord
from edge_swarm.node.secure_rounds import SecureRounds
from ledger_lite import LedgerState


def amend_entry(
    kind: str,
    payload: dict[str, Any],
    holder: ModelHolder,
    secure: SecureRounds | None,
    record: PrivacyRecord | None,
    included: tuple[str, ...],
    state: LedgerState,
    online: set[str],
    ts: int,
) -> dict[str, Any]:
    """``payload`` of a ``kind`` entry of ours, with what this gateway knows added;
    ``included`` is the round's included agents (as its round_close named them), ``state``
    the ledger's, ``online`` the agents the coordinator sees online, ``ts`` the entry's
    (the roster of ``agents_bits`` is read at the very time every node will read it at)."""
    rnd = payload.get("round")
    if kind == "round_open" and secure is not None:  # who takes part: node/secure_rounds.py
        return {**payload, "agents_bits": secure.open_bits(state, ts, online)}
    if kind == "round_close" and secure is not None and secure.policy.secagg:
        bits = secure.close_bits(rnd, payload.get("included", []))
        return payload if bits is None else {**payload, "included_bits": bits}
    if kind != "model_final":
        return payload
    if "abandoned" in payload:
        why = secure.stuck(rnd, set(included)) if secure is not None else ""
        if why and secure is not None and secure.policy.secagg:
            payload = {**payload, "abandoned": f"secure aggregation failed safe: {why}"[:500]}
        return payload
    cand = holder.candidates.get(rnd)
    if cand is not None and cand.model_hash == payload["model_hash"] and cand.report:
        payload = {**payload, "merge": cand.report}
    if record is not None and secure is not None:
        expected = secure.expected.get(rnd, len(included))
        payload = {**payload, "privacy": record.record(len(included), expected)}
    return payload
