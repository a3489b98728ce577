"""A round's delta commits folded into its ``round_close`` entry ("commits"), so that the
ledger grows by a constant number of entries per round however many devices contribute.

Each agent still signs its own commit: the ``delta_commit`` transaction it would have
appended, with ``metrics`` left empty (``{}``), sent to the coordinator instead of the
ledger. The coordinator records it in the round's ``round_close`` as one row::

    [node, envelope_sha256, n_samples, ts, sig]

rows sorted by node, one per node, naming exactly the round's ``included`` nodes. From a row
anyone rebuilds the agent's transaction (``row_tx``) and checks its signature with the key
the ledger enrolled for that node: the coordinator can leave a device out, but cannot put
words in its mouth. Every replica checks every row when it validates the entry
(``LedgerState.validate``).

Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from .entry import Tx, is_hex64, is_id, is_uint

MAX_COMMITS = 4096
"""Most rows one round_close may hold (the 64 KiB entry limit binds first: about 280)."""
ROW_LEN = 5


def commit_payload(rnd: int, node: str, envelope_sha256: str, n_samples: int) -> dict[str, Any]:
    """The ``delta_commit`` payload an agent signs when its commit is folded."""
    return {
        "round": rnd,
        "node": node,
        "envelope_sha256": envelope_sha256,
        "n_samples": n_samples,
        "metrics": {},
    }


def commits_problem(v: Any) -> str | None:
    """What is wrong with a ``commits`` field (structure only), or None."""
    if not isinstance(v, list) or len(v) > MAX_COMMITS:
        return f"must be a list of at most {MAX_COMMITS} rows"
    for i, row in enumerate(v):
        if not isinstance(row, list) or len(row) != ROW_LEN:
            return f"row {i} must be [node, envelope_sha256, n_samples, ts, sig]"
        node, sha, n, ts, sig = row
        if not is_id(node) or not is_hex64(sha) or not is_uint(n) or not is_uint(ts):
            return f"row {i} has a bad node, envelope_sha256, n_samples or ts"
        if not isinstance(sig, str) or len(sig) != 128 or sig.strip("0123456789abcdef"):
            return f"row {i} sig must be 128 lowercase hex chars"
    nodes = [row[0] for row in v]
    if any(a >= b for a, b in zip(nodes, nodes[1:], strict=False)):
        return "rows must be sorted by node, one per node"
    return None


def row_tx(swarm: str, rnd: int, row: list[Any]) -> Tx:
    """The agent's signed ``delta_commit`` transaction behind a (well-formed) row."""
    node, sha, n, ts, sig = row
    return Tx(swarm, "delta_commit", node, ts, commit_payload(rnd, node, sha, n), sig)


def commit_row(tx: Tx) -> list[Any]:
    """The row for an agent's folded ``delta_commit`` transaction."""
    p = tx.payload
    return [tx.author, p["envelope_sha256"], p["n_samples"], tx.ts, tx.sig]
