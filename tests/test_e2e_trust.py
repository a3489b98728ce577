"""End to end, confidentiality: what a subscriber with full read access sees on the wire, and
what a device revoked mid-run can still read.

One real swarm (gateway and agents as processes, the embedded broker): a sniffer subscribes
to every topic of the swarm from the start; after round 2 the admin revokes agent-04 over
MQTT, as `edge-swarm revoke` does. The checks run on what the sniffer captured.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest

from edge_swarm.io.mqtt import Message, MqttClient
from edge_swarm.node.observer import SwarmObserver
from edge_swarm.site.demo import RunResult
from edge_swarm.site.launch import SwarmProcesses
from edge_swarm.site.operator import publish_tx, revoke_tx
from edge_swarm.swarm.checkpoint import is_sealed_checkpoint, parse_sealed_checkpoint
from edge_swarm.swarm.codec import (
    FLAG_SEALED,
    Envelope,
    EnvelopeError,
    EnvelopeHeader,
    decode_delta,
    decode_envelope,
    encode_envelope,
    open_envelope,
)
from edge_swarm.swarm.topics import TopicError, TopicKind, Topics
from edge_swarm.trust.keyring import EncryptionKey, KeyEpoch, Keyring, NotRecipientError
from ledger_lite import SigningKey

from .test_e2e import entries_of, log_of, small
from .waiting import kill_once_finished, run_settled

pytestmark = pytest.mark.network

REVOKED = "agent-04"
REVOKE_AFTER = 2  # the admin revokes once this round is final


class Sniffer:
    """A client with full read access: keeps every payload published on the swarm."""

    def __init__(self, swarm: str, port: int) -> None:
        self.topics = Topics(swarm)
        self.lock = threading.Lock()
        self.captured: list[tuple[str, bytes]] = []
        self.client = MqttClient(
            "sniffer", "127.0.0.1", port, on_message=self._keep, max_payload=64 << 20
        )

    def _keep(self, msg: Message) -> None:
        with self.lock:
            self.captured.append((msg.topic, msg.payload))

    def start(self) -> None:
        self.client.start()
        assert self.client.wait_connected(10)
        assert self.client.subscribe(self.topics.root + "#")

    def of(self, kind: TopicKind) -> list[tuple[int | None, bytes]]:
        with self.lock:
            items = list(self.captured)
        out = []
        for topic, payload in items:
            try:
                parsed = self.topics.parse(topic)
            except TopicError:
                continue
            if parsed.kind == kind:
                out.append((parsed.round, payload))
        return out


def _keyring_of(node: str, result: RunResult) -> Keyring:
    """Every data key ``node`` can open from the (public) ledger with its encryption key."""
    workdir = result.config.workdir
    enc = EncryptionKey.load(workdir / "keys" / f"{node}.enc.key")
    ring = Keyring(result.config.swarm, max_epochs=64)
    for e in entries_of(result):
        if e.kind == "key_epoch":
            with contextlib.suppress(NotRecipientError):
                ring.add(KeyEpoch.from_dict(e.payload), node, enc)
    return ring


def _opens(env: Envelope, ring: Keyring) -> bool:
    key = ring.key(env.header.epoch)
    if key is None:
        return False
    try:
        open_envelope(env, key)
    except EnvelopeError:
        return False
    return True


@pytest.fixture(scope="module")
def revoked_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, Sniffer, list]:
    cfg = small(tmp_path_factory.mktemp("trust"), "embedded", rounds=5)
    sniffers: list[Sniffer] = []
    forged: list[bytes] = []

    def during(procs: SwarmProcesses, obs: SwarmObserver) -> None:
        # The observer starts before the swarm; so does the sniffer, in effect: round 1 is
        # merely open when this runs, and retained messages are delivered on subscribe.
        sniffer = Sniffer(cfg.swarm, obs.mqtt.port)
        sniffer.start()
        sniffers.append(sniffer)
        assert obs.wait_for(lambda: obs.final_round() >= REVOKE_AFTER, timeout=90)
        admin = SigningKey.load(cfg.workdir / "keys" / "admin.key")
        publish_tx(revoke_tx(admin, cfg.swarm, REVOKED, "stolen"), "127.0.0.1", obs.mqtt.port)
        nxt = REVOKE_AFTER + 2  # the first round opened after the revocation, at the latest
        assert obs.wait_for(lambda: nxt in obs.rounds and obs.rounds[nxt].opened_ms, 90)
        # The thief sends a delta for the open round with the device's keys and its old
        # data key: refused by everyone as from a revoked node.
        opened = [e for e in obs.entries if e.kind == "round_open"][-1]
        epochs = [e for e in obs.entries if e.kind == "key_epoch"]
        old = KeyEpoch.from_dict(epochs[0].payload)
        enc = EncryptionKey.load(cfg.workdir / "keys" / f"{REVOKED}.enc.key")
        data_key = Keyring(cfg.swarm).add(old, REVOKED, enc)
        n_params = int(obs.rounds[1].params.size) if obs.rounds[1].params is not None else 0
        h = EnvelopeHeader(
            swarm=cfg.swarm,
            round=opened.payload["round"],
            node=REVOKED,
            base_hash=opened.payload["base_model_hash"],
            codec=0,
            n_params=n_params,
            n_samples=10,
            flags=FLAG_SEALED,
            epoch=old.epoch,
        )
        key = SigningKey.load(cfg.workdir / "keys" / f"{REVOKED}.key")
        frame = encode_envelope(h, np.zeros(n_params, np.float32), key.sign, data_key=data_key)
        forged.append(frame)
        topic = obs.topics.delta(opened.payload["round"], REVOKED)
        assert sniffer.client.publish(topic, frame, qos=1, wait=10)
        kill_once_finished(cfg, procs, obs, [REVOKED])  # it will never report the last round

    try:
        result = run_settled(cfg, during=during)
    finally:
        for s in sniffers:
            s.client.stop()
    return result, sniffers[0], forged


def test_deltas_and_checkpoints_on_the_wire_are_ciphertext(revoked_run: tuple) -> None:
    result, sniffer, forged = revoked_run
    deltas = [(r, p) for r, p in sniffer.of(TopicKind.DELTA) if p not in forged]
    checkpoints = [p for _, p in sniffer.of(TopicKind.MODEL_LATEST)]
    assert len(deltas) >= 3 * result.config.rounds and checkpoints
    envelopes = [decode_envelope(p) for _, p in deltas]
    assert all(env.header.sealed for env in envelopes)
    assert all(is_sealed_checkpoint(p) for p in checkpoints)
    # Without a key there is nothing to decode: the body is AES-GCM output.
    for env in envelopes[:3]:
        with pytest.raises(EnvelopeError, match="sealed"):
            decode_delta(env, env.header.n_params)
    # No 16-byte run of any global model's float32 bytes appears in anything captured.
    captured = b"\0".join(p for _, p in sniffer.captured)
    models = [r.params for r in result.rounds if r.params is not None]
    assert len(models) == result.config.rounds
    for params in models:
        raw = np.ascontiguousarray(params, dtype="<f4").tobytes()
        windows = [raw[i : i + 16] for i in range(0, len(raw) - 16, 64)]
        assert not any(w in captured for w in windows)
    # Control: the enrolled observer's key opens the same bytes, and the values decode.
    observer = _keyring_of("observer", result)
    assert all(_opens(env, observer) for env in envelopes)
    env = envelopes[-1]
    decoded = decode_delta(
        env, env.header.n_params, open_envelope(env, observer.key(env.header.epoch))
    )
    assert np.isfinite(decoded).all()
    assert all(parse_sealed_checkpoint(p).epoch in observer.epochs for p in checkpoints[-1:])


def test_a_revoked_device_cannot_read_any_later_round(revoked_run: tuple) -> None:
    result, sniffer, forged = revoked_run
    entries = entries_of(result)
    revoke = next(e for e in entries if e.kind == "revoke" and e.payload["node"] == REVOKED)
    opens = {e.payload["round"]: e.height for e in entries if e.kind == "round_open"}
    later = sorted(r for r, h in opens.items() if h > revoke.height)
    assert later, "no round opened after the revocation"
    # A fresh key epoch, without the revoked device, lands before the next round opens.
    rotated = [
        e for e in entries if e.kind == "key_epoch" and revoke.height < e.height < opens[later[0]]
    ]
    assert len(rotated) == 1 and REVOKED not in rotated[0].payload["wrapped"]
    # It took no part in them, and the envelope a thief sent with its keys was refused.
    closes = {e.payload["round"]: e.payload["included"] for e in entries if e.kind == "round_close"}
    assert all(REVOKED not in closes[r] for r in later if r in closes)
    assert "dropped (revoked node" in log_of(result, "gateway-1")
    assert "dropped (revoked node" in log_of(result, "agent-01")
    # With its own encryption key and every key epoch on the ledger, the device opens the
    # rounds before its revocation (the control) and not one envelope of a later round.
    ring = _keyring_of(REVOKED, result)
    envelopes = [(r, decode_envelope(p)) for r, p in sniffer.of(TopicKind.DELTA) if p not in forged]
    before = [env for r, env in envelopes if r is not None and opens[r] < revoke.height]
    after = [env for r, env in envelopes if r in later]
    assert before and after
    assert all(_opens(env, ring) for env in before)
    assert not any(_opens(env, ring) for env in after)
    assert all(ring.key(env.header.epoch) is None for env in after)
