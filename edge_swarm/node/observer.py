"""A read-only watcher of a swarm over MQTT: rounds from the ledger events, global accuracy
from the retained checkpoints, bytes and memory from the agents' telemetry.

The demo, the benchmarks and the end-to-end tests use it to see what a person would see. It
never publishes. It trusts nothing it reads for more than reporting: entries are parsed by
``ledger_lite``, checkpoints are hashed against the ledger's ``model_final`` before use.
"""

from __future__ import annotations

import logging
import math
import queue
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_swarm.io.mqtt import Message, MqttClient, handle_until
from edge_swarm.learn.model import ModelSpec, model_hash
from edge_swarm.node.vitals import RateLimitedLog
from edge_swarm.swarm.checkpoint import (
    Checkpoint,
    SealedCheckpoint,
    decode_checkpoint,
    is_sealed_checkpoint,
    open_checkpoint,
    parse_sealed_checkpoint,
)
from edge_swarm.swarm.chunking import Reassembler, parse_chunk
from edge_swarm.swarm.messages import Status, Telemetry
from edge_swarm.swarm.mirror import BodyStash
from edge_swarm.swarm.topics import TopicError, Topics
from edge_swarm.trust.epochs import EpochTracker
from edge_swarm.trust.keyring import EncryptionKey
from ledger_lite import Entry
from ledger_lite.errors import DecodeError
from ledger_lite.schema import payload_problem

log = logging.getLogger(__name__)


def _event_entry(payload: bytes) -> Entry:
    """An entry from ``ledger/events``, its payload checked against its kind's schema (the
    fold below reads its fields); raises only DecodeError. Its chain and signature are not
    checked: the observer reports, it decides nothing."""
    entry = Entry.from_bytes(payload)
    problem = payload_problem(entry.kind, entry.payload)
    if problem is not None:
        raise DecodeError(f"{entry.kind} payload: {problem}")
    return entry


def _seconds(value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else 0.0


@dataclass
class RoundRecord:
    """Everything observed about one round."""

    round: int
    opened_ms: int = 0
    closed_ms: int = 0
    final_ms: int = 0
    included: list[str] = field(default_factory=list)
    close_reason: str = ""
    commits: dict[str, dict[str, Any]] = field(default_factory=dict)
    attesters: list[str] = field(default_factory=list)
    model_hash: str = ""
    accuracy: float | None = None
    envelope_bytes: int = 0  # every delta envelope published in the round, as seen by a subscriber
    train_s: dict[str, float] = field(default_factory=dict)  # from telemetry (committee mode)
    params: np.ndarray | None = None

    @property
    def seconds(self) -> float:
        return max(0, self.final_ms - self.opened_ms) / 1000.0

    @property
    def slowest_train_s(self) -> float:
        # metrics are free-form (and events unsigned to the observer): numbers only
        reported = [_seconds(c.get("train_s")) for c in self.commits.values()]
        return max([*reported, *map(_seconds, self.train_s.values())], default=0.0)

    @property
    def overhead_s(self) -> float:
        """Round time not spent training: coordination, transfer, merge, attestation."""
        return max(0.0, self.seconds - self.slowest_train_s)

    @property
    def samples(self) -> int:
        """Samples the round's included agents trained on, as their commits say."""
        ns = [c.get("n_samples") for n, c in self.commits.items() if n in self.included]
        return sum(n for n in ns if isinstance(n, int) and not isinstance(n, bool))


def site_scores(rounds: Iterable[RoundRecord]) -> dict[int, dict[str, float]]:
    """Each final model's validation accuracy per site, by the round that made the model:
    an agent signs its score of round r's model (``val_acc``, ``val_round``) into its
    commit of a later round (docs/VALIDATION.md)."""
    out: dict[int, dict[str, float]] = {}
    for rec in rounds:
        for node, c in rec.commits.items():
            acc, rnd = c.get("val_acc"), c.get("val_round")
            if isinstance(rnd, int) and _seconds(acc) == acc and 0 <= acc <= 1:
                out.setdefault(rnd, {})[node] = float(acc)
    return out


class SwarmObserver:
    """Subscribes to a swarm's ledger events, checkpoints, status and telemetry."""

    def __init__(
        self,
        swarm: str,
        host: str,
        port: int,
        evaluate: Callable[[ModelSpec, np.ndarray], float] | None = None,
        on_round: Callable[[RoundRecord], None] | None = None,
        mqtt_options: dict[str, Any] | None = None,
        reader: tuple[str, EncryptionKey] | None = None,
    ) -> None:
        """``reader`` is (enrolled observer id, its encryption key): in a sealed swarm the
        observer can only evaluate checkpoints of the epochs wrapped for it."""
        self.topics = Topics(swarm)
        self.epochs = EpochTracker(swarm, *(reader or ("observer", None)))
        self._sealed: list[SealedCheckpoint] = []  # waiting for their epoch's key
        self.pubkeys: dict[str, str] = {}  # from enrolments seen: telemetry is checked
        self.unverified = 0  # status and telemetry messages whose signature did not check
        self.drops = RateLimitedLog(log)  # bad input and failed handling, counted
        self._bodies = BodyStash()  # full forms of compact ledger events (ledger/bodies)
        self.swarm = swarm
        self.evaluate = evaluate
        self.on_round = on_round
        self.rounds: dict[int, RoundRecord] = {}
        self.status: dict[str, str] = {}
        self.telemetry: dict[str, list[Telemetry]] = {}
        self.entries: list[Entry] = []
        self._checkpoints: dict[int, Checkpoint] = {}
        self._chunks = Reassembler(
            max_bytes=512 * 1024 * 1024, max_messages=4, retry_after_s=60, give_up_after_s=60
        )
        self._queue: queue.Queue[Message] = queue.Queue()
        self.mqtt = MqttClient(
            client_id=f"{swarm}.observer.{int(time.time() * 1000) % 10**9}",
            host=host,
            port=port,
            on_message=self._queue.put,
            max_payload=256 * 1024 * 1024,
            **(mqtt_options or {}),
        )

    def start(self, timeout: float = 15.0) -> None:
        self.mqtt.start()
        if not self.mqtt.wait_connected(timeout):
            raise RuntimeError("the observer could not reach the broker")
        t = self.topics
        for topic in (
            t.ledger_events(),
            t.ledger_bodies(),  # a committee round's commits and merge report, in full
            t.model_latest(),
            t.fleet_status_filter(),
            t.fleet_telemetry_filter(),
            t.delta_filter(),
            t.model_chunk_filter(),
        ):
            self.mqtt.subscribe(topic, qos=1)

    def stop(self) -> None:
        self.mqtt.stop()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Handle messages until ``predicate()`` holds or ``timeout`` seconds pass."""
        return handle_until(self._queue, self._handle, predicate, timeout, self._on_error)

    def final_round(self) -> int:
        return max((r.round for r in self.rounds.values() if r.model_hash), default=0)

    # -- handling
    def _handle(self, msg: Message) -> None:
        try:
            parsed = self.topics.parse(msg.topic)
        except TopicError:
            return
        kind = parsed.kind
        try:
            if kind == "delta" and parsed.round is not None:
                self._record(parsed.round).envelope_bytes += len(msg.payload)
            elif kind == "ledger_events":
                self._on_entry(self._bodies.full(_event_entry(msg.payload)))
            elif kind == "ledger_bodies":
                why = self._bodies.offer(msg.payload)  # held until its compact event comes
                if why is not None:
                    raise DecodeError(why)
            elif kind == "model_latest":
                self._on_checkpoint_bytes(msg.payload)
            elif kind == "model_chunk":
                whole = self._chunks.add(parse_chunk(msg.payload), time.monotonic(), "checkpoint")
                if whole is not None:
                    self._on_checkpoint_bytes(whole)
            elif kind == "fleet_status" and msg.payload:
                st = Status.decode(msg.payload)
                if self._verified(st, parsed.node):
                    self.status[st.node] = st.state
            elif kind == "fleet_telemetry":
                tm = Telemetry.decode(msg.payload)
                if self._verified(tm, parsed.node):
                    self.telemetry.setdefault(tm.node, []).append(tm)
                    self._training_time(tm)
        except ValueError as exc:  # each decoder's one error is a ValueError (DecodeError, ...)
            self.drops.drop(f"bad {kind}", f"on {msg.topic}: {exc}")

    def _on_error(self, msg: Message, exc: Exception) -> None:
        """What no decoder expected (handle_until's catch): logged, rate-limited."""
        try:
            kind = self.topics.parse(msg.topic).kind
        except TopicError:
            kind = "?"
        self.drops.error(f"a {kind} message", exc, msg.topic)

    def _verified(self, msg: Status | Telemetry, topic_node: str | None) -> bool:
        """Signed by the key enrolled for the node the topic names (enrolments seen on the
        ledger events); anything else is left out of the report and counted."""
        key = self.pubkeys.get(msg.node)
        if msg.node != topic_node or key is None or not msg.verify(key):
            self.unverified += 1
            return False
        return True

    def _training_time(self, tm: Telemetry) -> None:
        """A committee swarm's commits carry no metrics: a device's training time of a round
        comes with its telemetry of that round instead (for the overhead figure)."""
        rnd, train_s = tm.values.get("round"), tm.values.get("train_s")
        rec = self.rounds.get(rnd) if isinstance(rnd, int) else None
        if rec is not None and rec.final_ms > 0 and isinstance(train_s, (int, float)):
            rec.train_s.setdefault(tm.node, float(train_s))  # (a round still open: not yet)

    def _record(self, rnd: int) -> RoundRecord:
        return self.rounds.setdefault(rnd, RoundRecord(rnd))

    def _on_entry(self, e: Entry) -> None:
        self.entries.append(e)
        p = e.payload
        if e.kind == "enroll":
            self.pubkeys[p["node"]] = p["pubkey"]
            self.epochs.on_enroll(p["node"])
        elif e.kind == "revoke":
            self.pubkeys.pop(p["node"], None)
        elif e.kind == "key_epoch" and self.epochs.on_key_epoch(p):
            waiting, self._sealed = self._sealed, []
            for sealed in waiting:
                self._open_sealed(sealed)
        if e.kind == "round_open":
            self._record(p["round"]).opened_ms = e.ts
        elif e.kind == "delta_commit":
            self._record(p["round"]).commits[e.author] = dict(
                p["metrics"], n_samples=p["n_samples"]
            )
        elif e.kind == "round_close":
            rec = self._record(p["round"])
            included = p["included"] if isinstance(p["included"], list) else []  # compact: ?
            rec.closed_ms, rec.included, rec.close_reason = e.ts, included, p["reason"]
            rows = p.get("commits") if isinstance(p.get("commits"), list) else []
            for node, _, n, *rest in rows:  # folded commits (committee mode)
                # A 6th element is what the agent signed into its commit (its site's score).
                metrics = rest[2] if len(rest) > 2 and isinstance(rest[2], dict) else {}
                rec.commits.setdefault(node, {**metrics, "n_samples": n})
            if not rec.included:
                rec.final_ms = e.ts
                self._report(rec)
        elif e.kind == "model_final":
            rec = self._record(p["round"])
            rec.final_ms, rec.model_hash, rec.attesters = e.ts, p["model_hash"], p["attesters"]
            self._maybe_evaluate(rec)

    def _on_checkpoint_bytes(self, data: bytes) -> None:
        if is_sealed_checkpoint(data):
            self._open_sealed(parse_sealed_checkpoint(data))
        else:
            self._on_checkpoint(decode_checkpoint(data))

    def _open_sealed(self, sealed: SealedCheckpoint) -> None:
        key = self.epochs.key(sealed.epoch)
        if key is None:
            self._sealed = [*self._sealed[-3:], sealed]  # bounded: the newest few
            return
        self._on_checkpoint(open_checkpoint(sealed, key))

    def _on_checkpoint(self, ck: Checkpoint) -> None:
        self._checkpoints[ck.round] = ck
        rec = self.rounds.get(ck.round)
        if rec is not None:
            self._maybe_evaluate(rec)

    def _maybe_evaluate(self, rec: RoundRecord) -> None:
        ck = self._checkpoints.get(rec.round)
        if ck is None or not rec.model_hash or rec.params is not None:
            return
        spec = ModelSpec.from_dict(ck.spec)
        if model_hash(spec, ck.params) != rec.model_hash:
            log.warning("checkpoint of round %d does not match the ledger", rec.round)
            return
        rec.params = ck.params
        if self.evaluate is not None:
            rec.accuracy = self.evaluate(spec, ck.params)
        self._report(rec)

    def _report(self, rec: RoundRecord) -> None:
        if self.on_round is not None:
            self.on_round(rec)

    # -- per-agent figures
    def bytes_per_round(self, node: str) -> list[tuple[int, int, int]]:
        """(round, bytes out, bytes in) of ``node`` between successive telemetry reports."""
        reports = sorted(self.telemetry.get(node, []), key=lambda t: t.round)
        out, prev_out, prev_in = [], 0, 0
        for t in reports:
            b_out, b_in = int(t.values["bytes_out"]), int(t.values["bytes_in"])
            out.append((t.round, b_out - prev_out, b_in - prev_in))
            prev_out, prev_in = b_out, b_in
        return out

    def round_bytes(self, rnd: int) -> tuple[int, int]:
        """Bytes out and in of all agents in round ``rnd`` (summed)."""
        tot_out = tot_in = 0
        for node in self.telemetry:
            for r, b_out, b_in in self.bytes_per_round(node):
                if r == rnd:
                    tot_out, tot_in = tot_out + b_out, tot_in + b_in
        return tot_out, tot_in

    def peak_rss_kb(self) -> dict[str, int]:
        return {
            node: int(max(t.values.get("peak_rss_kb", 0) for t in reports))
            for node, reports in self.telemetry.items()
            if reports
        }
