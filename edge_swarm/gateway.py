"""The gateway process: a ledger replica, the round coordinator, and the checkpoint.

The gateway owns the only writable copy of the ledger (one replica for now; Raft among
several gateways comes with the replicated ledger). It validates every submission twice:
``ledger_lite`` checks signature, enrolment and policy; the coordinator checks that the
entry makes sense for the round in progress (a commit for the open round, once per node).
Every appended entry is published on ``ledger/events``; agents that missed some ask on
``ledger/query``. It merges the included envelopes itself, so that it can publish the final
model as the retained checkpoint that late or lagging agents load.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from edge_swarm.config import NodeConfig
from edge_swarm.io.mqtt import Message
from edge_swarm.learn.model import ModelSpec, init_params
from edge_swarm.runtime import ModelHolder, NodeRuntime, now_ms
from edge_swarm.swarm import protocol as P
from edge_swarm.swarm.checkpoint import CheckpointError, decode_checkpoint, encode_checkpoint
from edge_swarm.swarm.inbox import Dropped, EnvelopeInbox, RoundView
from edge_swarm.swarm.merge import MergeRule
from edge_swarm.swarm.messages import MessageError, Query, Reply, Status, Submission
from ledger_lite import Entry, Ledger, MerkleTree, ProofBundle, Tx, make_tx, sign_tree_head
from ledger_lite.errors import LedgerError, Refused

log = logging.getLogger(__name__)

MAX_CLOCK_SKEW_MS = 5 * 60 * 1000
REPLY_BYTES = 96 * 1024  # entries per query reply, in canonical bytes


def create_ledger(path: Path, bootstrap: Path) -> Ledger:
    """Create a ledger from a bootstrap file: the genesis entry, then pre-signed entries."""
    lines = [json.loads(line) for line in bootstrap.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{bootstrap}: empty bootstrap file")
    ledger = Ledger.create(path, Entry.from_dict(lines[0]))
    for raw in lines[1:]:
        ledger.submit(Entry.from_dict(raw).tx)
    return ledger


class Gateway(NodeRuntime):
    """One site gateway: ledger, coordinator, checkpoint."""

    role = "gateway"

    def __init__(self, cfg: NodeConfig) -> None:
        super().__init__(cfg)
        assert cfg.ledger_path is not None
        cfg.ledger_path.parent.mkdir(parents=True, exist_ok=True)
        if cfg.ledger_path.exists():
            self.ledger = Ledger.open(cfg.ledger_path)
        elif cfg.bootstrap_path is not None:
            self.ledger = create_ledger(cfg.ledger_path, cfg.bootstrap_path)
        else:
            raise FileNotFoundError(
                f"no ledger at {cfg.ledger_path} and no [gateway] bootstrap file to create one"
            )
        genesis = self.ledger.entries(0, 1)[0]
        if cfg.genesis_hash is not None and genesis.hash != cfg.genesis_hash:
            raise ValueError(f"ledger genesis {genesis.hash[:12]} is not the configured one")
        params = genesis.payload["params"]
        spec = ModelSpec.from_dict(params["model"])
        self.holder = ModelHolder(
            spec, init_params(spec, int(params["init_seed"])), MergeRule.from_dict(params["merge"])
        )
        self.inbox = EnvelopeInbox(
            cfg.swarm, spec.n_params, self._public_key, cfg.max_envelope_bytes
        )
        self.policy = P.RoundPolicy.from_params(params)
        self.coordinator = P.Coordinator(self.policy, self.holder.hash, now_ms())
        self.samples: dict[int, dict[str, int]] = {}
        self.pending_merge: P.Merge | None = None
        self.attested: set[tuple[int, str]] = set()
        self.last_final_round = 0
        self.checkpoint_path = cfg.state_dir / "checkpoint.bin"
        self.tree = MerkleTree(bytes.fromhex(e.hash) for e in self.ledger.entries(0))
        self._replay()

    # -- start-up
    def _replay(self) -> None:
        """Rebuild the coordinator and the model from the ledger and the saved checkpoint."""
        last_final: dict[str, Any] | None = None
        self.coordinator.replaying = True
        for entry in self.ledger.entries(1):
            self._fold(entry)
            self.coordinator.handle(P.Appended(entry.kind, entry.author, entry.payload, entry.ts))
            if entry.kind == "model_final":
                last_final = entry.payload
        if last_final is not None:
            self._restore_checkpoint(last_final)
        self._resumed = self.coordinator.resume()
        log.info(
            "ledger at height %d; %d rounds done",
            self.ledger.height,
            self.coordinator.finished_rounds,
        )

    def _restore_checkpoint(self, final: dict[str, Any]) -> None:
        try:
            ck = decode_checkpoint(self.checkpoint_path.read_bytes())
        except (OSError, CheckpointError) as exc:
            log.error(
                "no usable checkpoint for round %d (%s): agents must supply it", final["round"], exc
            )
            return
        if (
            ck.round == final["round"]
            and ck.model_hash == final["model_hash"]
            and self.holder.adopt(ck)
        ):
            log.info("restored checkpoint of round %d", ck.round)
        else:
            log.error(
                "saved checkpoint is not the ledger's final model of round %d", final["round"]
            )

    def setup(self) -> None:
        t = self.topics
        for topic in (
            t.ledger_submit(),
            t.ledger_query(),
            t.delta_filter(),
            t.fleet_status_filter(),
        ):
            self.mqtt.subscribe(topic, qos=1)
        if self.holder.round > 0:
            self._publish_checkpoint()
        self._act(self._resumed)

    # -- inputs
    def on_message(self, kind: str, rnd: int | None, node: str | None, msg: Message) -> None:
        if kind == "ledger_submit":
            self._on_submission(msg.payload)
        elif kind == "ledger_query":
            self._on_query(msg.payload)
        elif kind == "delta" and rnd is not None and node is not None:
            try:
                self.inbox.offer(msg.payload, rnd, node)
            except Dropped as exc:
                self.drops.drop(exc.reason, f"envelope on round {rnd} from {node}: {exc}")
                return
            self._retry_merge()
        elif kind == "fleet_status" and node is not None:
            self._on_status(node, msg.payload)

    def on_tick(self, now: int) -> None:
        self._act(self.coordinator.handle(P.Tick(now)))

    def _on_status(self, node: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained status
        try:
            status = Status.decode(payload)
        except MessageError as exc:
            self.drops.drop("bad status", str(exc))
            return
        if status.node != node or status.role != "agent":
            return
        self._act(self.coordinator.handle(P.PeerSeen(node, status.state == "online")))

    def _on_submission(self, payload: bytes) -> None:
        try:
            tx = Tx.from_dict(Submission.decode(payload).tx)
        except (MessageError, LedgerError) as exc:
            self.drops.drop("bad submission", str(exc))
            return
        reason = self._round_check(tx)
        try:
            if reason is not None:
                raise Refused("out_of_round", reason)
            entry = self.ledger.submit(tx)
        except Refused as exc:
            self.drops.drop("refused submission", f"{tx.kind} from {tx.author}: {exc}")
            self._reply_refusal(tx, str(exc))
            return
        self._appended(entry)

    def _round_check(self, tx: Tx) -> str | None:
        """The coordinator's part of validation: does this entry fit the round in progress?"""
        if abs(tx.ts - now_ms()) > MAX_CLOCK_SKEW_MS:
            # ledger_lite judges authority at the author's timestamp: bound it here, so an
            # expired or revoked device cannot backdate an entry.
            return (
                f"timestamp {tx.ts} is over {MAX_CLOCK_SKEW_MS // 1000} s off the gateway's clock"
            )
        cur = self.coordinator.current
        rnd = tx.payload.get("round") if isinstance(tx.payload, dict) else None
        if tx.kind == "delta_commit":
            if cur is None or cur.number != rnd or cur.included is not None:
                return f"round {rnd} is not open for commits"
            if tx.author in cur.commits:
                return f"{tx.author} already committed to round {rnd}"
        elif tx.kind == "model_attest":
            # Attestations of the round just finalised still count for the audit: a node
            # that merged a moment after the majority proves it holds the same bytes.
            closing = cur is not None and cur.number == rnd and cur.included is not None
            if not closing and rnd != self.last_final_round:
                return f"round {rnd} is not awaiting attestations"
            if (rnd, tx.author) in self.attested:
                return f"{tx.author} already attested round {rnd}"
        elif tx.kind in ("round_open", "round_close", "model_final"):
            return "only the coordinator opens, closes and finalises rounds"
        return None

    def _reply_refusal(self, tx: Tx, reason: str) -> None:
        try:
            topic = self.topics.ledger_reply(tx.author)
        except ValueError:
            return
        self.mqtt.publish(topic, Reply(req=tx.tx_id, refused=reason).encode(), qos=1)

    def _on_query(self, payload: bytes) -> None:
        try:
            q = Query.decode(payload)
            topic = self.topics.ledger_reply(q.client)
        except (MessageError, ValueError) as exc:
            self.drops.drop("bad query", str(exc))
            return
        if q.op != "entries":
            self.mqtt.publish(topic, self._proof_reply(q).encode(), qos=1)
            return
        page, size = [], 0
        for e in self.ledger.entries(q.start, q.limit):
            size += len(e.canonical())
            if page and size > REPLY_BYTES:
                break  # a page stays well under the broker's packet limit
            page.append(e.to_dict())
        reply = Reply(req=q.req, entries=page, tip_height=self.ledger.height)
        self.mqtt.publish(topic, reply.encode(), qos=1)

    def _proof_reply(self, q: Query) -> Reply:
        """A proof signed by this gateway over the ledger as it is now (RFC 9162 style), so
        a device can check an entry is in the ledger without holding the chain."""
        size = self.tree.size
        if not 0 <= q.start < size or (q.op == "consistency" and q.start == 0):
            return Reply(req=q.req, tip_height=size - 1, refused=f"out of range: {q.start}")
        head = sign_tree_head(
            self.key, self.cfg.swarm, self.cfg.node_id, size, self.tree.root(), now_ms()
        )
        if q.op == "inclusion":
            bundle = ProofBundle.for_inclusion(head, q.start, self.tree.inclusion_proof(q.start))
        else:
            bundle = ProofBundle.for_consistency(
                head, q.start, self.tree.consistency_proof(q.start)
            )
        return Reply(req=q.req, tip_height=size - 1, proof=bundle.to_dict())

    # -- the ledger and the coordinator
    def _fold(self, entry: Entry) -> None:
        p = entry.payload
        if entry.kind == "round_open":
            self.inbox.expect(RoundView(p["round"], p["base_model_hash"]))  # held ones join
            self.round_seen = p["round"]
        elif entry.kind == "delta_commit":
            self.samples.setdefault(p["round"], {})[entry.author] = p["n_samples"]
        elif entry.kind == "model_attest":
            self.attested.add((p["round"], entry.author))
        elif entry.kind == "model_final":
            self.last_final_round = p["round"]
            self.attested = {a for a in self.attested if a[0] >= p["round"]}

    def _appended(self, entry: Entry) -> None:
        self.tree.append(bytes.fromhex(entry.hash))
        self.mqtt.publish(self.topics.ledger_events(), entry.canonical(), qos=1)
        self._fold(entry)
        event = P.Appended(entry.kind, entry.author, entry.payload, entry.ts)
        self._act(self.coordinator.handle(event))

    def _act(self, actions: list[P.Action]) -> None:
        for action in actions:
            if isinstance(action, P.Append):
                self._append_own(action)
            elif isinstance(action, P.Merge):
                self.pending_merge = action
                self._retry_merge()
            elif isinstance(action, P.PublishCheckpoint):
                self._finalise(action)
            elif isinstance(action, P.SwarmDone):
                log.info("swarm finished: %d rounds", action.rounds)

    def _append_own(self, action: P.Append) -> None:
        tx = make_tx(self.key, self.cfg.swarm, action.kind, self.cfg.node_id, action.payload)
        try:
            entry = self.ledger.submit(tx)
        except Refused as exc:
            log.error("the ledger refused the coordinator's %s: %s", action.kind, exc)
            self.coordinator.append_failed()
            return
        if action.kind in ("round_open", "round_close", "model_final"):
            log.info("%s %s", action.kind, json.dumps(action.payload, sort_keys=True)[:200])
        self._appended(entry)

    def _retry_merge(self) -> None:
        action = self.pending_merge
        if action is None:
            return
        try:
            contributions = self.inbox.take(
                action.round, action.included, self.samples.get(action.round, {})
            )
        except KeyError:
            return  # still waiting for an envelope; every arrival retries
        self.pending_merge = None
        cand = self.holder.merge(action.round, contributions)
        self.inbox.forget_before(action.round)
        self._act(
            self.coordinator.handle(P.MergeDone(action.round, cand.model_hash, cand.state_hash))
        )

    def _finalise(self, action: P.PublishCheckpoint) -> None:
        cand = self.holder.candidates.get(action.round)
        if cand is None or cand.model_hash != action.model_hash:
            log.error(
                "round %d: the final model %s is not the gateway's own merge; no checkpoint",
                action.round,
                action.model_hash[:12],
            )
            return
        self.holder.commit(action.round)
        self._publish_checkpoint()

    def _publish_checkpoint(self) -> None:
        data = encode_checkpoint(self.holder.checkpoint(self.cfg.swarm))
        self.publish_checkpoint(data)
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.checkpoint_path)  # a crash leaves the old or the new file, whole

    def _public_key(self, node: str) -> str | None:
        state = self.ledger.state
        if not state.is_active(node, now_ms()):
            return None
        return state.public_key(node)
