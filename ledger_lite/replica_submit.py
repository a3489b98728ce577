"""The submitting side of a `Replica`: one submission from the caller to its answer.

How a submission lives
    `submit` (or `submit_sync`, or a `sync` barrier) makes a `_Pending` with a deadline and
    sends it as a Raft command: ``apply_tx`` with the transaction as a plain dict, or
    ``barrier``. pysyncobj answers each attempt through a `_RaftCallback`, on the Raft loop
    thread. A command committed at an index joins the waiters of the `Item` the loop staged
    for that index this turn; the apply worker resolves it (`_resolve`) only once its entry
    is durable here: the entry, or `Refused` with the reason. Any other answer (no leader,
    a leader change, a full queue) is retried after RETRY_DELAY_S, until the deadline; the
    Raft loop resends the retries that are due and times out the submissions past their
    deadline (`ReplicationError` ``timeout``). A retried transaction refused as ``replay``
    resolves to the entry of the earlier attempt that landed after all.

Invariants
    Every submission is answered exactly once (``done`` under the replica's lock); a
    callback that raises is logged, never propagated. A replica that failed or was closed
    answers new submissions at once with ReplicationError ``failed`` or ``closed``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from pysyncobj import FAIL_REASON

from . import errors as E
from .entry import Entry, Tx
from .errors import LedgerError, Refused
from .replica_apply import SKIPPED, ApplyWorker, Item
from .replica_raft import RaftNode

# The replica's logger: one name for everything a Replica logs, as before the split.
log = logging.getLogger("ledger_lite.replica")

DEFAULT_SUBMIT_TIMEOUT_S = 10.0
RETRY_DELAY_S = 0.02  # before resubmitting after a leader change or a full queue

SubmitCallback = Callable[[Entry | None, LedgerError | None], None]


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


class _Submissions:
    """Submitting, retrying, timing out and answering; a base class of `Replica`.

    The attributes below are set by `Replica.__init__`; ``_lock`` guards ``_inflight``,
    ``_retries``, ``_closed`` and ``_failure``. ``_staged_by_index`` is the Raft loop's:
    the commands it staged this turn, by log index.
    """

    _lock: threading.Lock
    _inflight: set[_Pending]
    _retries: deque[tuple[float, _Pending]]
    _closed: bool
    _failure: BaseException | None
    _node: RaftNode
    _worker: ApplyWorker
    _loop: threading.Thread
    _staged_by_index: dict[int, Item]

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


class _RaftCallback:
    """pysyncobj's per-command callback, bound to one attempt of one submission."""

    __slots__ = ("replica", "pending")

    def __init__(self, replica: _Submissions, pending: _Pending) -> None:
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
