"""The apply side of a `Replica`: committed Raft commands in, durable entries out.

`ApplyWorker` owns the replica's chain (`SqliteStore` + `LedgerState`) and one thread
(``ledger-apply-PORT``). The Raft loop hands it, in log order, units of work:

- lists of `Item` (a committed command: its Raft index, its arguments, the local callers
  waiting for it). Each is validated and folded — or refused — exactly as on every other
  replica; then the whole batch (up to MAX_WORK_BATCH loop turns) is written in ONE SQLite
  transaction together with ``meta.raft_index``, and only then is each waiting caller
  resolved and each new entry announced to `on_append`, in height order;
- `SnapshotJob`: write the chain as a snapshot file (log compaction), then report it;
- `InstallJob`: install a snapshot received from the leader: check that it extends this
  chain, validate every entry it lacks, append them and its Raft index in one transaction.

With an `Anchorer` (the gateway's acknowledged head, `anchor`), each batch or installed
snapshot is anchored (one fsynced file) after it is written and before anyone is answered.
A replica whose store came back shorter than its anchor re-applies the lost entries (from
its Raft journal, the leader's log or a snapshot) and is checked against the anchor once it
is back at the anchor's size; an answer for an entry the anchor does not cover yet, or a
chain that differs from the anchored one, is a fault.

Invariants: `durable` (Raft index, height, tip) describes what the store holds; the state
may run one batch ahead of it while that batch is being written. Commands at indices up to
the applied index are skipped (a restart replays the Raft journal from its start). Any
failure to write, or a snapshot that does not extend this chain, is a fault: the worker
stops applying and reports it (`on_fault`); the replica stops serving.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pysyncobj import SERIALIZER_STATE

from . import errors as E
from .anchor import Anchorer
from .entry import TX_FIELDS, Entry
from .errors import DecodeError, LedgerError, LostEntries, Refused
from .replica_snapshot import RaftRecord, SnapshotHeader, iter_entries, write_snapshot
from .state import LedgerState
from .store import RAFT_INDEX_KEY, SqliteStore

log = logging.getLogger(__name__)

RECENT_TX_IDS = 65_536  # tx ids remembered to resolve a retried submission that had landed
MAX_WORK_BATCH = 64  # Raft loop turns folded into one apply batch (one SQLite transaction)

SKIPPED = object()
"""Result of a command applied before a restart (or inside an installed snapshot)."""

Resolver = Callable[[Any, Any], None]
"""resolve(waiter, result): result is an Entry, a Refused, None (barrier) or SKIPPED."""


class Item:
    """A committed command handed from the Raft loop to the apply worker."""

    __slots__ = ("index", "args", "waiters")

    def __init__(self, index: int, args: tuple[Any, ...] | None) -> None:
        self.index = index
        self.args = args  # None for a barrier
        self.waiters: list[Any] = []


@dataclass(frozen=True)
class SnapshotJob:
    """Write a snapshot as of the Raft records `last` (and `prev`, the one before)."""

    last: RaftRecord
    prev: RaftRecord


@dataclass(frozen=True)
class InstallJob:
    """Install the snapshot at `path` (a private hard link, removed afterwards)."""

    path: Path
    header: SnapshotHeader


@dataclass(frozen=True)
class Durable:
    """What the store holds: last applied Raft index, chain height and tip hash."""

    index: int
    height: int
    tip: str


_TX_KEYS = frozenset(TX_FIELDS)
_STOP = object()


class ApplyWorker:
    """Validate, fold and durably append committed commands, in order, on one thread.

    `resolve(waiter, result)` is called for each waiter of each item once the item is
    durable (or skipped); `on_fault(exc)` once if the worker stops on a fault. Both run on
    the worker thread, as do the `on_append` callbacks.
    """

    def __init__(
        self,
        store: SqliteStore,
        state: LedgerState,
        dump_path: str,
        name: str,
        resolve: Resolver,
        on_fault: Callable[[BaseException], None],
        anchorer: Anchorer | None = None,
    ) -> None:
        self.store = store
        self.anchorer = anchorer
        self.state = state
        self.dump_path = dump_path
        index = store.get_meta(RAFT_INDEX_KEY) or 0
        self.durable = Durable(index, state.height, state.tip)
        self.on_append: list[Callable[[Entry], None]] = []
        self.counters = {"snapshots_written": 0, "snapshots_installed": 0, "refused": 0}
        self.failure: BaseException | None = None
        self._applied_index = index
        self._resolve = resolve
        self._on_fault = on_fault
        self._recent: OrderedDict[str, int] = OrderedDict()  # tx id -> height
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._snapshot_state = SERIALIZER_STATE.NOT_SERIALIZING
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- the Raft loop's side ------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def put(self, unit: list[Item] | SnapshotJob | InstallJob) -> None:
        """Queue work, in Raft log order."""
        self._queue.put(unit)

    def begin_snapshot(self) -> None:
        """Mark a snapshot as started (its SnapshotJob follows)."""
        with self._lock:
            self._snapshot_state = SERIALIZER_STATE.SERIALIZING

    def take_snapshot_state(self) -> int:
        """pysyncobj's serializeChecker: SERIALIZING while a snapshot is being written,
        then SUCCESS or FAILED once, then NOT_SERIALIZING."""
        with self._lock:
            state = self._snapshot_state
            if state in (SERIALIZER_STATE.SUCCESS, SERIALIZER_STATE.FAILED):
                self._snapshot_state = SERIALIZER_STATE.NOT_SERIALIZING
        return state

    def stop(self, timeout: float) -> None:
        """Finish all queued work, then stop the thread (if it ever started)."""
        self._queue.put(_STOP)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def is_worker_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def recent_entry(self, tx_id: str) -> Entry | None:
        """The entry of a recently applied transaction (worker thread only), or None."""
        height = self._recent.get(tx_id)
        return None if height is None else self.store.get(height)

    # -- the worker thread ---------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            work = [self._queue.get()]
            while len(work) < MAX_WORK_BATCH:
                try:
                    work.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in work:
                work = work[: work.index(_STOP)]
                stop = True
            try:
                self._process(work)
            except Exception as exc:
                self._fail(exc)

    def _process(self, work: list[Any]) -> None:
        batch: list[tuple[Item, Any]] = []
        entries: list[Entry] = []
        for unit in work:
            if isinstance(unit, list):
                for item in unit:
                    result = self._apply(item)
                    batch.append((item, result))
                    if isinstance(result, Entry):
                        entries.append(result)
                continue
            self._commit(batch, entries)
            batch, entries = [], []
            if isinstance(unit, SnapshotJob):
                self._write_snapshot(unit)
            else:
                self._install(unit)
        self._commit(batch, entries)

    def _apply(self, item: Item) -> Any:
        """Validate and fold one command: the new Entry, a Refused, None (barrier) or SKIPPED."""
        if self.failure is not None or item.index <= self._applied_index:
            return SKIPPED
        self._applied_index = item.index
        if item.args is None:
            return None
        height = self.state.height + 1
        try:
            args = item.args
            if len(args) != 1 or not isinstance(args[0], dict) or set(args[0]) != _TX_KEYS:
                raise DecodeError(f"a transaction command takes one dict of {sorted(_TX_KEYS)}")
            # One shape check (Entry's) instead of two (Tx's, then Entry's): same rules.
            entry = Entry.from_dict({**args[0], "height": height, "prev_hash": self.state.tip})
            self.state.apply(entry)
        except DecodeError as exc:
            self.counters["refused"] += 1
            return Refused(E.BAD_PAYLOAD, f"malformed transaction: {exc}", height)
        except Refused as exc:
            self.counters["refused"] += 1
            return exc
        return entry

    def _commit(self, batch: list[tuple[Item, Any]], entries: list[Entry]) -> None:
        """Make a batch durable (one transaction), then resolve its waiters and announce."""
        if not batch:
            return
        if self.failure is None:
            if self._applied_index != self.durable.index or entries:
                self.store.append_many(entries, {RAFT_INDEX_KEY: self._applied_index})
            self._anchor(entries, any(item.waiters for item, r in batch if isinstance(r, Entry)))
            self.durable = Durable(self._applied_index, self.state.height, self.state.tip)
        self._remember(entries)
        for item, result in batch:
            for waiter in item.waiters:
                self._resolve(waiter, result)
        self._announce(entries)

    def _anchor(self, entries: list[Entry], answering: bool) -> None:
        """Anchor durable `entries` before anything about them is said (worker thread).
        Raises LostEntries for a chain that differs from the anchored one, or for answers
        due while the store is still below the anchor; OSError if it cannot be written."""
        anchorer = self.anchorer
        if anchorer is None or not entries:
            return
        anchorer.extend(entries)
        anchorer.write()
        if anchorer.behind and answering:
            raise LostEntries(
                f"new entries landed at heights this gateway had acknowledged others at "
                f"(the store holds {anchorer.size}, the anchor {anchorer.acknowledged}): "
                f"the cluster lost acknowledged entries",
                anchorer.size,
                anchorer.acknowledged,
                forked=True,
            )

    def _remember(self, entries: list[Entry]) -> None:
        for entry in entries:
            self._recent[entry.tx_id] = entry.height
        while len(self._recent) > RECENT_TX_IDS:
            self._recent.popitem(last=False)

    def _announce(self, entries: list[Entry]) -> None:
        for entry in entries:
            for callback in list(self.on_append):
                try:
                    callback(entry)
                except Exception:
                    log.exception("on_append %r failed at height %d", callback, entry.height)

    def _write_snapshot(self, job: SnapshotJob) -> None:
        failed = self.failure is not None
        if not failed:
            s = self.state
            header = SnapshotHeader(s.genesis_hash, s.height, s.tip, job.last, job.prev)
            try:
                # pysyncobj's placeholder (a hard link to the old dump) has served its turn
                Path(f"{self.dump_path}.tmp").unlink(missing_ok=True)
                write_snapshot(self.dump_path, header, self.store.bodies(0, s.height))
                self.counters["snapshots_written"] += 1
                log.info("snapshot at raft index %d, height %d", job.last[1], s.height)
            except (OSError, ValueError, LedgerError):
                log.exception("writing the snapshot failed; the Raft log stays uncompacted")
                failed = True
        with self._lock:
            self._snapshot_state = SERIALIZER_STATE.FAILED if failed else SERIALIZER_STATE.SUCCESS

    def _install(self, job: InstallJob) -> None:
        """Install a snapshot ahead of this replica: check it extends our chain, validate
        each missing entry, append them all and the new Raft index in one transaction."""
        header, s = job.header, self.state
        try:
            if self.failure is not None or header.raft_index <= self._applied_index:
                return
            if header.height < s.height:
                raise LedgerError(
                    f"divergence: snapshot at raft index {header.raft_index} has height "
                    f"{header.height}, below ours ({s.height})"
                )
            new: list[Entry] = []
            for entry in iter_entries(job.path, from_height=s.height):
                if entry.height == s.height:
                    if entry.hash != s.tip:
                        raise LedgerError(f"divergence: snapshot differs at height {s.height}")
                    continue
                s.apply(entry)  # Refused here means the leader's chain breaks our rules
                new.append(entry)
            if s.tip != header.tip:
                raise DecodeError("snapshot: entries do not end at the header's tip")
            self.store.append_many(new, {RAFT_INDEX_KEY: header.raft_index})
            self._anchor(new, False)
            self._applied_index = header.raft_index
            self.durable = Durable(header.raft_index, s.height, s.tip)
            self.counters["snapshots_installed"] += 1
            log.info("installed a snapshot: %d entries, height %d", len(new), s.height)
            self._remember(new)
            self._announce(new)
        except (LedgerError, OSError) as exc:
            raise LedgerError(f"cannot install the snapshot from the leader: {exc}") from exc
        finally:
            job.path.unlink(missing_ok=True)

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
            log.critical("the apply worker stops: %s", exc, exc_info=exc)
            self._on_fault(exc)
