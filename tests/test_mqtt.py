"""The MQTT adapter against real brokers (amqtt and Mosquitto) on loopback.

No sleeps: every wait is on an event or a condition, with a timeout.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_swarm.io.broker import (
    BrokerStartError,
    EmbeddedBroker,
    MosquittoBroker,
    find_mosquitto,
    free_port,
    port_open,
)
from edge_swarm.io.mqtt import Message, MqttClient, Will

pytestmark = pytest.mark.network

Broker = EmbeddedBroker | MosquittoBroker
WAIT_S = 10.0  # upper bound of every wait; tests normally finish far faster
REPO = Path(__file__).resolve().parents[1]


class Inbox:
    """Collects messages from a client's network thread; waits on a condition."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._cond = threading.Condition()

    def __call__(self, msg: Message) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[list[Message]], bool], timeout: float = WAIT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: pred(self.messages), timeout)

    def wait_count(self, n: int, timeout: float = WAIT_S) -> bool:
        return self.wait_for(lambda ms: len(ms) >= n, timeout)

    def wait_payload(self, payload: bytes, timeout: float = WAIT_S) -> bool:
        return self.wait_for(lambda ms: any(m.payload == payload for m in ms), timeout)


class ConnectWatch:
    """An ``on_connected`` hook that counts connections and lets a test wait for the n-th."""

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
def make_client(broker: Broker) -> Iterator[Callable[..., MqttClient]]:
    """Builds started clients of ``broker`` with fast reconnects; stops them all afterwards."""
    clients: list[MqttClient] = []

    def make(client_id: str, on_message: Callable[[Message], None] | None = None, **kw: object):
        kw.setdefault("reconnect_min_s", 0.05)
        kw.setdefault("reconnect_max_s", 0.5)
        c = MqttClient(
            client_id,
            broker.host,
            broker.port,
            on_message=on_message or (lambda m: None),
            **kw,  # type: ignore[arg-type]
        )
        clients.append(c)
        c.start()
        assert c.wait_connected(WAIT_S), f"{client_id} could not connect to {broker.url}"
        return c

    yield make
    for c in clients:
        c.stop()


def test_qos1_round_trip_200_x_20kB(make_client: Callable[..., MqttClient]) -> None:
    inbox = Inbox()
    sub = make_client("sub", inbox)
    pub = make_client("pub")
    assert sub.subscribe("es/v1/t/round/+/delta/+", qos=1)
    payloads = {f"es/v1/t/round/1/delta/n{i}": i.to_bytes(4, "little") + os.urandom(20_000 - 4)
                for i in range(200)}  # fmt: skip
    for topic, payload in payloads.items():
        assert pub.publish(topic, payload, qos=1)
    assert inbox.wait_count(200), f"only {len(inbox.messages)} of 200 arrived"
    got = {m.topic: m.payload for m in inbox.messages}
    assert got == payloads
    assert all(m.qos == 1 and not m.retain for m in inbox.messages)

    expected_bytes = sum(len(t.encode()) + len(p) for t, p in payloads.items())
    out, into = pub.stats, sub.stats
    assert (out.msgs_out, out.bytes_out) == (200, expected_bytes)
    assert (into.msgs_in, into.bytes_in) == (200, expected_bytes)
    assert into.dropped_oversize == into.handler_errors == 0


def test_subscribe_all_grants_every_filter_and_sockets_send_at_once(
    make_client: Callable[..., MqttClient],
) -> None:
    """One SUBSCRIBE for a node's start-up topics (issue 20), and no Nagle delay: a QoS 1
    client's PUBACK and its next publish used to wait 40 ms for the peer's delayed ACK."""
    import socket

    inbox = Inbox()
    sub = make_client("sub", inbox)
    pub = make_client("pub")
    filters = [f"es/v1/t/x{i}/#" for i in range(5)]
    assert sub.subscribe_all(filters)
    assert sub.subscribe_all(filters)  # nothing new: still granted, no wait
    for i in range(5):
        assert pub.publish(f"es/v1/t/x{i}/y", bytes([i]), qos=1)
    assert inbox.wait_count(5)
    assert sorted(m.payload for m in inbox.messages) == [bytes([i]) for i in range(5)]
    for client in (sub, pub):
        sock = client._client.socket()  # paho's socket: the option is ours to check
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_retained_message_reaches_a_late_subscriber(
    make_client: Callable[..., MqttClient],
) -> None:
    pub = make_client("pub")
    assert pub.publish("es/v1/t/model/latest", b"checkpoint-1", retain=True, wait=True)
    inbox = Inbox()
    late = make_client("late", inbox)
    assert late.subscribe("es/v1/t/model/latest")
    assert inbox.wait_payload(b"checkpoint-1")
    first = inbox.messages[0]
    assert first.retain and first.topic == "es/v1/t/model/latest"


_CHILD = """
import sys
from edge_swarm.io.mqtt import MqttClient, Will
host, port, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = MqttClient("doomed", host, port, on_message=lambda m: None,
               will=Will(topic, b"offline", qos=1, retain=True))
c.start()
print("ready" if c.wait_connected(10) else "failed", flush=True)
sys.stdin.read()  # block until killed
"""


def test_last_will_published_when_a_client_is_killed(
    broker: Broker, make_client: Callable[..., MqttClient]
) -> None:
    topic = "es/v1/t/fleet/status/doomed"
    inbox = Inbox()
    watcher = make_client("watcher", inbox)
    assert watcher.subscribe("es/v1/t/fleet/status/+")
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, broker.host, str(broker.port), topic],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], WAIT_S)
        assert ready and proc.stdout.readline().strip() == b"ready"
        proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the kernel just closes the socket
        proc.wait(WAIT_S)
        assert inbox.wait_payload(b"offline"), "no last will within the timeout"
        will = next(m for m in inbox.messages if m.payload == b"offline")
        assert will.topic == topic
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT_S)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def test_clean_stop_suppresses_the_will(make_client: Callable[..., MqttClient]) -> None:
    inbox = Inbox()
    watcher = make_client("watcher", inbox)
    assert watcher.subscribe("es/v1/t/fleet/status/+")
    polite = make_client("polite", will=Will("es/v1/t/fleet/status/polite", b"offline"))
    polite.stop()
    marker = make_client("marker")
    assert marker.publish("es/v1/t/fleet/status/marker", b"after-stop", wait=True)
    assert inbox.wait_payload(b"after-stop")
    assert all(m.payload != b"offline" for m in inbox.messages)


def test_reconnect_after_broker_restart_resubscribes(
    broker: Broker, make_client: Callable[..., MqttClient]
) -> None:
    inbox = Inbox()
    sub_watch, pub_watch = ConnectWatch(), ConnectWatch()
    sub = make_client("sub", inbox, on_connected=sub_watch)
    pub = make_client("pub", on_connected=pub_watch)
    topic_filter = "es/v1/t/ledger/events"
    assert sub.subscribe(topic_filter)
    assert pub.publish(topic_filter, b"before", wait=True)
    assert inbox.wait_payload(b"before")

    port = broker.port
    broker.stop()
    # Published while the broker is down (or going down): paho keeps QoS 1 messages and
    # sends them after reconnecting. Retained, so a fresh subscriber can check it arrived.
    assert pub.publish("es/v1/t/model/latest", b"queued", qos=1, retain=True)
    broker.start()
    assert broker.port == port

    assert sub_watch.wait_for(2) and pub_watch.wait_for(2), "clients did not reconnect"
    assert sub.wait_subscribed(topic_filter, WAIT_S), "subscription not restored"
    assert pub.publish(topic_filter, b"after", wait=True)
    assert inbox.wait_payload(b"after")
    assert sub.stats.connects == 2 and sub.stats.disconnects >= 1

    late_inbox = Inbox()
    late = make_client("late", late_inbox)
    assert late.subscribe("es/v1/t/model/latest")
    assert late_inbox.wait_payload(b"queued"), "message queued during the outage was lost"


def test_oversized_incoming_payload_is_dropped_and_counted(
    make_client: Callable[..., MqttClient],
) -> None:
    inbox = Inbox()
    sub = make_client("small", inbox, max_payload=1000)
    pub = make_client("pub")
    assert sub.subscribe("es/v1/t/#")
    assert pub.publish("es/v1/t/big", b"x" * 2000, wait=True)
    assert pub.publish("es/v1/t/small", b"ok", wait=True)
    assert inbox.wait_payload(b"ok")
    stats = sub.stats
    assert [m.topic for m in inbox.messages] == ["es/v1/t/small"]
    assert stats.dropped_oversize == 1 and stats.msgs_in == 2
    with pytest.raises(ValueError):
        sub.publish("es/v1/t/x", b"y" * 1001)


def test_handler_exception_is_caught_and_counted(
    make_client: Callable[..., MqttClient],
) -> None:
    inbox = Inbox()

    def handler(msg: Message) -> None:
        if msg.payload == b"boom":
            raise RuntimeError("handler bug")
        inbox(msg)

    sub = make_client("sub", handler)
    pub = make_client("pub")
    assert sub.subscribe("es/v1/t/+")
    assert pub.publish("es/v1/t/a", b"boom", wait=True)
    assert pub.publish("es/v1/t/a", b"still alive", wait=True)
    assert inbox.wait_payload(b"still alive")
    assert sub.stats.handler_errors == 1
    assert sub.connected


def test_misuse_raises() -> None:
    c = MqttClient("x", "127.0.0.1", 1, on_message=lambda m: None)
    with pytest.raises(ValueError):
        c.subscribe("a/#/b")
    with pytest.raises(ValueError):
        c.publish("a/+", b"")
    with pytest.raises(ValueError):
        c.publish("a", b"", qos=3)
    with pytest.raises(ValueError):
        MqttClient("", "127.0.0.1", 1, on_message=lambda m: None)
    c.stop()  # safe before start


def test_port_in_use_is_a_clear_error(embedded_broker: EmbeddedBroker, tmp_path: Path) -> None:
    with pytest.raises(BrokerStartError, match="failed to start"):
        EmbeddedBroker("127.0.0.1", embedded_broker.port).start()
    if find_mosquitto() is not None:
        with pytest.raises(BrokerStartError, match="in use"):
            MosquittoBroker(embedded_broker.port, tmp_path).start()
        with pytest.raises(BrokerStartError, match="exited"):
            MosquittoBroker(0, tmp_path, extra_conf="no_such_option 1").start()


def test_run_embedded_broker_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    code = f"from edge_swarm.io.broker import run_embedded_broker; run_embedded_broker('127.0.0.1', {port})"  # noqa: E501
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + WAIT_S
        while not port_open("127.0.0.1", port):
            with pytest.raises(subprocess.TimeoutExpired):  # still running: wait a bit more
                proc.wait(timeout=0.02)
            assert time.monotonic() < deadline, "broker did not listen"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT_S)
        assert proc.stderr is not None
        proc.stderr.close()


@pytest.mark.mosquitto
def test_site_configuration_runs_on_mosquitto(tmp_path: Path) -> None:
    if find_mosquitto() is None:
        if os.environ.get("EDGE_SWARM_REQUIRE_MOSQUITTO") == "1":
            pytest.fail("EDGE_SWARM_REQUIRE_MOSQUITTO=1 but the mosquitto binary is missing")
        pytest.skip("mosquitto binary not found")
    site = (REPO / "broker" / "mosquitto.conf").read_text()
    store = tmp_path / "store"
    store.mkdir()
    store.chmod(0o777)  # mosquitto drops to its own user when started as root
    port = free_port()
    conf = re.sub(r"(?m)^listener 1883$", f"listener {port} 127.0.0.1", site)
    conf = re.sub(r"(?m)^persistence_location .*$", f"persistence_location {store}/", conf)
    assert f"listener {port} 127.0.0.1" in conf
    with MosquittoBroker(port, tmp_path / "run", conf=conf) as b:
        inbox = Inbox()
        c = MqttClient("site", b.host, b.port, on_message=inbox)
        c.start()
        try:
            assert c.wait_connected(WAIT_S)
            assert c.publish("es/v1/t/model/latest", b"m", retain=True, wait=True)
            assert c.subscribe("es/v1/t/model/latest")
            assert inbox.wait_payload(b"m")
        finally:
            c.stop()


def test_free_ports_are_distinct() -> None:
    from edge_swarm.io.broker import free_ports

    for _ in range(20):
        ports = free_ports(5)
        assert len(set(ports)) == 5


def test_json_travels_deflated_and_a_bad_deflated_frame_is_dropped(
    make_client: Callable[..., MqttClient],
) -> None:
    inbox = Inbox()
    sub = make_client("sub", inbox)
    pub = make_client("pub")
    assert sub.subscribe("es/v1/t/+")
    entry = b'{"author":"gateway-1","kind":"round_open","payload":{"base_model_hash":"' + (
        b"ab" * 32 + b'","round":3},"sig":"' + b"cd" * 64 + b'"}'
    )
    assert pub.publish("es/v1/t/a", entry, wait=True)
    # Not JSON, so sent as is: a frame claiming to be deflated that is not.
    assert pub.publish("es/v1/t/a", b"ESZJ\x01not a deflate stream", wait=True)
    assert pub.publish("es/v1/t/a", b"after", wait=True)
    assert inbox.wait_payload(b"after")
    assert [m.payload for m in inbox.messages] == [entry, b"after"]
    wire = len(b"es/v1/t/a")
    assert pub.stats.bytes_out < wire * 3 + len(entry) + 27 + 5  # the entry went out smaller
    assert sub.stats.bytes_in == pub.stats.bytes_out  # counted as the wire carried it
    assert sub.stats.dropped_invalid == 1 and sub.connected
