"""Key epochs as one node follows them on the ledger: which data key seals which round.

How it works
------------
A ``key_epoch`` ledger entry (appended by the coordinating gateway, or an admin) carries one
swarm data key wrapped for each recipient (``keyring.KeyEpoch``). Every node folds the chain
in order, so every node agrees on this rule without talking about it:

    the epoch of round r = the newest key_epoch before r's round_open,
    unless that epoch wraps a key for a node revoked before the round_open: then round r
    has no epoch, and no delta of it may be sealed or accepted.

The coordinator appends a fresh epoch before a round_open whenever the recipients it wants
(every active agent, gateway and observer with an encryption key) differ from the newest
epoch's, so a revoked device is left out from the next round on, and a newly enrolled one
is let in. The "no epoch" rule is the safety net if that append was lost: a revoked device
never reads a round opened after its revocation, whatever the coordinator did.

``security_mode`` reads the genesis parameter that says how deltas travel:

- ``sealed``: signed by the device key, and encrypted under the round's data key;
- ``signed``: signed, in the clear (swarms made before key epochs existed);
- ``none``: neither; a benchmark baseline only (the ledger still signs everything).

Pure apart from logging: no sockets, files or threads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from edge_swarm.trust.keyring import EncryptionKey, KeyEpoch, Keyring, NotRecipientError
from edge_swarm.trust.payload import TrustError
from ledger_lite import LedgerState

log = logging.getLogger(__name__)

SECURITY_MODES = ("sealed", "signed", "none")
LEGACY_SECURITY = "signed"  # a genesis without the parameter predates sealing
RECIPIENT_ROLES = frozenset({"agent", "gateway", "observer"})
ROUNDS_KEPT = 64  # round -> epoch entries remembered (a round older than this is merged)


def security_mode(params: Mapping[str, Any]) -> str:
    """The genesis's ``security`` parameter; ValueError naming the choices if unknown."""
    mode = params.get("security", LEGACY_SECURITY)
    if mode not in SECURITY_MODES:
        raise ValueError(f"genesis security {mode!r} is not one of {list(SECURITY_MODES)}")
    return str(mode)


def wanted_recipients(state: LedgerState, now_ms: int) -> dict[str, str]:
    """Who should hold the data key now: node id -> X25519 public hex, sorted by id."""
    return {
        node: m.enc_pubkey
        for node, m in sorted(state.members.items())
        if m.role in RECIPIENT_ROLES and m.enc_pubkey is not None and m.active_at(now_ms)
    }


class EpochTracker:
    """The key epochs of the chain, the data keys this node opened, and each round's epoch.

    Feed it every ``key_epoch``, ``enroll`` and ``round_open`` entry in chain order.
    ``enc_key`` is None for a node that holds no encryption key (it can follow, not read).
    """

    def __init__(self, swarm: str, node_id: str, enc_key: EncryptionKey | None) -> None:
        self.node_id = node_id
        self.enc_key = enc_key
        self.keyring = Keyring(swarm)
        self.latest: KeyEpoch | None = None
        self.round_epochs: dict[int, int | None] = {}
        self._recipient_keys_changed = False

    def on_key_epoch(self, payload: Mapping[str, Any]) -> bool:
        """Fold a key_epoch entry's payload; return whether this node now holds its key."""
        try:
            epoch = KeyEpoch.from_dict(payload)
        except TrustError as exc:  # the ledger checked the shape; this is belt and braces
            log.warning("ignoring a key epoch: %s", exc)
            return False
        self.latest = epoch
        self._recipient_keys_changed = False
        if self.enc_key is None:
            return False
        try:
            self.keyring.add(epoch, self.node_id, self.enc_key)
        except NotRecipientError:
            log.warning(
                "not a recipient of key epoch %d: this device cannot read the rounds sealed "
                "under it (revoked, or enrolled after it; the next epoch will include it)",
                epoch.epoch,
            )
            return False
        except TrustError as exc:
            log.error("cannot open my data key of epoch %d: %s", epoch.epoch, exc)
            return False
        log.info("holding the data key of epoch %d", epoch.epoch)
        return True

    def on_enroll(self, node: str) -> None:
        """A (re-)enrolment: a recipient with a new encryption key needs a fresh epoch."""
        if self.latest is not None and node in self.latest.wrapped:
            self._recipient_keys_changed = True

    def on_round_open(self, rnd: int, height: int, state: LedgerState) -> int | None:
        """Record and return the epoch round ``rnd`` seals under (None: it has none).

        ``height`` is the round_open's height: revocations are judged as of it, whatever
        the state has folded since, so every node decides alike.
        """
        epoch = self.latest
        valid = epoch is not None and not any(
            _revoked_before(state, node, height) for node in epoch.wrapped
        )
        self.round_epochs[rnd] = epoch.epoch if valid and epoch is not None else None
        for old in sorted(self.round_epochs)[:-ROUNDS_KEPT]:
            del self.round_epochs[old]
        return self.round_epochs[rnd]

    def key(self, epoch: int | None) -> bytes | None:
        """The data key of ``epoch`` if this node holds it."""
        return None if epoch is None else self.keyring.key(epoch)

    def round_key(self, rnd: int) -> tuple[int, bytes] | None:
        """(epoch, data key) to seal round ``rnd`` under, or None if this node cannot."""
        epoch = self.round_epochs.get(rnd)
        key = self.key(epoch)
        return None if epoch is None or key is None else (epoch, key)

    def sealing_key(self, state: LedgerState) -> tuple[int, bytes] | None:
        """(epoch, key) of the newest epoch, if held and no recipient of it is revoked now:
        what a checkpoint is sealed under."""
        epoch = self.latest
        if epoch is None or any(_revoked_before(state, n, state.height + 1) for n in epoch.wrapped):
            return None
        key = self.key(epoch.epoch)
        return None if key is None else (epoch.epoch, key)

    def rotation_needed(self, state: LedgerState, now_ms: int) -> dict[str, str] | None:
        """The recipients of the epoch the coordinator should append before its next
        round_open, or None if the newest epoch still fits (or there is nobody to wrap for)."""
        wanted = wanted_recipients(state, now_ms)
        if not wanted:
            return None
        fits = (
            self.latest is not None
            and set(self.latest.wrapped) == set(wanted)
            and not self._recipient_keys_changed
        )
        return None if fits else wanted


def _revoked_before(state: LedgerState, node: str, height: int) -> bool:
    m = state.member(node)
    return m is None or (m.revoked_at_height is not None and m.revoked_at_height < height)
