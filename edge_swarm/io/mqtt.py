"""The MQTT adapter: a small, owned wrapper around paho-mqtt 2.x (aiomqtt's habits, threaded).

How it works
------------
paho runs its network loop on one daemon thread (``loop_start``). This module owns every
policy around it:

- **Connection.** MQTT 3.1.1 (both amqtt and Mosquitto speak it), ``connect_async`` then
  ``loop_start``; paho reconnects on its own with exponential backoff between
  ``reconnect_min_s`` and ``reconnect_max_s`` (``reconnect_delay_set``), also when the very
  first connection fails.
- **Sessions.** ``clean_session=True`` by default, on purpose: amqtt drops the session of
  every anonymous client as soon as it disconnects (so a persistent session buys nothing
  there), and on Mosquitto a persistent session would queue stale deltas of past rounds for
  an offline device. Subscriptions are remembered by the client and sent again on every
  CONNACK, so reconnects keep them without a broker-side session. What was published while
  a subscriber was away is recovered by the protocol (retained checkpoint, ledger), not by
  the broker.
- **Publishing.** QoS 1 messages published while disconnected stay queued in paho (up to
  ``max_queued``) and go out after the reconnect; QoS 0 ones are dropped.
- **Receiving.** paho's message is converted at the boundary to a frozen ``Message``;
  oversized payloads, topics that are not UTF-8 and handler exceptions are dropped, logged
  and counted, never raised on paho's thread (``_mqtt_session`` says how).
- **Security.** Optional TLS (``TlsSettings``) and username/password. A connection that can
  never succeed as configured is not retried forever in silence: the client logs an error
  once, stops reconnecting (unless ``retry_refused``), ``wait_connected`` returns False at
  once and ``connect_failure`` says why (``_mqtt_session`` tells the kinds apart).
- **Latency.** The socket sends at once (``TCP_NODELAY``): a QoS 1 client writes small
  packets back to back (a PUBACK, then the publish its handler made), and with Nagle's
  algorithm the second waited for the broker's delayed ACK, 40 ms on Linux, on every hop
  of a round (issue 20: 47 ms -> about 1 ms for a ping-pong through the embedded broker).
- **Shutdown.** ``stop()`` sends DISCONNECT (which tells the broker to discard the will) and
  joins paho's thread.
- **Counters.** ``stats`` is a snapshot; bytes count payload + UTF-8 topic bytes of messages
  accepted for sending (``*_out``) and of every message received (``*_in``, dropped ones
  included: they crossed the wire).

Misuse by our own code (bad arguments, waiting on paho's own thread) raises ValueError or
RuntimeError; trouble from the network is logged and counted, never raised.

This module holds ``MqttClient`` (construction, lifecycle, publishing) and ``handle_until``.
The values of its API (``Message``, ``Will``, ``TlsSettings``, ``ConnectFailure``,
``MqttStats``) are in ``mqtt_types``, and subscriptions, connection state and paho's
callbacks in ``_mqtt_session`` (``MqttClient``'s base class); import them all from here.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from edge_swarm.io import json_deflate
from edge_swarm.io._mqtt_session import (
    WARN_INTERVAL_S as WARN_INTERVAL_S,
)
from edge_swarm.io._mqtt_session import (
    _check_qos,
    _ClientSession,
    _Counters,
    _RateLimitedWarning,
    _Subscription,
)
from edge_swarm.io.mqtt_types import ConnectFailure, Message, MqttStats, TlsSettings, Will

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "ConnectFailure",
    "Message",
    "MqttClient",
    "MqttStats",
    "TlsSettings",
    "Will",
    "handle_until",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
"""Largest payload accepted either way by default (matches the envelope codec's default)."""

DEFAULT_WAIT_S = 10.0
"""How long ``publish(wait=True)`` waits for the broker's acknowledgement, in seconds."""


class _PahoNoiseFilter(logging.Filter):
    """Drops paho 2.2's spurious ERROR "Client is not connected" logged after every clean
    disconnect (its loop runs once more on the closed socket)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_paho_log = logging.getLogger(f"{__name__}.paho")
_paho_log.addFilter(_PahoNoiseFilter())


class MqttClient(_ClientSession):
    """One MQTT connection with owned reconnect, subscription and error policy.

    ``on_message`` is called on paho's network thread with each accepted ``Message``;
    ``on_connected`` (optional), also on that thread, after every successful (re)connection,
    once the remembered subscriptions have been sent again (their SUBACKs may still be on the
    way). Both must return quickly and must not wait on this client. Nothing happens on the
    network before ``start()``.

    ``tls`` (TlsSettings) turns on TLS; ``username``/``password`` are sent in CONNECT.
    ``retry_refused`` keeps reconnecting after a permanent failure (a device waiting for the
    broker to learn its credentials); by default the client gives up (see ``connect_failure``).
    Raises ValueError on bad arguments, including TLS files that cannot be loaded.
    """

    def __init__(
        self,
        client_id: str,
        host: str,
        port: int,
        *,
        on_message: Callable[[Message], None],
        will: Will | None = None,
        keepalive: int = 10,
        clean_session: bool = True,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
        max_queued: int = 1000,
        on_connected: Callable[[], None] | None = None,
        tls: TlsSettings | None = None,
        username: str | None = None,
        password: str | None = None,
        retry_refused: bool = False,
    ) -> None:
        if not isinstance(client_id, str) or not client_id:
            raise ValueError("client_id must be a non-empty string")
        if keepalive < 1 or max_payload < 1 or max_queued < 0:
            raise ValueError("keepalive and max_payload must be >= 1, max_queued >= 0")
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise ValueError("need 0 < reconnect_min_s <= reconnect_max_s")
        if password is not None and username is None:
            raise ValueError("a password needs a username")
        if username is not None and (not isinstance(username, str) or not username):
            raise ValueError("username must be a non-empty string")
        self.client_id = client_id
        self.host = host
        self.port = port
        self._retargeting = False
        self.keepalive = keepalive
        self.max_payload = max_payload
        self._handler = on_message
        self._on_connected_hook = on_connected
        self._counters = _Counters()
        self._warn = _RateLimitedWarning(log)
        self._lock = threading.Lock()  # guards _subs, _pending and _is_connected
        self._subs: dict[str, _Subscription] = {}
        self._pending: dict[int, list[str]] = {}  # SUBSCRIBE mid -> filters
        self._is_connected = False
        self._connected = threading.Event()
        # Set when connected or given up: what wait_connected waits for.
        self._settled = threading.Event()
        self._failure: ConnectFailure | None = None
        self._gave_up = False
        self._retry_refused = retry_refused
        self.tls = tls
        self.username = username
        self._started = False
        self._stopped = False

        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=True,
        )
        c.enable_logger(_paho_log)
        # paho's type hints say int; its backoff arithmetic works with float seconds too.
        c.reconnect_delay_set(reconnect_min_s, reconnect_max_s)  # type: ignore[arg-type]
        c.max_queued_messages_set(max_queued)
        if will is not None:
            self._check_payload(will.payload)
            c.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        if tls is not None:
            c.tls_set_context(tls.context())
        if username is not None:
            c.username_pw_set(username, password)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.on_socket_open = _send_at_once
        self._client = c

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start connecting in the background (returns at once; see ``wait_connected``)."""
        if self._started:
            raise RuntimeError("MqttClient.start() called twice")
        self._started = True
        self._client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self._client.loop_start()

    def retarget(self, host: str, port: int) -> None:
        """Connect to the broker at ``host:port`` from now on (it moved: discovery saw it).

        Drops the current connection, if any, and connects there in the background;
        subscriptions are sent again on connect, as after any reconnect. Call from the
        owner's thread, never from a callback of this client."""
        if (host, port) == (self.host, self.port) or self._stopped:
            return
        log.info("broker moved: %s:%d -> %s:%d", self.host, self.port, host, port)
        self.host, self.port = host, port
        if not self._started:
            return
        self._retargeting = True  # the disconnect below is ours: not a lost connection
        try:
            self._client.disconnect()
            self._client.loop_stop()
        finally:
            self._retargeting = False
        self._mark_disconnected()
        self._gave_up = False
        self._client.connect_async(host, port, keepalive=self.keepalive)
        self._client.loop_start()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until connected (CONNACK accepted) or ``timeout`` seconds; return whether so.

        Returns False at once when the client has given up on a permanent failure; then, or
        after a timeout, ``connect_failure`` says what went wrong (if anything did).
        """
        # Not just the first outcome: a connection that drops right after its CONNACK (amqtt
        # does that now and then under load) is retried by paho, so wait for the next one.
        deadline = None if timeout is None else time.monotonic() + timeout
        self._settled.wait(timeout)
        while not self._connected.is_set():
            if self._gave_up:
                return False
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._connected.wait(0.1 if left is None else min(left, 0.1))
        return True

    @property
    def connect_failure(self) -> ConnectFailure | None:
        """Why the last connection attempt failed; None once a connection succeeds."""
        with self._lock:
            return self._failure

    @property
    def gave_up(self) -> bool:
        """Whether the client stopped reconnecting after a permanent failure."""
        return self._gave_up

    @property
    def connected(self) -> bool:
        """Whether the client is connected right now."""
        return self._connected.is_set()

    def stop(self) -> None:
        """Disconnect cleanly (the broker discards the will) and join paho's thread.

        Idempotent; safe before ``start()``. QoS 1 messages not yet acknowledged are lost:
        publish with ``wait`` first when they matter.
        """
        if self._stopped:
            return
        self._stopped = True
        if not self._started:
            return
        self._client.disconnect()
        self._client.loop_stop()
        self._mark_disconnected()

    def __enter__(self) -> MqttClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def stats(self) -> MqttStats:
        """A consistent snapshot of the counters."""
        return self._counters.snapshot()

    # ------------------------------------------------------------------ publishing

    def publish(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview,
        qos: int = 1,
        retain: bool = False,
        wait: bool | float = False,
    ) -> bool:
        """Publish ``payload`` on ``topic``.

        ``wait``: False returns at once; True waits up to DEFAULT_WAIT_S, a number waits that
        many seconds, for the broker's PUBACK (QoS 1) or the write (QoS 0). Returns True if
        the message was accepted (sent, or queued for after a reconnect) and, when waiting,
        acknowledged in time; False if it was dropped (QoS 0 while disconnected, full queue)
        or not acknowledged in time. Raises ValueError on a bad topic, qos or oversized
        payload, RuntimeError if asked to wait on paho's own thread (it would deadlock).
        """
        data = bytes(payload)
        self._check_payload(data)
        _check_qos(qos)
        if not isinstance(topic, str) or not topic or "+" in topic or "#" in topic:
            raise ValueError(f"invalid topic to publish on: {topic!r}")
        timeout = _wait_seconds(wait)
        if timeout is not None and self._on_network_thread():
            raise RuntimeError("cannot wait for a publish on paho's network thread")
        data = json_deflate.pack(data)  # counted as sent: what the wire carries
        info = self._client.publish(topic, data, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0:
            # Queued in paho until the next connection. Mark it "in progress" so that
            # wait_for_publish waits for the PUBACK instead of raising at once.
            info.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                self._counters.add(dropped_queue_full=1)
            self._warn.warn(f"publish:{info.rc}", "publish on %s dropped: %s", topic, info.rc)
            return False
        self._counters.add(bytes_out=len(data) + len(topic.encode()), msgs_out=1)
        if timeout is None:
            return True
        try:
            info.wait_for_publish(timeout)
            return info.is_published()
        except (ValueError, RuntimeError) as exc:
            log.debug("publish on %s not completed: %s", topic, exc)
            return False

    # ------------------------------------------------------------------ helpers

    def _check_payload(self, payload: bytes) -> None:
        if len(payload) > self.max_payload:
            raise ValueError(f"payload of {len(payload)} bytes exceeds {self.max_payload}")


def _send_at_once(client: paho.Client, userdata: Any, sock: Any) -> None:
    """paho's ``on_socket_open``: no Nagle delay on this connection (see the header)."""
    with contextlib.suppress(OSError, AttributeError):  # a socket that has no such option
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def handle_until(
    inbox: queue.Queue[Message],
    handle: Callable[[Message], None],
    predicate: Callable[[], bool],
    timeout: float,
    on_error: Callable[[Message, Exception], None] | None = None,
) -> bool:
    """For a client reading its messages off a queue on its own thread (the observer, the
    operator's fleet client): handle them until ``predicate()`` holds, at most ``timeout``
    seconds; returns whether it held. ``predicate`` is re-checked at least every 0.2 s.

    An exception from ``handle`` goes to ``on_error(message, exc)`` and the loop goes on (a
    bad message must not end the client's wait); without ``on_error`` it propagates."""
    deadline = time.monotonic() + timeout
    while not predicate():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            msg = inbox.get(timeout=min(left, 0.2))
        except queue.Empty:
            continue
        try:
            handle(msg)
        except Exception as exc:
            if on_error is None:
                raise
            on_error(msg, exc)
    return True


def _wait_seconds(wait: bool | float) -> float | None:
    if wait is True:
        return DEFAULT_WAIT_S
    if wait is False or wait is None:
        return None
    if wait <= 0:
        raise ValueError("wait must be True, False or a positive number of seconds")
    return float(wait)
