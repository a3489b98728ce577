"""What the operator does with keys and the ledger: device keys, a new swarm, enrolment.

- ``keygen``: a device makes its own Ed25519 key pair; the private key never leaves it
  (owner-only file) and the device shows an enrolment request (its id and public key).
- ``admin_init``: the operator makes the swarm's admin key and the genesis, which fixes the
  admins, the policy and the training parameters, in a bootstrap file.
- ``enroll`` / ``revoke``: admin-signed transactions. Before the site starts they are
  appended to the bootstrap file (the first coordinating gateway submits them); on a running
  site they are published on ``ledger/submit`` like any other transaction.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_swarm.trust.keyring import EncryptionKey
from ledger_lite import DEFAULT_POLICY, Entry, SigningKey, Tx, make_genesis, make_tx
from ledger_lite.canonical import parse_json
from ledger_lite.errors import DecodeError

log = logging.getLogger(__name__)

ROLES = ("agent", "gateway", "observer", "admin")


class OperatorError(ValueError):
    """A request the operator's tools cannot carry out; the message says what to do."""


@dataclass(frozen=True)
class EnrollRequest:
    """What a device shows the operator: who it is and its public key."""

    node: str
    pubkey: str
    role: str = "agent"
    enc_pubkey: str | None = None  # X25519: the swarm's data keys are wrapped for it

    def to_json(self) -> str:
        obj = {"node": self.node, "pubkey": self.pubkey, "role": self.role}
        if self.enc_pubkey is not None:
            obj["enc_pubkey"] = self.enc_pubkey
        return json.dumps(obj)

    @classmethod
    def from_json(cls, text: str) -> EnrollRequest:
        """Parse a request as ``to_json`` writes it; an OperatorError says what is wrong."""
        try:
            obj = parse_json(text)
        except DecodeError as exc:
            raise OperatorError(f"not an enrolment request ({exc})") from None
        if not isinstance(obj, dict):
            raise OperatorError("not an enrolment request (not a JSON object)")
        missing = [repr(k) for k in ("node", "pubkey") if k not in obj]
        if missing:
            raise OperatorError(f"not an enrolment request (no {' or '.join(missing)})")
        enc = obj.get("enc_pubkey")
        req = cls(
            str(obj["node"]),
            str(obj["pubkey"]),
            str(obj.get("role", "agent")),
            None if enc is None else str(enc),
        )
        if req.role not in ROLES:
            raise OperatorError(
                f"an enrolment request's role is one of {', '.join(ROLES)}, not {req.role!r}"
            )
        if not _is_hex64(req.pubkey):
            raise OperatorError("an enrolment request's pubkey must be 64 lowercase hex characters")
        if req.enc_pubkey is not None and not _is_hex64(req.enc_pubkey):
            raise OperatorError(
                "an enrolment request's enc_pubkey must be 64 lowercase hex characters"
            )
        return req


def _is_hex64(value: str) -> bool:
    return len(value) == 64 and not value.strip("0123456789abcdef")


def enc_key_path(key_path: Path) -> Path:
    """Where a device keeps its encryption key: next to its signing key."""
    return key_path.with_name(key_path.name + ".enc")


def keygen(key_path: Path, node: str, role: str = "agent") -> EnrollRequest:
    """Make a device's signing key at ``key_path`` and its encryption key next to it
    (refusing to overwrite either), and the enrolment request naming both public keys."""
    enc_path = enc_key_path(key_path)
    for path in (key_path, enc_path):
        if path.exists():
            raise OperatorError(
                f"{path} exists: a device keeps its keys; delete both to start anew"
            )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key, enc = SigningKey.generate(), EncryptionKey.generate()
    key.save(key_path)
    enc.save(enc_path)
    return EnrollRequest(node, key.public_hex, role, enc.public_hex)


def admin_init(out_dir: Path, swarm: str, params: dict[str, Any]) -> tuple[Path, Entry]:
    """Make the admin key and a bootstrap file holding the genesis; returns its path."""
    key_path, bootstrap = out_dir / "admin.key", out_dir / "bootstrap.jsonl"
    if bootstrap.exists():
        raise OperatorError(f"{bootstrap} exists: one genesis per swarm")
    out_dir.mkdir(parents=True, exist_ok=True)
    admin = SigningKey.generate()
    admin.save(key_path)
    genesis = make_genesis(admin, "admin", swarm, DEFAULT_POLICY, params)
    bootstrap.write_text(json.dumps(genesis.to_dict(), sort_keys=True) + "\n")
    return bootstrap, genesis


def enroll_tx(
    admin: SigningKey, swarm: str, req: EnrollRequest, expires_days: float | None = None
) -> Tx:
    """An admin-signed enrol transaction; ``expires_days`` bounds the enrolment in time."""
    expires = None if expires_days is None else int((time.time() + expires_days * 86400) * 1000)
    payload: dict[str, Any] = {
        "node": req.node,
        "role": req.role,
        "pubkey": req.pubkey,
        "expires_ms": expires,
    }
    if req.enc_pubkey is not None:
        payload["enc_pubkey"] = req.enc_pubkey
    return make_tx(admin, swarm, "enroll", "admin", payload)


def revoke_tx(admin: SigningKey, swarm: str, node: str, reason: str) -> Tx:
    return make_tx(admin, swarm, "revoke", "admin", {"node": node, "reason": reason})


def append_to_bootstrap(bootstrap: Path, tx: Tx) -> Entry:
    """Chain ``tx`` after the last entry of a bootstrap file (before the site starts)."""
    lines = [ln for ln in bootstrap.read_text().splitlines() if ln.strip()]
    if not lines:
        raise OperatorError(f"{bootstrap} is empty: run `edge-swarm admin init` first")
    try:
        last = Entry.from_bytes(lines[-1].encode("utf-8"))
    except DecodeError as exc:
        raise OperatorError(f"the last line of {bootstrap} is not a ledger entry: {exc}") from None
    entry = tx.chain(last.height + 1, last.hash)
    with bootstrap.open("a") as f:
        f.write(json.dumps(entry.to_dict(), sort_keys=True) + "\n")
    return entry


def publish_tx(
    tx: Tx,
    host: str,
    port: int,
    timeout: float = 15.0,
    mqtt_options: dict[str, Any] | None = None,
) -> Entry:
    """Submit ``tx`` to a running site over MQTT and wait until the ledger shows it.
    ``mqtt_options``: MqttClient's keyword arguments (TLS, login) for a locked-down broker.

    Raises OperatorError with the ledger's reason if it is refused, or on a timeout.
    """
    import queue

    from edge_swarm.io.mqtt import Message, MqttClient
    from edge_swarm.node.vitals import RateLimitedLog
    from edge_swarm.swarm.messages import MessageError, Reply, Submission
    from edge_swarm.swarm.topics import Topics

    topics = Topics(tx.swarm)
    drops = RateLimitedLog(log)
    inbox: queue.Queue[Message] = queue.Queue()
    client = MqttClient(
        f"{tx.swarm}.operator.{tx.tx_id[:8]}",
        host,
        port,
        on_message=inbox.put,
        **(mqtt_options or {}),
    )
    client.start()
    try:
        if not client.wait_connected(timeout):
            raise OperatorError(f"cannot reach the broker at {host}:{port}")
        client.subscribe(topics.ledger_events())
        client.subscribe(topics.ledger_reply(tx.author))
        client.publish(topics.ledger_submit(), Submission(tx.to_dict()).encode(), wait=timeout)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = inbox.get(timeout=left)
            except queue.Empty:
                break
            # Only our two topics count: some brokers (amqtt) also hand a new subscriber
            # retained messages of other topics.
            if msg.topic == topics.ledger_events():
                try:
                    entry = Entry.from_bytes(msg.payload)
                except DecodeError as exc:  # someone else's garbage: wait on
                    drops.drop("bad ledger event", str(exc))
                    continue
                if entry.tx_id == tx.tx_id:
                    return entry
            elif msg.topic == topics.ledger_reply(tx.author):
                try:
                    reply = Reply.decode(msg.payload)
                except MessageError as exc:
                    drops.drop("bad ledger reply", str(exc))
                    continue
                if reply.req == tx.tx_id and reply.refused:
                    raise OperatorError(f"the ledger refused it: {reply.refused:.300}")
        raise OperatorError(f"the ledger did not show the entry within {timeout:.0f} s")
    finally:
        client.stop()
