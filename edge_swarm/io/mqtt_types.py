"""The values that cross the MQTT adapter's API (``io/mqtt.py``): what it delivers, what it is
configured with, and what it reports.

- ``Message``: a received message, converted from paho's type at the boundary.
- ``Will``: the last will the broker publishes if the client vanishes without DISCONNECT.
- ``TlsSettings``: TLS towards the broker — trust exactly the swarm CA's file, TLS 1.2 or
  later, the broker's name checked against its certificate, optionally a client
  certificate. ``TlsSettings.context()`` builds the ``SSLContext`` and raises ValueError
  naming the file that cannot be loaded.
- ``ConnectFailure``: why the last connection attempt failed, and whether a retry can cure it.
- ``MqttStats``: a snapshot of a client's counters.

Frozen dataclasses; no network, no threads.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field

__all__ = ["ConnectFailure", "Message", "MqttStats", "TlsSettings", "Will"]


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
