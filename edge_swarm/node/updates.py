"""The committee's downlink update on the wire: published by the coordinating gateway, taken
by light agents (``swarm/downlink.py`` builds and checks the frame; this is the I/O around it).

- The genesis of a committee swarm names the downlink codec (``params["downlink"]``); every
  node's ``ModelHolder`` then builds each round's candidate through the update.
- The coordinating gateway publishes its update retained on ``model/update`` as soon as it
  has merged (sealed with the epoch's data key in a sealed swarm, like the checkpoint), so a
  light agent holds it by the time the round's ``model_final`` arrives. The update is not
  trusted for being there: an agent applies it only if a quorum of the round's committee
  attested its sha256 and the final (model, state) pair on the ledger
  (``Participant.update_backed``), it applies to the model the agent holds, and the result
  hashes to the final model.
- Anything else (no update for that round after ``UPDATE_WAIT_S``, one not backed, one for
  another base) sends the agent to the retained checkpoint, as before updates existed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_swarm.learn.model import ModelSpec, model_hash
from edge_swarm.swarm.checkpoint import (
    CheckpointError,
    is_sealed_checkpoint,
    open_frame,
    parse_sealed_checkpoint,
)
from edge_swarm.swarm.downlink import (
    DownlinkError,
    Update,
    apply_update,
    parse_update,
    update_bytes,
)
from edge_swarm.swarm.quantize import CodecSpec

log = logging.getLogger(__name__)

UPDATE_WAIT_S = 3.0  # how long a light agent waits for a round's update before the checkpoint
SEAL_MARGIN = 512  # a sealed frame's outer header and seal, well rounded up


def downlink_of(params: dict[str, Any], swarm: str) -> tuple[str, CodecSpec] | None:
    """``(swarm, codec)`` of a genesis whose committee publishes a downlink update, else None.
    ValueError on a malformed codec (the genesis is refused, as for the uplink codec)."""
    if params.get("merge_by") != "committee" or "downlink" not in params:
        return None
    return swarm, CodecSpec.from_dict(params["downlink"])


class LightUpdates:
    """An agent's view of ``model/update``: the latest update it could open, and whether to
    wait for one or go to the checkpoint."""

    def __init__(self, swarm: str, spec: ModelSpec, codec: CodecSpec, sealed: bool) -> None:
        self.swarm = swarm
        self.spec = spec
        self.sealed = sealed
        self.max_frame = update_bytes(spec.n_params, codec, swarm)  # exact, or a bound
        self.latest: Update | None = None
        self.applied = 0  # rounds taken from an update (telemetry)
        self._waiting_since: float | None = None

    def offer(self, payload: bytes, key_of: Callable[[int], bytes | None]) -> str | None:
        """Take a ``model/update`` payload (untrusted); return why it was dropped, or None.
        ``key_of(epoch)``: the data key of an epoch, None if this node holds none."""
        try:
            if is_sealed_checkpoint(payload):
                sealed = parse_sealed_checkpoint(payload, max_size=self.max_frame + SEAL_MARGIN)
                key = key_of(sealed.epoch)
                if sealed.swarm != self.swarm or key is None:
                    return f"no key for epoch {sealed.epoch} of {sealed.swarm}"
                payload = open_frame(sealed, key, kind="update")
            elif self.sealed:
                return "an unsealed update in a sealed swarm"
            update = parse_update(payload, self.max_frame, max_params=self.spec.n_params)
        except (CheckpointError, DownlinkError) as exc:
            return str(exc)
        if update.swarm != self.swarm:
            return f"an update for swarm {update.swarm}"
        if self.latest is None or update.round >= self.latest.round:
            self.latest = update
        return None

    def wait(self, now: float) -> None:
        """An adoption began: the update gets ``UPDATE_WAIT_S`` from ``now`` to come."""
        if self._waiting_since is None:
            self._waiting_since = now

    def done(self) -> None:
        self._waiting_since = None

    def gave_up(self, now: float) -> bool:
        """Whether the wait begun by ``wait`` is over (then: the checkpoint)."""
        since = self._waiting_since
        return since is not None and now - since >= UPDATE_WAIT_S

    def try_apply(
        self,
        want: tuple[int, str],
        base: np.ndarray,
        base_hash: str,
        backed: Callable[[int, str], bool],
    ) -> tuple[np.ndarray | None, str | None]:
        """The final model of round ``want[0]`` with hash ``want[1]`` from the latest update.

        Returns ``(params, None)`` when it applies, ``(None, None)`` while there is no
        update for that round yet (wait), and ``(None, why)`` when the update of that round
        cannot be used (go to the checkpoint).
        """
        upd, (rnd, final) = self.latest, want
        if upd is None or upd.round < rnd:
            return None, None
        if upd.round > rnd:
            return None, f"the update is for round {upd.round}, we want round {rnd}"
        if not backed(rnd, upd.sha256):
            return None, f"round {rnd}: update {upd.sha256[:12]} lacks its committee's quorum"
        try:
            key = (self.swarm, rnd, base_hash, self.spec.n_params)
            params = apply_update(base, upd, key)
        except DownlinkError as exc:
            return None, f"round {rnd}: {exc}"
        if model_hash(self.spec, params) != final:
            return None, f"round {rnd}: the update does not give the final model {final[:12]}"
        self.applied += 1
        return params, None
