"""Chunked messages through real brokers (amqtt and Mosquitto) on loopback.

The sender mangles its own chunk stream — duplicates, reorders, drops one — and the
receiver must ask for the missing chunk on the resend topic and get the exact message once.
No sleeps: the test thread is the owner loop (as in ``runtime.py``): paho's threads only put
messages on a queue, and every wait is bounded.
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_swarm.io.broker import EmbeddedBroker, MosquittoBroker, find_mosquitto
from edge_swarm.io.chunked import (
    DEFAULT_MAX_PACKET,
    ChunkedReceiver,
    ChunkedSender,
    publish_overhead,
    resend_topic_for,
)
from edge_swarm.io.mqtt import Message, MqttClient
from edge_swarm.swarm.chunking import Reassembler
from edge_swarm.swarm.topics import TopicKind, Topics

pytestmark = pytest.mark.network

Broker = EmbeddedBroker | MosquittoBroker
WAIT_S = 20.0  # upper bound of every wait; the exchanges take well under a second
MB = 1024 * 1024
TOPICS = Topics("chunk-test")
SENDER = "pi-1"


class ConnectWatch:
    """An ``on_connected`` hook that lets the test wait for the n-th connection."""

    def __init__(self) -> None:
        self.count = 0
        self._cond = threading.Condition()

    def __call__(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = WAIT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count >= n, timeout)


@pytest.fixture
def make_client() -> Iterator[Callable[..., MqttClient]]:
    """Builds started, connected clients (fast reconnects); stops them all afterwards."""
    clients: list[MqttClient] = []

    def make(broker: Broker, client_id: str, inbox: Callable[[Message], None]) -> MqttClient:
        c = MqttClient(
            client_id,
            broker.host,
            broker.port,
            on_message=inbox,
            reconnect_min_s=0.1,
            reconnect_max_s=0.5,
        )
        clients.append(c)
        c.start()
        assert c.wait_connected(WAIT_S), f"{client_id} did not connect"
        return c

    yield make
    for c in clients:
        c.stop()


@pytest.fixture
def limited_mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """Mosquitto refusing packets over 256 KiB (``max_packet_size 262144``)."""
    if find_mosquitto() is None:
        if os.environ.get("EDGE_SWARM_REQUIRE_MOSQUITTO") == "1":
            pytest.fail("EDGE_SWARM_REQUIRE_MOSQUITTO=1 but the mosquitto binary is missing")
        pytest.skip("mosquitto binary not found (apt-get install mosquitto)")
    broker = MosquittoBroker(0, tmp_path / "mosquitto", extra_conf="max_packet_size 262144")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def mangle(frames: list[bytes], drop: int, seed: int = 7) -> list[bytes]:
    """The frames with chunk ``drop`` left out, three duplicated, all shuffled."""
    rng = random.Random(seed)
    kept = [f for i, f in enumerate(frames) if i != drop]
    stream = kept + rng.sample(kept, 3)
    rng.shuffle(stream)
    return stream


def exchange(
    broker: Broker, make_client: Callable[..., MqttClient], message: bytes
) -> tuple[list[bytes], ChunkedSender, ChunkedReceiver, MqttClient]:
    """Send ``message`` with one chunk dropped; run the owner loop until the receiver has it
    and a sentinel sent after two late duplicates has arrived. Returns what the receiver
    delivered, both ends, and the sender's client."""
    inbox: queue.Queue[Message] = queue.Queue()
    tx = make_client(broker, "chunk-tx", inbox.put)
    rx = make_client(broker, "chunk-rx", inbox.put)
    assert tx.subscribe(TOPICS.resend_filter(SENDER), timeout=WAIT_S)
    assert rx.subscribe(TOPICS.delta_filter(), timeout=WAIT_S)

    sender = ChunkedSender(tx, max_packet=DEFAULT_MAX_PACKET, resend_interval_s=0.5)
    receiver = ChunkedReceiver(
        Reassembler(max_bytes=16 * MB, max_messages=4, retry_after_s=0.3, give_up_after_s=10.0),
        request=lambda topic, payload: rx.publish(topic, payload, qos=1),
        resend_topic=resend_topic_for(TOPICS),
    )
    topic = TOPICS.delta(1, SENDER)
    frames = sender.prepare(topic, message)
    assert len(frames) > 1
    assert all(len(f) + publish_overhead(topic) <= DEFAULT_MAX_PACKET for f in frames)
    for f in mangle(frames, drop=len(frames) // 2):
        assert tx.publish(topic, f, qos=1)

    sentinel = b"ESWD sentinel: unframed, passes straight through"
    delivered: list[bytes] = []
    got_message, got_sentinel = threading.Event(), threading.Event()
    deadline = time.monotonic() + WAIT_S
    while not got_sentinel.is_set() and time.monotonic() < deadline:
        try:
            msg: Message | None = inbox.get(timeout=0.05)  # also paces tick()
        except queue.Empty:
            msg = None
        now = time.monotonic()
        if msg is not None:
            kind = TOPICS.parse(msg.topic).kind
            if kind == TopicKind.RESEND:
                sender.on_resend_request(msg.payload)
            elif kind == TopicKind.DELTA:
                out = receiver.feed(msg.topic, msg.payload, now)
                if out is not None:
                    delivered.append(out)
                    if out == sentinel:
                        got_sentinel.set()
                    elif not got_message.is_set():
                        got_message.set()
                        # Late duplicates, then the sentinel: in order on one topic.
                        for f in (frames[0], frames[-1]):
                            assert tx.publish(topic, f, qos=1)
                        assert tx.publish(topic, sentinel, qos=1)
        receiver.tick(now)
    assert got_message.is_set(), f"message never completed: {receiver.reassembler.stats}"
    assert got_sentinel.is_set(), "sentinel never arrived"
    assert delivered[-1] == sentinel
    return delivered[:-1], sender, receiver, tx


def check_recovered(
    delivered: list[bytes], message: bytes, sender: ChunkedSender, receiver: ChunkedReceiver
) -> None:
    assert len(delivered) == 1 and delivered[0] == message  # exact bytes, exactly once
    rs = receiver.reassembler.stats
    assert receiver.stats.requests_sent >= 1 and sender.stats.resent_chunks >= 1
    assert rs.duplicates >= 3 and rs.late_duplicates >= 2
    assert rs.completed == 1 and rs.buffered_bytes == 0 and rs.partial_messages == 0
    assert receiver.stats.bad_chunks == 0 and sender.stats.bad_requests == 0


def test_5mb_survives_duplicated_reordered_dropped_chunks(
    broker: Broker, make_client: Callable[..., MqttClient]
) -> None:
    message = os.urandom(5 * MB)
    delivered, sender, receiver, _ = exchange(broker, make_client, message)
    check_recovered(delivered, message, sender, receiver)


@pytest.mark.mosquitto
def test_256k_packet_limit_carries_5mb_in_chunks(
    limited_mosquitto: MosquittoBroker, make_client: Callable[..., MqttClient]
) -> None:
    message = os.urandom(5 * MB)
    delivered, sender, receiver, tx = exchange(limited_mosquitto, make_client, message)
    check_recovered(delivered, message, sender, receiver)
    assert tx.stats.disconnects == 0  # every chunk packet was under the limit
    assert "oversize" not in limited_mosquitto.log_path.read_text()


@pytest.mark.mosquitto
def test_256k_packet_limit_refuses_unchunked_1mb(
    limited_mosquitto: MosquittoBroker, make_client: Callable[..., MqttClient]
) -> None:
    """Observed with Mosquitto 2.0.11: the broker disconnects a client that sends a packet
    over ``max_packet_size`` ("disconnected due to oversize packet") and drops the message.
    paho keeps the unacknowledged QoS 1 PUBLISH and sends it again after every reconnect, so
    the client is disconnected again and again: one oversized publish is a disconnect loop,
    which is why large payloads must be chunked, not just retried."""
    inbox: queue.Queue[Message] = queue.Queue()
    watch = ConnectWatch()
    rx = make_client(limited_mosquitto, "big-rx", inbox.put)
    assert rx.subscribe("big/#", timeout=WAIT_S)
    tx = MqttClient(
        "big-tx",
        limited_mosquitto.host,
        limited_mosquitto.port,
        on_message=lambda m: None,
        reconnect_min_s=0.1,
        reconnect_max_s=0.2,
        on_connected=watch,
    )
    tx.start()
    try:
        assert watch.wait_for(1)
        tx.publish("big/one", os.urandom(MB), qos=1)
        assert watch.wait_for(3), "expected the broker to disconnect the client repeatedly"
    finally:
        tx.stop()
    assert tx.stats.disconnects >= 2
    assert "disconnected due to oversize packet" in limited_mosquitto.log_path.read_text()
    # Nothing of it reached the subscriber: a later small message comes, the big one never.
    small = make_client(limited_mosquitto, "small-tx", lambda m: None)
    assert small.publish("big/two", b"small", qos=1, wait=WAIT_S)
    got = inbox.get(timeout=WAIT_S)
    assert (got.topic, got.payload) == ("big/two", b"small")
    assert inbox.empty()
