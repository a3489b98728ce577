"""The anchor: durable evidence of the ledger head a gateway has acknowledged.

Why. SQLite in WAL mode reads a damaged frame of ``-wal`` (a flipped bit, a torn or
truncated write after an unclean stop) as the end of the log: it drops that frame and every
one after it without an error, and the database opens at an older height whose chain still
verifies. Only something kept outside the database can tell that it moved backwards.

What. ``ledger.anchor`` beside ``ledger.sqlite`` (`anchor_path_for`: the ledger file's name
with the suffix ``.anchor``) holds one canonical JSON object:

    {"type": "ledger_lite/anchor/v1", "swarm": S, "tree_size": N, "root": R, "tip": T,
     "timestamp_ms": MS, "head": TREE_HEAD or null}

N entries (heights 0..N-1) were acknowledged; R is the RFC 9162 Merkle root over their
hashes (`merkle`), T the hash of entry N-1, MS when the anchor was written. ``head`` is the
same (S, N, R, MS) as a `TreeHead` signed by the gateway's key when the ledger was given
one (anyone holding the gateway's public key can check it), null otherwise. The file is
replaced atomically (`files.write_atomic`: temporary file, fsync, rename, directory fsync).

Invariants
- Nothing is acknowledged (a submit callback, an ``on_append`` announcement) before an
  anchor covering it is durable. A store may run ahead of its anchor (written, not yet
  acknowledged when the process stopped); never behind it.
- The anchor only moves forward: `Anchorer.write` replaces it only by one whose tree
  extends it (the same root at the old size).
- On open (`AnchorCheck`, run by `SqliteStore` before anything is written), a store
  shorter than its anchor, or whose tree at the anchor's size has another root, is refused
  with `LostEntries` naming both heights. A missing ledger file with an anchor beside it is
  refused the same way: it never silently becomes a fresh chain.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .canonical import canonical_bytes
from .entry import Entry, _decode_json, is_hex64, is_id, is_uint, now_ms
from .errors import AnchorError, DecodeError, LostEntries
from .files import write_atomic
from .keys import SigningKey
from .merkle import MerkleTree
from .state import LedgerState
from .treehead import HEAD_FIELDS, TreeHead, sign_tree_head

log = logging.getLogger(__name__)

ANCHOR_TYPE = "ledger_lite/anchor/v1"
ANCHOR_SUFFIX = ".anchor"
MAX_ANCHOR_BYTES = 16 * 1024
_FIELDS = frozenset({"type", "swarm", "tree_size", "root", "tip", "timestamp_ms", "head"})


def anchor_path_for(ledger_path: str | os.PathLike[str]) -> Path:
    """Where the anchor of the ledger at `ledger_path` lives: ``ledger.sqlite`` ->
    ``ledger.anchor``, in the same directory."""
    path = Path(ledger_path)
    anchor = path.with_suffix(ANCHOR_SUFFIX)
    if anchor == path:
        raise ValueError(f"a ledger file may not be named *{ANCHOR_SUFFIX}: {path}")
    return anchor


@dataclass(frozen=True)
class Anchor:
    """An acknowledged head: `tree_size` entries with Merkle root `root_hex` and last
    entry hash `tip` (None when only a bare tree head was given). `head`, if set, is the
    same statement signed by a gateway. Raises ValueError if ill-shaped."""

    swarm: str
    tree_size: int
    root_hex: str
    tip: str | None
    timestamp_ms: int
    head: TreeHead | None = None

    def __post_init__(self) -> None:
        if not is_id(self.swarm):
            raise ValueError("swarm must match [A-Za-z0-9_.-]{1,64}")
        if not (is_uint(self.tree_size) and self.tree_size >= 1):
            raise ValueError("tree_size must be an int >= 1 (a ledger starts with a genesis)")
        if not is_hex64(self.root_hex) or not (self.tip is None or is_hex64(self.tip)):
            raise ValueError("root and tip must be 64 lowercase hex chars")
        if not is_uint(self.timestamp_ms):
            raise ValueError("timestamp_ms must be a non-negative int")
        head = self.head
        if head is not None:
            if not isinstance(head, TreeHead):
                raise ValueError("head must be a TreeHead")
            mine = (self.swarm, self.tree_size, self.root_hex, self.timestamp_ms)
            if (head.swarm, head.tree_size, head.root_hex, head.timestamp_ms) != mine:
                raise ValueError("the signed head does not state this anchor's size and root")

    @property
    def root(self) -> bytes:
        """The Merkle root as 32 raw bytes."""
        return bytes.fromhex(self.root_hex)

    @property
    def signer(self) -> str | None:
        """The gateway id that signed it, or None."""
        return None if self.head is None else self.head.gateway_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": ANCHOR_TYPE,
            "swarm": self.swarm,
            "tree_size": self.tree_size,
            "root": self.root_hex,
            "tip": self.tip,
            "timestamp_ms": self.timestamp_ms,
            "head": None if self.head is None else self.head.to_dict(),
        }

    def encode(self) -> bytes:
        """Canonical JSON bytes (what the anchor file holds)."""
        return canonical_bytes(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> Anchor:
        """Build from a decoded JSON object (untrusted); raises only DecodeError.

        Takes an anchor, a bare tree head (its six fields) or a proof bundle (its head)."""
        if isinstance(data, dict) and set(data) == set(HEAD_FIELDS):
            return cls.from_tree_head(TreeHead.from_dict(data))
        if isinstance(data, dict) and "kind" in data and isinstance(data.get("head"), dict):
            return cls.from_tree_head(TreeHead.from_dict(data["head"]))
        if not isinstance(data, dict) or set(data) != _FIELDS or data["type"] != ANCHOR_TYPE:
            raise DecodeError(f"not an anchor: want type {ANCHOR_TYPE} and {sorted(_FIELDS)}")
        head = None if data["head"] is None else TreeHead.from_dict(data["head"])
        try:
            return cls(
                data["swarm"],
                data["tree_size"],
                data["root"],
                data["tip"],
                data["timestamp_ms"],
                head,
            )
        except (ValueError, TypeError) as exc:
            raise DecodeError(f"anchor: {exc}") from None

    @classmethod
    def from_tree_head(cls, head: TreeHead) -> Anchor:
        """The anchor a signed tree head states (no tip); DecodeError for size 0."""
        try:
            return cls(head.swarm, head.tree_size, head.root_hex, None, head.timestamp_ms, head)
        except ValueError as exc:
            raise DecodeError(f"tree head: {exc}") from None

    @classmethod
    def decode(cls, data: bytes) -> Anchor:
        """Parse anchor (or tree head) JSON bytes; raises only DecodeError."""
        if len(data) > MAX_ANCHOR_BYTES:
            raise DecodeError(f"anchor: larger than {MAX_ANCHOR_BYTES} bytes")
        return cls.from_dict(_decode_json(bytes(data), "anchor"))


def read_anchor(path: str | os.PathLike[str]) -> Anchor | None:
    """The anchor in `path`, or None if there is no such file. Raises AnchorError if it
    cannot be read or does not parse (never guess: a damaged anchor needs a person)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_ANCHOR_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AnchorError(f"cannot read the anchor {path}: {exc}") from exc
    try:
        return Anchor.decode(data)
    except DecodeError as exc:
        raise AnchorError(f"the anchor {path} is damaged ({exc})") from None


def make_anchor(
    tree: MerkleTree,
    size: int,
    tip: str,
    swarm: str,
    ts: int,
    key: SigningKey | None = None,
    gateway_id: str | None = None,
) -> Anchor:
    """The anchor of the first `size` leaves of `tree` (last entry hash `tip`), signed as
    `gateway_id` with `key` when both are given."""
    root = tree.root(size)
    head = None
    if key is not None and gateway_id is not None:
        head = sign_tree_head(key, swarm, gateway_id, size, root, ts)
    return Anchor(swarm, size, root.hex(), tip, ts, head)


def mismatch(
    path: str | os.PathLike[str],
    tree: MerkleTree | None,
    anchor: Anchor,
    anchor_path: str | os.PathLike[str],
    claim: str = "this gateway acknowledged",
    hint: str | None = None,
) -> LostEntries | None:
    """Why the chain whose tree is `tree` (None: the file is missing) does not extend
    `anchor`, as a LostEntries naming both heights; None if it does. `hint` replaces the
    advice to run ``ledger-lite recover``."""
    n, root = anchor.tree_size, anchor.root_hex[:16]
    where = f"anchor {anchor_path}, root {root}…"
    if hint is None:
        hint = (
            f"recover it with `ledger-lite recover --from COPY --to {path} --anchor "
            f"{anchor_path}` (COPY: a healthy replica's ledger file)"
        )
    if tree is None:
        return LostEntries(
            f"{path} is missing but {claim} {n} entries ({where}): the file was lost; {hint}, "
            f"or move {anchor_path} away to start a new chain",
            0,
            n,
        )
    held = tree.size
    if held < n:
        return LostEntries(
            f"{path} holds {held} entries but {claim} {n} ({where}): the file lost entries; {hint}",
            held,
            n,
        )
    if tree.root(n) != anchor.root:
        return LostEntries(
            f"{path} holds {held} entries but its first {n} are not the {n} {claim} ({where}; "
            f"the file's root there is {tree.root(n).hex()[:16]}…): it was replaced or "
            f"changed; {hint}",
            held,
            n,
            forked=True,
        )
    return None


CheckFn = Callable[[LedgerState | None, MerkleTree], None]


class AnchorCheck:
    """The `check` a `SqliteStore` runs on open, before it writes anything: the verified
    chain must extend the anchor at `anchor_path` (default: beside the ledger).

    Raises AnchorError (from the constructor) for a damaged anchor, and LostEntries (when
    called) for a missing, short or different chain; with `allow_behind` a chain that is
    only short passes (a Raft replica fetches the rest from its peers) and `behind` is set.
    After the call, `state` and `tree` are the verified chain's.
    """

    def __init__(
        self,
        ledger_path: str | os.PathLike[str],
        anchor_path: str | os.PathLike[str] | None = None,
        *,
        allow_behind: bool = False,
    ) -> None:
        self.ledger_path = Path(ledger_path)
        self.anchor_path = (
            anchor_path_for(ledger_path) if anchor_path is None else Path(anchor_path)
        )
        self.anchor = read_anchor(self.anchor_path)
        self.allow_behind = allow_behind
        self.behind: LostEntries | None = None
        self.state: LedgerState | None = None
        self.tree = MerkleTree()

    def __call__(self, state: LedgerState | None, tree: MerkleTree) -> None:
        self.state, self.tree = state, tree
        if self.anchor is None:
            if state is not None and state.height > 0:
                # Only a file from before anchors, or an anchor deleted since, gets here: the
                # file cannot be checked, so say so once, loudly, and start anchoring it.
                log.warning(
                    "no anchor beside %s (%d entries): anchoring it from now on, unchecked; "
                    "if %s existed before, it was deleted and this file may have lost "
                    "entries: check it against a replica's head (ledger-lite verify %s "
                    "--tree-head COPY.anchor)",
                    self.ledger_path,
                    state.height + 1,
                    self.anchor_path,
                    self.ledger_path,
                )
            return
        missing = state is None and not self.ledger_path.is_file()
        lost = mismatch(self.ledger_path, None if missing else tree, self.anchor, self.anchor_path)
        if lost is None:
            return
        if lost.forked or not self.allow_behind:
            raise lost
        self.behind = lost

    def missing(self) -> None:
        """Raise LostEntries if an anchor stands beside a ledger file that is missing."""
        if self.anchor is None:
            return
        lost = mismatch(self.ledger_path, None, self.anchor, self.anchor_path)
        if lost is not None:  # always, for a missing file
            raise lost

    def anchorer(
        self,
        state: LedgerState,
        *,
        key: SigningKey | None = None,
        gateway_id: str | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> Anchorer:
        """The `Anchorer` that keeps this anchor in step with the store from now on.

        `state` is the store's state now (after a genesis was appended to an empty one)."""
        tree = self.tree
        if tree.size == 0 and state.height == 0:  # the genesis an empty store just got
            tree.append(bytes.fromhex(state.genesis_hash))
        if tree.size != state.height + 1:
            raise ValueError(f"tree of {tree.size} leaves for a chain at height {state.height}")
        return Anchorer(
            self.anchor_path,
            tree,
            state.tip,
            state.swarm,
            self.anchor,
            key=key,
            gateway_id=gateway_id,
            clock=clock,
            ledger_path=self.ledger_path,
        )


class Anchorer:
    """Keeps a ledger's anchor file in step with its store. Thread-safe.

    `extend(entries)` adds entries the store has made durable (in height order, one thread
    at a time); `write()` then makes the anchor cover every entry extended so far in one
    fsynced file however many that is, and returns the acknowledged size. While the store
    is behind the anchor (`behind`, a Raft replica catching up), `write` writes nothing;
    once the store reaches the anchor's size it checks the root there (LostEntries if the
    chain differs) and goes on. `key` and `gateway_id` (both or neither) sign each anchor.
    Raises OSError if the file cannot be written (nothing may be acknowledged then); on a
    full disk (ENOSPC) that leaves the old anchor whole and in force and no temporary file
    behind, and a later `write` covers everything extended meanwhile.
    """

    def __init__(
        self,
        path: Path,
        tree: MerkleTree,
        tip: str,
        swarm: str,
        anchor: Anchor | None,
        *,
        key: SigningKey | None = None,
        gateway_id: str | None = None,
        clock: Callable[[], int] = now_ms,
        ledger_path: Path | None = None,
    ) -> None:
        if (key is None) != (gateway_id is None) or not (gateway_id is None or is_id(gateway_id)):
            raise ValueError("key and gateway_id go together; gateway_id must be an id")
        self.path = path
        self.anchor = anchor
        self._tree = tree
        self._swarm = swarm
        self._key = key
        self._gateway_id = gateway_id
        self._clock = clock
        self._ledger_path = ledger_path or path
        self._head = (tree.size, tip)  # replaced whole: readers see a matching pair
        self._write_lock = threading.Lock()
        self._behind = anchor is not None and (
            tree.size < anchor.tree_size or tree.root(anchor.tree_size) != anchor.root
        )

    @property
    def acknowledged(self) -> int:
        """Entries covered by the durable anchor (0 before the first one)."""
        return 0 if self.anchor is None else self.anchor.tree_size

    @property
    def behind(self) -> bool:
        """True while the store has not yet reached the anchor's size (and root)."""
        return self._behind

    @property
    def size(self) -> int:
        """Entries extended so far."""
        return self._head[0]

    def extend(self, entries: Iterable[Entry]) -> None:
        """Add durable entries, in height order. ValueError for one out of order."""
        for entry in entries:
            if entry.height != self._tree.size:
                raise ValueError(f"entry {entry.height} extends a tree of {self._tree.size}")
            self._tree.append(bytes.fromhex(entry.hash))
            self._head = (self._tree.size, entry.hash)

    def write(self, durable: Callable[[], None] | None = None) -> int:
        """Make the anchor cover every entry extended so far; return what it covers.

        ``durable()``, if given, is called after the entries to cover are fixed and before
        the anchor is written: it makes them durable (the store's group commit), so that
        the anchor never names an entry a power cut could take back."""
        with self._write_lock:
            size, tip = self._head
            if durable is not None and (self.anchor is None or size > self.anchor.tree_size):
                durable()
            old = self.anchor
            if old is not None:
                if size < old.tree_size:
                    return old.tree_size
                if self._behind:
                    lost = mismatch(self._ledger_path, self._tree, old, self.path)
                    if lost is not None:
                        raise lost
                    self._behind = False
                    log.warning("%s is back at the anchor's %d entries", self._ledger_path, size)
                if size == old.tree_size:
                    return size
            anchor = make_anchor(
                self._tree, size, tip, self._swarm, self._clock(), self._key, self._gateway_id
            )
            # Through a temporary file and a rename: a write that fails (a full disk) or a
            # crash leaves the old anchor whole, and the old one stays in force here too.
            write_atomic(self.path, anchor.encode())
            self.anchor = anchor
            return size
