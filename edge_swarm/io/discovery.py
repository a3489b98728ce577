"""Zeroconf (mDNS / DNS-SD) on the clinic LAN: advertise this node, browse the swarm's services.

How it works
------------
One ``Discovery`` per process owns one python-zeroconf instance (its own threads). It
registers this process's adverts (``advertise``; ``update`` changes their TXT, e.g. an
agent's round) and browses the three service types of ``swarm.adverts``. Every browser
event turns the service into an ``Advert`` (TXT parsed by ``swarm.adverts.parse_txt``) kept
by name, and calls ``on_change`` — from zeroconf's thread, so the owner hands the work to its
own loop (``NodeRuntime.call_soon``). Which adverts to trust is not decided here: that is
``swarm.adverts.choose``, a pure function over ``adverts()``.

``interfaces``: the addresses to send and listen on (``["127.0.0.1"]`` for a loopback-only
test, a namespace's address in the netns tests); None means every IPv4 interface. Only IPv4:
link-local IPv6 answers add nothing on a clinic LAN and slow resolution down.

Invariants
----------
- Nothing from the network raises out of a zeroconf callback: a service that cannot be
  resolved in time, or whose TXT is malformed, is logged (rate-limited) and left out.
- ``close`` unregisters our adverts (a goodbye packet, so peers forget them at once) and
  stops zeroconf's threads; it is idempotent.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from edge_swarm.swarm.adverts import SERVICE_TYPES, Advert, AdvertError, parse_txt

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT_MS = 3000  # how long one service's SRV/TXT/A lookup may take
MAX_ADVERTS = 4096  # adverts kept; a LAN flooding us with services cannot grow this further


def _all_ipv4() -> list[str]:
    import ifaddr  # zeroconf's own dependency for listing interfaces

    return [str(ip.ip) for a in ifaddr.get_adapters() for ip in a.ips if ip.is_IPv4]


def lan_addresses(interfaces: list[str] | None = None) -> list[str]:
    """The IPv4 addresses to advertise: ``interfaces`` if given, else every non-loopback
    address of this host (loopback only if there is nothing else)."""
    if interfaces:
        return list(interfaces)
    found = [a for a in _all_ipv4() if not ipaddress.ip_address(a).is_loopback]
    return found or ["127.0.0.1"]


def advertised_host(host: str, interfaces: list[str] | None) -> list[str]:
    """Where peers reach a service this host runs on ``host`` (a bind or connect address):
    a wildcard or loopback address is replaced by this host's LAN addresses."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return lan_addresses(interfaces)  # a name: advertise our addresses, not the name
    if ip.is_unspecified:
        return lan_addresses(interfaces)
    if ip.is_loopback:
        # Reachable by peers only if they are on this host too, i.e. discovery runs on
        # loopback alone: then the address is right as it is; otherwise say our LAN ones.
        lan = lan_addresses(interfaces)
        return [host] if all(ipaddress.ip_address(a).is_loopback for a in lan) else lan
    return [host]


@dataclass
class _Registration:
    info: ServiceInfo
    registered: threading.Event = field(default_factory=threading.Event)


class Discovery:
    """Advertises this node's services and keeps the adverts seen on the LAN."""

    def __init__(
        self,
        interfaces: list[str] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.interfaces = interfaces
        self.on_change = on_change
        self._zc = Zeroconf(
            interfaces=list(interfaces) if interfaces else InterfaceChoice.All,
            ip_version=IPVersion.V4Only,
        )
        self._lock = threading.Lock()
        self._adverts: dict[str, Advert] = {}
        self._mine: dict[str, _Registration] = {}
        self._browser: ServiceBrowser | None = None
        self._closed = False
        self._warned: set[str] = set()

    # -- advertising
    def advertise(
        self,
        service: str,
        instance: str,
        port: int,
        addresses: list[str],
        txt: Mapping[str, str],
    ) -> str:
        """Register ``instance`` of ``service`` in the background; returns its name (for
        ``update`` and ``withdraw``).

        Registering probes the LAN for a clash and announces, which takes zeroconf about two
        seconds: a node must not wait for that before it connects, so it runs on a thread of
        its own. A name taken by another host is changed by zeroconf (``instance (2)``)."""
        name = f"{instance}.{service}"
        info = ServiceInfo(
            service,
            name,
            port=port,
            parsed_addresses=addresses,
            properties=dict(txt),
            server=f"{instance}.local.",
        )
        reg = _Registration(info)
        with self._lock:
            self._mine[name] = reg

        def register() -> None:
            try:
                self._zc.register_service(info, allow_name_change=True)
            except Exception as exc:  # noqa: BLE001 - closed meanwhile, or a clash: log it
                if not self._closed:
                    log.warning("could not advertise %s: %s", name, exc)
                return
            reg.registered.set()
            log.info("advertising %s on %s:%d", info.name, ",".join(addresses), port)

        threading.Thread(target=register, name=f"advertise-{instance}", daemon=True).start()
        return name

    def update(self, name: str, txt: Mapping[str, str], addresses: list[str] | None = None) -> None:
        """Change the TXT (and optionally the addresses) of one of our adverts."""
        with self._lock:
            reg = self._mine.get(name)
        if reg is None or self._closed or not reg.registered.is_set():
            return  # not on the LAN yet: the next refresh says it
        old = reg.info
        info = ServiceInfo(
            old.type,
            old.name,
            port=old.port,
            parsed_addresses=addresses or old.parsed_addresses(),
            properties=dict(txt),
            server=old.server,
        )
        self._zc.update_service(info)
        reg.info = info

    def withdraw(self, name: str) -> None:
        """Unregister one of our adverts (peers are told at once)."""
        with self._lock:
            reg = self._mine.pop(name, None)
        if reg is not None and not self._closed and reg.registered.is_set():
            self._zc.unregister_service(reg.info)

    # -- browsing
    def browse(self) -> None:
        """Start following the swarm's service types (idempotent)."""
        if self._browser is None:
            self._browser = ServiceBrowser(self._zc, list(SERVICE_TYPES), handlers=[self._on_event])

    def adverts(self) -> list[Advert]:
        """A snapshot of every advert seen and not withdrawn (our own included)."""
        with self._lock:
            return list(self._adverts.values())

    def _on_event(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        # zeroconf's browser thread: resolve, parse, keep; never raise.
        try:
            if state_change is ServiceStateChange.Removed:
                with self._lock:
                    gone = self._adverts.pop(name, None) is not None
            else:
                advert = self._resolve(zeroconf, service_type, name)
                if advert is None:
                    return
                with self._lock:
                    if name not in self._adverts and len(self._adverts) >= MAX_ADVERTS:
                        return
                    self._adverts[name] = advert
                gone = True
            if gone and self.on_change is not None:
                self.on_change()
        except Exception:  # a bad service on the LAN must not end zeroconf's thread
            log.exception("discovery: error handling %s", name)

    def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> Advert | None:
        info = zeroconf.get_service_info(service_type, name, timeout=RESOLVE_TIMEOUT_MS)
        if info is None:
            self._warn_once(name, "did not resolve in time")
            return None
        try:
            txt = parse_txt(info.properties or {})
        except AdvertError as exc:
            self._warn_once(name, f"malformed TXT: {exc}")
            return None
        return Advert(
            service=service_type,
            name=name,
            addresses=tuple(info.parsed_addresses(IPVersion.V4Only)),
            port=int(info.port or 0),
            txt=txt,
            seen_at=time.monotonic(),
        )

    def _warn_once(self, name: str, why: str) -> None:
        key = f"{name}:{why}"
        if key not in self._warned and len(self._warned) < MAX_ADVERTS:
            self._warned.add(key)
            log.warning("discovery: ignoring %s: %s", name, why)

    def close(self) -> None:
        """Withdraw our adverts and stop zeroconf (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._browser is not None:
            self._browser.cancel()
        try:
            self._zc.unregister_all_services()
        finally:
            self._zc.close()
