"""How an agent takes a final model it did not merge itself: the committee's downlink update
when the swarm has one and it applies (``node/updates.py``), else the retained checkpoint.

The ledger, never the bytes' source, says which model is final: a checkpoint is taken only
if it hashes to the round's ``model_final``; an update only if a quorum of the round's
committee attested it and the model it gives hashes to ``model_final``. An agent takes the
checkpoint topic only while it needs it (``node/follow.py``): a light agent that follows
every round by its update never receives the whole model again.

A mixin of ``Agent`` (it shares the agent's machine, model and MQTT follow state); kept apart
so that the agent's module stays about one thing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from edge_swarm.swarm import protocol as P
from edge_swarm.swarm.checkpoint import Checkpoint, CheckpointError

if TYPE_CHECKING:
    from edge_swarm.node.config import NodeConfig
    from edge_swarm.node.follow import Follow
    from edge_swarm.node.model import ModelHolder
    from edge_swarm.node.updates import LightUpdates
    from edge_swarm.node.vitals import RateLimitedLog
    from edge_swarm.trust.epochs import EpochTracker

log = logging.getLogger(__name__)


class Adopting:
    """The agent's adoption of final models (see the module header)."""

    machine: P.Participant | None
    holder: ModelHolder | None
    follow: Follow
    updates: LightUpdates | None
    adopting: tuple[int, str] | None
    latest_checkpoint: Checkpoint | None
    _sealed_checkpoint: bytes | None
    # The agent's (annotations only: nothing here shadows them).
    cfg: NodeConfig
    drops: RateLimitedLog
    epochs: EpochTracker
    open_checkpoint: Callable[[bytes], Checkpoint | None]
    _act: Callable[[list[P.Action]], None]
    _submit: Callable[[P.Append], None]
    _serve: Callable[[int], None]
    _telemetry: Callable[[int], None]

    def adopt(self, action: P.AdoptCheckpoint) -> None:
        """Carry out the machine's ``AdoptCheckpoint``."""
        self.adopting = (action.round, action.model_hash)
        if self.updates is None or action.state:
            self.follow.checkpoints(True)  # the merge state travels only in the checkpoint
            self._try_adopt()
            return
        self.updates.wait(time.monotonic())
        self._try_update()

    def adoption_tick(self, now: float) -> None:
        """An update that did not come in time: the checkpoint instead."""
        if self.updates is not None and self.adopting is not None and self.updates.gave_up(now):
            self.updates.done()
            log.info("round %d: no usable update in time; taking the checkpoint", self.adopting[0])
            self.follow.checkpoints(True)
            self._try_adopt()

    def _on_update(self, payload: bytes) -> None:
        if self.updates is None:
            return
        why = self.updates.offer(payload, self.epochs.key)
        if why is not None:
            self.drops.drop("bad update", why)
            return
        self._try_update()

    def _try_update(self) -> None:
        want, machine, holder, updates = self.adopting, self.machine, self.holder, self.updates
        if want is None or machine is None or holder is None or updates is None:
            return
        params, why = updates.try_apply(want, holder.params, holder.hash, machine.update_backed)
        if why is not None:  # that round's update cannot be used: the checkpoint at once
            log.warning("%s; taking the checkpoint", why)
            updates.done()
            self.follow.checkpoints(True)
            self._try_adopt()
            return
        if params is None:
            return  # not here yet
        holder.take_update(want[0], params, want[1])
        log.info("round %d: applied the committee's update (%s)", want[0], want[1][:12])
        self._adopted(want[0], want[1], with_state=False)

    def _on_checkpoint(self, payload: bytes) -> None:
        self._sealed_checkpoint = None
        try:
            ck = self.open_checkpoint(payload)
        except CheckpointError as exc:
            self.drops.drop("bad checkpoint", str(exc))
            return
        if ck is None:
            self._sealed_checkpoint = payload  # retried when a key epoch arrives
            return
        if ck.swarm != self.cfg.swarm:
            self.drops.drop("bad checkpoint", f"for swarm {ck.swarm}")
            return
        self.latest_checkpoint = ck
        self._try_adopt()

    def _try_adopt(self) -> None:
        ck, want = self.latest_checkpoint, self.adopting
        if ck is None or want is None or self.machine is None or self.holder is None:
            return
        final = self.machine.finals.get(ck.round)
        # The ledger, not the checkpoint, says which bytes are final.
        if final is None or final != ck.model_hash or ck.round < want[0]:
            return
        if not self.holder.adopt(ck):
            why = f"round {ck.round} does not hash to its claim"
            self.drops.drop("bad checkpoint", why)
            return
        log.info("adopted checkpoint of round %d (%s)", ck.round, ck.model_hash[:12])
        last = ck.round == max(self.machine.finals) and ck.round not in self.machine.attested
        if last and self.machine.is_member(ck.round):  # a light agent's would not count
            # Say on the ledger which bytes we hold now, as an agent that merged does: the
            # record then shows every node on the final model, however it got there.
            attest = {"round": ck.round, "model_hash": ck.model_hash, "state_hash": ck.state_hash}
            self._submit(P.Append("model_attest", attest))
        self._adopted(ck.round, ck.model_hash, with_state=True)

    def _adopted(self, rnd: int, model_hash: str, with_state: bool) -> None:
        assert self.machine is not None
        self.adopting = None
        if self.updates is not None:
            self.updates.done()
            self.follow.checkpoints(False)  # the next round's update will do
        self._serve(rnd)
        event = P.CheckpointAdopted(rnd, model_hash, with_state)
        self._act(self.machine.handle(event))
        self._telemetry(rnd)
