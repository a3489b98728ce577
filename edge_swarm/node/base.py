"""What an agent process and a gateway process share: the event loop around the MQTT adapter,
the part of the ledger fold they both do, and the merge they both perform (the model itself
is ``node.model``).

Threads: paho's network thread only puts messages on a queue (the aiomqtt habit), and
other library threads (the Raft replica's) only put callables on it; one loop thread takes
them off, dispatches or runs them, and ticks the pure state machine. So the machines, the
ledger copy and the model are only ever touched by one thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_swarm.io.chunked import ChunkedReceiver, ChunkedSender, publish_overhead, resend_topic_for
from edge_swarm.io.mqtt import Message, MqttClient, TlsSettings, Will
from edge_swarm.node.config import NodeConfig
from edge_swarm.node.device_clock import DeviceClock
from edge_swarm.node.model import Candidate, ModelHolder
from edge_swarm.node.model_share import ModelAnswers
from edge_swarm.node.vitals import RateLimitedLog, device_vitals, peak_rss_kb
from edge_swarm.swarm.adverts import Endpoint, key_fingerprint
from edge_swarm.swarm.checkpoint import (
    Checkpoint,
    CheckpointError,
    decode_checkpoint,
    encode_checkpoint,
    is_sealed_checkpoint,
    open_checkpoint,
    parse_sealed_checkpoint,
    seal_checkpoint,
)
from edge_swarm.swarm.chunk_resend import is_whole_request, parse_whole_request
from edge_swarm.swarm.chunking import ChunkError, Reassembler, parse_chunk, split
from edge_swarm.swarm.inbox import Accepted, EnvelopeInbox, RoundView
from edge_swarm.swarm.messages import Status, Telemetry
from edge_swarm.swarm.rounds import Merge
from edge_swarm.swarm.topics import TopicError, TopicKind, Topics
from edge_swarm.trust.epochs import EpochTracker, security_mode
from edge_swarm.trust.keyring import EncryptionKey
from ledger_lite import Entry, LedgerState, SigningKey

log = logging.getLogger(__name__)

QUEUE_LIMIT = 10_000  # messages waiting for the loop; past this they are dropped and counted
STOP_PUBLISH_WAIT_S = 2.0
CHUNK_RETRY_S = 2.0  # a chunked message without progress for this long: ask for what is missing
CHUNK_GIVE_UP_S = 60.0  # ... and give it up after this long (the checkpoint recovers the node)
FOLLOW_CHECK_S = 2.0  # while disconnected, how often to ask discovery where the broker went


def enrolled_gateway_fps(state: LedgerState | None) -> frozenset[str] | None:
    """Key fingerprints of the unrevoked gateways of a ledger state (None without one)."""
    if state is None:
        return None
    return frozenset(
        key_fingerprint(m.pubkey)
        for m in state.members.values()
        if m.role == "gateway" and m.revoked_at_height is None
    )


def now_ms() -> int:
    """The wall clock in ms: the swarm's clock on a gateway, untrusted on a device."""
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Folded:
    """What ``NodeRuntime.fold_entry`` found: a data key newly held, envelopes the inbox was
    holding for a round that has just opened."""

    new_key: bool = False
    held: list[Accepted] = field(default_factory=list)


class NodeRuntime:
    """The loop of one node: MQTT in, a queue, one thread of handling, status out."""

    role = "node"

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.clock = DeviceClock()  # before the MQTT client: the last will is stamped
        self.key = SigningKey.load(cfg.key_path)
        # Loaded at start so that a key file others can read stops the node right here.
        enc_key = EncryptionKey.load(cfg.enc_key_path) if cfg.enc_key_path is not None else None
        self.epochs = EpochTracker(cfg.swarm, cfg.node_id, enc_key)
        self.security = "signed"  # until the genesis says otherwise
        self.topics = Topics(cfg.swarm)
        # Unbounded, so that a library thread handing over work never blocks; MQTT input is
        # bounded in _enqueue instead (a flood is dropped, the ledger's callbacks never are).
        self.queue: queue.Queue[Message | Callable[[], None]] = queue.Queue()
        self.stopping = threading.Event()
        self.drops = RateLimitedLog(log)
        self.round_seen = 0
        self.inbox: EnvelopeInbox | None = None  # made once the genesis is known
        self.holder: ModelHolder | None = None
        self.model_answers = ModelAnswers()
        self.state = "online"  # or "paused" by a fleet command; "offline" is the last will
        self.mqtt = MqttClient(
            client_id=f"{cfg.swarm}.{cfg.node_id}",
            host=cfg.broker.host,
            port=cfg.broker.port,
            on_message=self._enqueue,
            will=Will(self.topics.fleet_status(cfg.node_id), self._status("offline"), retain=True),
            keepalive=cfg.broker.keepalive_s,
            max_payload=cfg.max_envelope_bytes,
            tls=TlsSettings(cfg.broker.tls_ca) if cfg.broker.tls_ca is not None else None,
            username=cfg.broker.username,
            password=cfg.broker.read_password(),
            on_connected=lambda: self.call_soon(self._on_connected),
        )
        self.presence: Any = None  # presence.LanPresence, when [discovery] is on
        self._broker: Endpoint | None = None  # the discovered broker in use
        self._connects = 0
        self._follow_at = 0.0
        # Messages above the broker's packet limit travel in chunks (io/chunked.py).
        self.sender = ChunkedSender(self.mqtt, max_packet=cfg.broker.max_packet)
        self.receiver = ChunkedReceiver(
            Reassembler(
                max_bytes=2 * cfg.max_envelope_bytes,
                max_messages=64,
                retry_after_s=CHUNK_RETRY_S,
                give_up_after_s=CHUNK_GIVE_UP_S,
            ),
            request=lambda topic, payload: self.mqtt.publish(topic, payload, qos=1),
            resend_topic=resend_topic_for(self.topics),
        )
        self._model_chunks = Reassembler(
            max_bytes=2 * cfg.max_envelope_bytes,
            max_messages=4,
            retry_after_s=CHUNK_GIVE_UP_S,
            give_up_after_s=CHUNK_GIVE_UP_S,
        )

    # -- hooks for subclasses
    def setup(self) -> None:
        """Subscribe and get ready; called once connected."""

    def on_message(self, kind: str, rnd: int | None, node: str | None, msg: Message) -> None:
        """Handle one message whose topic parsed as ``kind``."""

    def on_tick(self, now: int) -> None:
        """Called after every message and at least every ``timing.tick_s``."""

    def on_delta_request(self, rnd: int, sha256: str) -> None:
        """A gateway asks for our whole envelope of round ``rnd`` with this sha256 again
        (agents answer)."""

    def ledger_state(self) -> LedgerState | None:
        """The ledger state this node has folded (None before it has one)."""
        return None

    def stamp_ms(self) -> int:
        """The timestamp for what this node signs: its ledger clock's (``device_clock``); a
        gateway, whose clock is the swarm's, never feeds it and stamps its wall clock."""
        return self.clock.stamp()

    # -- the loop
    def genesis_for_adverts(self) -> str | None:
        """The genesis hash this node advertises and expects in adverts."""
        return self.cfg.genesis_hash

    def gateway_fps(self) -> frozenset[str] | None:
        """Key fingerprints of the enrolled gateways, once the ledger says (None before)."""
        return None

    def on_reconnected(self) -> None:
        """Called on the loop after every reconnection (not the first connection)."""

    def _on_connected(self) -> None:
        self._connects += 1
        if self._connects > 1:
            self.publish_status(self.state)  # retained: a new broker (it moved) has none
            self.on_reconnected()

    def _start_presence(self) -> bool:
        """Advertise this node and, without a broker host in the config, find the broker;
        returns False if told to stop while looking."""
        from edge_swarm.node.presence import LanPresence  # zeroconf only for nodes that use it

        genesis = self.genesis_for_adverts()
        if genesis is None:
            raise RuntimeError(
                "discovery needs the swarm's genesis hash: set [node] genesis_hash in the config"
            )
        self.presence = LanPresence(
            self.cfg,
            self.role,
            self.key.public_hex,
            genesis,
            self.gateway_fps,
            lambda: self.call_soon(self._follow_broker),
        )
        self.presence.start(rnd=self.round_seen)
        if not self.cfg.discovery.find_broker:
            return True  # a configured broker wins over discovery
        found = self.presence.wait_broker(self.stopping)
        if found is None:
            return False
        self._broker = found
        self.mqtt.retarget(found.host, found.port)
        return True

    def _follow_broker(self) -> None:
        """Move to the broker discovery names now, if ours is gone from the LAN or lost."""
        if self.presence is None or not self.cfg.discovery.find_broker:
            return
        best = self.presence.choice().broker
        if best is None or (best.host, best.port) == (self.mqtt.host, self.mqtt.port):
            return
        ours = self._broker
        ours_advertised = ours is not None and any(
            a.name == ours.source and self.mqtt.host in a.addresses and a.port == self.mqtt.port
            for a in self.presence.discovery.adverts()
        )
        if ours_advertised and self.mqtt.connected:
            return  # no flapping between two good brokers
        self._broker = best
        self.mqtt.retarget(best.host, best.port)

    def run(self) -> None:
        """Connect, set up, and loop until ``stop()``; raises ``RuntimeError`` if unreachable."""
        if self.cfg.discovery.enabled and not self._start_presence():
            if self.presence is not None:
                self.presence.close()
            return  # stopped while looking for the broker
        self.mqtt.start()
        timeout = self.cfg.timing.connect_timeout_s
        if not self.mqtt.wait_connected(timeout):
            failure = self.mqtt.connect_failure
            self.mqtt.stop()
            b = self.cfg.broker
            why = f" ({failure.kind}: {failure.reason})" if failure is not None else ""
            raise RuntimeError(
                f"could not connect to the MQTT broker at {b.host}:{b.port} within "
                f"{timeout:.0f} s{why}; is it running (edge-swarm broker) and are [broker] "
                "host, port, tls_ca, username and password_file in the config right?"
            )
        try:
            self.setup()
            self.publish_status(self.state)
            while not self.stopping.is_set():
                try:
                    item = self.queue.get(timeout=self.cfg.timing.tick_s)
                except queue.Empty:
                    item = None
                if isinstance(item, Message):
                    self._dispatch(item)
                elif item is not None:
                    self._run(item)
                self.on_tick(now_ms())
                self.receiver.tick(time.monotonic())
                if self.presence is not None:
                    self._presence_tick()
        finally:
            self.shutdown()

    def stop(self) -> None:
        self.stopping.set()

    def _presence_tick(self) -> None:
        assert self.presence is not None
        self.presence.refresh("online", self.round_seen)
        now = time.monotonic()
        if not self.mqtt.connected and now - self._follow_at >= FOLLOW_CHECK_S:
            self._follow_at = now  # no advert event may come: the old one can linger
            self._follow_broker()

    def shutdown(self) -> None:
        try:
            # Bounded: a node stopping on a dead connection must not hang its service manager.
            self.publish_status("offline", wait=STOP_PUBLISH_WAIT_S)
        finally:
            self.mqtt.stop()
            if self.presence is not None:
                self.presence.close()

    def _enqueue(self, msg: Message) -> None:
        if self.queue.qsize() >= QUEUE_LIMIT:
            self.drops.drop("queue full", msg.topic)
            return
        self.queue.put_nowait(msg)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread (from any thread)."""
        self.queue.put_nowait(fn)

    def _run(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # a failing callback must not end the process either
            self.drops.error("a callback", exc, repr(fn))

    def _dispatch(self, msg: Message) -> None:
        try:
            parsed = self.topics.parse(msg.topic)
        except TopicError:
            self.drops.drop("bad topic", msg.topic)
            return
        kind = parsed.kind
        if kind == TopicKind.RESEND and parsed.round is not None:
            if not is_whole_request(msg.payload):
                self.sender.on_resend_request(msg.payload)  # chunks of a message
                return
            try:
                want, digest = parse_whole_request(msg.payload)
            except ChunkError as exc:
                self.drops.drop("bad resend request", str(exc))
                return
            if want == "model":
                self.send_model(parsed.round, digest)
            else:
                self.on_delta_request(parsed.round, digest)
            return
        if kind in (TopicKind.DELTA, TopicKind.MODEL_OFFER):
            whole = self.receiver.feed(msg.topic, msg.payload, time.monotonic())
            if whole is None:
                return  # a chunk of a message still incomplete (or a dropped one)
            msg = Message(msg.topic, whole, msg.retain, msg.qos)
        elif kind == TopicKind.MODEL_CHUNK:
            try:
                chunk = parse_chunk(msg.payload)
            except ChunkError as exc:
                self.drops.drop("bad checkpoint chunk", str(exc))
                return
            whole = self._model_chunks.add(chunk, time.monotonic(), source="checkpoint")
            if whole is None:
                return
            kind, msg = TopicKind.MODEL_LATEST, Message(msg.topic, whole, True, msg.qos)
        try:
            self.on_message(kind, parsed.round, parsed.node, msg)
        except Exception as exc:  # one bad message must never end the process
            # Rate-limited per (topic kind, exception type): a flood of one bad message
            # logs a few tracebacks, then a counted line now and then.
            self.drops.error(f"a {kind} message", exc, msg.topic)

    # -- security: the genesis's mode, key epochs, sealed checkpoints
    def set_security(self, params: dict[str, Any]) -> None:
        """Adopt the genesis's security mode; a sealed swarm needs this node's enc key."""
        self.security = security_mode(params)
        if self.security == "sealed" and self.epochs.enc_key is None:
            # Not an exception the loop would log and carry on from: the node cannot work.
            raise SystemExit(
                f"{self.cfg.node_id}: swarm {self.cfg.swarm} encrypts its deltas, and this "
                "node has no encryption key: make one with `edge-swarm keygen`, enrol its "
                "enc_pubkey, and set [node] enc_key in the config"
            )

    def make_inbox(
        self, n_params: int, public_key: Callable[[str], str | None], state: Callable[[], Any]
    ) -> EnvelopeInbox:
        """The inbox for this swarm's mode; ``state()`` is the current LedgerState (or None)."""

        def revoked(node: str) -> bool:
            current = state()
            member = current.member(node) if current is not None else None
            return member is not None and member.revoked_at_height is not None

        return EnvelopeInbox(
            self.cfg.swarm,
            n_params,
            public_key,
            self.cfg.max_envelope_bytes,
            security=self.security,
            data_key=self.epochs.key if self.security == "sealed" else None,
            revoked=revoked,
        )

    def fold_entry(self, entry: Entry, state: LedgerState) -> Folded:
        """The part of folding a ledger entry that agent and gateway share (after ``state``
        has applied it): key epochs and enrolments, and for a ``round_open`` the round's key
        epoch and the inbox's view of it."""
        p = entry.payload
        if entry.kind == "key_epoch":
            return Folded(new_key=self.epochs.on_key_epoch(p))
        if entry.kind == "enroll":
            self.epochs.on_enroll(p["node"])
        elif entry.kind == "round_open" and self.inbox is not None:
            epoch = self.epochs.on_round_open(p["round"], entry.height, state)
            self.round_seen = p["round"]
            return Folded(
                held=self.inbox.expect(RoundView(p["round"], p["base_model_hash"], epoch))
            )
        return Folded()

    def merge_round(self, action: Merge) -> Candidate:
        """Merge exactly the envelopes ``action`` names, weighted by their commits' sample
        counts, into the held model's candidate for that round. Raises KeyError while one of
        them is not in the inbox."""
        assert self.inbox is not None and self.holder is not None
        contributions = self.inbox.take(action.round, action.included, action.sample_counts)
        cand = self.holder.merge(action.round, contributions)
        self.inbox.forget_before(action.round + 1)  # replays of a merged round: refused
        return cand

    def open_checkpoint(self, payload: bytes) -> Checkpoint | None:
        """Decode a checkpoint from the network: open it if sealed (None when this node
        holds no key for its epoch yet). Raises CheckpointError for bad bytes, and for a
        plain checkpoint in a sealed swarm."""
        if not is_sealed_checkpoint(payload):
            if self.security == "sealed":
                raise CheckpointError("an unsealed checkpoint in a sealed swarm")
            return decode_checkpoint(payload)
        sealed = parse_sealed_checkpoint(payload)
        if sealed.swarm != self.cfg.swarm:
            raise CheckpointError(f"a checkpoint for swarm {sealed.swarm}")
        key = self.epochs.key(sealed.epoch)
        if key is None:
            return None
        return open_checkpoint(sealed, key)

    def wire_frame(
        self, data: bytes, rnd: int, state: LedgerState, kind: str = "checkpoint"
    ) -> bytes | None:
        """What goes on the wire for a checkpoint (or downlink update) ``data`` of round
        ``rnd``: sealed under the newest epoch in a sealed swarm (None if this node holds no
        usable key), else ``data`` itself."""
        if self.security != "sealed":
            return data
        sealing = self.epochs.sealing_key(state)
        if sealing is None:
            return None
        return seal_checkpoint(data, self.cfg.swarm, rnd, sealing[0], sealing[1], kind)

    def send_model(self, rnd: int, model_hash: str) -> None:
        """A gateway asks for the final model of round ``rnd`` (``node/model_share.py``):
        send it on ``round/{rnd}/model/{us}`` if we hold exactly that one, sealed in a sealed
        swarm as the retained checkpoint is."""
        holder, state = self.holder, self.ledger_state()
        if holder is None or state is None:
            return
        now = time.monotonic()
        if not self.model_answers.should_send(rnd, model_hash, holder.round, holder.hash, now):
            return
        ck = holder.checkpoint(self.cfg.swarm)
        wire = self.wire_frame(encode_checkpoint(ck), ck.round, state)
        if wire is None:
            return
        self.sender.publish(self.topics.model_offer(rnd, self.cfg.node_id), wire, qos=1)
        log.info("round %d: sent our copy of the final model %s, as asked", rnd, model_hash[:12])

    # -- outputs
    def ask(self, rnd: int, node: str, request: bytes) -> None:
        """Send ``node`` a request (a delta or model request) about round ``rnd``."""
        self.mqtt.publish(self.topics.resend(rnd, node), request, qos=1)

    def publish_checkpoint(self, data: bytes) -> None:
        """Publish a checkpoint retained: whole on ``model/latest`` when it fits one packet,
        else as retained chunks on ``model/chunk/{i}`` (a retained topic keeps only its last
        message, so each chunk needs a topic of its own)."""
        topic = self.topics.model_latest()
        if len(data) + publish_overhead(topic) <= self.cfg.broker.max_packet:
            self.mqtt.publish(topic, data, qos=1, retain=True)
            return
        size = self.sender.frame_size(self.topics.model_chunk(2**32 - 1))
        for i, chunk in enumerate(split(data, size)):
            self.mqtt.publish(self.topics.model_chunk(i), chunk, qos=1, retain=True)

    def _status(self, state: str) -> bytes:
        # Signed with the device key (the will too, at connect time: the broker sends it).
        status = Status(self.cfg.node_id, self.role, state, self.round_seen, self.stamp_ms())
        return status.signed(self.key.sign).encode()

    def publish_status(self, state: str, wait: bool | float = False) -> None:
        topic = self.topics.fleet_status(self.cfg.node_id)
        self.mqtt.publish(topic, self._status(state), qos=1, retain=True, wait=wait)

    def publish_telemetry(self, rnd: int, values: dict[str, Any]) -> None:
        stats = self.mqtt.stats
        base = {
            **device_vitals(self.cfg.state_dir),
            "bytes_out": stats.bytes_out,
            "bytes_in": stats.bytes_in,
            "peak_rss_kb": peak_rss_kb(),
            "drops": sum(self.drops.counts.values()) + stats.dropped_oversize,
            **{f"drop:{reason}": n for reason, n in self.drops.counts.items()},
        }
        if stats.dropped_oversize:  # refused by the MQTT adapter before any parsing
            base["drop:oversized"] = base.get("drop:oversized", 0) + stats.dropped_oversize
        replayed = self.receiver.stats.replayed  # refused by the chunk reassembler
        if replayed:
            base["drop:replayed"] = replayed
            base["drops"] += replayed
        values = {**base, **self.clock.telemetry(), **values}
        telemetry = Telemetry(self.cfg.node_id, rnd, values, self.stamp_ms())
        body = telemetry.signed(self.key.sign).encode()
        self.mqtt.publish(self.topics.fleet_telemetry(self.cfg.node_id), body, qos=1)
