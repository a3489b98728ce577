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
  an offline device. Subscriptions are remembered here and sent again on every CONNACK, so
  reconnects keep them without a broker-side session. What was published while a subscriber
  was away is recovered by the protocol (retained checkpoint, ledger), not by the broker.
- **Publishing.** QoS 1 messages published while disconnected stay queued in paho (up to
  ``max_queued``) and go out after the reconnect; QoS 0 ones are dropped.
- **Receiving.** paho's message is converted at the boundary to a frozen ``Message``.
  Oversized payloads (``> max_payload``) and topics that are not UTF-8 are dropped and
  counted; an exception raised by the ``on_message`` handler is caught, logged (rate
  limited) and counted, so it never kills paho's thread. The handler runs on paho's thread:
  it must be quick and must not block (hand the message to a queue).
- **Security.** Optional TLS (``TlsSettings``: trust exactly the swarm CA's file, TLS 1.2 or
  later, the broker's name checked against its certificate, optionally a client
  certificate) and username/password. A connection that can never succeed as configured,
  a CONNACK refusing the credentials ("not authorized", "bad user name or password", "client
  identifier not valid") or a broker certificate that does not verify, is not retried
  forever in silence: the client logs an error once, stops reconnecting (unless
  ``retry_refused``), ``wait_connected`` returns False at once and ``connect_failure`` says
  why. Network failures (broker down, connection reset) are retried as before, and are
  also reported by ``connect_failure`` until the next successful connection.
- **Shutdown.** ``stop()`` sends DISCONNECT (which tells the broker to discard the will) and
  joins paho's thread.
- **Counters.** ``stats`` is a snapshot; bytes count payload + UTF-8 topic bytes of messages
  accepted for sending (``*_out``) and of every message received (``*_in``, dropped ones
  included: they crossed the wire).

Misuse by our own code (bad arguments, waiting on paho's own thread) raises ValueError or
RuntimeError; trouble from the network is logged and counted, never raised.
"""

from __future__ import annotations

import logging
import os
import queue
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

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

WARN_INTERVAL_S = 10.0
"""At most one warning per reason in this many seconds, in seconds."""


class _PahoNoiseFilter(logging.Filter):
    """Drops paho 2.2's spurious ERROR "Client is not connected" logged after every clean
    disconnect (its loop runs once more on the closed socket)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_paho_log = logging.getLogger(f"{__name__}.paho")
_paho_log.addFilter(_PahoNoiseFilter())


@dataclass(frozen=True)
class Message:
    """A message received from the broker, converted from paho's type at the boundary."""

    topic: str
    payload: bytes = field(repr=False)
    retain: bool = False
    qos: int = 0


@dataclass(frozen=True)
class Will:
    """The last will: what the broker publishes if this client vanishes without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class TlsSettings:
    """TLS towards the broker.

    ``ca_file`` holds the only certificate authorities trusted for the broker (the swarm
    CA): the system's public CAs are not loaded. ``certfile``/``keyfile`` (both or neither)
    present a client certificate to a broker that requires one. ``check_hostname`` checks the
    host dialled against the broker certificate's names; turn it off only for a broker
    reached under a name its certificate does not list (the CA is still checked).
    """

    ca_file: str | os.PathLike[str]
    certfile: str | os.PathLike[str] | None = None
    keyfile: str | os.PathLike[str] | None = None
    check_hostname: bool = True

    def __post_init__(self) -> None:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("TlsSettings: give both certfile and keyfile, or neither")

    def context(self) -> ssl.SSLContext:
        """A client ``SSLContext`` (TLS >= 1.2, certificate required) for these settings.

        Raises ValueError naming the file when a CA, certificate or key cannot be loaded.
        """
        try:
            ctx = ssl.create_default_context(cafile=os.fspath(self.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the TLS CA file {self.ca_file}: {exc}") from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = self.check_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
        if self.certfile is not None and self.keyfile is not None:
            try:
                ctx.load_cert_chain(os.fspath(self.certfile), os.fspath(self.keyfile))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"cannot load the TLS client certificate {self.certfile} / key "
                    f"{self.keyfile}: {exc}"
                ) from None
        return ctx


@dataclass(frozen=True)
class ConnectFailure:
    """Why the last connection attempt failed.

    ``kind`` is ``"refused"`` (the broker's CONNACK refused us), ``"tls"`` (the TLS
    handshake failed) or ``"network"`` (no TCP connection, or it closed before CONNACK).
    ``permanent`` failures cannot succeed without a change of configuration (credentials,
    CA): the client stops retrying them unless built with ``retry_refused=True``.
    """

    kind: str
    reason: str
    permanent: bool

    def __str__(self) -> str:
        return f"{self.kind}: {self.reason}"


# CONNACK reason codes (paho maps MQTT 3.1.1's return codes onto MQTT 5's) that no retry can
# cure: client identifier not valid, bad user name or password, not authorized, banned,
# bad authentication method.
_PERMANENT_CONNACK = frozenset({0x85, 0x86, 0x87, 0x8A, 0x8C})


@dataclass(frozen=True)
class MqttStats:
    """A snapshot of a client's counters.

    ``bytes_*`` count payload + UTF-8 topic bytes; ``connects`` counts successful CONNACKs.
    """

    bytes_out: int = 0
    bytes_in: int = 0
    msgs_out: int = 0
    msgs_in: int = 0
    dropped_oversize: int = 0
    dropped_invalid: int = 0
    dropped_queue_full: int = 0
    handler_errors: int = 0
    connects: int = 0
    disconnects: int = 0
    connect_failures: int = 0


class _Counters:
    """Thread-safe counters behind ``MqttClient.stats``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(MqttStats.__dataclass_fields__, 0)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, value in deltas.items():
                self._values[name] += value

    def snapshot(self) -> MqttStats:
        with self._lock:
            return MqttStats(**self._values)


class _RateLimitedWarning:
    """Logs the first warning of each reason, then at most one per interval with a count."""

    def __init__(self, logger: logging.Logger, interval_s: float = WARN_INTERVAL_S) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, reason: str, msg: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(reason)
            if last is not None and now - last < self._interval_s:
                self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
                return
            self._last[reason] = now
            suppressed = self._suppressed.pop(reason, 0)
        more = f" ({suppressed} more since the last warning)" if suppressed else ""
        self._logger.warning(msg + more, *args, exc_info=exc_info)


@dataclass
class _Subscription:
    """A remembered subscription; ``done`` is set when the current connection's SUBACK came."""

    qos: int
    done: threading.Event = field(default_factory=threading.Event)
    granted: bool = False


class MqttClient:
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

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, topic_filter: str, qos: int = 1, timeout: float | None = 5.0) -> bool:
        """Subscribe now (if connected) and again after every reconnect.

        Waits up to ``timeout`` seconds (``None`` or 0: no wait) for the broker's SUBACK.
        Returns True if the broker granted the subscription on the current connection.
        The subscription is remembered either way. Raises ValueError on a bad filter or qos.
        """
        _check_filter(topic_filter)
        _check_qos(qos)
        with self._lock:
            sub = self._subs.get(topic_filter)
            if sub is None or sub.qos != qos:
                sub = _Subscription(qos)
                self._subs[topic_filter] = sub
                if self._is_connected:
                    self._send_subscribe_locked([topic_filter])
        return self._wait_sub(sub, timeout)

    def wait_subscribed(self, topic_filter: str, timeout: float | None = None) -> bool:
        """Wait until the broker has granted ``topic_filter`` on the current connection.

        ``timeout`` None waits forever. Raises ValueError if ``topic_filter`` was never
        subscribed, RuntimeError when called on paho's network thread.
        """
        with self._lock:
            sub = self._subs.get(topic_filter)
        if sub is None:
            raise ValueError(f"not subscribed to {topic_filter!r}")
        if self._on_network_thread():
            raise RuntimeError("cannot wait for a SUBACK on paho's network thread")
        sub.done.wait(timeout)
        return sub.done.is_set() and sub.granted

    def unsubscribe(self, topic_filter: str) -> None:
        """Forget a subscription and unsubscribe if connected."""
        with self._lock:
            if self._subs.pop(topic_filter, None) is None:
                return
            connected = self._is_connected
        if connected:
            self._client.unsubscribe(topic_filter)

    def _wait_sub(self, sub: _Subscription, timeout: float | None) -> bool:
        if timeout and not self._on_network_thread():
            sub.done.wait(timeout)
        return sub.done.is_set() and sub.granted

    def _send_subscribe_locked(self, filters: list[str]) -> None:
        # Called with self._lock held, so the SUBACK handler (which takes the lock) cannot
        # look up the mid before it is recorded. paho's subscribe() only takes its own
        # short-lived packet locks, never one it holds while calling our callbacks.
        rc, mid = self._client.subscribe([(f, self._subs[f].qos) for f in filters])
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._pending[mid] = filters
        else:
            log.debug("SUBSCRIBE not sent (%s); will retry on reconnect", rc)

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

    # ------------------------------------------------------------------ paho callbacks
    # All of these run on paho's network thread.

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            permanent = getattr(reason_code, "value", None) in _PERMANENT_CONNACK
            self._failed(ConnectFailure("refused", f"broker refused: {reason_code}", permanent))
            return
        with self._lock:
            self._failure = None
            self._is_connected = True
            self._pending.clear()
            for sub in self._subs.values():
                sub.done.clear()
            if self._subs:
                self._send_subscribe_locked(list(self._subs))
        self._counters.add(connects=1)
        self._connected.set()
        self._settled.set()
        log.info("connected to %s:%d as %s", self.host, self.port, self.client_id)
        if self._on_connected_hook is not None:
            try:
                self._on_connected_hook()
            except Exception:
                log.exception("on_connected hook failed")

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        was_connected = self._mark_disconnected()
        if was_connected:
            self._counters.add(disconnects=1)
            if not self._stopped and not self._retargeting:
                self._warn.warn("disconnect", "lost the broker connection: %s", reason_code)
        elif not self._stopped and not self._gave_up and not self._retargeting:
            with self._lock:
                refused = self._failure is not None and self._failure.kind == "refused"
            if not refused:  # a refusal is the better reason; the broker then hangs up
                why = f"connection closed before CONNACK ({reason_code})"
                self._failed(ConnectFailure("network", why, False))

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        # paho calls this inside its ``except OSError`` around the connection attempt, so the
        # exception that made the attempt fail is the one being handled.
        exc = sys.exc_info()[1]
        if isinstance(exc, ssl.SSLCertVerificationError):
            why = f"the broker's certificate did not verify: {exc.verify_message or exc}"
            failure = ConnectFailure("tls", why, True)
        elif isinstance(exc, ssl.SSLError):
            failure = ConnectFailure("tls", f"TLS handshake failed: {exc}", False)
        else:
            failure = ConnectFailure("network", f"cannot connect: {exc}", False)
        self._failed(failure)

    def _failed(self, failure: ConnectFailure) -> None:
        """Record a failed attempt; on a permanent one, give up unless told to retry."""
        with self._lock:
            self._failure = failure
        self._counters.add(connect_failures=1)
        where = f"{self.host}:{self.port}"
        if not failure.permanent or self._retry_refused:
            self._warn.warn(f"connect:{failure.kind}", "cannot connect to %s: %s", where, failure)
            return
        self._gave_up = True
        log.error("cannot connect to %s as %s: %s; not retrying", where, self.client_id, failure)
        self._client.disconnect()  # ends paho's loop: no more reconnects
        self._settled.set()

    def _mark_disconnected(self) -> bool:
        with self._lock:
            was = self._is_connected
            self._is_connected = False
            self._pending.clear()
            for sub in self._subs.values():
                sub.done.clear()
                sub.granted = False
        self._connected.clear()
        if not self._gave_up:
            self._settled.clear()
        return was

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        with self._lock:
            filters = self._pending.pop(mid, [])
            for f, rc in zip(filters, reason_codes, strict=False):  # short SUBACK: peer's fault
                sub = self._subs.get(f)
                if sub is None:
                    continue
                sub.granted = not rc.is_failure
                sub.done.set()
                if rc.is_failure:
                    self._warn.warn(f"suback:{f}", "broker refused subscription %s: %s", f, rc)

    def _on_message(self, client: paho.Client, userdata: Any, m: paho.MQTTMessage) -> None:
        size = len(m.payload)
        try:
            topic = m.topic
        except UnicodeDecodeError:
            self._counters.add(msgs_in=1, bytes_in=size, dropped_invalid=1)
            self._warn.warn("topic", "dropped a message whose topic is not UTF-8")
            return
        self._counters.add(msgs_in=1, bytes_in=size + len(topic.encode()))
        if size > self.max_payload:  # checked before copying: no extra copy of a flood
            self._counters.add(dropped_oversize=1)
            self._warn.warn(
                "oversize",
                "dropped a %d-byte message on %s (limit %d)",
                size,
                topic,
                self.max_payload,
            )
            return
        payload = bytes(m.payload)
        msg = Message(topic=topic, payload=payload, retain=bool(m.retain), qos=int(m.qos))
        try:
            self._handler(msg)
        except Exception:
            self._counters.add(handler_errors=1)
            self._warn.warn("handler", "message handler failed on %s", topic, exc_info=True)

    # ------------------------------------------------------------------ helpers

    def _on_network_thread(self) -> bool:
        return threading.current_thread() is getattr(self._client, "_thread", None)

    def _check_payload(self, payload: bytes) -> None:
        if len(payload) > self.max_payload:
            raise ValueError(f"payload of {len(payload)} bytes exceeds {self.max_payload}")


def handle_until(
    inbox: queue.Queue[Message],
    handle: Callable[[Message], None],
    predicate: Callable[[], bool],
    timeout: float,
) -> bool:
    """For a client reading its messages off a queue on its own thread (the observer, the
    operator's fleet client): handle them until ``predicate()`` holds, at most ``timeout``
    seconds; returns whether it held. ``predicate`` is re-checked at least every 0.2 s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            msg = inbox.get(timeout=min(left, 0.2))
        except queue.Empty:
            continue
        handle(msg)
    return True


def _check_qos(qos: int) -> None:
    if qos not in (0, 1, 2) or isinstance(qos, bool):
        raise ValueError(f"qos must be 0, 1 or 2, got {qos!r}")


def _check_filter(topic_filter: str) -> None:
    if not isinstance(topic_filter, str) or not topic_filter:
        raise ValueError(f"invalid topic filter: {topic_filter!r}")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or (
            "+" in level and level != "+"
        ):
            raise ValueError(f"invalid topic filter: {topic_filter!r}")


def _wait_seconds(wait: bool | float) -> float | None:
    if wait is True:
        return DEFAULT_WAIT_S
    if wait is False or wait is None:
        return None
    if wait <= 0:
        raise ValueError("wait must be True, False or a positive number of seconds")
    return float(wait)
