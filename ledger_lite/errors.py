"""The one error family of ledger_lite.

Two kinds of trouble are kept apart:

- bad input from a peer or a file: `DecodeError` (bytes/JSON that are not an entry),
  `Refused` (a well-formed entry the chain may not accept), `CorruptStore` (a stored
  chain that fails verification). Adapters catch exactly these, count them and drop.
- misuse by our own code: plain `ValueError`/`TypeError` (or `EncodeError`, a value with
  no canonical encoding) raised where the mistake is made.

`Refused.reason` is a stable snake_case code (the constants below); `.detail` is for humans.
"""

from __future__ import annotations

# Stable refusal codes (Refused.reason). Tests, logs and peers may match on these.
WRONG_HEIGHT = "wrong_height"
WRONG_PREV_HASH = "wrong_prev_hash"
WRONG_SWARM = "wrong_swarm"
UNKNOWN_KIND = "unknown_kind"
BAD_PAYLOAD = "bad_payload"
OVERSIZED = "oversized"
UNKNOWN_AUTHOR = "unknown_author"
REVOKED_AUTHOR = "revoked_author"
EXPIRED_AUTHOR = "expired_author"
ROLE_NOT_ALLOWED = "role_not_allowed"
BAD_SIGNATURE = "bad_signature"
REPLAY = "replay"
NODE_MISMATCH = "node_mismatch"
UNKNOWN_NODE = "unknown_node"
BAD_GENESIS = "bad_genesis"
STALE_EPOCH = "stale_epoch"
REVOKED_NODE = "revoked_node"

REASONS: frozenset[str] = frozenset(
    {
        WRONG_HEIGHT,
        WRONG_PREV_HASH,
        WRONG_SWARM,
        UNKNOWN_KIND,
        BAD_PAYLOAD,
        OVERSIZED,
        UNKNOWN_AUTHOR,
        REVOKED_AUTHOR,
        EXPIRED_AUTHOR,
        ROLE_NOT_ALLOWED,
        BAD_SIGNATURE,
        REPLAY,
        NODE_MISMATCH,
        UNKNOWN_NODE,
        BAD_GENESIS,
        STALE_EPOCH,
        REVOKED_NODE,
    }
)


class LedgerError(Exception):
    """Base of every error ledger_lite raises on purpose."""


class DecodeError(LedgerError, ValueError):
    """Bytes, JSON or a dict that do not describe a well-formed entry or transaction."""


class EncodeError(LedgerError, ValueError):
    """A value with no canonical encoding (NaN/Inf, non-str key, non-JSON type)."""


class KeyFileError(LedgerError):
    """A key file that is missing, malformed, or readable by group/other."""


class Refused(LedgerError):
    """A submission or entry the chain refuses; `.reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str = "", height: int | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.height = height
        where = f" at height {height}" if height is not None else ""
        super().__init__(f"{reason}{where}: {detail}" if detail else f"{reason}{where}")


class CorruptStore(LedgerError):
    """A stored chain that fails verification; `.height` is the first bad height."""

    def __init__(self, height: int, reason: str) -> None:
        self.height = height
        self.reason = reason
        super().__init__(f"ledger store corrupt at height {height}: {reason}")


class AnchorError(LedgerError):
    """An anchor or tree-head file that cannot be read or does not parse."""


class LostEntries(LedgerError):
    """A ledger file that holds fewer entries than its anchor says were acknowledged
    (`.held` < `.acknowledged`), or other ones in their place (`.forked`)."""

    def __init__(self, message: str, held: int, acknowledged: int, forked: bool = False) -> None:
        self.held = held
        self.acknowledged = acknowledged
        self.forked = forked
        super().__init__(message)


class RecoverError(LedgerError):
    """A recovery refused: the source cannot give back what the target must hold."""
