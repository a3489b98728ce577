"""The gateway process: a ledger replica, the round coordinator, and the checkpoint.

A site runs one gateway, or several that replicate the ledger by Raft (``ledger_backend``).
Every gateway folds every applied entry into its coordinator and merges every round, so
any of them can take over; only the coordinating one (the Raft leader) acts: it forwards
agents' submissions to the ledger, opens, closes and finalises rounds, answers ledger
queries, publishes appended entries on ``ledger/events`` and the retained checkpoint.

Submissions are validated by ``ledger_lite`` on every replica (signature, enrolment, policy)
and first by the coordinator's ``admit`` (an entry that makes sense for the round). Every
round decision is the coordinator's (``swarm/coordinator.py``): this module carries out its
actions (append, merge, ensure a key epoch, publish the checkpoint) and feeds it events.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from edge_swarm.io.ledger import LedgerBackend, LocalLedger, ReplicatedLedger, read_bootstrap
from edge_swarm.io.mqtt import Message
from edge_swarm.learn.model import ModelSpec, init_params
from edge_swarm.learn.poison import Attack
from edge_swarm.node.base import NodeRuntime, enrolled_gateway_fps, now_ms
from edge_swarm.node.config import NodeConfig
from edge_swarm.node.devices import DeviceBook
from edge_swarm.node.disk import ledger_full, ledger_ok, save_file
from edge_swarm.node.entry_amend import amend_entry
from edge_swarm.node.exports import RoundExporter
from edge_swarm.node.intake import Intake
from edge_swarm.node.model import ModelHolder
from edge_swarm.node.model_share import DeltaAsks, ModelAsks
from edge_swarm.node.private_merge import PrivacyRecord
from edge_swarm.node.queries import announce, answer
from edge_swarm.node.updates import downlink_of
from edge_swarm.swarm import protocol as P
from edge_swarm.swarm.checkpoint import (
    Checkpoint,
    CheckpointError,
    decode_checkpoint,
    encode_checkpoint,
)
from edge_swarm.swarm.chunk_resend import encode_delta_request, encode_model_request
from edge_swarm.swarm.inbox import Dropped
from edge_swarm.swarm.merge import MergeRule
from edge_swarm.swarm.messages import MessageError, Query
from edge_swarm.trust.keyring import new_epoch
from ledger_lite import Entry, LedgerState, MerkleTree, SigningKey, make_tx
from ledger_lite.errors import LedgerError
from ledger_lite.store import NoSpace

log = logging.getLogger(__name__)

RETAINED_WAIT_S = 3.0  # how long the retained checkpoint may take before nodes are asked


def open_ledger(cfg: NodeConfig, genesis: Entry | None, key: SigningKey) -> LedgerBackend:
    """The gateway's ledger; the head it acknowledges is anchored, signed by ``key``."""
    assert cfg.ledger_path is not None
    cfg.ledger_path.parent.mkdir(parents=True, exist_ok=True)
    path, gw = cfg.ledger_path, cfg.node_id
    free = cfg.min_free_bytes  # appends stop while less than this is free beside the file
    if cfg.raft_self is None:
        return LocalLedger(path, genesis, key=key, gateway_id=gw, min_free_bytes=free)
    return ReplicatedLedger(
        path, genesis, cfg.raft_self, cfg.raft_peers, key=key, gateway_id=gw, min_free_bytes=free
    )


class Gateway(NodeRuntime):
    """One site gateway: ledger replica, coordinator, checkpoint."""

    role = "gateway"

    def __init__(self, cfg: NodeConfig) -> None:
        super().__init__(cfg)
        bootstrap = read_bootstrap(cfg.bootstrap_path) if cfg.bootstrap_path else []
        self.ledger = open_ledger(cfg, bootstrap[0] if bootstrap else None, self.key)
        self._bootstrap = bootstrap[1:]
        genesis = self.ledger.entries(0, 1)[0]
        if cfg.genesis_hash is not None and genesis.hash != cfg.genesis_hash:
            self.ledger.close()
            raise ValueError(f"ledger genesis {genesis.hash[:12]} is not the configured one")
        params = genesis.payload["params"]
        self.set_security(params)
        spec = ModelSpec.from_dict(params["model"])
        rule = MergeRule.from_dict(params["merge"])
        init = init_params(spec, int(params["init_seed"]))
        self.holder = ModelHolder(spec, init, rule, downlink_of(params, cfg.swarm))
        # The global model as .onnx/.tflite/.npz after every model_final (model_export.py).
        self.exporter = RoundExporter(
            cfg.state_dir / "exports",
            cfg.backbone_dir,
            params.get("backbone"),
            keep=cfg.keep_exports,
            min_free_bytes=cfg.min_free_bytes,
        )
        self.inbox = self.make_inbox(spec.n_params, self._public_key, lambda: self.ledger.state)
        self.devices = DeviceBook(self._public_key, self.drops)  # statuses and telemetry
        self.dashboard: Any = None  # dashboard.DashboardServer when [gateway] dashboard is set
        self.coordinator = P.Coordinator(
            P.RoundPolicy.from_params(params),
            self.holder.hash,
            now_ms(),
            leading=False,
            initial_state_hash=self.holder.state.state_hash(),
        )
        self.pending_merge: P.Merge | None = None  # the coordinator's, until its deltas are in
        self.spent = PrivacyRecord(self.privacy) if self.privacy.dp else None  # ε, from the ledger
        self.delta_asks = DeltaAsks(
            lambda r, node, sha: self.ask(r, node, encode_delta_request(sha))
        )
        self.checkpoint_path = cfg.state_dir / "checkpoint.bin"
        self.model_asks = ModelAsks(
            cfg.node_id, lambda r, node, h: self.ask(r, node, encode_model_request(h))
        )
        self.intake = Intake(
            self.ledger,
            self.coordinator,
            self.topics,
            lambda topic, body: self.mqtt.publish(topic, body, qos=1),
            self.call_soon,
            self.drops,
            now_ms,
            act=self._act if self.coordinator.policy.by_committee else None,
        )
        self.tree = MerkleTree()
        self.folded = -1
        # Registered before the replay, so nothing applied meanwhile is missed; the height
        # check in _applied skips what the replay already folded.
        self.ledger.on_append.append(lambda e: self.call_soon(lambda: self._applied(e)))
        self.ledger.on_role.append(lambda lead: self.call_soon(lambda: self._on_role(lead)))
        self._replay()

    # -- start-up
    def _replay(self) -> None:
        """Rebuild the coordinator and the model from the ledger and the saved checkpoint."""
        self.coordinator.replaying = True
        for entry in self.ledger.entries(0):
            self._fold(entry, live=False)
        final = self.coordinator.last_final_round
        if final > 0:
            self._restore_checkpoint(final)
        if self.holder.round < final:
            log.warning(
                "the ledger's last final round is %d but this gateway's model is of round %d; "
                "taking the retained checkpoint, or asking the nodes that hold it",
                final,
                self.holder.round,
            )
            # The retained checkpoint arrives on subscribing, if the broker holds it.
            self.model_asks.want(final, time.monotonic(), RETAINED_WAIT_S)
        log.info(
            "ledger at height %d; %d rounds done", self.folded, self.coordinator.finished_rounds
        )
        self._act(self.coordinator.finish_replay())  # a round closed but not final: merge it

    @property
    def leading(self) -> bool:
        """Whether this gateway is the coordinating one (the Raft leader, or the only one)."""
        return self.coordinator.leading

    def _restore_checkpoint(self, rnd: int) -> None:
        try:
            self._adopt(decode_checkpoint(self.checkpoint_path.read_bytes()))
        except (OSError, CheckpointError) as exc:
            log.warning("no saved checkpoint of round %d (%s); taking the retained one", rnd, exc)

    def _adopt(self, ck: Checkpoint) -> bool:
        # The ledger (folded by the coordinator), not the checkpoint, says which bytes are final.
        final = self.coordinator.last_final_round
        if final == 0 or ck.round != final or ck.model_hash != self.coordinator.model_hash:
            return False
        if self.holder.round >= ck.round or not self.holder.adopt(ck):
            return False
        log.info("holding the final model of round %d", ck.round)
        self.model_asks.held()
        self.exporter.export_soon(self.holder.spec, self.holder.params, ck.round)
        return True

    def genesis_for_adverts(self) -> str | None:
        return self.ledger.entries(0, 1)[0].hash

    def gateway_fps(self) -> frozenset[str] | None:
        return enrolled_gateway_fps(self.ledger.state)

    def ledger_state(self) -> LedgerState:
        return self.ledger.state

    def on_reconnected(self) -> None:
        # A broker that moved or restarted lost the retained checkpoint: publish it again.
        if self.leading and self.holder.round > 0:
            self._publish_checkpoint()

    def setup(self) -> None:
        t = self.topics
        self.mqtt.subscribe_all(  # one SUBSCRIBE, one round trip through the broker (issue 20)
            [t.ledger_submit(), t.ledger_query(), t.delta_filter(), t.fleet_status_filter()]
            + [t.fleet_telemetry_filter(), t.model_latest(), t.model_chunk_filter()]
            + [t.model_offer_filter(), *([t.reveal_filter()] if self.privacy.secagg else [])]
        )
        self.ledger.start()
        if self.cfg.dashboard is not None:  # the site's read-only page
            from edge_swarm.dashboard.server import start_for_gateway

            devices = lambda: {n: dict(v) for n, v in list(self.devices.view.items())}  # noqa: E731
            self.dashboard = start_for_gateway(self.cfg.dashboard, self.ledger.entries, devices)

    def shutdown(self) -> None:
        try:
            super().shutdown()
        finally:
            if self.dashboard is not None:
                self.dashboard.stop()
            self.exporter.close()  # the rounds queued for export are written first
            self.ledger.close()

    def _on_role(self, lead: bool) -> None:
        if lead == self.leading:
            return
        self.coordinator.set_leading(lead)  # an entry in flight died with the old role
        log.info("this gateway %s the coordinator", "is now" if lead else "is no longer")
        if not lead:
            return
        try:
            self.ledger.catch_up()
        except LedgerError as exc:
            log.warning("could not catch up before coordinating: %s", exc)
        for entry in self.ledger.entries(self.folded + 1):  # fold now what sync applied
            self._fold(entry, live=True)
        for entry in self._bootstrap:  # enrolments of a new site, once, by whoever leads first
            if entry.tx.tx_id not in self.ledger.state.seen:
                self.ledger.submit(entry.tx, self._own_result(entry.kind))
        # The old coordinator (or this one, before a restart) may have appended an entry and
        # died before publishing it: the tip, published again, shows an agent that is behind
        # a gap, and it asks for what it missed (a copy it has is ignored).
        tip = self.ledger.entries(self.folded, 1)
        if tip:
            announce(self.mqtt.publish, self.topics, tip[0])
        if 0 < self.holder.round == self.coordinator.last_final_round:
            self._publish_checkpoint()  # never an older one over the old leader's newer one

    # -- inputs
    def on_message(self, kind: str, rnd: int | None, node: str | None, msg: Message) -> None:
        if kind == "delta" and rnd is not None and node is not None:
            try:
                self.inbox.offer(msg.payload, rnd, node)
            except Dropped as exc:
                self.drops.drop(exc.reason, f"envelope on round {rnd} from {node}: {exc}")
                return
            self._retry_merge()
        elif kind == "fleet_status" and node is not None:
            self._on_status(node, msg.payload)
        elif kind == "fleet_telemetry" and node is not None:
            self.devices.telemetry(node, msg.payload)
        elif kind in ("model_latest", "model_offer"):
            self._on_checkpoint(msg.payload, offered=kind == "model_offer")
        elif not self.leading:
            return  # submissions and queries are the coordinator's to answer
        elif kind == "ledger_submit":
            self.intake.take(msg.payload)
        elif kind == "ledger_query":
            self._on_query(msg.payload)

    def on_tick(self, now: int) -> None:
        mono = int(time.monotonic() * 1000)  # the cadence's clock; `now` stamps entries
        self._act(self.coordinator.handle(P.Tick(now, mono_ms=mono)))
        m = self.pending_merge
        if m is not None:
            missing = [(n, sha) for n, sha in m.included if not self.inbox.has(m.round, n, sha)]
            self.delta_asks.tick(m.round, missing, time.monotonic())
        c = self.coordinator
        self.model_asks.tick(c.last_final_round, c.model_hash, c.final_holders, time.monotonic())

    def _on_checkpoint(self, payload: bytes, offered: bool = False) -> None:
        """The retained checkpoint, or (``offered``) a node's copy we asked for: adopt it
        if the ledger says it is the last final model; a coordinator publishes an offered
        one retained, for the agents that need it too."""
        try:
            ck = self.open_checkpoint(payload)
        except CheckpointError as exc:
            self.drops.drop("bad checkpoint", str(exc))
            return
        if ck is None or ck.swarm != self.cfg.swarm or not self._adopt(ck):
            return
        if offered and self.leading:
            self._publish_checkpoint()
        else:
            self._save_checkpoint(encode_checkpoint(ck))
        self._retry_merge()  # a round closed meanwhile can be merged on it now

    def _on_status(self, node: str, payload: bytes) -> None:
        online = self.devices.status(node, payload)
        if online is not None:
            self._act(self.coordinator.handle(P.PeerSeen(node, online)))

    def _on_query(self, payload: bytes) -> None:
        try:
            q = Query.decode(payload)
            topic = self.topics.ledger_reply(q.client)
        except (MessageError, ValueError) as exc:
            self.drops.drop("bad query", str(exc))
            return
        ids = (self.cfg.swarm, self.cfg.node_id)
        reply = answer(q, self.ledger.entries, self.tree, self.key, ids, self.folded, now_ms)
        self.mqtt.publish(topic, reply.encode(), qos=1)

    # -- the ledger and the coordinator
    def _applied(self, entry: Entry) -> None:
        """An entry this replica applied (on the loop thread, in height order)."""
        if entry.height <= self.folded:
            return
        if entry.height > self.folded + 1:  # applied before our callback was registered
            for missed in self.ledger.entries(self.folded + 1, entry.height - self.folded - 1):
                self._fold(missed, live=True)
        self._fold(entry, live=True)

    def _fold(self, entry: Entry, live: bool) -> None:
        self.folded = entry.height
        self.tree.append(bytes.fromhex(entry.hash))
        if entry.kind == "genesis":
            return
        p = entry.payload
        self.fold_entry(entry, self.ledger.state)  # held envelopes join the inbox's round
        if entry.kind == "key_epoch" and live and self.leading and self.holder.round > 0:
            self._publish_checkpoint()  # so that new recipients can read the model
        elif entry.kind == "enroll":
            held = self.devices.enrolled(p["node"])
            if held is not None:
                self.call_soon(lambda: self._on_status(p["node"], held))
        if entry.kind == "model_final" and self.spent is not None:
            self.spent.fold_final(p)
        event = P.Appended(entry.kind, entry.author, p, entry.ts, entry.hash)
        actions = self.coordinator.handle(event)
        if not live:
            return
        if self.leading:
            announce(self.mqtt.publish, self.topics, entry)
        if entry.kind in ("round_open", "round_close", "model_final", "campaign") and self.leading:
            log.info("%s %s", entry.kind, json.dumps(p, sort_keys=True)[:200])
        self._act(actions)
        self._retry_merge()

    def _act(self, actions: list[P.Action]) -> None:
        for action in actions:
            # A follower appends nothing but, on a committee, its own attestation.
            if isinstance(action, P.Append) and (self.leading or action.kind == "model_attest"):
                cur = self.coordinator.current
                included = cur.included if cur is not None else ()
                online = set(self.coordinator.online & self.coordinator.agents)
                ts = now_ms()
                payload = amend_entry(  # node/entry_amend.py: merge report, privacy
                    action.kind,
                    action.payload,
                    self.holder,
                    self.secure,
                    self.spent,
                    included,
                    self.ledger.state,
                    online,
                    ts,
                )
                tx = make_tx(self.key, self.cfg.swarm, action.kind, self.cfg.node_id, payload, ts)
                self.ledger.submit(tx, self._own_result(action.kind))
            elif isinstance(action, P.Merge):
                self.pending_merge = action  # merged as soon as its envelopes are all in
                self.delta_asks.start(time.monotonic(), action.round)
                self._retry_merge()
            elif isinstance(action, P.EnsureKeys) and self.leading:
                self._ensure_keys()
            elif isinstance(action, P.PublishCheckpoint):
                self._finalise(action)
            elif isinstance(action, P.SwarmDone):
                log.info("swarm finished: %d rounds (%s)", action.rounds, action.reason)

    def _ensure_keys(self) -> None:
        """Answer the coordinator's ``EnsureKeys``: ready if the newest key epoch wraps the
        data key for exactly the members who should read the next round; if not, append a
        fresh epoch first (a revoked device is left out of it, a newly enrolled one let in)
        and the coordinator asks again once it is applied."""
        recipients = self.epochs.rotation_needed(self.ledger.state, now_ms())
        if recipients is None:
            self._act(self.coordinator.handle(P.KeysReady()))
            return
        latest = self.ledger.state.key_epoch
        number = 0 if latest is None else latest + 1
        epoch, _ = new_epoch(self.cfg.swarm, number, recipients)
        tx = make_tx(self.key, self.cfg.swarm, "key_epoch", self.cfg.node_id, epoch.to_dict())
        log.info("key epoch %d for %d recipients", number, len(recipients))
        self.ledger.submit(tx, self._own_result("key_epoch"))

    def _own_result(self, kind: str) -> Callable[[Entry | None, LedgerError | None], None]:
        """The ledger's answer to an entry of this gateway's: a refusal lets the coordinator
        try again (on the loop thread; the answer may come on the replica's). A full disk
        is told in one line for as long as it lasts, and its end in another (`node.disk`);
        other refusals are rate-limited."""
        assert self.cfg.ledger_path is not None
        directory = self.cfg.ledger_path.parent

        def result(entry: Entry | None, error: LedgerError | None) -> None:
            if error is None:
                ledger_ok(directory)
                return

            def failed() -> None:
                if isinstance(error, NoSpace):
                    ledger_full(error, f"the coordinator's {kind}")
                else:
                    self.drops.drop("refused own entry", f"the coordinator's {kind}: {error}")
                self._act(self.coordinator.handle(P.AppendFailed(kind)))

            self.call_soon(failed)

        return result

    def on_reveal(self, rnd: int) -> None:
        self._retry_merge()

    def _retry_merge(self) -> None:
        action = self.pending_merge
        if action is None:
            return
        if action.round in self.holder.candidates or self.holder.round >= action.round:
            self.pending_merge = None
            return
        if self.holder.round < self.coordinator.last_final_round:
            return  # a merge on an older model would be wrong: the last final one first
        try:
            cand = self.merge_round(action)
        except KeyError:
            return  # still waiting for an envelope; every arrival retries
        if self.cfg.attack is not None:  # tests only: a gateway whose own merge lies
            cand = self.holder.spoil(action.round, Attack.from_dict(self.cfg.attack))
        self.pending_merge = None
        if cand.update is not None and self.leading:  # light agents take it: node/updates.py
            wire = self.wire_frame(cand.update.frame, action.round, self.ledger.state, "update")
            if wire is not None:
                self.mqtt.publish(self.topics.model_update(), wire, qos=1, retain=True)
        done = P.MergeDone(action.round, cand.model_hash, cand.state_hash, cand.update_sha256)
        self._act(self.coordinator.handle(done))

    def _finalise(self, action: P.PublishCheckpoint) -> None:
        cand = self.holder.candidates.get(action.round)
        if cand is not None and cand.model_hash == action.model_hash:
            self.holder.commit(action.round)
        elif self.holder.hash == action.model_hash:
            # Abandoned (swarm/coordinator.py): nobody could merge it; the model stays.
            log.warning("round %d: finalised on the model it started from", action.round)
            self.holder.keep(action.round)
        else:
            log.warning(
                "round %d: the final model %s is not this gateway's own merge; "
                "getting it from the swarm",
                action.round,
                action.model_hash[:12],
            )
            # A coordinator asks at once (no other gateway publishes it); a follower first
            # gives its coordinator the time to publish the retained checkpoint.
            wait = 0.0 if self.leading else RETAINED_WAIT_S
            self.model_asks.want(action.round, time.monotonic(), wait)
            return
        self._publish_checkpoint()
        self.exporter.export_soon(self.holder.spec, self.holder.params, action.round)

    def _publish_checkpoint(self) -> None:
        ck = self.holder.checkpoint(self.cfg.swarm)
        data = encode_checkpoint(ck)
        if self.leading:
            wire = self.wire_frame(data, ck.round, self.ledger.state)
            if wire is None:
                log.warning("round %d: no usable data key; checkpoint not published", ck.round)
            else:
                self.publish_checkpoint(wire)
        self._save_checkpoint(data)  # on this device's own disk, in the clear

    def _save_checkpoint(self, data: bytes) -> None:
        """Keep it on disk (fsynced, renamed into place: a crash or a full disk leaves the
        old file whole). Only if it leaves ``[gateway] min_free_mb`` free for the ledger;
        else the old file stays, said once (`node.disk`), and the next one tries again."""
        waits = "checkpoint.bin keeps an older round (a restart takes the retained one)"
        save_file(self.checkpoint_path, data, self.cfg.min_free_bytes, "checkpoint", waits)

    def _public_key(self, node: str) -> str | None:
        state = self.ledger.state
        if not state.is_active(node, now_ms()):
            return None
        return state.public_key(node)
