"""How a node's models travel: checkpoints opened from and framed for the wire (sealed
under the newest key epoch in a sealed swarm), a node's copy of a final model sent when a
gateway asks for it, and retained checkpoints chunked when they exceed one packet. A mixin
of ``NodeRuntime`` (node/base.py), which provides the attributes it uses."""

from __future__ import annotations

import logging
import time
from typing import Any

from edge_swarm.io.chunked import publish_overhead
from edge_swarm.swarm.checkpoint import (
    Checkpoint,
    CheckpointError,
    decode_checkpoint,
    encode_checkpoint,
    is_sealed_checkpoint,
    open_checkpoint,
    parse_sealed_checkpoint,
    seal_checkpoint,
)
from edge_swarm.swarm.chunking import split
from ledger_lite import LedgerState

log = logging.getLogger("edge_swarm.node.base")


class ModelWire:
    """Checkpoints on the wire; see the module header."""

    cfg: Any
    security: str
    epochs: Any
    holder: Any
    model_answers: Any
    sender: Any
    mqtt: Any
    topics: Any

    def ledger_state(self) -> LedgerState | None:
        return None

    def open_checkpoint(self, payload: bytes) -> Checkpoint | None:
        """Decode a checkpoint from the network: open it if sealed (None when this node
        holds no key for its epoch yet). Raises CheckpointError for bad bytes, and for a
        plain checkpoint in a sealed swarm."""
        if not is_sealed_checkpoint(payload):
            if self.security == "sealed":
                raise CheckpointError("an unsealed checkpoint in a sealed swarm")
            return decode_checkpoint(payload)
        sealed = parse_sealed_checkpoint(payload)
        if sealed.swarm != self.cfg.swarm:
            raise CheckpointError(f"a checkpoint for swarm {sealed.swarm}")
        key = self.epochs.key(sealed.epoch)
        if key is None:
            return None
        return open_checkpoint(sealed, key)

    def wire_frame(
        self, data: bytes, rnd: int, state: LedgerState, kind: str = "checkpoint"
    ) -> bytes | None:
        """What goes on the wire for a checkpoint (or downlink update) ``data`` of round
        ``rnd``: sealed under the newest epoch in a sealed swarm (None if this node holds no
        usable key), else ``data`` itself."""
        if self.security != "sealed":
            return data
        sealing = self.epochs.sealing_key(state)
        if sealing is None:
            return None
        return seal_checkpoint(data, self.cfg.swarm, rnd, sealing[0], sealing[1], kind)

    def send_model(self, rnd: int, model_hash: str) -> None:
        """A gateway asks for the final model of round ``rnd`` (``node/model_share.py``):
        send it on ``round/{rnd}/model/{us}`` if we hold exactly that one, sealed in a sealed
        swarm as the retained checkpoint is."""
        holder, state = self.holder, self.ledger_state()
        if holder is None or state is None:
            return
        now = time.monotonic()
        if not self.model_answers.should_send(rnd, model_hash, holder.round, holder.hash, now):
            return
        ck = holder.checkpoint(self.cfg.swarm)
        wire = self.wire_frame(encode_checkpoint(ck), ck.round, state)
        if wire is None:
            return
        self.sender.publish(self.topics.model_offer(rnd, self.cfg.node_id), wire, qos=1)
        log.info("round %d: sent our copy of the final model %s, as asked", rnd, model_hash[:12])

    def publish_checkpoint(self, data: bytes) -> None:
        """Publish a checkpoint retained: whole on ``model/latest`` when it fits one packet,
        else as retained chunks on ``model/chunk/{i}`` (a retained topic keeps only its last
        message, so each chunk needs a topic of its own)."""
        topic = self.topics.model_latest()
        if len(data) + publish_overhead(topic) <= self.cfg.broker.max_packet:
            self.mqtt.publish(topic, data, qos=1, retain=True)
            return
        size = self.sender.frame_size(self.topics.model_chunk(2**32 - 1))
        for i, chunk in enumerate(split(data, size)):
            self.mqtt.publish(self.topics.model_chunk(i), chunk, qos=1, retain=True)
