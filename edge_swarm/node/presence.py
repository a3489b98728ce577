"""A node on the clinic LAN: what it advertises, and which broker discovery tells it to use.

Wiring between ``io.discovery`` (zeroconf) and ``NodeRuntime``: the node advertises itself
(``_edgeswarm._tcp``: swarm, genesis, role, node id, key fingerprint, state, round); a
gateway with a configured broker also advertises that broker (``_mqtt._tcp`` or
``_secure-mqtt._tcp``), as a Mosquitto site needs someone to. A node without a broker host
in its config waits here until ``swarm.adverts.choose`` names one, and is told when the
choice moves. Which adverts are trusted is ``choose``'s business alone (pure, tested on its
own); this module only logs what it rejected, once per advert and reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edge_swarm.io.discovery import Discovery, advertised_host, lan_addresses
from edge_swarm.node.config import NodeConfig
from edge_swarm.swarm.adverts import (
    SERVICE_MQTT,
    SERVICE_MQTTS,
    SERVICE_SWARM,
    Choice,
    Endpoint,
    Expectation,
    broker_txt,
    choose,
    key_fingerprint,
    swarm_txt,
)

log = logging.getLogger(__name__)

WAIT_LOG_EVERY_S = 15.0  # how often a node still looking for its broker says so
TXT_REFRESH_S = 5.0  # at most one TXT update (state, round) per this many seconds


class LanPresence:
    """Advertises one node and follows the broker of its swarm on the LAN."""

    def __init__(
        self,
        cfg: NodeConfig,
        role: str,
        public_hex: str,
        genesis_hash: str,
        gateway_fps: Callable[[], frozenset[str] | None],
        on_change: Callable[[], None],
    ) -> None:
        self.cfg = cfg
        self.role = role
        self.fp = key_fingerprint(public_hex)
        self.genesis_hash = genesis_hash
        self.gateway_fps = gateway_fps
        self.interfaces = list(cfg.discovery.interfaces) or None
        self._changed = threading.Event()
        self._on_change = on_change
        self.discovery = Discovery(self.interfaces, on_change=self._seen)
        self._self_name: str | None = None
        self._txt_at = 0.0
        self._txt_state: tuple[str, int] | None = None
        self._logged: set[tuple[str, str]] = set()

    def _seen(self) -> None:  # zeroconf's thread
        self._changed.set()
        self._on_change()

    def start(self, state: str = "online", rnd: int = 0) -> None:
        """Browse the swarm's services and advertise this node (and a configured broker)."""
        self.discovery.browse()
        cfg = self.cfg
        self._self_name = self.discovery.advertise(
            SERVICE_SWARM,
            f"{cfg.swarm}-{cfg.node_id}",
            0,  # nothing to connect to: the advert says who is here, not where to talk
            lan_addresses(self.interfaces),
            self._txt(state, rnd),
        )
        self._txt_state = (state, rnd)
        if self.role == "gateway" and not cfg.discovery.find_broker:
            b = cfg.broker
            self.discovery.advertise(
                SERVICE_MQTTS if b.tls_ca is not None else SERVICE_MQTT,
                f"{cfg.swarm}-broker-{cfg.node_id}",
                b.port,
                advertised_host(b.host, self.interfaces),
                broker_txt(cfg.swarm, self.genesis_hash, self.fp),
            )

    def _txt(self, state: str, rnd: int) -> dict[str, str]:
        cfg = self.cfg
        return swarm_txt(
            cfg.swarm, self.genesis_hash, self.role, cfg.node_id, self.fp, state=state, round=rnd
        )

    def refresh(self, state: str, rnd: int) -> None:
        """Say this node's state and round in its advert (rate-limited)."""
        now = time.monotonic()
        if self._self_name is None or self._txt_state == (state, rnd):
            return
        if now - self._txt_at < TXT_REFRESH_S and state == "online":
            return
        self._txt_at, self._txt_state = now, (state, rnd)
        self.discovery.update(self._self_name, self._txt(state, rnd))

    def choice(self) -> Choice:
        """What the LAN offers this node now; rejected adverts are logged once each."""
        want = Expectation(
            self.cfg.swarm,
            self.genesis_hash,
            gateway_fps=self.gateway_fps(),
            tls=self.cfg.broker.tls_ca is not None,
        )
        result = choose(self.discovery.adverts(), want)
        for r in result.rejected:
            key = (r.advert.name, r.reason)
            if key in self._logged or len(self._logged) > 4096:
                continue
            self._logged.add(key)
            level = logging.WARNING if r.warn else logging.DEBUG
            log.log(level, "discovery: ignoring %s (%s)", r.advert.name, r.reason)
        return result

    def wait_broker(self, stopping: threading.Event) -> Endpoint | None:
        """Block until discovery names a broker of this swarm (None if ``stopping`` is set)."""
        started = last_log = time.monotonic()
        while not stopping.is_set():
            self._changed.clear()
            broker = self.choice().broker
            if broker is not None:
                log.info(
                    "found the broker of swarm %s at %s:%d (%s) in %.2f s",
                    self.cfg.swarm,
                    broker.host,
                    broker.port,
                    broker.source,
                    time.monotonic() - started,
                )
                return broker
            if time.monotonic() - last_log >= WAIT_LOG_EVERY_S:
                last_log = time.monotonic()
                log.info(
                    "still looking for a broker of swarm %s (genesis %s) on the LAN",
                    self.cfg.swarm,
                    self.genesis_hash[:12],
                )
            self._changed.wait(1.0)  # an advert event, or a second: re-check stopping
        return None

    def close(self) -> None:
        self.discovery.close()
