"""What a gateway tells the swarm about its ledger: each appended entry (``announce``), and
its answers to ledger queries: a page of entries, or a signed proof that an entry (or an
earlier tree) is in the ledger as it is now, RFC 9162 style, so that a device can check its
commit without holding the chain.

Entries go out in their compact form (``ledger_lite/detached.py``: a committee round's
commits and merge report as digests, with the same hash and signature), so that what a
light agent takes per round does not grow with the fleet; the full form of such an entry
goes first on ``ledger/bodies``, for the round's committee members and observers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from edge_swarm.swarm.messages import Query, Reply
from edge_swarm.swarm.topics import Topics
from ledger_lite import Entry, MerkleTree, ProofBundle, SigningKey, sign_tree_head
from ledger_lite.detached import row_proof

REPLY_BYTES = 96 * 1024  # entries per query reply, in canonical bytes


def announce(publish: Callable[..., Any], topics: Topics, entry: Entry) -> None:
    """Publish an appended entry: its full form on ``ledger/bodies`` when it has a compact
    one (first, so a member holds the body when the event comes), the compact form on
    ``ledger/events``."""
    compact = entry.compact()
    if compact is not entry:
        publish(topics.ledger_bodies(), entry.canonical(), qos=1)
    publish(topics.ledger_events(), compact.canonical(), qos=1)


def entries_reply(q: Query, entries: Iterable[Entry], tip_height: int) -> Reply:
    """A page of ``entries`` (those from ``q.start``), cut to stay well under the broker's
    packet limit; the device asks for the next page while it is behind ``tip_height``."""
    page, size = [], 0
    for e in entries:
        e = e.compact()  # as announced
        size += len(e.canonical())
        if page and size > REPLY_BYTES:
            break
        page.append(e.to_dict())
    return Reply(req=q.req, entries=page, tip_height=tip_height)


def answer(
    q: Query,
    entries: Callable[[int, int], list[Entry]],
    tree: MerkleTree,
    key: SigningKey,
    ids: tuple[str, str],
    tip_height: int,
    now_ms: Callable[[], int],
) -> Reply:
    """The reply to any query (``ids``: the swarm and this gateway; ``entries(start, n)``
    reads the ledger; ``now_ms`` stamps a signed tree head)."""
    if q.op == "entries":
        return entries_reply(q, entries(q.start, q.limit), tip_height)
    if q.op == "contribution":
        return contribution_reply(q, entries(q.start, 1), tip_height)
    return proof_reply(q, tree, key, ids[0], ids[1], now_ms)


def contribution_reply(q: Query, at: list[Entry], tip_height: int) -> Reply:
    """The client's row in the round_close at ``q.start`` and its Merkle path to that
    entry's signed digest of the rows, which the client holds in the compact form: a light
    agent's proof that its commit was recorded as it made it."""
    entry = at[0] if at else None
    rows = entry.payload.get("commits") if entry is not None else None
    if entry is None or entry.kind != "round_close" or not isinstance(rows, list):
        return Reply(req=q.req, tip_height=tip_height, refused=f"no round rows at {q.start}")
    index = next((i for i, row in enumerate(rows) if row[0] == q.client), None)
    if index is None:
        return Reply(req=q.req, tip_height=tip_height, refused=f"{q.client} has no row")
    proof = {"height": entry.height, "index": index, "row": rows[index]}
    return Reply(req=q.req, tip_height=tip_height, proof={**proof, "path": row_proof(rows, index)})


def proof_reply(
    q: Query, tree: MerkleTree, key: SigningKey, swarm: str, gateway: str, now_ms: Callable[[], int]
) -> Reply:
    """An inclusion or consistency proof over ``tree``, under a tree head signed by this
    gateway; refused (in the reply) for an index outside the tree."""
    size = tree.size
    if not 0 <= q.start < size or (q.op == "consistency" and q.start == 0):
        return Reply(req=q.req, tip_height=size - 1, refused=f"out of range: {q.start}")
    head = sign_tree_head(key, swarm, gateway, size, tree.root(), now_ms())
    if q.op == "inclusion":
        bundle = ProofBundle.for_inclusion(head, q.start, tree.inclusion_proof(q.start))
    else:
        bundle = ProofBundle.for_consistency(head, q.start, tree.consistency_proof(q.start))
    return Reply(req=q.req, tip_height=size - 1, proof=bundle.to_dict())
