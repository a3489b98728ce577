"""Signed tree heads and the proof bundles a gateway sends to an agent. Pure.

A `TreeHead` is a gateway's signed statement "the ledger of swarm S had `tree_size` entries
and Merkle root R (RFC 9162, over entry hashes; `ledger_lite.merkle`) at `timestamp_ms`".
The Ed25519 signature covers `signing_bytes`: the canonical JSON of the five other fields
plus a ``type`` tag, so a tree-head signature can never pass as a transaction signature
(those cover a different set of keys) or as anything else the same key signs.

A `ProofBundle` is what a gateway answers a proof request with: its signed tree head plus
either an inclusion proof for the entry at ``leaf_index`` (= the entry's height) or a
consistency proof from ``old_size`` to the head's size. Hashes travel as lowercase hex;
`encode` gives canonical JSON bytes and `decode` parses untrusted bytes, raising only
`DecodeError`. An agent checks a bundle with `check_inclusion` / `check_consistency`,
which verify the signature and the proof together and never raise.

Trust: a bare proof binds the tree size only through the root, so the size and root an
agent relies on must come from a tree head whose signature it checked, under the key of
a gateway it enrolled (the genesis/enroll entries name those keys).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .canonical import canonical_bytes
from .entry import _decode_json, is_hex64, is_id, is_uint
from .errors import DecodeError
from .keys import SigningKey, verify
from .merkle import HASH_BYTES, MAX_PROOF_HASHES, leaf_hash, verify_consistency, verify_inclusion

TREE_HEAD_TYPE = "ledger_lite/tree_head/v1"
"""Domain tag inside the signed bytes of every tree head."""
BUNDLE_VERSION = 1
MAX_BUNDLE_BYTES = 16 * 1024
"""Largest encoded bundle `ProofBundle.decode` accepts (a full proof is under 9 KiB)."""
INCLUSION, CONSISTENCY = "inclusion", "consistency"

HEAD_FIELDS = ("swarm", "tree_size", "root_hex", "timestamp_ms", "gateway_id", "signature_hex")
_SIG_RE = re.compile(r"[0-9a-f]{128}")


def tree_head_signing_bytes(
    swarm: str, tree_size: int, root_hex: str, timestamp_ms: int, gateway_id: str
) -> bytes:
    """The canonical bytes a gateway signs for a tree head."""
    return canonical_bytes(
        {
            "type": TREE_HEAD_TYPE,
            "swarm": swarm,
            "tree_size": tree_size,
            "root": root_hex,
            "timestamp_ms": timestamp_ms,
            "gateway_id": gateway_id,
        }
    )


@dataclass(frozen=True)
class TreeHead:
    """A signed tree head. Raises ValueError if ill-shaped (ids, hex lengths, ints);
    whether the signature is good is `verify_tree_head`'s question."""

    swarm: str
    tree_size: int
    root_hex: str
    timestamp_ms: int
    gateway_id: str
    signature_hex: str

    def __post_init__(self) -> None:
        for name in ("swarm", "gateway_id"):
            if not is_id(getattr(self, name)):
                raise ValueError(f"{name} must match [A-Za-z0-9_.-]{{1,64}}")
        for name in ("tree_size", "timestamp_ms"):
            if not is_uint(getattr(self, name)):
                raise ValueError(f"{name} must be a non-negative int")
        if not is_hex64(self.root_hex):
            raise ValueError("root_hex must be 64 lowercase hex chars")
        if not (isinstance(self.signature_hex, str) and _SIG_RE.fullmatch(self.signature_hex)):
            raise ValueError("signature_hex must be 128 lowercase hex chars")

    @property
    def root(self) -> bytes:
        """The Merkle root as 32 raw bytes."""
        return bytes.fromhex(self.root_hex)

    def signing_bytes(self) -> bytes:
        """What the signature covers (every field but the signature, plus the type tag)."""
        return tree_head_signing_bytes(
            self.swarm, self.tree_size, self.root_hex, self.timestamp_ms, self.gateway_id
        )

    def to_dict(self) -> dict[str, Any]:
        """The six fields as a JSON-ready dict."""
        return {name: getattr(self, name) for name in HEAD_FIELDS}

    @classmethod
    def from_dict(cls, data: Any) -> TreeHead:
        """Build from a decoded JSON object (untrusted); raises only DecodeError."""
        if not isinstance(data, dict) or set(data) != set(HEAD_FIELDS):
            raise DecodeError(f"tree head must be an object with exactly {list(HEAD_FIELDS)}")
        try:
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise DecodeError(f"tree head: {exc}") from None


def sign_tree_head(
    key: SigningKey, swarm: str, gateway_id: str, tree_size: int, root: bytes | str, ts: int
) -> TreeHead:
    """The tree head (swarm, tree_size, root, ts) signed by `key` as `gateway_id`.

    `root` is 32 raw bytes or 64 lowercase hex chars; `ts` is the time in ms (injected).
    Raises ValueError on an ill-shaped argument.
    """
    if isinstance(root, (bytes, bytearray)):
        if len(root) != HASH_BYTES:
            raise ValueError("root must be 32 bytes")
        root_hex = bytes(root).hex()
    else:
        root_hex = root
    if not is_hex64(root_hex):
        raise ValueError("root must be 32 bytes or 64 lowercase hex chars")
    unsigned = tree_head_signing_bytes(swarm, tree_size, root_hex, ts, gateway_id)
    return TreeHead(swarm, tree_size, root_hex, ts, gateway_id, key.sign(unsigned).hex())


def verify_tree_head(head: TreeHead, public_hex: str) -> bool:
    """True iff `head` is a TreeHead signed by the Ed25519 key `public_hex`. Never raises."""
    try:
        if not isinstance(head, TreeHead):
            return False
        return verify(public_hex, head.signing_bytes(), bytes.fromhex(head.signature_hex))
    except Exception:  # a head forced past its checks; never raise on peer input
        return False


def _is_proof_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_BYTES


@dataclass(frozen=True)
class ProofBundle:
    """A signed tree head plus one proof against it.

    kind ``"inclusion"``: `leaf_index` (the entry's height) is set, `old_size` is None and
    `proof` is the inclusion path. kind ``"consistency"``: `old_size` is set, `leaf_index`
    is None, and `proof` leads from `old_size` to ``head.tree_size``. `proof` is a tuple of
    32-byte hashes. Raises ValueError if ill-shaped; checks nothing cryptographic.
    """

    head: TreeHead
    kind: str
    proof: tuple[bytes, ...]
    leaf_index: int | None = None
    old_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.head, TreeHead):
            raise ValueError("head must be a TreeHead")
        if self.kind == INCLUSION:
            if not is_uint(self.leaf_index) or self.old_size is not None:
                raise ValueError("an inclusion bundle has a leaf_index and no old_size")
        elif self.kind == CONSISTENCY:
            if not is_uint(self.old_size) or self.leaf_index is not None:
                raise ValueError("a consistency bundle has an old_size and no leaf_index")
        else:
            raise ValueError(f"kind must be {INCLUSION!r} or {CONSISTENCY!r}")
        if not isinstance(self.proof, tuple) or len(self.proof) > MAX_PROOF_HASHES:
            raise ValueError(f"proof must be a tuple of at most {MAX_PROOF_HASHES} hashes")
        if not all(_is_proof_hash(p) for p in self.proof):
            raise ValueError("every proof element must be 32 bytes")

    @classmethod
    def for_inclusion(cls, head: TreeHead, leaf_index: int, proof: list[bytes]) -> ProofBundle:
        """An inclusion bundle (e.g. ``tree.inclusion_proof(h, head.tree_size)``)."""
        return cls(head, INCLUSION, tuple(proof), leaf_index=leaf_index)

    @classmethod
    def for_consistency(cls, head: TreeHead, old_size: int, proof: list[bytes]) -> ProofBundle:
        """A consistency bundle (e.g. ``tree.consistency_proof(m, head.tree_size)``)."""
        return cls(head, CONSISTENCY, tuple(proof), old_size=old_size)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: {v, kind, head, proof: [hex], leaf_index | old_size}."""
        out: dict[str, Any] = {
            "v": BUNDLE_VERSION,
            "kind": self.kind,
            "head": self.head.to_dict(),
            "proof": [p.hex() for p in self.proof],
        }
        if self.kind == INCLUSION:
            out["leaf_index"] = self.leaf_index
        else:
            out["old_size"] = self.old_size
        return out

    def encode(self) -> bytes:
        """Canonical JSON bytes of `to_dict`."""
        return canonical_bytes(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> ProofBundle:
        """Build from a decoded JSON object (untrusted); raises only DecodeError."""
        version = data.get("v") if isinstance(data, dict) else None
        if type(version) is not int or version != BUNDLE_VERSION:
            raise DecodeError(f"proof bundle must be an object with v={BUNDLE_VERSION}")
        kind = data.get("kind")
        extra = "leaf_index" if kind == INCLUSION else "old_size"
        if set(data) != {"v", "kind", "head", "proof", extra}:
            raise DecodeError(f"proof bundle: fields must be v, kind, head, proof, {extra}")
        proof = data["proof"]
        if not isinstance(proof, list) or len(proof) > MAX_PROOF_HASHES:
            raise DecodeError(f"proof bundle: proof must be a list of <= {MAX_PROOF_HASHES}")
        if not all(isinstance(p, str) and is_hex64(p) for p in proof):
            raise DecodeError("proof bundle: proof hashes must be 64 lowercase hex chars")
        head = TreeHead.from_dict(data["head"])
        try:
            return cls(head, kind, tuple(bytes.fromhex(p) for p in proof), **{extra: data[extra]})
        except (ValueError, TypeError) as exc:
            raise DecodeError(f"proof bundle: {exc}") from None

    @classmethod
    def decode(cls, data: bytes) -> ProofBundle:
        """Parse JSON bytes (at most MAX_BUNDLE_BYTES) from a peer; raises only DecodeError."""
        if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_BUNDLE_BYTES:
            raise DecodeError("proof bundle: not bytes, or larger than MAX_BUNDLE_BYTES")
        return cls.from_dict(_decode_json(bytes(data), "proof bundle"))


def _entry_hash_bytes(entry_hash: bytes | str) -> bytes | None:
    if isinstance(entry_hash, str):
        return bytes.fromhex(entry_hash) if is_hex64(entry_hash) else None
    if isinstance(entry_hash, (bytes, bytearray)) and len(entry_hash) == HASH_BYTES:
        return bytes(entry_hash)
    return None


def check_inclusion(
    bundle: ProofBundle,
    entry_hash: bytes | str,
    gateway_public_key: str,
    *,
    swarm: str | None = None,
) -> bool:
    """True iff `bundle` is an inclusion bundle whose tree head is signed by
    `gateway_public_key` (hex) and whose proof puts the entry hashed `entry_hash`
    (``Entry.hash`` hex, or its 32 raw bytes) at ``bundle.leaf_index`` under that head;
    and, if `swarm` is given, the head names that swarm. Never raises.
    """
    try:
        raw = _entry_hash_bytes(entry_hash)
        if raw is None or not isinstance(bundle, ProofBundle) or bundle.kind != INCLUSION:
            return False
        head = bundle.head
        if swarm is not None and head.swarm != swarm:
            return False
        if not verify_tree_head(head, gateway_public_key):
            return False
        return verify_inclusion(
            leaf_hash(raw), bundle.leaf_index, head.tree_size, bundle.proof, head.root
        )
    except Exception:
        return False


def check_consistency(bundle: ProofBundle, old_head: TreeHead, gateway_public_key: str) -> bool:
    """True iff `bundle` is a consistency bundle whose tree head is signed by
    `gateway_public_key`, names the same swarm as `old_head`, and proves that the tree
    `old_head` describes is a prefix of its own. `old_head` is one the caller already
    trusts (it checked that signature when it got it). Never raises.
    """
    try:
        if not isinstance(bundle, ProofBundle) or bundle.kind != CONSISTENCY:
            return False
        head = bundle.head
        if not isinstance(old_head, TreeHead) or old_head.swarm != head.swarm:
            return False
        if bundle.old_size != old_head.tree_size:
            return False
        if not verify_tree_head(head, gateway_public_key):
            return False
        return verify_consistency(
            old_head.tree_size, head.tree_size, old_head.root, head.root, bundle.proof
        )
    except Exception:
        return False
