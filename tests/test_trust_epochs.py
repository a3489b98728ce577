"""Key epochs as a node follows them: which round seals under which key, and when the
coordinator must rotate. Pure: a real ledger state, no sockets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_swarm.trust.epochs import EpochTracker, security_mode, wanted_recipients
from edge_swarm.trust.keyring import EncryptionKey, new_epoch

from .test_ledger_support import SWARM, Swarm, seed_key


class EncSwarm(Swarm):
    """A ledger whose members enrol with encryption keys too."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.enc: dict[str, EncryptionKey] = {}

    def enroll_enc(self, node: str, role: str) -> None:
        key = seed_key(50 + len(self.keys))
        self.keys[node] = key
        self.enc[node] = EncryptionKey.generate()
        payload = {
            "node": node,
            "role": role,
            "pubkey": key.public_hex,
            "expires_ms": None,
            "enc_pubkey": self.enc[node].public_hex,
        }
        self.submit("admin", "enroll", payload)

    def rotate(self, tracker: EpochTracker) -> int:
        """Append the epoch the coordinator would, feed it to ``tracker``; its number."""
        recipients = tracker.rotation_needed(self.ledger.state, self.ts)
        assert recipients is not None
        latest = self.ledger.state.key_epoch
        number = 0 if latest is None else latest + 1
        epoch, _ = new_epoch(SWARM, number, recipients)
        entry = self.submit("gw", "key_epoch", epoch.to_dict())
        tracker.on_key_epoch(entry.payload)
        return number


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[EncSwarm]:
    s = EncSwarm(tmp_path / "ledger.db")
    s.enroll_enc("gw", "gateway")
    s.enroll_enc("a1", "agent")
    s.enroll_enc("a2", "agent")
    s.enroll("old", "agent")  # enrolled without an encryption key: never a recipient
    yield s
    s.ledger.close()


def test_security_mode() -> None:
    assert security_mode({}) == "signed"  # a genesis from before sealing
    assert security_mode({"security": "sealed"}) == "sealed"
    with pytest.raises(ValueError, match="sealed"):
        security_mode({"security": "plaintext"})


def test_recipients_are_active_members_with_keys(swarm: EncSwarm) -> None:
    assert list(wanted_recipients(swarm.ledger.state, swarm.ts)) == ["a1", "a2", "gw"]
    swarm.revoke("a2")
    assert list(wanted_recipients(swarm.ledger.state, swarm.ts)) == ["a1", "gw"]


def test_revoked_device_cannot_open_the_next_epoch(swarm: EncSwarm) -> None:
    a1 = EpochTracker(SWARM, "a1", swarm.enc["a1"])
    a2 = EpochTracker(SWARM, "a2", swarm.enc["a2"])
    e0 = swarm.rotate(a1)
    a2.on_key_epoch(swarm.ledger.entries(swarm.ledger.height)[0].payload)
    assert a1.key(e0) is not None and a1.key(e0) == a2.key(e0)
    assert a1.rotation_needed(swarm.ledger.state, swarm.ts) is None
    swarm.revoke("a2")
    assert a1.rotation_needed(swarm.ledger.state, swarm.ts) == {
        n: swarm.enc[n].public_hex for n in ("a1", "gw")
    }
    e1 = swarm.rotate(a1)
    assert not a2.on_key_epoch(swarm.ledger.entries(swarm.ledger.height)[0].payload)
    assert a2.key(e1) is None and a1.key(e1) is not None


def test_round_has_no_epoch_if_it_wraps_for_a_revoked_node(swarm: EncSwarm) -> None:
    t = EpochTracker(SWARM, "a1", swarm.enc["a1"])
    assert t.on_round_open(1, swarm.ledger.height + 1, swarm.ledger.state) is None  # none yet
    e0 = swarm.rotate(t)
    opened_at = swarm.ledger.height + 1
    assert t.on_round_open(2, opened_at, swarm.ledger.state) == e0
    assert t.round_key(2) == (e0, t.key(e0))
    revoke = swarm.revoke("a2")
    # Judged as of the round_open: a revocation after it does not change an open round...
    assert t.on_round_open(2, opened_at, swarm.ledger.state) == e0
    # ...but a round opened after it, with no fresh epoch in between, has no epoch at all.
    assert t.on_round_open(3, revoke.height + 1, swarm.ledger.state) is None
    assert t.round_key(3) is None
    assert t.sealing_key(swarm.ledger.state) is None  # no checkpoint under it either
    e1 = swarm.rotate(t)
    assert t.on_round_open(4, swarm.ledger.height + 1, swarm.ledger.state) == e1
    assert t.sealing_key(swarm.ledger.state) == (e1, t.key(e1))


def test_new_member_or_new_key_needs_rotation(swarm: EncSwarm) -> None:
    t = EpochTracker(SWARM, "gw", swarm.enc["gw"])
    swarm.rotate(t)
    swarm.enroll_enc("a3", "agent")
    assert "a3" in (t.rotation_needed(swarm.ledger.state, swarm.ts) or {})
    swarm.rotate(t)
    assert t.rotation_needed(swarm.ledger.state, swarm.ts) is None
    # a1 re-enrols with a new encryption key: the newest epoch's blob no longer opens for it
    swarm.enroll_enc("a1", "agent")
    t.on_enroll("a1")
    assert t.rotation_needed(swarm.ledger.state, swarm.ts) is not None


def test_a_node_without_encryption_key_follows_but_reads_nothing(swarm: EncSwarm) -> None:
    t = EpochTracker(SWARM, "old", None)
    gw = EpochTracker(SWARM, "gw", swarm.enc["gw"])
    e0 = swarm.rotate(gw)
    assert not t.on_key_epoch(swarm.ledger.entries(swarm.ledger.height)[0].payload)
    assert t.latest is not None and t.latest.epoch == e0 and t.key(e0) is None


def test_malformed_epoch_payload_is_ignored(swarm: EncSwarm) -> None:
    t = EpochTracker(SWARM, "a1", swarm.enc["a1"])
    assert not t.on_key_epoch({"swarm": SWARM, "epoch": 0})
    assert t.latest is None
