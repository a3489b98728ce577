"""The merge committee of a round: who it is, what its members sign, when enough have signed.

How it works
------------
A round's committee is the site's gateways plus ``k`` agents drawn from the hash of the
round's ``round_open`` entry (``draw_committee``), so that even a one-gateway site has no
single machine that decides the model. The draw is rendezvous hashing: every eligible agent
scores ``sha256(b"edge-swarm/committee/v1\\0" + bytes.fromhex(round_open_hash) + node_id)``
and the ``k`` lowest scores win. Anyone holding the ledger draws the same committee, and no
one can steer it without steering the ``round_open`` hash, which the coordinator fixes before
any delta of the round exists.

Each member that merged the round signs an ``UpdateStatement`` (swarm, round, the sha256 of
the published merged update, the hash of the model it yields) with ``sign_statement``.
``model_final`` carries the signatures as a JSON list of ``[node, signature_hex]`` pairs in
strictly increasing node order (``encode_signatures`` / ``parse_signatures``). A light agent
applies the update only if ``check_quorum`` finds at least ``committee.quorum`` valid
signatures, ``quorum`` being a strict majority of the members.

Invariants
----------
- The draw depends only on the hash, the *set* of agents, the set of gateways and ``k``:
  never on input order or duplicates. Gateways are always members and are not drawn again,
  so ``k`` counts agents beyond the gateways; it is capped at the number of such agents.
- ``quorum = len(members) // 2 + 1``: two quorums always share a member, and an empty
  committee can never reach its quorum of 1 (a misconfigured site fails closed).
- A member counts once, and only if its signature verifies under the key ``public_key``
  gives for it; everything else is reported in ``Quorum.rejected`` with a named reason.
- ``parse_signatures`` takes untrusted input and raises only ``CommitteeError``;
  ``check_quorum`` never raises on a bad signature of any type.

Misuse by our own code raises ValueError. Pure: no sockets, no threads, no logging.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from edge_swarm.swarm.topics import TopicError, validate_id, validate_round
from ledger_lite import SigningKey, verify
from ledger_lite.canonical import canonical_bytes

__all__ = [
    "DRAW_DOMAIN",
    "MAX_SIGNATURES",
    "STATEMENT_DOMAIN",
    "Committee",
    "CommitteeError",
    "Quorum",
    "Reason",
    "UpdateStatement",
    "check_quorum",
    "draw_committee",
    "encode_signatures",
    "parse_signatures",
    "sign_statement",
]

DRAW_DOMAIN = b"edge-swarm/committee/v1\0"
"""Prefix of every draw score, so a score is never some other sha256 of the same bytes."""
STATEMENT_DOMAIN = "edge-swarm/update/v1"
"""The ``domain`` field of every signed statement: a signature made for another purpose with
the same key (a ledger transaction, a tree head) can never pass for one of these."""
MAX_SIGNATURES = 256
"""Default bound on the pairs ``parse_signatures`` accepts (a committee is a handful)."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SIG_HEX = re.compile(r"[0-9a-f]{128}")  # an Ed25519 signature is 64 bytes


class CommitteeError(ValueError):
    """A committee value that does not hold together (bad input, or misuse by our code)."""


class Reason:
    """Why ``check_quorum`` did not count a signature, as plain strings."""

    NOT_MEMBER = "not a committee member"
    MALFORMED = "malformed signature"
    UNKNOWN_KEY = "no key for this node"
    BAD_SIGNATURE = "bad signature"


def _check_hex64(value: object, what: str) -> str:
    if not isinstance(value, str) or _HEX64.fullmatch(value) is None:
        raise CommitteeError(f"{what} is not 64 lowercase hex chars: {value!r:.80}")
    return value


def _check_ids(values: tuple[str, ...], what: str) -> None:
    if not isinstance(values, tuple):
        raise CommitteeError(f"{what}s must be a tuple")
    try:
        for v in values:
            validate_id(v, what)
    except TopicError as exc:
        raise CommitteeError(str(exc)) from None
    if list(values) != sorted(set(values)):
        raise CommitteeError(f"{what}s must be sorted and unique")


@dataclass(frozen=True)
class Committee:
    """The committee of the round whose ``round_open`` entry hashes to ``round_open_hash``.
    ``gateways`` and ``agents`` (the drawn ones) are sorted, unique and disjoint: build it
    with ``draw_committee``. Raises CommitteeError otherwise."""

    round_open_hash: str
    gateways: tuple[str, ...]
    agents: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_hex64(self.round_open_hash, "round_open hash")
        _check_ids(self.gateways, "gateway")
        _check_ids(self.agents, "agent")
        if set(self.gateways) & set(self.agents):
            raise CommitteeError("a node is both a gateway and a drawn agent")

    @property
    def members(self) -> tuple[str, ...]:
        """Every member, sorted."""
        return tuple(sorted(self.gateways + self.agents))

    @property
    def quorum(self) -> int:
        """Signatures needed: a strict majority, so two quorums always share a member."""
        return (len(self.gateways) + len(self.agents)) // 2 + 1

    def __contains__(self, node: object) -> bool:
        return node in self.gateways or node in self.agents


def _ids(values: Iterable[str], what: str) -> set[str]:
    if isinstance(values, (str, bytes)):  # a lone id would be iterated as characters
        raise ValueError(f"{what}s must be an iterable of ids, not a single string")
    return {validate_id(v, what) for v in values}


def _score(seed: bytes, node: str) -> bytes:
    return hashlib.sha256(DRAW_DOMAIN + seed + node.encode("utf-8")).digest()


def draw_committee(
    round_open_hash: str, agents: Iterable[str], gateways: Iterable[str], k: int
) -> Committee:
    """The committee of a round: every gateway, plus the ``k`` agents of lowest draw score.

    ``agents`` are the ids eligible to be drawn (the caller decides which: enrolled, not
    revoked, as of the ``round_open`` entry); an id that is also a gateway is a member as a
    gateway and takes no draw slot. ``k`` is capped at the number of eligible agents.
    Raises ValueError on a hash that is not 64 lowercase hex chars, ``k`` that is not an
    int >= 0, or an id that is not valid (``topics.validate_id``).
    """
    _check_hex64(round_open_hash, "round_open hash")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, not {k!r}")
    gws = _ids(gateways, "gateway")
    pool = _ids(agents, "agent") - gws
    seed = bytes.fromhex(round_open_hash)
    # Scores are 256-bit hashes, so a tie never happens in practice; the node id breaks one
    # anyway so the order is total and the draw never depends on input order.
    ranked = sorted(pool, key=lambda node: (_score(seed, node), node))
    return Committee(round_open_hash, tuple(sorted(gws)), tuple(sorted(ranked[:k])))


@dataclass(frozen=True)
class UpdateStatement:
    """What a committee member signs: round ``round`` of ``swarm`` is finished by the merged
    update whose published bytes hash to ``update_sha256``, which yields the model hashing
    to ``model_hash``. Raises CommitteeError on a bad field."""

    swarm: str
    round: int
    update_sha256: str
    model_hash: str

    def __post_init__(self) -> None:
        try:
            validate_id(self.swarm, "swarm")
            validate_round(self.round)
        except TopicError as exc:
            raise CommitteeError(str(exc)) from None
        _check_hex64(self.update_sha256, "update_sha256")
        _check_hex64(self.model_hash, "model_hash")

    def signing_bytes(self) -> bytes:
        """The bytes signed: canonical JSON with a ``domain`` field. Canonical JSON is
        unambiguous (no field runs into the next); the domain sets them apart from anything
        else a node's key signs."""
        return canonical_bytes(
            {
                "domain": STATEMENT_DOMAIN,
                "model_hash": self.model_hash,
                "round": self.round,
                "swarm": self.swarm,
                "update_sha256": self.update_sha256,
            }
        )


def sign_statement(statement: UpdateStatement, key: SigningKey) -> str:
    """A member's signature of ``statement``, as 128 lowercase hex chars."""
    return key.sign(statement.signing_bytes()).hex()


@dataclass(frozen=True)
class Quorum:
    """The outcome of ``check_quorum``. ``signers``: members whose signature verified,
    sorted; ``needed``: the committee's quorum; ``rejected``: ``(node, Reason.*)`` for every
    signature not counted, by node."""

    ok: bool
    signers: tuple[str, ...]
    needed: int
    rejected: tuple[tuple[str, str], ...]


def check_quorum(
    statement: UpdateStatement,
    signatures: Mapping[str, str],
    committee: Committee,
    public_key: Callable[[str], str | None],
) -> Quorum:
    """Count the members of ``committee`` whose signature of ``statement`` verifies.

    ``signatures`` maps node ids to signature hex (from ``parse_signatures``, or gathered one
    by one); the values may be anything, a bad one is rejected, never raised on.
    ``public_key(node)`` gives the node's Ed25519 public key hex from the ledger, or None if
    the node is not enrolled or is revoked: it is asked only about committee members. The
    caller must pair the statement with the committee drawn for that statement's round.
    """
    msg = statement.signing_bytes()
    signers: list[str] = []
    rejected: list[tuple[str, str]] = []
    for node in sorted(signatures):
        sig, reason = signatures[node], None
        if node not in committee:
            reason = Reason.NOT_MEMBER  # checked first: a non-member's key is never looked up
        elif not isinstance(sig, str) or _SIG_HEX.fullmatch(sig) is None:
            reason = Reason.MALFORMED
        else:
            key = public_key(node)
            if key is None:
                reason = Reason.UNKNOWN_KEY
            elif not verify(key, msg, bytes.fromhex(sig)):
                reason = Reason.BAD_SIGNATURE
        if reason is None:
            signers.append(node)  # keys of a Mapping are unique: each member counts once
        else:
            rejected.append((node, reason))
    needed = committee.quorum
    return Quorum(len(signers) >= needed, tuple(signers), needed, tuple(rejected))


def parse_signatures(obj: object, max_entries: int = MAX_SIGNATURES) -> dict[str, str]:
    """Read the wire form of a signature set: a list of ``[node, signature_hex]`` pairs.

    ``obj`` is untrusted (a ledger payload field, a network message, as ``json`` gives it).
    Each node must be a valid id and each signature 128 lowercase hex chars; the pairs must
    come in strictly increasing node order, so each set has one spelling and no node
    appears twice. Returns ``{node: signature_hex}``. Raises only CommitteeError.
    """
    if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
        raise ValueError(f"max_entries must be an int >= 0, not {max_entries!r}")
    if not isinstance(obj, (list, tuple)):
        raise CommitteeError(f"signatures must be a list, not {type(obj).__name__}")
    if len(obj) > max_entries:
        raise CommitteeError(f"more than {max_entries} signatures")
    out: dict[str, str] = {}
    last = ""  # the previous pair's node
    for pair in obj:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise CommitteeError("each signature must be a [node, signature_hex] pair")
        node, sig = pair
        try:
            validate_id(node, "signer")
        except TopicError as exc:
            raise CommitteeError(str(exc)) from None
        if not isinstance(sig, str) or _SIG_HEX.fullmatch(sig) is None:
            raise CommitteeError(f"signature of {node} is not 128 lowercase hex chars")
        if out and node <= last:
            raise CommitteeError("signatures must be in strictly increasing node order")
        out[node] = sig
        last = node
    return out


def encode_signatures(sigs: Mapping[str, str]) -> list[list[str]]:
    """The wire form of ``sigs``: ``[[node, signature_hex], ...]`` sorted by node, which
    ``parse_signatures`` reads back unchanged. Raises CommitteeError on a bad id or
    signature (misuse: our own code signs and checks them first)."""
    pairs = [[node, sigs[node]] for node in sorted(sigs)]
    parse_signatures(pairs, max_entries=len(pairs))  # the one set of rules, both ways
    return pairs
