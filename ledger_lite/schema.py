"""Payload schemas, one per kind, checked by a small hand-written checker.

Why not jsonschema: there are ten fixed, flat shapes; a table of field → check functions
is shorter than the schemas would be, has no dependency to install on a Pi, runs in a few
microseconds per entry, and gives messages that name the field.

Rules: every listed field is required and checked, except the few in ``OPTIONAL`` (checked
when present: a device enrolled without an encryption key, as before key epochs existed, is
still a well-formed enrolment); unknown fields are refused, except that
``config`` and ``fleet_command`` payloads are free-form objects and ``params`` (genesis)
and ``metrics`` (delta_commit) are free-form objects inside their payload. Hashes and public
keys are 64 lowercase hex chars; counts, rounds and times are ints in [0, 2**63).
``WHOLE`` relates the fields of one payload (a campaign's op and its rounds).
Cross-entry rules (``delta_commit.node == author``, revoking a known node) live in
`LedgerState.validate`, not here: this module sees one payload at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .commits import commits_problem
from .detached import DETACHABLE, is_digest
from .entry import KINDS, ROLES, is_hex64, is_id, is_uint

MAX_TEXT = 1024
"""Longest free-text field (a revoke or close reason), in characters."""

Check = Callable[[Any], str | None]  # returns a problem description, or None if fine


def _id(v: Any) -> str | None:
    return None if is_id(v) else "must be an id matching [A-Za-z0-9_.-]{1,64}"


def _hex64(v: Any) -> str | None:
    return None if is_hex64(v) else "must be 64 lowercase hex chars"


def _uint(v: Any) -> str | None:
    return None if is_uint(v) else "must be an int in [0, 2**63)"


def _uint_or_null(v: Any) -> str | None:
    return None if v is None else _uint(v)


def _text(v: Any) -> str | None:
    if not isinstance(v, str) or len(v) > MAX_TEXT:
        return f"must be a string of at most {MAX_TEXT} chars"
    return None


def _bits(v: Any) -> str | None:
    # A bitmap over the agents of a round (secure aggregation's included set): 1 bit each.
    ok = isinstance(v, str) and len(v) % 2 == 0 and len(v) <= 2048
    return (
        None
        if ok and all(c in "0123456789abcdef" for c in v)
        else "must be even hex, at most 2048 chars"
    )


def _role(v: Any) -> str | None:
    return None if isinstance(v, str) and v in ROLES else f"must be one of {list(ROLES)}"


def _object(v: Any) -> str | None:
    return None if isinstance(v, dict) else "must be a JSON object"


def _sorted_ids(v: Any) -> str | None:
    """A list of ids, strictly increasing (so sorted and without duplicates)."""
    if not isinstance(v, list) or not all(is_id(x) for x in v):
        return "must be a list of ids"
    if any(a >= b for a, b in zip(v, v[1:], strict=False)):
        return "must be sorted and unique"
    return None


MAX_RECIPIENTS = 1024
"""Most recipients one ``key_epoch`` may name (the 64 KiB entry limit binds first)."""
_MAX_WRAP_HEX = 512


def _wrapped(v: Any) -> str | None:
    """{node id: wrapped data key as lowercase hex}: opaque to the ledger, bounded in size."""
    if not isinstance(v, dict) or not 1 <= len(v) <= MAX_RECIPIENTS:
        return f"must be an object of 1..{MAX_RECIPIENTS} {{id: hex}} entries"
    for node, blob in v.items():
        if not is_id(node):
            return f"names {node!r:.70}, which is not an id"
        ok_hex = isinstance(blob, str) and 0 < len(blob) <= _MAX_WRAP_HEX and len(blob) % 2 == 0
        if not ok_hex or blob.strip("0123456789abcdef"):
            return f"entry {node!r} must be lowercase hex of at most {_MAX_WRAP_HEX} chars"
    return None


def _admins(v: Any) -> str | None:
    if not isinstance(v, dict) or not v:
        return "must be a non-empty object {id: pubkey_hex}"
    for node, pub in v.items():
        if not is_id(node) or not is_hex64(pub):
            return f"entry {node!r:.70} must map an id to 64 lowercase hex chars"
    return None


def _policy(v: Any) -> str | None:
    if not isinstance(v, dict):
        return "must be an object {kind: [roles]}"
    for kind, roles in v.items():
        if kind not in KINDS or kind == "genesis":
            return f"names unknown kind {kind!r:.70}"
        if not isinstance(roles, list) or any(_role(r) for r in roles):
            return f"{kind}: roles must be a list drawn from {list(ROLES)}"
        if len(set(roles)) != len(roles):
            return f"{kind}: roles repeat"
    return None


def _or_digest(check: Check) -> Check:
    """``check``, or the field's digest form (a compact entry: detached.py)."""
    return lambda v: None if is_digest(v) else check(v)


CAMPAIGN_OPS = ("extend", "pause", "resume", "end", "new")
"""What a ``campaign`` entry does to the swarm's training campaign (see edge_swarm's
swarm/campaign.py)."""


def _campaign_op(v: Any) -> str | None:
    return None if isinstance(v, str) and v in CAMPAIGN_OPS else f"must be one of {CAMPAIGN_OPS}"


def _positive_uint(v: Any) -> str | None:
    return None if is_uint(v) and v >= 1 else "must be an int in [1, 2**63)"


def _campaign_problem(p: dict[str, Any]) -> str | None:
    """Which fields go with which op: extend names its rounds, new may (else open-ended)."""
    op = p["op"]
    if op == "extend" and "rounds" not in p:
        return "campaign: extend needs rounds (how many more)"
    if op not in ("extend", "new") and "rounds" in p:
        return f"campaign: {op} takes no rounds"
    return None


def _detached(kind: str) -> Check:
    allowed = DETACHABLE[kind]

    def check(v: Any) -> str | None:
        if not isinstance(v, list) or not v or any(f not in allowed for f in v):
            return f"must be a non-empty list drawn from {list(allowed)}"
        if len(set(v)) != len(v):
            return "repeats a field"
        return None

    return check


# kind -> (field checks, free-form?) ; free-form payloads accept any JSON object.
SCHEMAS: dict[str, tuple[Mapping[str, Check], bool]] = {
    "genesis": ({"swarm": _id, "admins": _admins, "policy": _policy, "params": _object}, False),
    "enroll": ({"node": _id, "role": _role, "pubkey": _hex64, "expires_ms": _uint_or_null}, False),
    "revoke": ({"node": _id, "reason": _text}, False),
    "round_open": ({"round": _uint, "base_model_hash": _hex64, "deadline_ms": _uint}, False),
    "delta_commit": (
        {
            "round": _uint,
            "node": _id,
            "envelope_sha256": _hex64,
            "n_samples": _uint,
            "metrics": _object,
        },
        False,
    ),
    "round_close": (
        {"round": _uint, "included": _or_digest(_sorted_ids), "reason": _text},
        False,
    ),
    "model_attest": ({"round": _uint, "model_hash": _hex64, "state_hash": _hex64}, False),
    "model_final": (
        {"round": _uint, "model_hash": _hex64, "state_hash": _hex64, "attesters": _sorted_ids},
        False,
    ),
    "key_epoch": ({"swarm": _id, "epoch": _uint, "wrapped": _wrapped}, False),
    "config": ({}, True),
    "fleet_command": ({}, True),
    "campaign": ({"op": _campaign_op}, False),
}
assert set(SCHEMAS) == KINDS, "every kind needs a schema"

# kind -> fields that may be left out, checked when present.
OPTIONAL: dict[str, Mapping[str, Check]] = {
    "enroll": {"enc_pubkey": _hex64},  # the device's X25519 key, to wrap data keys for it
    # What the merge rule did with each included delta; or why a closed round was finalised
    # on the model it started from (nobody could merge it); in a swarm whose merge committee
    # decides (merge_by = committee), the round's members, so anyone can recount the quorum.
    "model_final": {
        "merge": _object,
        "abandoned": _text,
        "committee": _sorted_ids,
        "detached": _detached("model_final"),
        "privacy": _object,  # the privacy spent so far (edge_swarm/node/private_merge.py)
    },
    # The sha256 of the round's downlink update a committee member published with its merge.
    "model_attest": {"update_sha256": _hex64},
    # The round's delta commits, each signed by its agent, instead of one entry per agent
    # (ledger_lite/commits.py; a swarm whose committee merges).
    # Fields hashed and signed as digests (detached.py), so a light agent can take the
    # entry without them; a full replica still holds and checks them.
    "round_close": {
        "commits": _or_digest(commits_problem),
        "detached": _detached("round_close"),
        "included_bits": _bits,  # secure aggregation: the included set, for light agents
    },
    # Privacy (edge_swarm/swarm/privacy.py): the agents the coordinator saw online, as a
    # bitmap over the roster, so that every node draws the same secure-aggregation graph.
    "round_open": {"agents_bits": _bits},
    # Extend by / budget a new campaign at ``rounds``; why it is paused, ended, started.
    "campaign": {"rounds": _positive_uint, "reason": _text},
}

# kind -> a check of the payload as a whole, once every field passed its own.
WHOLE: dict[str, Callable[[dict[str, Any]], str | None]] = {"campaign": _campaign_problem}


def payload_problem(kind: str, payload: Any) -> str | None:
    """Describe what is wrong with `payload` for `kind`, or return None if it conforms.

    Pure and total: never raises, whatever `kind` and `payload` are.
    """
    spec = SCHEMAS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        return f"unknown kind {kind!r:.70}"
    fields, free_form = spec
    if not isinstance(payload, dict):
        return "payload must be a JSON object"
    if free_form:
        return None
    optional = OPTIONAL.get(kind, {})
    missing = [name for name in fields if name not in payload]
    if missing:
        return f"{kind}: missing {missing}"
    extra = sorted(str(k) for k in payload if k not in fields and k not in optional)
    if extra:
        return f"{kind}: unknown fields {extra[:5]}"
    checks = [*fields.items(), *((n, c) for n, c in optional.items() if n in payload)]
    for name, check in checks:
        problem = check(payload[name])
        if problem:
            return f"{kind}.{name} {problem}"
    whole = WHOLE.get(kind)
    return None if whole is None else whole(payload)
