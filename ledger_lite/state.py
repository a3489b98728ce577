"""The ledger state: the fold of the chain, and the rules every entry must pass.

How it works: `LedgerState.from_genesis` checks the genesis entry and seeds the state
(swarm id, admins, policy, params). Each later entry goes through `validate`, which is pure
(it reads the state and the entry and raises `Refused` or returns), then `_fold` updates
the members, the tip and the set of seen transaction ids. `apply` = validate + fold.
Every replica and every verifier runs exactly this code, so they agree on what is valid.

Invariants after each apply: ``height`` is the last entry's height and ``tip`` its hash;
every tx id in the chain is in ``seen``; ``members`` holds the genesis admins (role
``admin``, never expiring) plus every enrolled node, revoked ones marked with the height
of their first revocation. A later ``enroll`` of the same id replaces its record (key
rotation, or re-admission under a new key after a revocation). Checks run cheapest first;
the signature (the costly one) runs last but one, before the cross-entry rules.

Authority is judged at the entry's own ``ts`` (an expired author is one whose
``expires_ms < entry.ts``); bounding ``ts`` against a clock is the orderer's business.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from . import errors as E
from .commits import row_tx
from .detached import is_compact, stray_digest
from .entry import GENESIS_PREV, KINDS, MAX_ENTRY_BYTES, Entry
from .errors import Refused
from .keys import verify
from .schema import payload_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    """An identity allowed to author entries (until revoked or expired)."""

    role: str
    pubkey: str
    expires_ms: int | None = None
    revoked_at_height: int | None = None
    enc_pubkey: str | None = None  # X25519, for data keys; None if enrolled without one

    def active_at(self, ts_ms: int) -> bool:
        """True iff not revoked and not expired at `ts_ms`."""
        if self.revoked_at_height is not None:
            return False
        return self.expires_ms is None or self.expires_ms >= ts_ms


class LedgerState:
    """The fold of a chain. Build with `from_genesis`; extend with `apply`.

    Not thread-safe by itself: `Ledger` serialises access. Attributes are read-only to
    callers: swarm, genesis_hash, admins, policy, params, members, tip, height, seen.
    """

    def __init__(self, genesis: Entry) -> None:
        """Seed from a genesis entry already checked by `from_genesis`."""
        p = genesis.payload
        self.swarm: str = genesis.swarm
        self.genesis_hash: str = genesis.hash
        self.admins: dict[str, str] = dict(p["admins"])
        self.policy: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in p["policy"].items()}
        self.params: dict[str, Any] = p["params"]
        self.members: dict[str, Member] = {
            admin: Member("admin", pub) for admin, pub in self.admins.items()
        }
        self.tip: str = genesis.hash
        self.height: int = 0
        self.seen: set[str] = {genesis.tx_id}
        self.key_epoch: int | None = None  # the newest key epoch appended, if any
        # A light copy (an agent's) takes entries in their compact form (detached.py): it
        # checks chain, hash and signature, not the rows a full replica checks.
        self.light = False

    @classmethod
    def from_genesis(cls, entry: Entry) -> LedgerState:
        """Check `entry` as a genesis entry and return the state it founds.

        Raises Refused (height 0): ``bad_genesis`` for a wrong height/prev_hash/kind, a
        payload swarm differing from the entry's or an author not among the admins;
        ``oversized``, ``bad_payload`` or ``bad_signature`` as for any entry.
        """

        def refuse(reason: str, detail: str) -> Refused:
            return Refused(reason, detail, height=0)

        if entry.height != 0 or entry.prev_hash != GENESIS_PREV or entry.kind != "genesis":
            raise refuse(E.BAD_GENESIS, "genesis needs height 0, prev_hash 0*64, kind genesis")
        if len(entry.canonical()) > MAX_ENTRY_BYTES:
            raise refuse(E.OVERSIZED, f"entry is over {MAX_ENTRY_BYTES} bytes")
        problem = payload_problem("genesis", entry.payload)
        if problem:
            raise refuse(E.BAD_PAYLOAD, problem)
        if entry.payload["swarm"] != entry.swarm:
            raise refuse(E.BAD_GENESIS, "payload swarm differs from entry swarm")
        pubkey = entry.payload["admins"].get(entry.author)
        if pubkey is None:
            raise refuse(E.BAD_GENESIS, f"author {entry.author!r} is not a genesis admin")
        if not verify(pubkey, entry.tx.signing_bytes(), bytes.fromhex(entry.sig)):
            raise refuse(E.BAD_SIGNATURE, f"signature does not verify for {entry.author!r}")
        return cls(entry)

    # -- queries -----------------------------------------------------------------------

    def member(self, node: str) -> Member | None:
        """The member record of `node` (revoked ones included), or None if never enrolled."""
        return self.members.get(node)

    def is_active(self, node: str, at_ts: int) -> bool:
        """True iff `node` is enrolled, unrevoked and unexpired at `at_ts` (ms)."""
        m = self.members.get(node)
        return m is not None and m.active_at(at_ts)

    def public_key(self, node: str) -> str | None:
        """The enrolled public key hex of `node` (even if revoked), or None."""
        m = self.members.get(node)
        return None if m is None else m.pubkey

    def roles_for(self, kind: str) -> tuple[str, ...]:
        """The roles the policy allows to append `kind` (empty if none)."""
        return self.policy.get(kind, ())

    # -- validation and folding --------------------------------------------------------

    def validate(self, entry: Entry) -> None:
        """Raise Refused (with the entry's height) unless `entry` may extend this chain.

        Pure: never changes the state. Reasons, in the order checked: wrong_height,
        wrong_prev_hash, wrong_swarm, unknown_kind (or bad_genesis for a second genesis),
        oversized, bad_payload, unknown_author, revoked_author, expired_author,
        role_not_allowed, replay, bad_signature, node_mismatch (delta_commit.node must be
        the author), role_not_allowed (a campaign entry other than an ``end`` with a reason
        from a non-admin), unknown_node (revoke of a node never enrolled, or a key_epoch wrapping
        for one), wrong_swarm / stale_epoch / revoked_node (a key_epoch for another swarm,
        not after the newest epoch, or wrapping a key for a revoked node).
        """
        h = entry.height
        if h != self.height + 1:
            raise Refused(E.WRONG_HEIGHT, f"expected height {self.height + 1}, got {h}", h)
        if entry.prev_hash != self.tip:
            raise Refused(E.WRONG_PREV_HASH, f"expected prev_hash {self.tip[:16]}…", h)
        if entry.swarm != self.swarm:
            raise Refused(E.WRONG_SWARM, f"entry for swarm {entry.swarm!r}, not {self.swarm!r}", h)
        if entry.kind == "genesis":
            raise Refused(E.BAD_GENESIS, "genesis is only valid at height 0", h)
        if entry.kind not in KINDS:
            raise Refused(E.UNKNOWN_KIND, f"unknown kind {entry.kind!r}", h)
        size = len(entry.canonical())
        if size > MAX_ENTRY_BYTES:
            raise Refused(E.OVERSIZED, f"entry is {size} bytes, limit {MAX_ENTRY_BYTES}", h)
        problem = payload_problem(entry.kind, entry.payload)
        if problem:
            raise Refused(E.BAD_PAYLOAD, problem, h)
        stray = stray_digest(entry.kind, entry.payload)
        if stray is not None:
            raise Refused(E.BAD_PAYLOAD, stray, h)
        if not self.light and is_compact(entry.kind, entry.payload):
            why = "a compact entry (its detached fields as digests): a light agent's copy"
            raise Refused(E.BAD_PAYLOAD, why + "; a full replica needs the whole entry", h)
        self._check_author(entry)
        if entry.tx_id in self.seen:
            raise Refused(E.REPLAY, f"transaction {entry.tx_id[:16]}… is already in the chain", h)
        pubkey = self.members[entry.author].pubkey
        if not verify(pubkey, entry.tx.signing_bytes(), bytes.fromhex(entry.sig)):
            raise Refused(E.BAD_SIGNATURE, f"signature does not verify for {entry.author!r}", h)
        self._check_semantics(entry)

    def _check_author(self, entry: Entry) -> None:
        """Author enrolled, unrevoked, unexpired at entry.ts, with a role the policy allows."""
        h, author = entry.height, entry.author
        m = self.members.get(author)
        if m is None:
            raise Refused(E.UNKNOWN_AUTHOR, f"{author!r} is not enrolled", h)
        if m.revoked_at_height is not None:
            raise Refused(
                E.REVOKED_AUTHOR, f"{author!r} was revoked at height {m.revoked_at_height}", h
            )
        if m.expires_ms is not None and m.expires_ms < entry.ts:
            raise Refused(E.EXPIRED_AUTHOR, f"{author!r} expired at {m.expires_ms} ms", h)
        allowed = self.roles_for(entry.kind)
        if m.role not in allowed:
            raise Refused(
                E.ROLE_NOT_ALLOWED,
                f"role {m.role!r} may not append {entry.kind!r} (allowed: {list(allowed)})",
                h,
            )

    def _check_semantics(self, entry: Entry) -> None:
        """Rules that relate the payload to the author or to earlier entries."""
        p, h = entry.payload, entry.height
        if entry.kind == "delta_commit" and p["node"] != entry.author:
            raise Refused(E.NODE_MISMATCH, f"delta_commit.node {p['node']!r} is not the author", h)
        if entry.kind == "round_close" and isinstance(p.get("commits"), list):
            self._check_commits(entry)
        role = self.members[entry.author].role
        # The coordinating gateway stops a campaign that converged, and says why; only
        # admins extend, pause, resume or start campaigns.
        gateway_end = p.get("op") == "end" and p.get("reason", "").strip() != ""
        if entry.kind == "campaign" and role != "admin" and not gateway_end:
            raise Refused(E.ROLE_NOT_ALLOWED, f"a {role} may only end a campaign, with a reason", h)
        if entry.kind == "revoke" and p["node"] not in self.members:
            raise Refused(E.UNKNOWN_NODE, f"cannot revoke {p['node']!r}: never enrolled", h)
        if entry.kind == "key_epoch":
            if p["swarm"] != self.swarm:
                raise Refused(E.WRONG_SWARM, f"key_epoch for swarm {p['swarm']!r}", h)
            # Epochs only go up: an old epoch replayed under a new signature must not
            # bring back a key that a revocation retired.
            if self.key_epoch is not None and p["epoch"] <= self.key_epoch:
                raise Refused(
                    E.STALE_EPOCH, f"epoch {p['epoch']} is not after epoch {self.key_epoch}", h
                )
            unknown = sorted(n for n in p["wrapped"] if n not in self.members)
            if unknown:
                raise Refused(E.UNKNOWN_NODE, f"key_epoch wraps for non-members {unknown[:5]}", h)
            # The ledger itself holds the line: no data key is ever wrapped for a revoked node.
            revoked = sorted(
                n for n in p["wrapped"] if self.members[n].revoked_at_height is not None
            )
            if revoked:
                raise Refused(E.REVOKED_NODE, f"key_epoch wraps for revoked {revoked[:5]}", h)

    def _check_commits(self, entry: Entry) -> None:
        """A round_close's folded commits (ledger_lite/commits.py): exactly its included
        nodes, each row its agent's own signed delta_commit, that agent allowed to commit."""
        p, h = entry.payload, entry.height
        if [row[0] for row in p["commits"]] != p["included"]:
            raise Refused(E.BAD_PAYLOAD, "round_close.commits must name exactly its included", h)
        for row in p["commits"]:
            tx = row_tx(self.swarm, p["round"], row)
            self._check_author(tx.chain(h, entry.prev_hash))
            pubkey = self.members[tx.author].pubkey
            if not verify(pubkey, tx.signing_bytes(), bytes.fromhex(tx.sig)):
                why = f"the commit of {tx.author!r} in round_close is not its signature"
                raise Refused(E.BAD_SIGNATURE, why, h)

    def apply(self, entry: Entry) -> None:
        """Validate `entry` (raising Refused, state untouched) then fold it in."""
        self.validate(entry)
        self._fold(entry)

    def _fold(self, entry: Entry) -> None:
        """Fold an entry that `validate` accepted."""
        p = entry.payload
        if entry.kind == "enroll":
            self.members[p["node"]] = Member(
                p["role"], p["pubkey"], p["expires_ms"], enc_pubkey=p.get("enc_pubkey")
            )
            log.debug("enrolled %s as %s at height %d", p["node"], p["role"], entry.height)
        elif entry.kind == "revoke":
            m = self.members[p["node"]]
            if m.revoked_at_height is None:  # a repeated revoke keeps the first height
                self.members[p["node"]] = replace(m, revoked_at_height=entry.height)
            log.debug("revoked %s at height %d", p["node"], entry.height)
        elif entry.kind == "key_epoch":
            self.key_epoch = p["epoch"]
        self.seen.add(entry.tx_id)
        self.tip = entry.hash
        self.height = entry.height

    def __repr__(self) -> str:
        return (
            f"LedgerState(swarm={self.swarm!r}, height={self.height}, "
            f"tip={self.tip[:12]}…, members={len(self.members)})"
        )
