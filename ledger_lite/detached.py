"""Detached fields: bulky payload fields that are signed and hashed as a digest, so that one
entry has a full form (what gateways store, replicate and check row by row) and a compact
form (what light agents receive), with one hash and one signature.

An entry opts in by naming the fields in its payload's ``detached`` list (only those
``DETACHABLE`` allows for its kind: ``round_close``'s ``commits`` and ``included``,
``model_final``'s ``merge``). In the signed and hashed form each of them is replaced by::

    {"digest": hex, "n": count}

where ``digest`` is the Merkle root (RFC 9162, ``merkle.root``) over the canonical bytes of
the items of a list, or the SHA-256 of the canonical bytes of an object, and ``n`` its
length. The compact form *is* that form, so it verifies exactly like the full one; anyone
holding the full value recomputes its digest, and an agent holding one row checks it
against the signed root with a Merkle inclusion proof (``row_proof``, ``row_in``).

An entry without ``detached`` is hashed and signed as it always was: every ledger written
before this module existed verifies unchanged.

Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any

from .canonical import canonical_bytes, sha256_hex
from .merkle import MerkleTree, leaf_hash, root, verify_inclusion

DETACHABLE: dict[str, tuple[str, ...]] = {
    "round_close": ("commits", "included"),
    "model_final": ("merge",),
}
DIGEST_KEYS = frozenset({"digest", "n"})
_HEX64 = re.compile(r"[0-9a-f]{64}")  # entry.py imports this module: no import back


def _hex64(v: Any) -> bool:
    return isinstance(v, str) and _HEX64.fullmatch(v) is not None


def _uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63


def is_digest(value: Any) -> bool:
    """Whether ``value`` is a field's digest form ``{"digest": hex64, "n": uint}``."""
    return (
        isinstance(value, dict)
        and set(value) == DIGEST_KEYS
        and _hex64(value["digest"])
        and _uint(value["n"])
    )


def digest_of(value: Any) -> dict[str, Any]:
    """The digest form of a field's full value (a list or an object), or the value itself if
    it is already a digest."""
    if is_digest(value):
        return value
    if isinstance(value, list):
        return {"digest": root([canonical_bytes(v) for v in value]).hex(), "n": len(value)}
    return {"digest": sha256_hex(canonical_bytes(value)), "n": len(value)}


def detached_fields(kind: str, payload: Any) -> tuple[str, ...]:
    """The fields of ``payload`` hashed as digests: those its ``detached`` list names that
    ``DETACHABLE`` allows for ``kind`` and that are present (none for anything else)."""
    allowed = DETACHABLE.get(kind)
    if allowed is None or not isinstance(payload, dict):
        return ()
    named = payload.get("detached")
    if not isinstance(named, list):
        return ()
    return tuple(f for f in allowed if f in named and f in payload)


def hashed_payload(kind: str, payload: Any) -> Any:
    """The payload as signed and hashed: its detached fields as digests. The same object
    when nothing is detached (every entry of a ledger that never detaches)."""
    fields = detached_fields(kind, payload)
    if all(is_digest(payload[f]) for f in fields):  # nothing detached, or compact already
        return payload
    return {k: digest_of(v) if k in fields else v for k, v in payload.items()}


def is_compact(kind: str, payload: Any) -> bool:
    """Whether some detached field of ``payload`` holds only its digest (a compact form)."""
    return any(is_digest(payload[f]) for f in detached_fields(kind, payload))


def stray_digest(kind: str, payload: Any) -> str | None:
    """A detachable field holding a digest without being named in ``detached`` (it would
    be hashed as that digest: a value nobody can check), or None."""
    named = detached_fields(kind, payload)
    for f in DETACHABLE.get(kind, ()):
        if isinstance(payload, dict) and is_digest(payload.get(f)) and f not in named:
            return f"{kind}.{f} is a digest but not named in detached"
    return None


def row_proof(rows: list[Any], index: int) -> list[str]:
    """The inclusion proof (hex hashes) of ``rows[index]`` under ``digest_of(rows)``."""
    tree = MerkleTree([canonical_bytes(r) for r in rows])
    return [h.hex() for h in tree.inclusion_proof(index)]


def row_in(row: Any, index: int, proof: list[str], digest: Any) -> bool:
    """Whether ``row`` is item ``index`` of the list whose digest form is ``digest``
    (untrusted input: never raises)."""
    try:
        if not is_digest(digest):
            return False
        path = [bytes.fromhex(h) for h in proof]
        leaf = leaf_hash(canonical_bytes(row))
        return verify_inclusion(leaf, index, digest["n"], path, bytes.fromhex(digest["digest"]))
    except (ValueError, TypeError):
        return False
