"""Shared builders for the ledger_lite tests (no tests here; imported by test_ledger_*.py).

Keys come from fixed seeds so runs are reproducible; times are explicit integers, never
the clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ledger_lite import Entry, Ledger, SigningKey, Tx, make_genesis, make_tx

SWARM = "swarm-a"
T0 = 1_700_000_000_000


def seed_key(n: int) -> SigningKey:
    """A deterministic key for test identity number `n`."""
    return SigningKey.from_seed(bytes([n]) * 32)


ADMIN_KEY = seed_key(1)


def genesis(ts: int = T0, **kw: Any) -> Entry:
    """The standard test genesis: admin ``admin``, DEFAULT_POLICY, params {rounds: 3}."""
    return make_genesis(ADMIN_KEY, "admin", SWARM, params={"rounds": 3}, ts=ts, **kw)


class Swarm:
    """A ledger plus the keys of its members, with helpers to build transactions."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: dict[str, SigningKey] = {"admin": ADMIN_KEY}
        self.ts = T0
        self.ledger = Ledger.create(path, genesis(T0))

    def next_ts(self) -> int:
        self.ts += 1
        return self.ts

    def tx(
        self,
        author: str,
        kind: str,
        payload: dict[str, Any],
        *,
        key: SigningKey | None = None,
        ts: int | None = None,
        swarm: str = SWARM,
    ) -> Tx:
        """A transaction signed by `key` (default: the author's own key)."""
        signer = key if key is not None else self.keys[author]
        return make_tx(signer, swarm, kind, author, payload, self.next_ts() if ts is None else ts)

    def submit(self, author: str, kind: str, payload: dict[str, Any], **kw: Any) -> Entry:
        return self.ledger.submit(self.tx(author, kind, payload, **kw))

    def enroll(self, node: str, role: str, expires_ms: int | None = None) -> SigningKey:
        key = seed_key(10 + len(self.keys))
        self.keys[node] = key
        payload = {"node": node, "role": role, "pubkey": key.public_hex, "expires_ms": expires_ms}
        self.submit("admin", "enroll", payload)
        return key

    def revoke(self, node: str, reason: str = "lost device") -> Entry:
        return self.submit("admin", "revoke", {"node": node, "reason": reason})


def delta_commit(node: str, rnd: int = 1) -> dict[str, Any]:
    return {
        "round": rnd,
        "node": node,
        "envelope_sha256": "ab" * 32,
        "n_samples": 120,
        "metrics": {"accuracy": 0.91, "loss": 0.3},
    }


def round_open(rnd: int = 1) -> dict[str, Any]:
    return {"round": rnd, "base_model_hash": "cd" * 32, "deadline_ms": T0 + 60_000}
