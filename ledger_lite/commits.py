"""A round's delta commits folded into its ``round_close`` entry ("commits"), so that the
ledger grows by a constant number of entries per round however many devices contribute.

Each agent still signs its own commit: the ``delta_commit`` transaction it would have
appended, with ``metrics`` left empty (``{}``), sent to the coordinator instead of the
ledger. The coordinator records it in the round's ``round_close`` as one row::

    [node, envelope_sha256, n_samples, ts, sig]
    [node, envelope_sha256, n_samples, ts, sig, metrics]

rows sorted by node, one per node, naming exactly the round's ``included`` nodes. From a row
anyone rebuilds the agent's transaction (``row_tx``) and checks its signature with the key
the ledger enrolled for that node: the coordinator can leave a device out, but cannot put
words in its mouth. Every replica checks every row when it validates the entry
(``LedgerState.validate``).

The sixth element is there only when the agent's commit carried metrics: its site's
validation of an earlier final model (``VAL_KEYS``: the held-out accuracy, the slice's size
and the round whose final model it scores; docs/VALIDATION.md). Numbers only, never data,
and signed by the agent with the rest, so a replica verifies exactly what the agent said.
A row without metrics is the five elements it always was: old ledgers verify unchanged.

Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .entry import Tx, is_hex64, is_id, is_uint

MAX_COMMITS = 4096
"""Most rows one round_close may hold (the 64 KiB entry limit binds first: about 280)."""
ROW_LEN = 5  # a row without metrics; with them, one more
VAL_KEYS = ("val_acc", "val_n", "val_round")
"""What a folded commit's metrics hold, all three or none: a site's held-out accuracy of the
final model of round ``val_round``, over ``val_n`` samples."""


def commit_payload(
    rnd: int,
    node: str,
    envelope_sha256: str,
    n_samples: int,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``delta_commit`` payload an agent signs when its commit is folded; ``metrics``
    must be empty or pass `val_metrics_problem`."""
    return {
        "round": rnd,
        "node": node,
        "envelope_sha256": envelope_sha256,
        "n_samples": n_samples,
        "metrics": dict(metrics or {}),
    }


def val_metrics_problem(m: Any) -> str | None:
    """What is wrong with a folded commit's (non-empty) metrics, or None: exactly
    ``VAL_KEYS``, ``val_acc`` a finite number in [0, 1], ``val_n`` >= 1, ``val_round`` a
    round number. Never raises."""
    if not isinstance(m, dict) or set(m) != set(VAL_KEYS):
        return f"metrics must hold exactly {list(VAL_KEYS)}"
    acc = m["val_acc"]
    if not isinstance(acc, (int, float)) or isinstance(acc, bool) or not math.isfinite(acc):
        return "metrics.val_acc must be a finite number"
    if not 0 <= acc <= 1:
        return "metrics.val_acc must be in [0, 1]"
    if not is_uint(m["val_n"]) or m["val_n"] < 1 or not is_uint(m["val_round"]):
        return "metrics.val_n must be a count >= 1 and metrics.val_round a round number"
    return None


def val_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The validation part of an agent's metrics, for a folded commit: ``VAL_KEYS`` when
    they are all there and well formed, else ``{}`` (a commit without a report)."""
    m = {k: metrics[k] for k in VAL_KEYS if k in metrics}
    return m if val_metrics_problem(m) is None else {}


def folded_problem(payload: Mapping[str, Any], author: str) -> str | None:
    """What keeps a (schema-checked) ``delta_commit`` payload from being folded into a row:
    it must be exactly `commit_payload` of its own fields, with metrics empty or valid."""
    p = payload
    metrics = p.get("metrics")
    if metrics and (why := val_metrics_problem(metrics)) is not None:
        return why
    if metrics and not metrics["val_round"] < p["round"]:
        return "metrics.val_round must be a round before the commit's own"
    if p != commit_payload(p["round"], author, p["envelope_sha256"], p["n_samples"], metrics):
        return "a folded commit carries exactly round, node, envelope_sha256, n_samples, metrics"
    return None


def commits_problem(v: Any) -> str | None:
    """What is wrong with a ``commits`` field (structure only), or None."""
    if not isinstance(v, list) or len(v) > MAX_COMMITS:
        return f"must be a list of at most {MAX_COMMITS} rows"
    for i, row in enumerate(v):
        if not isinstance(row, list) or len(row) not in (ROW_LEN, ROW_LEN + 1):
            return f"row {i} must be [node, envelope_sha256, n_samples, ts, sig(, metrics)]"
        node, sha, n, ts, sig = row[:ROW_LEN]
        if not is_id(node) or not is_hex64(sha) or not is_uint(n) or not is_uint(ts):
            return f"row {i} has a bad node, envelope_sha256, n_samples or ts"
        if not isinstance(sig, str) or len(sig) != 128 or sig.strip("0123456789abcdef"):
            return f"row {i} sig must be 128 lowercase hex chars"
        if len(row) > ROW_LEN and (why := val_metrics_problem(row[ROW_LEN])) is not None:
            return f"row {i}: {why} (a row without metrics has 5 elements)"
    nodes = [row[0] for row in v]
    if any(a >= b for a, b in zip(nodes, nodes[1:], strict=False)):
        return "rows must be sorted by node, one per node"
    return None


def row_tx(swarm: str, rnd: int, row: list[Any]) -> Tx:
    """The agent's signed ``delta_commit`` transaction behind a (well-formed) row."""
    node, sha, n, ts, sig = row[:ROW_LEN]
    metrics = row[ROW_LEN] if len(row) > ROW_LEN else None
    return Tx(swarm, "delta_commit", node, ts, commit_payload(rnd, node, sha, n, metrics), sig)


def row_metrics(row: list[Any]) -> dict[str, Any]:
    """A (well-formed) row's metrics: ``{}`` for a row of 5 elements."""
    return dict(row[ROW_LEN]) if len(row) > ROW_LEN else {}


def commit_row(tx: Tx) -> list[Any]:
    """The row for an agent's folded ``delta_commit`` transaction: metrics only when the
    agent reported some, so that a commit without them gives the row of old."""
    p = tx.payload
    row = [tx.author, p["envelope_sha256"], p["n_samples"], tx.ts, tx.sig]
    return row + [dict(p["metrics"])] if p.get("metrics") else row
