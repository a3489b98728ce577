"""The client-side session of ``MqttClient`` (``io/mqtt.py``): its subscriptions and its
connection state, kept across reconnects, and paho's callbacks that update them.

How it works
------------
``_ClientSession`` is a base class of ``MqttClient``; ``MqttClient.__init__`` sets up the
state it works on, and its ``_on_*`` methods run on paho's network thread (``loop_start``).

- **Subscriptions** are remembered here and sent again on every CONNACK, so reconnects keep
  them without a broker-side session. SUBSCRIBE is sent with the client's lock held, so the
  SUBACK handler cannot look up a packet id before it is recorded; a SUBACK sets each
  filter's ``done`` event and whether it was granted, which ``subscribe`` and
  ``wait_subscribed`` wait for. The owner's ``on_connected`` hook runs after the
  subscriptions were sent again.
- **Failures.** A CONNACK refusing the credentials ("not authorized", "bad user name or
  password", "client identifier not valid") or a broker certificate that does not verify
  cannot succeed as configured: ``_failed`` logs an error once, stops reconnecting (unless
  ``retry_refused``) and settles ``wait_connected``, which then returns False at once, and
  ``connect_failure`` says why. Network failures (broker down, connection reset) are
  retried by paho, and are also reported by ``connect_failure`` until the next successful
  connection.
- **Receiving.** paho's message is converted at the boundary to a frozen ``Message``.
  Oversized payloads (``> max_payload``) and topics that are not UTF-8 are dropped and
  counted; an exception raised by the ``on_message`` handler is caught, logged (rate
  limited) and counted, so it never kills paho's thread. The handler runs on paho's thread:
  it must be quick and must not block (hand the message to a queue).

Everything here logs to ``edge_swarm.io.mqtt``, the client's logger.
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from edge_swarm.io import json_deflate
from edge_swarm.io.mqtt_types import ConnectFailure, Message, MqttStats

# The client's logger: one name for everything the MQTT adapter logs, as before the split.
log = logging.getLogger("edge_swarm.io.mqtt")

WARN_INTERVAL_S = 10.0
"""At most one warning per reason in this many seconds, in seconds."""

# CONNACK reason codes (paho maps MQTT 3.1.1's return codes onto MQTT 5's) that no retry can
# cure: client identifier not valid, bad user name or password, not authorized, banned,
# bad authentication method.
_PERMANENT_CONNACK = frozenset({0x85, 0x86, 0x87, 0x8A, 0x8C})


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


class _ClientSession:
    """Subscriptions, connection state and paho's callbacks of ``MqttClient`` (its base class).

    The attributes below are set by ``MqttClient.__init__``; ``_lock`` guards ``_subs``,
    ``_pending``, ``_is_connected`` and ``_failure``.
    """

    client_id: str
    host: str
    port: int
    max_payload: int
    _handler: Callable[[Message], None]
    _on_connected_hook: Callable[[], None] | None
    _counters: _Counters
    _warn: _RateLimitedWarning
    _lock: threading.Lock
    _subs: dict[str, _Subscription]
    _pending: dict[int, list[str]]
    _is_connected: bool
    _connected: threading.Event
    _settled: threading.Event
    _failure: ConnectFailure | None
    _gave_up: bool
    _retry_refused: bool
    _stopped: bool
    _retargeting: bool
    _client: paho.Client

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

    def subscribe_all(self, filters: list[str], qos: int = 1, timeout: float = 5.0) -> bool:
        """Subscribe to every filter in one SUBSCRIBE packet and wait up to ``timeout``
        seconds for its one SUBACK: a node's start-up pays one round trip through the
        broker, not one per topic (issue 20). True if all were granted; as ``subscribe``."""
        for f in filters:
            _check_filter(f)
        _check_qos(qos)
        with self._lock:
            new = [f for f in filters if f not in self._subs or self._subs[f].qos != qos]
            for f in new:
                self._subs[f] = _Subscription(qos)
            if new and self._is_connected:
                self._send_subscribe_locked(new)
            subs = [self._subs[f] for f in filters]
        deadline = time.monotonic() + timeout
        return all(self._wait_sub(s, max(0.0, deadline - time.monotonic())) for s in subs)

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
        try:
            payload = json_deflate.unpack(bytes(m.payload), self.max_payload)
        except json_deflate.DeflateError as exc:
            self._counters.add(dropped_invalid=1)
            self._warn.warn("deflate", "dropped a message on %s: %s", topic, exc)
            return
        msg = Message(topic=topic, payload=payload, retain=bool(m.retain), qos=int(m.qos))
        try:
            self._handler(msg)
        except Exception:
            self._counters.add(handler_errors=1)
            self._warn.warn("handler", "message handler failed on %s", topic, exc_info=True)

    def _on_network_thread(self) -> bool:
        return threading.current_thread() is getattr(self._client, "_thread", None)


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
