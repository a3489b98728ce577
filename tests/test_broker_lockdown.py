"""The locked-down broker: a real Mosquitto started with the configuration that
``edge_swarm.site.broker_config`` writes (TLS from the swarm CA, passwords, per-device ACL).

What Mosquitto 2.0 does, and so what these tests look for:
- a PUBLISH the ACL denies is dropped in silence: the MQTT 3.1.1 publisher still gets its
  PUBACK and stays connected. So a test publishes the forbidden message, then a control
  message on an allowed topic, and checks that a subscriber who may read both receives the
  control message and never the forbidden one (one publisher, one subscriber connection:
  Mosquitto delivers in order, so a forbidden message let through would arrive first);
- the ACL file does not refuse a SUBSCRIBE (the SUBACK grants it); read access is enforced
  on every message delivered, so a test checks what arrives, not what the SUBACK said;
- a bad password gets CONNACK "not authorized"; a client that does not trust the broker's
  CA fails the TLS handshake; a user removed from the password file is disconnected when
  Mosquitto reloads its configuration (SIGHUP), and refused afterwards.

Every wait is bounded and event-driven; loopback only.
"""

from __future__ import annotations

import base64
import logging
import os
import pwd
import signal
import socket
import ssl
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from edge_swarm.io.broker import BrokerStartError, MosquittoBroker, find_mosquitto, free_port
from edge_swarm.io.mqtt import Message, MqttClient, TlsSettings
from edge_swarm.node.config import BrokerConfig, ConfigError, config_from_dict, dump_config
from edge_swarm.site.broker_config import (
    BrokerConfigError,
    BrokerFiles,
    acl_text,
    find_mosquitto_passwd,
    mosquitto_hash,
    write_broker_config,
)
from edge_swarm.swarm.topics import Topics
from edge_swarm.trust.pki import (
    CertPair,
    PkiError,
    issue_server_cert,
    load_cert,
    make_ca,
    write_private,
)

from .conftest import REQUIRE_MOSQUITTO_ENV

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

WAIT_S = 10.0  # upper bound of every wait; the tests normally finish far faster
SWARM = "clinic"
NODES = {"a1": "agent", "a2": "agent", "gw": "gateway"}
T = Topics(SWARM)
ME = pwd.getpwuid(os.getuid()).pw_name  # Mosquitto run as root would drop to "mosquitto"


# --------------------------------------------------------------------------- helpers


class Inbox:
    """Collects messages from a client's network thread; waits on a condition."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._cond = threading.Condition()

    def __call__(self, msg: Message) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def wait_payload(self, payload: bytes, timeout: float = WAIT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: any(m.payload == payload for m in self.messages), timeout
            )

    def payloads(self) -> list[bytes]:
        with self._cond:
            return [m.payload for m in self.messages]


class GiveUpWatch(logging.Handler):
    """Sets an event when ``client_id``'s MqttClient logs that it stopped reconnecting."""

    def __init__(self, client_id: str) -> None:
        super().__init__(logging.ERROR)
        self.client_id = client_id
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "not retrying" in record.getMessage() and self.client_id in record.getMessage():
            self.event.set()


def _need_mosquitto() -> None:
    if find_mosquitto() is None:
        if os.environ.get(REQUIRE_MOSQUITTO_ENV) == "1":
            pytest.fail(f"{REQUIRE_MOSQUITTO_ENV}=1 but the mosquitto binary is missing")
        pytest.skip(
            "mosquitto binary not found (apt-get install mosquitto); "
            f"set {REQUIRE_MOSQUITTO_ENV}=1 to make this a failure"
        )


@dataclass
class Site:
    """A running locked-down broker and what was generated for it."""

    files: BrokerFiles
    broker: MosquittoBroker
    clients: list[MqttClient]

    def client(
        self,
        user: str | None,
        password: str | None = None,
        *,
        inbox: Inbox | None = None,
        tls: TlsSettings | None | str = "swarm",
        client_id: str | None = None,
        **kw: object,
    ) -> MqttClient:
        """A started (not yet necessarily connected) client; stopped after the test."""
        if password is None and user is not None:
            password = self.files.credentials[user]
        settings = TlsSettings(self.files.ca_cert) if tls == "swarm" else tls
        kw.setdefault("reconnect_min_s", 0.05)
        kw.setdefault("reconnect_max_s", 0.5)
        c = MqttClient(
            client_id or f"{SWARM}.{user}",
            "127.0.0.1",
            self.files.port,
            on_message=inbox or (lambda m: None),
            tls=settings,  # type: ignore[arg-type]
            username=user,
            password=password,
            **kw,  # type: ignore[arg-type]
        )
        self.clients.append(c)
        c.start()
        return c

    def connected(self, user: str, inbox: Inbox | None = None, *subs: str) -> MqttClient:
        """A client of ``user`` that is connected and has its subscriptions granted."""
        c = self.client(user, inbox=inbox)
        assert c.wait_connected(WAIT_S), f"{user} could not connect: {c.connect_failure}"
        for f in subs:
            assert c.subscribe(f, qos=1, timeout=WAIT_S), f"{user}: SUBSCRIBE {f} not granted"
        return c


def _start_site(out: Path, **kw: object) -> tuple[BrokerFiles, MosquittoBroker]:
    """Write a configuration on a free port and start Mosquitto with it (3 tries on a race)."""
    for attempt in range(3):
        files = write_broker_config(out, SWARM, NODES, port=free_port(), run_as=ME, **kw)  # type: ignore[arg-type]
        broker = MosquittoBroker(files.port, out / "run", conf=files.conf.read_text())
        try:
            return files, broker.start()
        except BrokerStartError as exc:
            if attempt == 2 or "in use" not in str(exc):
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def make_site(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    """Starts locked-down brokers (keyword arguments go to write_broker_config)."""
    _need_mosquitto()
    sites: list[Site] = []

    def make(**kw: object) -> Site:
        files, broker = _start_site(tmp_path / f"site{len(sites)}", **kw)
        site = Site(files, broker, [])
        sites.append(site)
        return site

    yield make
    for site in sites:
        for c in site.clients:
            c.stop()
        site.broker.close()


@pytest.fixture
def site(make_site: Callable[..., Site]) -> Site:
    """A locked-down broker for agents a1 and a2, gateway gw and the operator."""
    return make_site()


# --------------------------------------------------------------------------- the broker


@pytest.mark.parametrize("hasher", ["auto", "python"])
@pytest.mark.network
@pytest.mark.mosquitto
def test_enrolled_agent_delivers_its_delta_to_the_gateway(
    make_site: Callable[..., Site], hasher: str
) -> None:
    if hasher == "auto" and find_mosquitto_passwd() is None:
        pytest.skip("mosquitto_passwd not installed: 'auto' would be the python hasher too")
    site = make_site(hasher=hasher)
    inbox = Inbox()
    site.connected("gw", inbox, T.delta_filter())
    a1 = site.connected("a1")
    assert a1.tls is not None and a1.username == "a1"
    assert a1.publish(T.delta(7, "a1"), b"a1's delta", qos=1, wait=WAIT_S)
    assert a1.publish(T.fleet_status("a1"), b"online", qos=1, retain=True, wait=WAIT_S)
    assert inbox.wait_payload(b"a1's delta")
    assert inbox.messages[0].topic == T.delta(7, "a1")


@pytest.mark.network
@pytest.mark.mosquitto
@pytest.mark.parametrize(
    ("user", "password"),
    [("a1", "wrong-password"), ("stranger", "whatever"), (None, None)],
    ids=["wrong-password", "unknown-user", "anonymous"],
)
def test_bad_credentials_are_refused_with_the_reason(
    site: Site, user: str | None, password: str | None
) -> None:
    c = site.client(user, password or None, client_id=f"{SWARM}.intruder")
    started = time.monotonic()
    assert not c.wait_connected(WAIT_S)
    assert time.monotonic() - started < WAIT_S / 2, "the refusal should end the wait at once"
    failure = c.connect_failure
    assert failure is not None and failure.kind == "refused" and failure.permanent
    assert "not authorized" in failure.reason.lower()
    assert c.gave_up and c.stats.connect_failures == 1  # refused once, not retried forever


@pytest.mark.network
@pytest.mark.mosquitto
def test_a_client_that_does_not_trust_the_swarm_ca_fails_the_handshake(
    site: Site, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(make_ca("another-swarm").cert_pem)
    c = site.client("a1", tls=TlsSettings(other_ca))
    assert not c.wait_connected(WAIT_S)
    failure = c.connect_failure
    assert failure is not None and failure.kind == "tls" and failure.permanent, failure
    assert "certificate verify failed" in failure.reason or "did not verify" in failure.reason
    assert c.gave_up

    # The same at the socket level, with the system's public CAs and no swarm CA at all.
    ctx = ssl.create_default_context()
    address = ("127.0.0.1", site.files.port)
    with (
        pytest.raises(ssl.SSLCertVerificationError),
        socket.create_connection(address, timeout=WAIT_S) as raw,
    ):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1").close()


@pytest.mark.network
@pytest.mark.mosquitto
def test_plain_mqtt_to_the_tls_listener_never_connects(site: Site) -> None:
    c = site.client("a1", tls=None)
    assert not c.wait_connected(1.0)  # bounded: nothing would ever answer in plain MQTT
    failure = c.connect_failure
    assert failure is not None and failure.kind == "network" and not failure.permanent


@pytest.mark.network
@pytest.mark.mosquitto
@pytest.mark.parametrize(
    ("topic", "retain"),
    [
        (T.delta(3, "a2"), False),  # another agent's delta: the must-show case
        (T.fleet_status("a2"), True),  # another device's (retained) status
        (T.model_latest(), True),  # a forged checkpoint
        (T.model_offer(3, "a2"), False),  # a model offered in another agent's name
        (T.ledger_events(), False),  # a forged ledger event
        (T.ledger_reply("a2"), False),  # a forged reply to another agent
        (T.fleet_cmd("all"), False),  # a command to the whole fleet
    ],
    ids=[
        "other-delta",
        "other-status",
        "model",
        "other-model-offer",
        "ledger-events",
        "other-reply",
        "fleet-cmd",
    ],
)
def test_an_agent_publishing_outside_its_topics_is_dropped_by_the_broker(
    site: Site, topic: str, retain: bool
) -> None:
    gw_inbox, op_inbox, a2_inbox = Inbox(), Inbox(), Inbox()
    site.connected("gw", gw_inbox, T.delta_filter(), T.model_offer_filter())
    site.connected("operator", op_inbox, f"{T.root}#")  # reads everything of the swarm
    site.connected("a2", a2_inbox, T.delta_filter(), T.ledger_reply("a2"), T.fleet_cmd("all"))
    a1 = site.connected("a1")

    forged = b"forged by a1"
    # Mosquitto acknowledges the forbidden PUBLISH and keeps a1 connected: the drop is silent.
    assert a1.publish(topic, forged, qos=1, retain=retain, wait=WAIT_S)
    assert a1.connected
    control = b"a1's own delta, sent after"
    assert a1.publish(T.delta(3, "a1"), control, qos=1, wait=WAIT_S)

    for inbox in (gw_inbox, op_inbox, a2_inbox):
        assert inbox.wait_payload(control)
        assert forged not in inbox.payloads()

    # Nor was a forged retained message stored for later subscribers.
    late = Inbox()
    op2 = site.client("operator", inbox=late, client_id=f"{SWARM}.operator2")
    assert op2.wait_connected(WAIT_S)
    assert op2.subscribe(f"{T.root}#", qos=1, timeout=WAIT_S)
    assert a1.publish(T.delta(4, "a1"), b"second control", qos=1, wait=WAIT_S)
    assert late.wait_payload(b"second control")
    assert forged not in late.payloads()


@pytest.mark.network
@pytest.mark.mosquitto
def test_an_agent_cannot_read_another_agents_ledger_replies(site: Site) -> None:
    a1_inbox, a2_inbox = Inbox(), Inbox()
    a2 = site.connected("a2", a2_inbox, T.ledger_reply("a2"))
    a1 = site.connected("a1", a1_inbox, T.ledger_reply("a1"))
    # Mosquitto's ACL file grants these SUBSCRIBEs; what it refuses is each delivery.
    a1.subscribe(T.ledger_reply("a2"), qos=1, timeout=WAIT_S)
    a1.subscribe(f"{T.root}#", qos=1, timeout=WAIT_S)
    a1.subscribe("#", qos=1, timeout=WAIT_S)
    gw = site.connected("gw")

    secret = b"reply meant for a2 only"
    assert gw.publish(T.ledger_reply("a2"), secret, qos=1, wait=WAIT_S)
    assert gw.publish(T.ledger_reply("a1"), b"reply for a1", qos=1, wait=WAIT_S)
    assert a2_inbox.wait_payload(secret)
    assert a1_inbox.wait_payload(b"reply for a1")
    assert secret not in a1_inbox.payloads()
    assert a1.connected and a2.connected


@pytest.mark.network
@pytest.mark.mosquitto
def test_a_device_removed_from_the_configuration_is_cut_off_on_reload(site: Site) -> None:
    inbox = Inbox()
    site.connected("gw", inbox, T.delta_filter())
    a1 = site.connected("a1")
    a2 = site.connected("a2")
    watch = GiveUpWatch(f"{SWARM}.a2")
    logger = logging.getLogger("edge_swarm.io.mqtt")
    logger.addHandler(watch)
    try:
        again = write_broker_config(
            site.files.out_dir, SWARM, {"a1": "agent", "gw": "gateway"}, port=site.files.port,
            run_as=ME,
        )  # fmt: skip
        assert set(again.kept) == {"a1", "gw", "operator"} and not again.credentials
        assert site.broker.pid is not None
        os.kill(site.broker.pid, signal.SIGHUP)  # Mosquitto reloads passwords and ACL
        assert watch.event.wait(WAIT_S), "a2 was not cut off"
    finally:
        logger.removeHandler(watch)
    failure = a2.connect_failure
    assert not a2.connected and failure is not None and failure.kind == "refused"
    # The devices still enrolled kept their passwords and carry on.
    assert a1.connected
    assert a1.publish(T.delta(1, "a1"), b"still here", qos=1, wait=WAIT_S)
    assert inbox.wait_payload(b"still here")


@pytest.mark.network
@pytest.mark.mosquitto
def test_a_device_waiting_for_enrolment_connects_once_the_broker_reloads(site: Site) -> None:
    password = "handed-to-a3-at-enrolment"
    a3 = site.client("a3", password, retry_refused=True)
    assert not a3.wait_connected(0.5)  # refused, and retried rather than given up
    assert not a3.gave_up and a3.connect_failure is not None
    assert a3.connect_failure.kind == "refused"
    write_broker_config(
        site.files.out_dir, SWARM, {**NODES, "a3": "agent"}, port=site.files.port, run_as=ME,
        passwords={"a3": password},
    )  # fmt: skip
    assert site.broker.pid is not None
    os.kill(site.broker.pid, signal.SIGHUP)
    assert a3.wait_connected(WAIT_S), a3.connect_failure
    assert a3.connect_failure is None and a3.stats.connect_failures >= 1


@pytest.mark.network
@pytest.mark.mosquitto
def test_client_certificates_when_the_broker_requires_them(make_site: Callable[..., Site]) -> None:
    site = make_site(client_certs=True)
    cert, key = site.files.client_certs["a1"]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    inbox = Inbox()
    gw_cert, gw_key = site.files.client_certs["gw"]
    gw = site.client("gw", inbox=inbox, tls=TlsSettings(site.files.ca_cert, gw_cert, gw_key))
    assert gw.wait_connected(WAIT_S), gw.connect_failure
    assert gw.subscribe(T.delta_filter(), timeout=WAIT_S)
    a1 = site.client("a1", tls=TlsSettings(site.files.ca_cert, cert, key))
    assert a1.wait_connected(WAIT_S), a1.connect_failure
    assert a1.publish(T.delta(1, "a1"), b"with a certificate", qos=1, wait=WAIT_S)
    assert inbox.wait_payload(b"with a certificate")

    # The right password without a certificate: the broker ends the TLS session.
    bare = site.client("a2")
    assert not bare.wait_connected(1.0)
    print("without a certificate:", bare.connect_failure)
    assert bare.connect_failure is not None


# --------------------------------------------------------------------------- generation


def test_generated_files_modes_and_secrets(tmp_path: Path) -> None:
    files = write_broker_config(tmp_path / "b", SWARM, NODES, hasher="python", run_as=None)
    for secret in (files.ca_key, files.server_key, files.password_file):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    assert stat.S_IMODE(files.conf.stat().st_mode) == 0o644
    assert set(files.credentials) == {"a1", "a2", "gw", "operator"}
    assert all(len(p) >= 32 for p in files.credentials.values())
    assert len(set(files.credentials.values())) == 4
    assert "credentials" not in repr(files)
    for p in files.credentials.values():
        assert p not in repr(files) and p not in files.password_file.read_text()
    lines = files.password_file.read_text().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["a1", "a2", "gw", "operator"]
    assert all(ln.split(":", 1)[1].startswith("$7$101$") for ln in lines)

    conf = files.conf.read_text()
    for needed in (
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {files.password_file.resolve()}",
        f"acl_file {files.acl_file.resolve()}",
        "listener 8883 127.0.0.1",
        "tls_version tlsv1.2",
        f"cafile {files.ca_cert.resolve()}",
        "require_certificate false",
    ):
        assert needed in conf.splitlines(), needed
    assert "\nuser " not in conf


def test_acl_gives_each_role_exactly_its_topics() -> None:
    text = acl_text("s", {"n1": "agent", "g": "gateway", "op": "operator"})
    blocks = {b.splitlines()[1]: b.splitlines()[2:] for b in text.split("\n\n")[1:] if b}
    assert blocks["user n1"] == [
        "topic write es/v1/s/round/+/delta/n1",
        "topic write es/v1/s/round/+/model/n1",
        "topic write es/v1/s/round/+/resend/+",
        "topic write es/v1/s/round/+/share/+",  # secure aggregation: seed shares, reveals
        "topic write es/v1/s/round/+/reveal/n1",
        "topic write es/v1/s/ledger/submit",
        "topic write es/v1/s/ledger/query",
        "topic write es/v1/s/fleet/status/n1",
        "topic write es/v1/s/fleet/telemetry/n1",
        "topic write es/v1/s/fleet/ack/n1",
        "topic read es/v1/s/round/+/delta/+",
        "topic read es/v1/s/round/+/resend/n1",
        "topic read es/v1/s/round/+/share/n1",
        "topic read es/v1/s/round/+/reveal/+",
        "topic read es/v1/s/model/#",
        "topic read es/v1/s/ledger/events",
        "topic read es/v1/s/ledger/bodies",
        "topic read es/v1/s/ledger/reply/n1",
        "topic read es/v1/s/fleet/cmd/n1",
        "topic read es/v1/s/fleet/cmd/all",
    ]
    gw = blocks["user g"]
    assert "topic write es/v1/s/ledger/events" in gw and "topic write es/v1/s/model/#" in gw
    assert "topic write es/v1/s/ledger/bodies" in gw
    assert "topic read es/v1/s/ledger/submit" in gw and "topic write es/v1/s/fleet/cmd/+" not in gw
    # Only gateways read the models nodes send when asked; each node sends only as itself.
    assert "topic read es/v1/s/round/+/model/+" in gw
    assert "topic read es/v1/s/round/+/reveal/+" in gw  # the committee unmasks
    assert not any("share" in line for line in gw)  # seed shares are for neighbours only
    assert "topic write es/v1/s/round/+/model/g" in gw
    assert not any("model/+" in line for line in blocks["user n1"])
    assert blocks["user op"][0] == "topic write es/v1/s/fleet/cmd/+"
    assert not any(line.startswith("pattern") for line in text.splitlines())
    # No topic line before the first user: anonymous clients get nothing.
    first = next(ln for ln in text.splitlines() if ln and not ln.startswith("#"))
    assert first.startswith("user ")


def test_rerun_keeps_the_ca_and_the_passwords_of_nodes_still_enrolled(tmp_path: Path) -> None:
    out = tmp_path / "b"
    first = write_broker_config(out, SWARM, NODES, hasher="python")
    ca_before = first.ca_cert.read_bytes()
    hashes_before = dict(ln.split(":", 1) for ln in first.password_file.read_text().splitlines())
    second = write_broker_config(
        out, SWARM, {"a1": "agent", "a3": "agent", "gw": "gateway"}, hasher="python"
    )
    assert second.ca_cert.read_bytes() == ca_before
    assert set(second.credentials) == {"a3"} and set(second.kept) == {"a1", "gw", "operator"}
    hashes = dict(ln.split(":", 1) for ln in second.password_file.read_text().splitlines())
    assert set(hashes) == {"a1", "a3", "gw", "operator"}  # a2 is gone
    assert all(hashes[u] == hashes_before[u] for u in ("a1", "gw", "operator"))
    assert "user a2" not in second.acl_file.read_text()
    third = write_broker_config(out, SWARM, NODES, hasher="python", keep_existing=False)
    assert set(third.credentials) == {"a1", "a2", "gw", "operator"}


@pytest.mark.parametrize(
    ("nodes", "kw", "match"),
    [
        ({"all": "agent"}, {}, "every node"),
        ({"a/b": "agent"}, {}, "invalid node id"),
        ({"a1": "admin"}, {}, "unknown role"),
        ({"operator": "agent"}, {}, "operator user"),
        ({}, {}, "no nodes"),
        ({"a1": "agent"}, {"tls_version": "tlsv1.1"}, "tls_version"),
        ({"a1": "agent"}, {"passwords": {"zz": "x"}}, "not in nodes"),
        ({"a1": "agent"}, {"hasher": "md5"}, "hasher"),
        ({"a1": "agent"}, {"run_as": "two words"}, "run_as"),
    ],
)
def test_bad_arguments_are_refused(
    tmp_path: Path, nodes: dict[str, str], kw: dict[str, object], match: str
) -> None:
    with pytest.raises(BrokerConfigError, match=match):
        write_broker_config(tmp_path, SWARM, nodes, **kw)  # type: ignore[arg-type]


def test_chosen_passwords_and_the_python_hash_match_mosquitto_passwd(tmp_path: Path) -> None:
    files = write_broker_config(
        tmp_path, SWARM, {"a1": "agent"}, passwords={"a1": "chosen-pw"}, operator=None
    )
    assert files.credentials == {"a1": "chosen-pw"}
    line = files.password_file.read_text().strip()
    user, hashed = line.split(":", 1)
    _, seven, iterations, salt_b64, _digest = hashed.split("$")
    assert (user, seven, iterations) == ("a1", "7", "101")
    salt = base64.b64decode(salt_b64)
    assert mosquitto_hash("chosen-pw", salt=salt, iterations=int(iterations)) == hashed


def test_server_certificate_names_and_chain(tmp_path: Path) -> None:
    files = write_broker_config(
        tmp_path, SWARM, NODES, host="0.0.0.0", hostnames=("gw.local", "192.168.1.10")
    )
    cert = load_cert(files.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(n.value) for n in san}
    assert names == {"gw.local", "192.168.1.10", "localhost", "127.0.0.1"}
    ca = load_cert(files.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert "listener 8883\n" in files.conf.read_text()


def test_pki_refuses_a_mismatched_ca_and_writes_keys_private(tmp_path: Path) -> None:
    a, b = make_ca("a"), make_ca("b")
    with pytest.raises(PkiError, match="does not belong"):
        issue_server_cert(CertPair(a.cert_pem, b.key_pem), ["localhost"])
    with pytest.raises(PkiError):
        issue_server_cert(a, [])
    old = os.umask(0)
    try:
        path = write_private(tmp_path / "k.pem", a.key_pem)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".*tmp*"))


# --------------------------------------------------------------------------- client side


def test_tls_settings_refuse_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both"):
        TlsSettings(tmp_path / "ca.crt", certfile=tmp_path / "c.crt")
    with pytest.raises(ValueError, match="CA file"):
        TlsSettings(tmp_path / "missing.crt").context()
    with pytest.raises(ValueError, match="password needs a username"):
        MqttClient("x", "127.0.0.1", 1, on_message=lambda m: None, password="p")


def test_broker_config_security_fields_round_trip(tmp_path: Path) -> None:
    pw = write_private(tmp_path / "broker.pw", b"s3cret\n")
    raw = {
        "node": {"id": "a1", "role": "agent", "swarm": SWARM, "key": "k", "state_dir": "st"},
        "broker": {
            "port": 8883,
            "tls_ca": "ca.crt",
            "username": "a1",
            "password_file": "broker.pw",
        },
        "agent": {"data": "d.npz"},
    }
    cfg = config_from_dict(raw, base=tmp_path)
    assert cfg.broker.tls_ca == (tmp_path / "ca.crt").resolve()
    assert cfg.broker.password_file == pw.resolve()
    assert cfg.broker.read_password() == "s3cret"
    again = config_from_dict(tomllib.loads(dump_config(cfg)), base=Path("/elsewhere"))
    assert again.broker == cfg.broker
    plain = config_from_dict({**raw, "broker": {}}, base=tmp_path)
    assert "tls_ca" not in dump_config(plain) and plain.broker.read_password() is None

    os.chmod(pw, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        cfg.broker.read_password()
    with pytest.raises(ConfigError, match="go together"):
        BrokerConfig(username="a1")
    with pytest.raises(ConfigError, match="username"):
        BrokerConfig(username="a b", password_file=pw)
