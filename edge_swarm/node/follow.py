"""Which of the swarm's broadcasts an agent takes, so that it pays only for what it uses.

- The retained checkpoint (``model/latest`` and its chunks) only while the agent needs it
  (catching up, or adopting a model it did not merge): an agent that merges every round
  itself would otherwise receive the whole model again each round.
- In ``merge_by = "committee"``, a round's deltas (``round/{r}/delta/+``) and the full form of
  the round's entries (``ledger/bodies``: the commits it merges) only while the agent is on
  that round's committee: an agent outside it never receives a peer's update nor the
  fleet's list of commits, which is what keeps its cost flat as the fleet grows. In "all"
  mode every delta, as before.

Nothing here waits for the broker's SUBACK: a member that waited at ``round_open`` trained
two round trips late (issue 20). What was published before a subscription took effect is
asked of its author once the round closes (``model_share.MEMBER_ASK_S``); a retained
checkpoint comes whenever the subscription lands.
"""

from __future__ import annotations

from edge_swarm.io.mqtt import MqttClient
from edge_swarm.swarm.mirror import BodyStash
from edge_swarm.swarm.topics import Topics


class Follow:
    """Subscribes and unsubscribes an agent's broadcast topics as its needs change."""

    def __init__(self, mqtt: MqttClient, topics: Topics) -> None:
        self._mqtt = mqtt
        self._topics = topics
        self._checkpoints = False
        self._all_deltas = False
        self._round: int | None = None  # committee mode: the round whose deltas we take
        self.reveals = False  # secure aggregation: a member takes the round's reveals too
        self.bodies = BodyStash()  # full forms of that round's entries

    def checkpoints(self, on: bool) -> None:
        if on == self._checkpoints:
            return
        self._checkpoints = on
        for topic in (self._topics.model_latest(), self._topics.model_chunk_filter()):
            if on:
                self._mqtt.subscribe(topic, qos=1, timeout=0)
            else:
                self._mqtt.unsubscribe(topic)

    def all_deltas(self, on: bool) -> None:
        """Every round's deltas ("all" mode; off once the genesis says committee)."""
        if on == self._all_deltas:
            return
        self._all_deltas = on
        if on:
            self._mqtt.subscribe(self._topics.delta_filter(), qos=1, timeout=0)
        else:
            self._mqtt.unsubscribe(self._topics.delta_filter())

    def round_deltas(self, rnd: int, member: bool) -> None:
        """Committee mode: round ``rnd`` opened; take its deltas iff this node merges it."""
        if self._round is not None:
            self._mqtt.unsubscribe(self._topics.round_delta_filter(self._round))
            if self.reveals:
                self._mqtt.unsubscribe(self._topics.reveal_filter(self._round))
            if not member:
                self._mqtt.unsubscribe(self._topics.ledger_bodies())
            self._round = None
        if member:
            t = self._topics
            reveals = [t.reveal_filter(rnd)] if self.reveals else []
            self._mqtt.subscribe_all(
                [t.round_delta_filter(rnd), t.ledger_bodies(), *reveals], timeout=0
            )
            self._round = rnd
