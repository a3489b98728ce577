"""An agent's side of the round protocol (see ``protocol`` for the whole picture).

Invariants
----------
* A participant never trains on a base other than the one the ledger opened the round with,
  and trains at most once a round.
* It merges exactly the envelopes ``round_close`` names, and only from the base it holds.
* The ledger, not a checkpoint, says which bytes are final: it commits its own merge when
  its hash is the final one, else it adopts the checkpoint of the final hash.
"""

from __future__ import annotations

from edge_swarm.swarm.rounds import (
    Action,
    AdoptCheckpoint,
    Append,
    Appended,
    CheckpointAdopted,
    Commit,
    EnvelopeStored,
    Event,
    Merge,
    MergeDone,
    MergeFailed,
    RoundState,
    Tick,
    Train,
    TrainingDone,
    attest_payload,
)


class Participant:
    """An agent's side of the round protocol (see the module header).

    ``model_hash`` is the hash of the model the agent holds now; the wiring keeps the
    parameters, the machine keeps which round they belong to and what to do next.
    """

    def __init__(self, node: str, model_hash: str) -> None:
        self.node = node
        self.model_hash = model_hash
        self.model_round = 0
        self.open: RoundState | None = None
        self.commits: dict[int, dict[str, str]] = {}
        self.samples: dict[int, dict[str, int]] = {}
        self.stored: dict[int, set[str]] = {}
        self.merged: dict[int, str] = {}
        self.finals: dict[int, str] = {}
        self.trained: set[int] = set()
        # While the wiring replays the ledger's history the machine only folds it; the
        # wiring calls ``catch_up`` at the end to act on where the history left off.
        self.replaying = False
        self._closing: dict[int, Merge] = {}
        self._merging: set[int] = set()
        self._adopting: int | None = None
        self._now = 0

    def handle(self, event: Event) -> list[Action]:
        """Fold one event and return the actions it calls for."""
        if isinstance(event, Tick):
            self._now = event.now_ms
            return self._maybe_train()
        if isinstance(event, Appended):
            return self._on_appended(event)
        if isinstance(event, TrainingDone):
            return self._on_trained(event)
        if isinstance(event, EnvelopeStored):
            self.stored.setdefault(event.round, set()).add(event.node)
            return self._maybe_merge(event.round)
        if isinstance(event, MergeDone):
            self._merging.discard(event.round)
            self.merged[event.round] = event.model_hash
            return [Append("model_attest", attest_payload(event))] + self._maybe_commit(event.round)
        if isinstance(event, MergeFailed):
            self._merging.discard(event.round)
            return []
        if isinstance(event, CheckpointAdopted):
            return self._on_adopted(event)
        return []

    def catch_up(self) -> list[Action]:
        """After a replay of the ledger: adopt the latest final model if ours is not it."""
        self.replaying = False
        if not self.finals:
            return self._maybe_train()
        last = max(self.finals)
        if self.finals[last] != self.model_hash:
            self._adopting = last
            return [AdoptCheckpoint(last, self.finals[last])]
        self.model_round = last
        return self._maybe_train()

    def _on_appended(self, ev: Appended) -> list[Action]:
        p = ev.payload
        self._now = max(self._now, ev.ts)
        if ev.kind == "round_open":
            if self.open is not None and p["round"] <= self.open.number:
                return []  # a second open of the same round: the first one counts
            self.open = RoundState(p["round"], p["base_model_hash"], p["deadline_ms"])
            return self._maybe_train()
        if ev.kind == "delta_commit":
            self.commits.setdefault(p["round"], {})[ev.author] = p["envelope_sha256"]
            self.samples.setdefault(p["round"], {})[ev.author] = p["n_samples"]
        elif ev.kind == "round_close":
            rnd = p["round"]
            if self.open is not None and self.open.number == rnd:
                self.open.included = tuple(p["included"])
            commits = self.commits.get(rnd, {})
            if p["included"] and all(n in commits for n in p["included"]):
                samples = self.samples.get(rnd, {})
                self._closing[rnd] = Merge(
                    rnd,
                    tuple((n, commits[n]) for n in p["included"]),
                    tuple((n, samples.get(n, 0)) for n in p["included"]),
                )
                return self._maybe_merge(rnd)
        elif ev.kind == "model_final":
            self.finals[p["round"]] = p["model_hash"]
            return self._maybe_commit(p["round"])
        return []

    def _maybe_train(self) -> list[Action]:
        cur = self.open
        if cur is None or self.replaying or cur.included is not None:
            return []
        if cur.number in self.trained or self._now >= cur.deadline_ms:
            return []
        if cur.base_hash != self.model_hash or self._adopting is not None:
            return []
        self.trained.add(cur.number)
        return [Train(cur.number, cur.base_hash)]

    def _on_trained(self, ev: TrainingDone) -> list[Action]:
        payload = {
            "round": ev.round,
            "node": self.node,
            "envelope_sha256": ev.envelope_sha256,
            "n_samples": ev.n_samples,
            "metrics": ev.metrics,
        }
        return [Append("delta_commit", payload)]

    def _maybe_merge(self, rnd: int) -> list[Action]:
        merge = self._closing.get(rnd)
        if merge is None or self.replaying or rnd in self._merging or rnd in self.merged:
            return []
        if self.open is None or self.open.number != rnd or self.open.base_hash != self.model_hash:
            return []  # we do not hold the base: the checkpoint will bring us level
        if not {n for n, _ in merge.included} <= self.stored.get(rnd, set()):
            return []
        self._merging.add(rnd)
        return [merge]

    def _maybe_commit(self, rnd: int) -> list[Action]:
        final = self.finals.get(rnd)
        if final is None or self.replaying:
            return []
        self._closing.pop(rnd, None)
        if self.merged.get(rnd) == final:
            self.model_hash, self.model_round = final, rnd
            self._forget_before(rnd)
            return [Commit(rnd, final)]
        if rnd in self._merging:
            return []  # our merge is still running; its MergeDone decides
        if self.model_hash == final:
            return []
        self._adopting = rnd
        return [AdoptCheckpoint(rnd, final)]

    def _on_adopted(self, ev: CheckpointAdopted) -> list[Action]:
        if self.finals.get(ev.round) != ev.model_hash:
            return []
        self._adopting = None
        self.model_hash, self.model_round = ev.model_hash, ev.round
        self._forget_before(ev.round)
        return self._maybe_train()

    def _forget_before(self, rnd: int) -> None:
        for table in (self.commits, self.samples, self.stored, self.merged):
            for old in [r for r in table if r < rnd]:
                del table[old]
