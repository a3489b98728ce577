"""The agent process: adapters around the pure ``Participant`` machine.

On start the agent connects, copies the ledger from a gateway (validating every entry),
replays it into its machine, and adopts the latest final checkpoint if the ledger has moved
past the model it holds. From then on, ledger events, envelopes and checkpoints come in on
MQTT; the machine says when to train, merge, attest, commit or adopt.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from typing import Any

import numpy as np

from edge_swarm.io.mqtt import Message
from edge_swarm.learn.model import ModelSpec, init_params
from edge_swarm.learn.poison import Attack, poison_delta
from edge_swarm.learn.train import LocalTraining, train_local, training_seed
from edge_swarm.node.adopting import Adopting
from edge_swarm.node.agent_ops import agent_operations
from edge_swarm.node.agent_resume import Resuming
from edge_swarm.node.base import NodeRuntime, enrolled_gateway_fps
from edge_swarm.node.config import NodeConfig
from edge_swarm.node.fleet import FleetControl, LogRing
from edge_swarm.node.follow import Follow
from edge_swarm.node.ledger_copy import COPY_FILE, LedgerCopy
from edge_swarm.node.local_data import LocalData, genesis_prepare
from edge_swarm.node.model import ModelHolder, load_feedback
from edge_swarm.node.model_share import MEMBER_ASK_S, DeltaAsks
from edge_swarm.node.own_commit import OwnCommits
from edge_swarm.node.private_upload import RevealsPending, upload_body
from edge_swarm.node.resend import LedgerQueries, OwnDelta, PendingSubmissions
from edge_swarm.node.serving import DeviceModel
from edge_swarm.node.updates import LightUpdates, downlink_of
from edge_swarm.node.validation import SiteValidation
from edge_swarm.swarm import protocol as P
from edge_swarm.swarm.checkpoint import Checkpoint
from edge_swarm.swarm.chunk_resend import encode_delta_request
from edge_swarm.swarm.codec import FLAG_SEALED, EnvelopeHeader, encode_envelope
from edge_swarm.swarm.commands import Ack
from edge_swarm.swarm.feedback import ErrorFeedback
from edge_swarm.swarm.inbox import Dropped
from edge_swarm.swarm.merge import MergeRule
from edge_swarm.swarm.messages import MessageError, Query, Reply, Submission
from edge_swarm.swarm.mirror import LedgerMirror, MirrorError, event_entry
from edge_swarm.swarm.quantize import CodecSpec
from edge_swarm.swarm.topics import ALL
from ledger_lite import Entry, LedgerState, make_tx

log = logging.getLogger(__name__)

RESIDUAL_FILE = "residual.bin"  # error feedback's residual, kept across restarts
KEPT_DELTA_FILE = "delta.bin"  # our last envelope, kept until its round is merged
MAX_BEFORE_GENESIS = 64  # envelopes held while the ledger copy has not even its genesis


class Agent(NodeRuntime, Adopting, Resuming):
    """One edge device taking part in the swarm."""

    role = "agent"

    def __init__(self, cfg: NodeConfig) -> None:
        super().__init__(cfg)
        assert cfg.data_path is not None
        self.data = LocalData(cfg.data_path)  # read again when it changes (node/local_data.py)
        self.X, self.y = self.data.raw
        # Tests and benchmarks of the robust merge rules only (learn/poison.py).
        self.attack = Attack.from_dict(cfg.attack) if cfg.attack is not None else None
        if self.attack is not None:
            log.warning("THIS AGENT POISONS ITS DELTAS (%s): a test harness", self.attack)
        # A bad codec override is refused at start, before the agent joins anything.
        override = cfg.codec_override
        self.codec_override = CodecSpec.from_dict(override) if override is not None else None
        self.codec = CodecSpec("float32")
        self.feedback: ErrorFeedback | None = None
        self.val = SiteValidation.none()  # the held-out slice, from the genesis on
        self.mirror = LedgerMirror(cfg.genesis_hash)
        self.ledger_copy = LedgerCopy(cfg.state_dir / COPY_FILE)  # node/ledger_copy.py
        self._sealed_checkpoint: bytes | None = None  # one we hold no key for yet
        self.synced = False
        self.queries = LedgerQueries()
        self.machine: P.Participant | None = None
        self.local: LocalTraining | None = None
        self.init_seed = 0
        self.latest_checkpoint: Checkpoint | None = None
        self.adopting: tuple[int, str] | None = None
        self.own_commits = OwnCommits(  # settled and proven (node/own_commit.py)
            cfg.node_id, lambda q: self.mqtt.publish(self.topics.ledger_query(), q.encode(), qos=1)
        )
        self.updates: LightUpdates | None = None  # a light agent's (node/updates.py)
        self.last_train_s = 0.0
        self.rounds_done: list[int] = []
        self._before_genesis: list[tuple[bytes, int, str]] = []
        self.follow = Follow(self.mqtt, self.topics)  # node/follow.py
        self.peer_deltas = 0  # peers' delta messages received
        self.delta_asks = DeltaAsks(
            lambda r, n, sha: self.ask(r, n, encode_delta_request(sha)), first_s=MEMBER_ASK_S
        )
        self.submissions = PendingSubmissions(
            lambda payload: self.mqtt.publish(self.topics.ledger_submit(), payload, qos=1)
        )
        self.telemetry_every_s = cfg.timing.telemetry_every_s
        self._telemetry_at = 0.0
        self.last_accuracy: float | None = None
        self.log_ring = LogRing()
        logging.getLogger().addHandler(self.log_ring)
        self.fleet = FleetControl(
            cfg.node_id,
            cfg.swarm,
            lambda: self.mirror.state.admins if self.mirror.state is not None else None,
            self._answer,
            agent_operations(self),
            self.stamp_ms,  # the ledger's time: a command's expiry is not the device's to judge
        )
        self.device = DeviceModel(cfg)  # its backbone features, the model it serves
        self.own_delta = OwnDelta(
            lambda topic, frame: self.sender.publish(topic, frame, qos=1),
            cfg.state_dir / KEPT_DELTA_FILE,
            lambda rnd: self.topics.delta(rnd, cfg.node_id),
        )

    # -- set-up and ledger sync
    def setup(self) -> None:
        t, me = self.topics, self.cfg.node_id  # one SUBSCRIBE, one round trip (issue 20)
        self.mqtt.subscribe_all(
            [t.ledger_events(), t.ledger_reply(me), t.resend_filter(me), t.fleet_cmd(me)]
            + [t.fleet_cmd(ALL)]
        )
        self.follow.checkpoints(True)  # deltas once the genesis says who takes them
        self._take(self.ledger_copy.replay(self.mirror), live=False)  # then only what is new
        self._send_query()

    def gateway_fps(self) -> frozenset[str] | None:
        return enrolled_gateway_fps(self.ledger_state())

    def ledger_state(self) -> LedgerState | None:
        return self.mirror.state if self.synced else None

    def on_reconnected(self) -> None:
        self._send_query()  # ledger events published while we were away are not replayed
        # Our delta of a round not yet merged may have died with the old broker (it acked
        # the publish, then went away before forwarding it): send it again. Receivers keep
        # envelopes by sha256, so a copy that did arrive changes nothing.
        self._republish_delta("after reconnecting")

    def _republish_delta(self, why: str) -> None:
        merged = self.holder.round if self.holder is not None else 0
        self.own_delta.republish(merged, time.monotonic(), why)

    def on_delta_request(self, rnd: int, sha256: str) -> None:
        self.own_delta.answer(rnd, sha256, time.monotonic())

    def _send_query(self) -> None:
        query_id = secrets.token_hex(8)
        self.queries.sent(query_id, time.monotonic())
        q = Query(self.cfg.node_id, query_id, start=self.mirror.next_height)
        self.mqtt.publish(self.topics.ledger_query(), q.encode(), qos=1)

    def on_tick(self, now: int) -> None:
        behind = not self.synced or self.mirror.gap
        if behind and self.queries.due(time.monotonic()):
            self._send_query()  # no reply yet, or a gap in the events: ask (again)
        if self.machine is not None and self.synced:  # on the monotonic clock, not `now`
            self._act(self.machine.handle(P.Tick(*self.clock.readings())))
        self.submissions.tick(time.monotonic())
        self.own_commits.tick(time.monotonic())
        self.adoption_tick(time.monotonic())
        if self.machine is not None and self.machine.open is not None:  # a member's missing
            rnd = self.machine.open.number
            self.delta_asks.tick(rnd, self.machine.missing(rnd), time.monotonic())
        asked = self.machine is not None and self.machine.by_committee  # members ask instead
        if self.own_delta.due(time.monotonic()) and not asked:
            self._republish_delta("the round is still not merged")
        if self.secure is not None and self.holder is not None:  # a restarted gateway lost it
            self.secure.reveal_again(self.holder.round, time.monotonic())
        if time.monotonic() - self._telemetry_at >= self.telemetry_every_s:
            self._telemetry(self.round_seen)  # periodic, also while paused or waiting

    def on_message(self, kind: str, rnd: int | None, node: str | None, msg: Message) -> None:
        if kind == "ledger_events":
            self.queries.gateway_heard()  # a sync query sent before it listened: ask now
            self._offer_entries([event_entry(msg.payload)], live=True)
        elif kind == "ledger_reply":
            self._on_reply(msg.payload)
        elif kind == "delta" and rnd is not None and node is not None:
            self._on_envelope(msg.payload, rnd, node)
        elif kind == "model_latest":
            self._on_checkpoint(msg.payload)
        elif kind == "model_update":
            self._on_update(msg.payload)
        elif kind == "ledger_bodies" and (why := self.follow.bodies.offer(msg.payload)):
            self.drops.drop("bad ledger body", why)
        elif kind == "fleet_cmd":
            self.fleet.on_message(msg.payload)

    def _on_reply(self, payload: bytes) -> None:
        try:
            reply = Reply.decode(payload)
        except MessageError as exc:
            self.drops.drop("bad reply", str(exc))
            return
        if self.own_commits.on_reply(reply):
            return
        if reply.refused is not None:
            self.submissions.settled(reply.req)
            log.warning("the ledger refused our submission %s: %s", reply.req[:12], reply.refused)
            return
        if not self.queries.answered(reply.req):
            return
        ours = self.mirror.next_height - 1
        if reply.tip_height < ours:  # we verified more than it holds: it lost entries
            why = f"its ledger ends at {reply.tip_height}, ours at {ours} (ledger-lite recover)"
            self.drops.drop("gateway behind us", why)  # a warning, and counted in telemetry
        self._offer_entries(reply.entries)
        if self.mirror.next_height <= reply.tip_height:
            self._send_query()  # another page
        elif not self.synced:
            self._finish_sync()

    def _offer_entries(self, raws: list[dict[str, Any] | None], live: bool = False) -> None:
        for raw in raws:
            if raw is None:
                self.drops.drop("bad ledger event", "not a JSON object")
                continue
            try:
                applied = self.mirror.offer(raw)
            except MirrorError as exc:
                self.drops.drop("bad ledger entry", str(exc))
                continue
            self._take(applied, live)

    def _take(self, entries: list[Entry], live: bool) -> None:
        for entry in entries:
            self.ledger_copy.append(entry)
            self.clock.on_entry(entry, self.mirror.state, live)  # a gateway's time?
            self._on_entry(self.follow.bodies.full(entry))  # a member's: the full form

    def _on_entry(self, entry: Entry) -> None:
        self.submissions.settled(entry.tx_id)
        if entry.kind == "round_close" and self.secure is not None and self.synced:
            self.secure.reveal(entry.payload["round"], entry.payload)  # node/secure_rounds.py
        # Committee mode: our commit settled by the close, its proof asked for a little later.
        self.submissions.settled(self.own_commits.on_entry(entry, time.monotonic()))
        if entry.kind == "fleet_command":
            self.fleet.on_entry(entry.tx.to_dict())
            return
        if entry.kind == "genesis":
            self._start_from_genesis(entry.payload["params"])
            return
        if self.machine is None or self.inbox is None:
            return
        assert self.mirror.state is not None
        folded = self.fold_entry(entry, self.mirror.state)
        if folded.new_key and self._sealed_checkpoint is not None:
            self._on_checkpoint(self._sealed_checkpoint)  # a key for it may have come
        event = P.Appended(entry.kind, entry.author, entry.payload, entry.ts, entry.hash)
        actions = self.machine.handle(event)
        if entry.kind == "round_open":
            self._follow_deltas(entry.payload["round"])
        for ok in folded.held:
            actions += self.machine.handle(P.EnvelopeStored(ok.round, ok.node, ok.sha256))
        if self.synced:
            self._act(actions)

    def _start_from_genesis(self, params: dict[str, Any]) -> None:
        self.set_security(params)
        spec = ModelSpec.from_dict(params["model"])
        self.local = LocalTraining.from_dict(params["local"])
        self.init_seed = int(params["init_seed"])
        self.codec = self.codec_override or CodecSpec.from_dict(
            params.get("codec", {"name": "float32"})
        )
        prepare = genesis_prepare(self.device, params.get("backbone"), spec, self.attack)
        self.val = SiteValidation.at_genesis(params, self.cfg.node_id)  # node/validation.py
        self.data.prepare = self.val.holding_out(prepare)  # the slice is never trained on
        self.X, self.y = self.data.prepare(*self.data.raw)
        enabled = bool(params.get("error_feedback", True)) and not self.privacy.active
        self.feedback = load_feedback(self.cfg.state_dir / RESIDUAL_FILE, spec.n_params, enabled)
        rule = MergeRule.from_dict(params["merge"])
        downlink = downlink_of(params, self.cfg.swarm)
        init = init_params(spec, int(params["init_seed"]))
        self.holder = ModelHolder(spec, init, rule, downlink)
        if downlink is not None:
            sealed = self.security == "sealed"
            self.updates = LightUpdates(self.cfg.swarm, spec, downlink[1], sealed)
            self.mqtt.subscribe(self.topics.model_update(), qos=1, timeout=0)  # retained
            self.follow.checkpoints(False)  # asked for only when an update will not do
        self.inbox = self.make_inbox(spec.n_params, self._public_key, lambda: self.mirror.state)
        policy = P.RoundPolicy.from_params(params)
        self.machine = P.Participant(self.cfg.node_id, self.holder.hash, policy)
        self.follow.all_deltas(not policy.by_committee)
        if self.privacy.secagg:  # seed shares from our neighbours; reveals when drawn
            self.follow.reveals = True
            self.mqtt.subscribe(self.topics.share_filter(self.cfg.node_id), qos=1, timeout=0)
        self.machine.replaying = True
        held, self._before_genesis = self._before_genesis, []
        for payload, rnd, node in held:
            self._on_envelope(payload, rnd, node)

    def _follow_deltas(self, rnd: int) -> None:
        if self.machine is not None and self.machine.by_committee and self.synced:
            self.follow.round_deltas(rnd, self.machine.is_member(rnd))

    def _serve(self, rnd: int) -> None:  # every final model we take: scored, maybe served
        assert self.holder is not None
        self.val.score(self.holder.spec, self.holder.params, rnd)
        self.device.serve(self.holder.spec, self.holder.params, rnd, self.val)

    def on_reveal(self, rnd: int) -> None:  # a merge waiting for reveals may go on
        if self.machine is not None and self.synced:
            self._act(self.machine.retry_merge(rnd))

    def _public_key(self, node: str) -> str | None:
        state = self.mirror.state
        if state is None or not state.is_active(node, self.stamp_ms()):
            return None
        return state.public_key(node)

    def _finish_sync(self) -> None:
        if self.machine is None:
            log.error("the ledger has no genesis yet; waiting")
            return
        self.synced = True
        log.info("ledger synced to height %d", self.mirror.next_height - 1)
        if self.machine.open is not None:
            self._follow_deltas(self.machine.open.number)
        self._resume_open_commit()
        self._act(self.machine.catch_up(*self.clock.readings()))
        self._resume_own_delta()

    # -- envelopes and checkpoints
    def _on_envelope(self, payload: bytes, rnd: int, node: str) -> None:
        self.peer_deltas += node != self.cfg.node_id  # telemetry: what committee mode saves
        if self.inbox is None or self.machine is None:
            # Before the genesis arrives we cannot check anything: hold a few, bounded.
            if len(self._before_genesis) < MAX_BEFORE_GENESIS:
                self._before_genesis.append((payload, rnd, node))
            return
        try:
            ok = self.inbox.offer(payload, rnd, node)
        except Dropped as exc:
            self.drops.drop(exc.reason, f"envelope on round {rnd} from {node}: {exc}")
            return
        if ok is None:
            return  # held until this round opens here
        self._act(self.machine.handle(P.EnvelopeStored(ok.round, ok.node, ok.sha256)))

    # -- actions
    def _act(self, actions: list[P.Action]) -> None:
        work = list(actions)
        while work:
            action = work.pop(0)
            work.extend(self._do(action))

    def _do(self, action: P.Action) -> list[P.Action]:
        assert self.machine is not None and self.holder is not None
        if isinstance(action, P.Train):
            if self.state == "paused":
                log.info("round %d: paused by the operator; sitting it out", action.round)
                return []
            done = self._train(action)
            if done is None:
                return []  # cannot seal this round: it closes without us
            own = P.EnvelopeStored(done.round, self.cfg.node_id, done.envelope_sha256)
            return self.machine.handle(done) + self.machine.handle(own)
        if isinstance(action, P.Append):
            self._submit(action)
        elif isinstance(action, P.Merge):
            return self.machine.handle(self._merge(action))
        elif isinstance(action, P.Commit):
            self.holder.commit(action.round)
            self.rounds_done.append(action.round)
            self._serve(action.round)
            self.follow.checkpoints(False)
            self._telemetry(action.round)
        elif isinstance(action, P.AdoptCheckpoint):
            self.adopt(action)  # node/adopting.py
        elif isinstance(action, P.FinalRefused):
            log.warning("%s: keeping our model", action.reason)  # a final without its quorum
        return []

    def _train(self, action: P.Train) -> P.TrainingDone | None:
        assert self.holder is not None and self.local is not None
        sealing = self.epochs.round_key(action.round) if self.security == "sealed" else None
        if self.security == "sealed" and sealing is None:
            log.warning(
                "round %d: no data key for its epoch (%s); sitting this round out",
                action.round,
                self.epochs.round_epochs.get(action.round),
            )
            return None
        self.X, self.y = self.data.refresh() or (self.X, self.y)  # new records train too
        base = self.holder.params
        seed = training_seed(self.init_seed, action.round, self.cfg.node_id)
        t0 = time.perf_counter()
        new, metrics = train_local(self.holder.spec, base, self.X, self.y, self.local, seed)
        self.last_train_s = time.perf_counter() - t0
        assert self.feedback is not None
        # What rounding leaves out now is added to the next delta (error feedback).
        rng = np.random.default_rng(seed + 1)  # stochastic rounding, reproducible per round
        delta = new - base
        if self.attack is not None and action.round >= self.attack.from_round:
            delta = poison_delta(self.attack, delta, np.random.default_rng(seed + 2))
        made = upload_body(
            self.secure, action.round, delta, len(self.y), self.codec, self.feedback, rng
        )
        if made is None:
            return None
        header = EnvelopeHeader(
            swarm=self.cfg.swarm,
            round=action.round,
            node=self.cfg.node_id,
            base_hash=action.base_hash,
            codec=made[1],
            n_params=self.holder.spec.n_params,
            n_samples=len(self.y),
            flags=made[2] | (FLAG_SEALED if sealing else 0),
            epoch=sealing[0] if sealing else None,
        )
        frame = encode_envelope(
            header,
            made[0],
            sign=None if self.security == "none" else self.key.sign,
            data_key=sealing[1] if sealing else None,
        )
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.feedback.save(self.cfg.state_dir / RESIDUAL_FILE)
        try:
            self.own_delta.keep(action.round, frame)  # before it is committed: see resend.py
        except OSError as exc:
            log.warning("round %d: cannot keep our delta (%s); sitting it out", action.round, exc)
            return None
        sha = hashlib.sha256(frame).hexdigest()
        assert self.inbox is not None
        self.inbox.offer(frame, action.round, self.cfg.node_id)  # our own, without the echo
        topic = self.topics.delta(action.round, self.cfg.node_id)
        self.sender.publish(topic, frame, qos=1)
        self.own_delta.sent(action.round, topic, frame, time.monotonic())
        took, size = self.last_train_s, len(frame)
        log.info("round %d: trained in %.2f s, published %d bytes", action.round, took, size)
        self.last_accuracy = round(float(metrics["accuracy"]), 6)
        summary = {
            "loss": round(float(metrics["loss"]), 6),
            "accuracy": round(float(metrics["accuracy"]), 6),
            "train_s": round(self.last_train_s, 6),
            "envelope_bytes": len(frame),
            "codec": self.codec.codec_id,
            **self.val.report(self.holder.spec, base, self.holder.round),  # the base's score
        }
        return P.TrainingDone(action.round, sha, len(self.y), summary)

    def _merge(self, action: P.Merge) -> P.MergeDone | P.MergeFailed:
        try:
            cand = self.merge_round(action)
        except KeyError as exc:  # reveals on their way are no news (node/secure_rounds.py)
            (log.debug if isinstance(exc, RevealsPending) else log.warning)(
                "round %d: cannot merge: %s", action.round, exc
            )
            return P.MergeFailed(action.round, str(exc))
        return P.MergeDone(action.round, cand.model_hash, cand.state_hash, cand.update_sha256)

    def _submit(self, action: P.Append) -> None:
        ts = self.stamp_ms()  # the ledger's time: the coordinator refuses one far from its own
        tx = make_tx(self.key, self.cfg.swarm, action.kind, self.cfg.node_id, action.payload, ts)
        payload = Submission(tx.to_dict()).encode()
        self.mqtt.publish(self.topics.ledger_submit(), payload, qos=1)
        self.submissions.sent(tx.tx_id, payload, time.monotonic())
        if action.kind == "delta_commit":
            p = action.payload
            self.own_commits.committed(p["round"], tx.tx_id, p["envelope_sha256"])

    def _answer(self, ack: Ack) -> None:
        self.mqtt.publish(
            self.topics.fleet_ack(self.cfg.node_id), ack.signed(self.key.sign).encode(), qos=1
        )

    def _telemetry(self, rnd: int) -> None:
        self._telemetry_at = time.monotonic()
        values: dict[str, Any] = {"train_s": round(self.last_train_s, 6), "round": rnd}
        if self.last_accuracy is not None:
            values["accuracy"] = self.last_accuracy  # local, on its own data
        values["paused"] = 1 if self.state == "paused" else 0
        values["peer_deltas"] = self.peer_deltas
        values["commits_proven"] = self.own_commits.proven  # rows checked (node/own_commit.py)
        values.update(self.val.telemetry() | self.device.telemetry())  # validation, gate
        self.publish_telemetry(rnd, values)
