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
from typing import TYPE_CHECKING, Any

from edge_swarm.io.chunked import ChunkedReceiver, ChunkedSender, resend_topic_for
from edge_swarm.io.mqtt import Message, MqttClient, TlsSettings, Will
from edge_swarm.node.config import NodeConfig
from edge_swarm.node.device_clock import DeviceClock
from edge_swarm.node.model import Candidate, ModelHolder
from edge_swarm.node.model_share import ModelAnswers
from edge_swarm.node.model_wire import ModelWire
from edge_swarm.node.vitals import RateLimitedLog, device_vitals, peak_rss_kb
from edge_swarm.swarm.adverts import Endpoint, key_fingerprint
from edge_swarm.swarm.chunk_resend import is_whole_request, parse_whole_request
from edge_swarm.swarm.chunking import ChunkError, Reassembler, parse_chunk
from edge_swarm.swarm.inbox import Accepted, EnvelopeInbox, RoundView
from edge_swarm.swarm.messages import Status, Telemetry
from edge_swarm.swarm.privacy import PrivacyPolicy
from edge_swarm.swarm.rounds import Merge
from edge_swarm.swarm.topics import TopicError, TopicKind, Topics
from edge_swarm.trust.epochs import EpochTracker, security_mode
from edge_swarm.trust.keyring import EncryptionKey
from ledger_lite import Entry, LedgerState, SigningKey

if TYPE_CHECKING:  # imported when a genesis asks for privacy: an agent without pays nothing
    from edge_swarm.node.secure_rounds import SecureRounds

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


class NodeRuntime(ModelWire):
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
        self.privacy = PrivacyPolicy()  # and its privacy mode (swarm/privacy.py)
        self.secure: SecureRounds | None = None  # node/secure_rounds.py, when it says so
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

    def on_reveal(self, rnd: int) -> None:
        """A reveal of round ``rnd`` was kept: a merge waiting for it may go on."""

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
        if kind in (TopicKind.SHARE, TopicKind.REVEAL):
            self._on_secure(kind == TopicKind.SHARE, parsed.round, parsed.node, msg.payload)
            return
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

    def _on_secure(self, share: bool, rnd: int | None, node: str | None, data: bytes) -> None:
        if self.secure is None or rnd is None or node is None:
            return
        state = self.ledger_state()
        if share:
            why = self.secure.offer_share(rnd, data)
        else:
            key = (lambda n: state.public_key(n)) if state is not None else (lambda n: None)
            why = self.secure.offer_reveal(rnd, node, data, key)
        if why:
            self.drops.drop("bad secagg " + ("share" if share else "reveal"), why)
        elif not share:
            self.on_reveal(rnd)

    # -- security: the genesis's mode, key epochs, sealed checkpoints
    def set_security(self, params: dict[str, Any]) -> None:
        """Adopt the genesis's security and privacy modes; a sealed swarm, and secure
        aggregation, need this node's enc key."""
        self.security = security_mode(params)
        self.privacy = PrivacyPolicy.from_params(params)
        enc = self.epochs.enc_key
        if self.privacy.active:
            from edge_swarm.node.secure_rounds import SecureRounds

            private = enc.private_bytes if enc is not None else None
            publish = lambda topic, body: self.mqtt.publish(topic, body, qos=1)  # noqa: E731
            self.secure = SecureRounds(
                self.cfg.node_id, self.cfg.swarm, self.privacy, private, self.key.sign, publish
            )
        if (self.security == "sealed" or self.privacy.secagg) and enc is None:
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
            if self.secure is not None:
                bits = p.get("agents_bits")
                self.secure.open_round(p["round"], entry.hash, state, entry.ts, bits)
            return Folded(
                held=self.inbox.expect(RoundView(p["round"], p["base_model_hash"], epoch))
            )
        return Folded()

    def merge_round(self, action: Merge) -> Candidate:
        """Merge exactly the envelopes ``action`` names, weighted by their commits' sample
        counts, into the held model's candidate for that round. Raises KeyError while one of
        them is not in the inbox."""
        assert self.inbox is not None and self.holder is not None
        if self.privacy.active:  # one unmasked sum, or equal weights (node/private_merge.py)
            from edge_swarm.node.private_merge import private_contributions

            contributions, weights = private_contributions(
                self.privacy, self.inbox, self.secure, action
            )
        else:
            contributions = self.inbox.take(action.round, action.included, action.sample_counts)
        cand = self.holder.merge(action.round, contributions)
        if self.privacy.active and cand.report is not None:
            cand.report["weights"] = {n: round(w, 4) for n, w in sorted(weights.items())}
        self.inbox.forget_before(action.round + 1)  # replays of a merged round: refused
        return cand

    # -- outputs
    def ask(self, rnd: int, node: str, request: bytes) -> None:
        """Send ``node`` a request (a delta or model request) about round ``rnd``."""
        self.mqtt.publish(self.topics.resend(rnd, node), request, qos=1)

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
