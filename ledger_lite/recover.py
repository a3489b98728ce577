"""Rebuild a damaged or lost ledger file from another replica's copy, losing nothing acknowledged.

`recover(source, target, anchor_path)`, what ``ledger-lite recover`` runs:

1. SOURCE is opened read-only and verified from genesis, every entry (signatures, policy,
   linkage), exactly as a replica verifies on open.
2. The anchor (by default TARGET's, `anchor.anchor_path_for`) must be a prefix of SOURCE:
   the same Merkle root at its size. So every entry the gateway acknowledged is in SOURCE.
3. TARGET, if it still verifies, must be a prefix of SOURCE (it holds nothing that SOURCE
   lacks); if it already holds all of SOURCE, nothing is done.
4. SOURCE's entries (and its ``meta.raft_index``: Raft log indices are the same on every
   replica) are written to a temporary file beside TARGET, which is checked (count and
   root); then TARGET and its ``-wal``/``-shm`` are moved aside to
   ``TARGET.damaged-YYYYmmddTHHMMSS`` (never deleted: they are the evidence) and the new file
   is renamed into place. A crash in between leaves TARGET missing beside its anchor,
   which every open refuses: run the recovery again.

SOURCE may also be an agent's copy of the chain (``*.jsonl``, `jsonl`): its entries are
first written to a scratch SQLite file beside TARGET, which is then verified and used as
above (a copy carries no Raft index: recover a Raft replica from another replica).

Stop the gateway that owns TARGET first. The anchor is left as it is: the recovered file
extends it, and the gateway anchors the rest when it opens the file.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .anchor import Anchor, anchor_path_for, mismatch, read_anchor
from .errors import CorruptStore, RecoverError
from .files import fsync_dir
from .jsonl import is_copy_file, read_copy
from .merkle import MerkleTree
from .state import LedgerState
from .store import RAFT_INDEX_KEY, SqliteStore

log = logging.getLogger(__name__)

PAGE = 1024  # entries per read and per write transaction
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class Recovered:
    """What `recover` did: TARGET now holds `entries` (tip `tip`); `anchor` (from
    `anchor_path`) is covered; `aside` is where the old file went (None: there was none,
    or `nothing_to_do`); `held` is how many verified entries the old TARGET held (None if
    it was missing or did not verify)."""

    entries: int
    tip: str
    anchor: Anchor | None
    anchor_path: Path | None
    aside: Path | None
    held: int | None
    nothing_to_do: bool = False


class _Capture:
    """A store `check` that keeps the verified state and tree."""

    def __init__(self) -> None:
        self.state: LedgerState | None = None
        self.tree = MerkleTree()

    def __call__(self, state: LedgerState | None, tree: MerkleTree) -> None:
        self.state, self.tree = state, tree


def _open_verified(path: Path) -> tuple[SqliteStore, _Capture]:
    capture = _Capture()
    return SqliteStore(path, verify_only=True, check=capture), capture


def _target_chain(target: Path) -> _Capture | None:
    """TARGET's verified chain, or None if it is missing or does not verify."""
    if not target.is_file():
        return None
    try:
        store, capture = _open_verified(target)
    except (CorruptStore, OSError) as exc:
        log.warning("%s does not verify (%s): replacing it", target, exc)
        return None
    store.close()
    return capture


def recover(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    anchor_path: str | os.PathLike[str] | None = None,
) -> Recovered:
    """Rebuild `target` from `source`; see the module docstring.

    Raises FileNotFoundError (no `source`, or an `anchor_path` given but missing),
    CorruptStore (`source` does not verify), LostEntries (`source` lacks acknowledged
    entries or holds others), RecoverError (different ledgers, `target` holds entries
    `source` lacks, an empty source), AnchorError (a damaged anchor), OSError.
    """
    source, target = Path(source), Path(target)
    if anchor_path is not None and not Path(anchor_path).is_file():
        raise FileNotFoundError(f"no such anchor file: {anchor_path}")
    if is_copy_file(source):
        scratch = _sqlite_from_copy(source, target)
        try:
            return _recover(scratch, target, anchor_path, source)
        finally:
            _remove_with_side_files(scratch)
    return _recover(source, target, anchor_path, source)


def _sqlite_from_copy(copy: Path, target: Path) -> Path:
    """An agent's JSON-lines copy written to a scratch SQLite file beside `target`, not yet
    verified (`_recover` verifies it from genesis, as any source)."""
    read = read_copy(copy)
    if read.bad is not None:
        log.warning("%s: %s; using the %d entries before it", copy, read.bad, len(read.entries))
    if read.torn:
        log.info("%s: its last line was cut short (a write interrupted); dropped", copy)
    if not read.entries:
        raise RecoverError(f"{copy} holds no entries")
    scratch = target.with_name(f".{target.name}.from-copy")
    _remove_with_side_files(scratch)
    with SqliteStore(scratch) as out:
        for i in range(0, len(read.entries), PAGE):
            out.append_many(read.entries[i : i + PAGE])
    return scratch


def _recover(
    source: Path, target: Path, anchor_path: str | os.PathLike[str] | None, named: Path
) -> Recovered:
    """`recover` from a SQLite `source`; `named` is what messages call it."""
    apath = Path(anchor_path) if anchor_path is not None else anchor_path_for(target)
    anchor = read_anchor(apath)
    src, got = _open_verified(source)
    with src:
        if got.state is None:
            raise RecoverError(f"{named} holds no entries")
        n = len(src)
        if anchor is not None:
            hint = "recover from a replica whose file holds every acknowledged entry"
            lost = mismatch(named, got.tree, anchor, apath, "the gateway acknowledged", hint)
            if lost is not None:
                raise lost
        old = _target_chain(target)
        held = None if old is None or old.state is None else old.tree.size
        if old is not None and old.state is not None:
            _check_prefix(target, old, named, got)
            if held == n:
                return Recovered(n, got.state.tip, anchor, apath, None, held, nothing_to_do=True)
        tmp = target.with_name(f".{target.name}.recovering")
        _remove_with_side_files(tmp)
        try:
            _copy(src, tmp, got.tree)
        except BaseException:
            _remove_with_side_files(tmp)
            raise
        tip = got.state.tip
    aside = _move_aside(target)
    os.replace(tmp, target)
    fsync_dir(target.parent)
    log.info("recovered %s: %d entries from %s; the old file is at %s", target, n, named, aside)
    return Recovered(n, tip, anchor, apath, aside, held)


def _check_prefix(target: Path, old: _Capture, source: Path, got: _Capture) -> None:
    assert old.state is not None and got.state is not None
    if old.state.genesis_hash != got.state.genesis_hash:
        raise RecoverError(f"{target} and {source} hold different ledgers (not the same genesis)")
    held = old.tree.size
    if held > got.tree.size or old.tree.root() != got.tree.root(held):
        raise RecoverError(
            f"{target} holds {held} entries that are not all in {source} "
            f"({got.tree.size} entries): recovering from it would drop some; "
            f"use a replica that holds them"
        )


def _copy(src: SqliteStore, tmp: Path, tree: MerkleTree) -> None:
    """Write every entry of `src` (and its Raft index) to a new file `tmp`; check it."""
    raft_index = src.get_meta(RAFT_INDEX_KEY)
    with SqliteStore(tmp) as out:
        height = 0
        while page := src.range(height, PAGE):
            height = page[-1].height + 1
            last = height >= len(src)
            meta = {RAFT_INDEX_KEY: raft_index} if last and raft_index is not None else None
            out.append_many(page, meta)
    if Path(f"{tmp}-wal").exists():
        raise RecoverError(f"{tmp}: SQLite left its WAL behind after closing")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    conn = sqlite3.connect(f"{tmp.resolve().as_uri()}?mode=ro", uri=True)
    try:
        written = MerkleTree(
            bytes.fromhex(h) for (h,) in conn.execute("SELECT hash FROM entries ORDER BY height")
        )
    finally:
        conn.close()
    if written.size != tree.size or written.root() != tree.root():
        raise RecoverError(f"{tmp}: the copy does not read back as the source's chain")


def _remove_with_side_files(path: Path) -> None:
    for suffix in ("", *SQLITE_SIDE_FILES):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _move_aside(target: Path) -> Path | None:
    """Move `target` and its SQLite side files to ``TARGET.damaged-STAMP[-k]``; return
    that path (None if there was nothing to move). A stale ``-wal`` must never meet the
    new file: SQLite would replay it into it."""
    present = [s for s in ("", *SQLITE_SIDE_FILES) if Path(f"{target}{s}").exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = target.with_name(f"{target.name}.damaged-{stamp}")
    k = 0
    while any(Path(f"{aside}{s}").exists() for s in ("", *SQLITE_SIDE_FILES)):
        k += 1
        aside = target.with_name(f"{target.name}.damaged-{stamp}-{k}")
    for suffix in present:
        os.rename(f"{target}{suffix}", f"{aside}{suffix}")
    fsync_dir(target.parent)
    return aside
