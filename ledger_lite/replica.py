"""A ledger replicated among gateways by Raft (pysyncobj): any replica accepts, all validate.

How replication works
    Each gateway runs one `Replica`. A signed transaction submitted on any replica becomes
    a Raft command (the transaction as a plain dict); pysyncobj forwards it to the leader,
    which orders it in the Raft log. Once a majority holds it, the command is committed
    and every replica *applies* it in log order: chain the transaction at the local tip,
    validate it with `LedgerState` (signature, enrolment, revocation, expiry, role, payload
    schema, linkage, replay) and append it — or refuse it with a reason and append
    nothing. Validation is a pure function of the chain, so every replica builds the same
    chain entry for entry, and a refused command is a log index that appends nothing
    anywhere. The submitting replica answers its caller with its own outcome.

Threads and acknowledgement
    The Raft loop thread (``ledger-raft-PORT``) runs pysyncobj's event loop; applying a
    command there only records (index, arguments, waiting callers). After each loop turn
    the batch goes to the apply worker (``ledger-apply-PORT``), which validates, folds and
    writes the whole batch — entries plus the last applied Raft index — in ONE SQLite
    transaction (one fsync), and only then acknowledges: `submit` callbacks and `on_append`
    callbacks run after the entries are durable on this replica, in height order. Signature
    checks thus never delay Raft heartbeats, and commits are grouped under load.

Durability, restart and catch-up
    SQLite (WAL, synchronous=FULL) holds the chain and ``meta.raft_index``, the last Raft
    index applied, moved in the same transaction: after a crash at any moment they agree,
    and the chain is never half-written. pysyncobj keeps the Raft log, term and vote in a
    journal file (``PATH.raft`` and ``PATH.raft.meta``); on restart it replays that log:
    commands at indices up to ``raft_index`` are skipped, later ones applied as new. The
    leader then sends what the replica missed — from its log, or as a snapshot when it has
    compacted past it. Snapshots (``PATH.snap``, taken every `compact_entries` log entries)
    hold the chain in a pickle-free format (`replica_snapshot`), written by the apply
    worker; a replica that receives one checks that it extends its own chain, validates
    every entry it lacks, and installs them in one transaction. On start the stored chain
    is re-verified (`SqliteStore`): a tampered store raises `CorruptStore`, and the replica
    does not start. A replica that finds its chain diverging from the cluster's (which
    only a store written behind its back can cause) stops and says so.

Limits (mostly pysyncobj's)
    Crash faults only: peers are trusted to follow Raft; see `replica_raft` for the
    restricted unpickling of its pickled messages and the ``password`` option. Its journal
    is written through mmap and not fsynced, so it survives a killed process but not
    necessarily a power cut (SQLite's part does). Under load it logs CRITICAL "truncating
    already-applied log entries" when a late acknowledgement makes the leader resend
    entries a follower already holds: they are the same entries (same term), nothing is
    re-applied. A big catch-up is validated on the apply worker, so Raft stays responsive,
    but a snapshot transfer re-sends the whole chain (compaction every `compact_entries`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pysyncobj import _RAFT_STATE, FAIL_REASON

from . import errors as E
from .entry import Entry, Tx
from .errors import DecodeError, LedgerError, Refused
from .replica_apply import RAFT_INDEX_KEY, SKIPPED, ApplyWorker, InstallJob, Item, SnapshotJob
from .replica_raft import RaftNode, RaftTiming, install_safe_unpickler, make_conf
from .replica_snapshot import read_header
from .state import LedgerState
from .store import SqliteStore

log = logging.getLogger(__name__)

__all__ = ["RAFT_INDEX_KEY", "RaftTiming", "Replica", "ReplicationError"]

DEFAULT_SUBMIT_TIMEOUT_S = 10.0
RETRY_DELAY_S = 0.02  # before resubmitting after a leader change or a full queue
STATUS_PERIOD_S = 0.05  # how often the Raft loop publishes its status

SubmitCallback = Callable[[Entry | None, LedgerError | None], None]
AppendCallback = Callable[[Entry], None]
RoleCallback = Callable[[bool], None]


class ReplicationError(LedgerError):
    """The cluster did not decide a submission in time, or this replica cannot serve;
    `.code` is ``timeout`` (it may still land), ``closed`` or ``failed``."""

    def __init__(self, code: str, detail: str = "") -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}" if detail else code)


class _Pending:
    """One submission in flight (a transaction, or a barrier when `tx` is None)."""

    __slots__ = ("tx", "tx_dict", "callback", "deadline", "attempts", "done", "started")

    def __init__(self, tx: Tx | None, callback: SubmitCallback, timeout: float) -> None:
        self.tx = tx
        self.tx_dict = None if tx is None else tx.to_dict()
        self.callback = callback
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.attempts = 0
        self.done = False


class Replica:
    """One replica of a Raft-replicated ledger. See the module docstring for how it works.

    `Replica(self_addr, peers, path, genesis)` opens (and re-verifies) or creates the
    SQLite ledger at `path`, binds the Raft port at `self_addr` ("host:port"), and starts
    replicating with `peers` (the other replicas' addresses; the membership is fixed).
    `genesis` is required when `path` holds no ledger yet; when it does, a given genesis
    must be the stored one. Every replica of a cluster starts from the same genesis.

    Raises CorruptStore(height) if the stored chain fails verification, LedgerError for a
    missing or different genesis, ValueError for a bad address or timing, OSError if the
    port cannot be bound, ImportError for a `password` without the cryptography package.

    Files beside `path`: ``PATH.raft`` and ``PATH.raft.meta`` (Raft journal, term, vote),
    ``PATH.snap`` (the latest snapshot). They belong with the ledger file: back them up
    and restore them together. Deleting only them makes the replica fetch everything again
    from the leader (it skips what its SQLite file holds), but also forgets its Raft vote:
    do it only while the other replicas are up and agree on a leader.

    Callbacks: `on_append` (Entry) after each entry is durable here, in height order, on
    the apply worker thread; `on_role` (bool) when this replica becomes or stops being the
    leader, on the Raft loop thread. Keep them short; a callback that raises is logged.
    """

    def __init__(
        self,
        self_addr: str,
        peers: Sequence[str],
        path: str | os.PathLike[str],
        genesis: Entry | None = None,
        *,
        timing: RaftTiming | None = None,
        compact_entries: int = 20_000,
        compact_interval_s: float = 3600.0,
        password: str | None = None,
        bind_addr: str | None = None,
        autostart: bool = True,
    ) -> None:
        _check_addr(self_addr)
        for peer in peers:
            _check_addr(peer)
        self.address = self_addr
        self.peers: tuple[str, ...] = tuple(sorted(set(peers) - {self_addr}))
        self.path = Path(path)
        self.timing = timing if timing is not None else RaftTiming()
        self.on_role: list[RoleCallback] = []
        self._journal = f"{self.path}.raft"
        self._dump = f"{self.path}.snap"
        self._lock = threading.Lock()  # pending submissions, retries, snapshot state
        self._inflight: set[_Pending] = set()
        self._retries: deque[tuple[float, _Pending]] = deque()
        self._staged: list[Item] = []  # Raft loop only: applied this turn
        self._staged_by_index: dict[int, Item] = {}
        self._snapshot_job: SnapshotJob | None = None  # made by _serialize, queued after it
        self._stopping = threading.Event()
        self._closed = False
        self._failure: BaseException | None = None
        self._is_leader = False
        self._status: dict[str, Any] = {}
        port = self_addr.rsplit(":", 1)[1]
        self._store = SqliteStore(self.path)
        try:
            self._worker = ApplyWorker(
                self._store,
                self._open_state(genesis),
                self._dump,
                f"ledger-apply-{port}",
                self._resolve,
                self._fail,
            )
            self.on_append: list[AppendCallback] = self._worker.on_append
            self._handed_index = self._worker.durable.index  # Raft loop: last index handed on
            self._clean_files()
            install_safe_unpickler()
            conf = make_conf(
                self.timing,
                bind_addr=bind_addr or self_addr,
                journal_file=self._journal,
                dump_file=self._dump,
                serializer=self._serialize,
                deserializer=self._deserialize,
                serialize_checker=self._worker.take_snapshot_state,
                on_state_changed=self._on_state_changed,
                compact_entries=compact_entries,
                compact_interval_s=compact_interval_s,
                password=password,
            )
            self._node = RaftNode(self._on_apply, self_addr, list(self.peers), conf)
        except BaseException:
            self._store.close()
            raise
        self._loop = threading.Thread(
            target=self._run_raft, name=f"ledger-raft-{port}", daemon=True
        )
        self._started = False
        if autostart:
            self.start()
        log.info(
            "replica %s of %s: height %d, raft index %d, peers %s",
            self_addr,
            self.path,
            self.height,
            self.applied_index,
            ", ".join(self.peers) or "none",
        )

    def start(self) -> None:
        """Start replicating (idempotent). Only needed with ``autostart=False``, which lets a
        caller read the stored entries and register `on_append`/`on_role` first, so that it
        misses no callback (entries committed before a restart are applied right after
        this; an election can only happen after it)."""
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
        self._worker.start()
        self._loop.start()

    def _open_state(self, genesis: Entry | None) -> LedgerState:
        state = self._store.verified_state
        if state is None:
            if genesis is None:
                raise LedgerError(f"{self.path} holds no ledger and no genesis was given")
            state = LedgerState.from_genesis(genesis)
            self._store.append(genesis)
        elif genesis is not None and genesis.hash != state.genesis_hash:
            raise LedgerError(f"{self.path} holds the ledger of another genesis")
        return state

    def _clean_files(self) -> None:
        """Remove leftovers of a crash: an empty snapshot placeholder, stale install links."""
        dump = Path(self._dump)
        if dump.is_file() and dump.stat().st_size == 0:
            dump.unlink()
        for leftover in dump.parent.glob(f"{dump.name}.install.*"):
            leftover.unlink(missing_ok=True)
        dump.with_name(f"{dump.name}.writing").unlink(missing_ok=True)

    # -- submitting ----------------------------------------------------------------------

    def submit(self, tx: Tx, callback: SubmitCallback, *, timeout: float | None = None) -> None:
        """Submit `tx` to the cluster; `callback(entry, None)` once it is durably appended
        here, or `callback(None, error)`: `Refused` (with its reason; nothing appended on any
        replica) or `ReplicationError` (``timeout``, ``closed``, ``failed``).

        The callback is called exactly once, from one of the replica's threads (or from the
        caller's, if the replica is closed): keep it short. Leader changes and full queues
        are retried until `timeout` (default DEFAULT_SUBMIT_TIMEOUT_S); a retried
        transaction that had in fact landed resolves to its entry, not to ``replay``. After
        ``timeout`` the transaction may still land: submitting it again is safe (at most one
        copy is ever appended; the second is refused with ``replay``).
        """
        self._start(
            _Pending(tx, callback, DEFAULT_SUBMIT_TIMEOUT_S if timeout is None else timeout)
        )

    def submit_sync(self, tx: Tx, timeout: float = DEFAULT_SUBMIT_TIMEOUT_S) -> Entry:
        """Submit and wait: the durable entry, or raise Refused / ReplicationError.

        Must not be called from an `on_append`/`on_role` callback (they run on the threads
        that complete submissions): raises RuntimeError there.
        """
        return self._wait(_Pending(tx, _noop, timeout), timeout)  # type: ignore[return-value]

    def sync(self, timeout: float = DEFAULT_SUBMIT_TIMEOUT_S) -> None:
        """Wait until every entry committed cluster-wide before this call is durable here
        (a Raft read barrier). Raises ReplicationError on timeout."""
        self._wait(_Pending(None, _noop, timeout), timeout)

    def _wait(self, pending: _Pending, timeout: float) -> Entry | None:
        if threading.current_thread() is self._loop or self._worker.is_worker_thread():
            raise RuntimeError("blocking call from a replica callback would deadlock")
        done = threading.Event()
        out: list[Any] = []

        def finish(entry: Entry | None, error: LedgerError | None) -> None:
            out.extend((entry, error))
            done.set()

        pending.callback = finish
        self._start(pending)
        done.wait(timeout + 1.0)  # the replica itself times the submission out at `timeout`
        if not out:
            raise ReplicationError("timeout", "no answer from the replica")
        if out[1] is not None:
            raise out[1]
        return out[0]  # type: ignore[no-any-return]

    def _start(self, p: _Pending) -> None:
        with self._lock:
            refusal = self._unavailable()
            if refusal is None:
                self._inflight.add(p)
        if refusal is not None:
            p.done = True
            _call(p.callback, None, refusal)
            return
        self._send(p)

    def _unavailable(self) -> ReplicationError | None:
        if self._failure is not None:
            return ReplicationError("failed", str(self._failure))
        if self._closed:
            return ReplicationError("closed", "the replica is closed")
        return None

    def _send(self, p: _Pending) -> None:
        p.attempts += 1
        callback = _RaftCallback(self, p)
        if p.tx_dict is None:
            self._node.barrier(callback=callback)
        else:
            self._node.apply_tx(p.tx_dict, callback=callback)

    def _on_raft_result(self, p: _Pending, result: Any, error: int) -> None:
        """pysyncobj's answer for one attempt: committed at an index (Raft loop thread,
        right after `_on_apply` staged it), or a failure to retry."""
        if error == FAIL_REASON.SUCCESS and isinstance(result, int):
            item = self._staged_by_index.get(result)
            if item is not None:
                item.waiters.append(p)  # acknowledged by the worker once durable
                return
        self._retry_later(p)

    def _retry_later(self, p: _Pending) -> None:
        with self._lock:
            if not p.done:
                self._retries.append((time.monotonic() + RETRY_DELAY_S, p))

    def _finish(self, p: _Pending, entry: Entry | None, error: LedgerError | None) -> None:
        with self._lock:
            if p.done:
                return
            p.done = True
            self._inflight.discard(p)
        _call(p.callback, entry, error)

    # -- the Raft loop thread ------------------------------------------------------------

    def _run_raft(self) -> None:
        next_status = 0.0
        try:
            while not self._stopping.is_set():
                try:
                    self._node.doTick(self.timing.tick_s)
                except Exception:  # pysyncobj's own loop logs and goes on; so do we
                    log.exception("Raft loop turn failed on %s", self.address)
                    self._stopping.wait(self.timing.tick_s)
                self._handoff()
                now = time.monotonic()
                self._resubmit(now)
                if now >= next_status:  # every STATUS_PERIOD_S, not every turn
                    self._expire(now)
                    self._publish_status()
                    next_status = now + STATUS_PERIOD_S
        finally:
            self._node.destroy()  # autoTick off: closes sockets and the journal right here

    def _on_apply(
        self, index: int, args: tuple[Any, ...] | None, kwargs: dict[str, Any] | None
    ) -> int | None:
        """pysyncobj applies the command at `index`: stage it for the worker."""
        if index <= self._handed_index:
            return None  # applied before a restart (or inside an installed snapshot)
        self._handed_index = index
        if args is not None and kwargs:
            args = ()  # a command with keywords is malformed: refused by the worker
        item = Item(index, args)
        self._staged.append(item)
        self._staged_by_index[index] = item
        return index

    def _handoff(self) -> None:
        """Pass what the Raft loop staged to the worker, in log order (Raft loop thread)."""
        if self._snapshot_job is not None:  # its commands were handed on before it was made
            self._worker.put(self._snapshot_job)
            self._snapshot_job = None
        if self._staged:
            self._worker.put(self._staged)
            self._staged = []
            self._staged_by_index = {}

    def _resubmit(self, now: float) -> None:
        """Resubmit the retries that are due."""
        due: list[_Pending] = []
        with self._lock:
            while self._retries and self._retries[0][0] <= now:
                due.append(self._retries.popleft()[1])
        for p in due:
            if not p.done:
                self._send(p)

    def _expire(self, now: float) -> None:
        """Time out the submissions past their deadline."""
        with self._lock:
            expired = [p for p in self._inflight if p.deadline <= now]
        for p in expired:
            waited = now - p.started
            self._finish(p, None, ReplicationError("timeout", f"not decided in {waited:.1f} s"))

    def _publish_status(self) -> None:
        node = self._node
        self._status = {
            "leader": node.leader_address(),
            "is_leader": node._isLeader(),
            "term": node.raftCurrentTerm,
            "commit_index": node.raftCommitIndex,
            "raft_applied": node.raftLastApplied,
            "has_quorum": node.hasQuorum,
        }

    def _on_state_changed(self, old: int, new: int) -> None:
        is_leader = new == _RAFT_STATE.LEADER
        if is_leader == self._is_leader:
            return
        self._is_leader = is_leader
        log.info("%s is %s", self.address, "now the leader" if is_leader else "no longer leader")
        for callback in list(self.on_role):
            try:
                callback(is_leader)
            except Exception:
                log.exception("on_role callback %r failed", callback)

    # -- snapshots (called by pysyncobj on the Raft loop) ---------------------------------

    def _serialize(self, tmp_file: str, data: Any) -> None:
        """Log compaction: let the worker write the chain as of the last applied index.

        pysyncobj renames `tmp_file` over the dump as soon as this returns, so `tmp_file`
        is the current dump (a hard link: the rename is then a no-op) or, the first time,
        an empty placeholder. The job reaches the worker only at the next `_handoff`, after
        that rename, so the worker's new dump can never be replaced by the old one; its
        `take_snapshot_state` reports SUCCESS once the new dump is in place, and only then
        does pysyncobj drop the log entries the snapshot covers.
        """
        last, prev = data[0], data[1]
        self._handoff()  # every command up to `last` goes to the worker before the job
        Path(tmp_file).unlink(missing_ok=True)
        if os.path.isfile(self._dump):
            os.link(self._dump, tmp_file)
        else:
            Path(tmp_file).touch()
        self._worker.begin_snapshot()
        record = (bytes(last[0]), last[1], last[2]), (bytes(prev[0]), prev[1], prev[2])
        self._snapshot_job = SnapshotJob(*record)

    def _deserialize(self, file_name: str) -> tuple[Any, ...]:
        """pysyncobj loads a snapshot (ours at start, or one received from the leader).

        Reads only the header here; if the snapshot is ahead of this replica, a hard link
        to it goes to the worker, which validates and installs the missing entries in
        order with the commands around it. Raises DecodeError for a malformed or foreign
        snapshot (pysyncobj then keeps its log as it was).
        """
        header = read_header(file_name)
        if header.genesis != self._worker.state.genesis_hash:
            raise DecodeError("snapshot of a ledger with another genesis")
        self._handoff()
        if header.raft_index > self._handed_index:
            link = Path(f"{self._dump}.install.{header.raft_index}")
            link.unlink(missing_ok=True)
            os.link(file_name, link)
            self._worker.put(InstallJob(link, header))
            self._handed_index = header.raft_index
        return header.last, header.prev, []

    def _resolve(self, p: _Pending, result: Any) -> None:
        """The worker's outcome for a waiting submission, once durable (worker thread)."""
        if result is SKIPPED:
            if self._failure is not None:
                self._finish(p, None, ReplicationError("failed", str(self._failure)))
            else:
                self._retry_later(p)
        elif isinstance(result, Refused):
            if result.reason == E.REPLAY and p.attempts > 1 and p.tx is not None:
                entry = self._worker.recent_entry(p.tx.tx_id)
                if entry is not None:  # an earlier attempt had landed after all
                    self._finish(p, entry, None)
                    return
            self._finish(p, None, result)
        else:
            self._finish(p, result, None)

    def _fail(self, exc: BaseException) -> None:
        """Stop serving after a fault the replica cannot repair by itself (worker thread)."""
        log.critical("replica %s stops: %s", self.address, exc)
        with self._lock:
            if self._failure is None:
                self._failure = exc
            stuck = list(self._inflight)
        self._stopping.set()
        for p in stuck:
            self._finish(p, None, ReplicationError("failed", str(exc)))

    # -- reading -------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True while this replica believes it is the Raft leader (briefly, two may)."""
        return bool(self._node._isLeader())

    @property
    def leader(self) -> str | None:
        """Address of the last known leader, or None during an election."""
        return self._node.leader_address()

    @property
    def tip(self) -> str:
        """Hash of the last durable entry."""
        return self._worker.durable.tip

    @property
    def height(self) -> int:
        """Height of the last durable entry (0: only the genesis)."""
        return self._worker.durable.height

    @property
    def applied_index(self) -> int:
        """The last Raft log index durably applied here."""
        return self._worker.durable.index

    @property
    def state(self) -> LedgerState:
        """The live ledger state, read-only to callers. The apply worker updates it; it may
        run a batch ahead of `height` until that batch is durable."""
        return self._worker.state

    @property
    def swarm(self) -> str:
        """The swarm id named in the genesis."""
        return self._worker.state.swarm

    @property
    def counters(self) -> dict[str, int]:
        """snapshots_written, snapshots_installed, refused (commands this replica refused)."""
        return dict(self._worker.counters)

    @property
    def failure(self) -> BaseException | None:
        """Why the replica stopped serving, or None while it serves."""
        return self._failure

    def entries(self, from_height: int = 0, limit: int | None = None) -> list[Entry]:
        """Durable entries from `from_height` on, in order, at most `limit` of them."""
        return self._store.range(from_height, limit)

    def get(self, height: int) -> Entry | None:
        """The durable entry at `height`, or None."""
        return self._store.get(height)

    def status(self) -> dict[str, Any]:
        """A snapshot of this replica's view (refreshed every STATUS_PERIOD_S): self,
        leader, is_leader, term, commit_index, raft_applied, has_quorum, applied_index,
        height, tip, in_flight, failed, and the counters."""
        durable = self._worker.durable
        with self._lock:
            in_flight = len(self._inflight)
        return {
            "self": self.address,
            **self._status,
            "leader": self.leader,
            "is_leader": self.is_leader,
            "applied_index": durable.index,
            "height": durable.height,
            "tip": durable.tip,
            "in_flight": in_flight,
            "failed": None if self._failure is None else str(self._failure),
            **self._worker.counters,
        }

    # -- lifecycle -----------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Stop replicating, finish applying what was committed, close the files.

        Submissions still undecided get ReplicationError("closed"). Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stopping.set()
        if not self._started:
            self._node.destroy()  # never ticked: nothing staged, nothing to apply
        elif threading.current_thread() is not self._loop:
            self._loop.join(timeout)
        self._handoff()  # the loop has stopped: what it staged last goes to the worker
        self._worker.stop(timeout)
        with self._lock:
            stuck = list(self._inflight)
        for p in stuck:
            self._finish(p, None, ReplicationError("closed", "the replica was closed"))
        self._store.close()
        log.info("replica %s closed at height %d", self.address, self.height)

    def __enter__(self) -> Replica:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Replica({self.address!r}, {str(self.path)!r}, height={self.height})"


class _RaftCallback:
    """pysyncobj's per-command callback, bound to one attempt of one submission."""

    __slots__ = ("replica", "pending")

    def __init__(self, replica: Replica, pending: _Pending) -> None:
        self.replica = replica
        self.pending = pending

    def __call__(self, result: Any, error: int) -> None:
        self.replica._on_raft_result(self.pending, result, error)


def _call(callback: SubmitCallback, entry: Entry | None, error: LedgerError | None) -> None:
    try:
        callback(entry, error)
    except Exception:
        log.exception("submit callback %r failed", callback)


def _noop(entry: Entry | None, error: LedgerError | None) -> None:
    pass


def _check_addr(addr: str) -> None:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"a replica address is host:port, got {addr!r}")
