"""An agent's side of the round protocol (see ``protocol`` for the whole picture).

Invariants
----------
* A participant never trains on a base other than the one the ledger opened the round with,
  and trains at most once a round.
* It merges exactly the envelopes ``round_close`` names, and only from the base it holds.
* The ledger, not a checkpoint, says which bytes are final: it commits its own merge when
  its hash is the final one, else it adopts the checkpoint of the final hash.
* No decision depends on the device's wall clock (a Pi boots with the time it last saved).
  A round's training window is ``deadline_ms - ts`` of its ``round_open`` (both on the
  coordinator's clock), started on the device's monotonic clock (``Tick.now_ms``) when the
  entry is folded live, or when ``catch_up`` ends for a round the history left open; a
  device whose ledger clock (``Tick.ledger_ms``) says it saw the entry late has that much
  less. The window only matters to a device that cannot train at once (it is adopting a
  checkpoint): one that can, trains as the entry is folded.

In ``merge_by = "committee"`` (the genesis's choice; "all" keeps every rule above as it is):

* It folds enrolments and revocations and draws each round's committee from the
  ``round_open`` entry's hash (``Appended.hash``), exactly as the coordinator does
  (``committee_round.CommitteeBook``), so ``is_member(round)`` and ``committee(round)`` tell
  the wiring, from the ledger alone, whether to take the round's deltas.
* A member does what every participant does in "all" mode: merges the round and attests.
  A non-member never asks for a ``Merge`` and never attests that round; it still trains and
  commits its delta, and on ``model_final`` adopts the final model (``AdoptCheckpoint``),
  unless it holds those bytes already (a round abandoned on its base model).
* Its commit is folded into the round's ``round_close`` (``ledger_lite/commits.py``): a
  member learns the round's commits from that entry's ``commits`` rows; a light agent gets
  the entry's compact form (the rows and the included list as digests) and needs neither.
* With a downlink (``swarm/downlink.py``) members attest the update's sha256 too, and a
  light agent takes the model from the update only if ``update_backed``: a quorum of the
  committee attested that update and the final pair. An agent that took an update lacks the
  merge state (``CheckpointAdopted.with_state`` False); drawn onto a committee, it asks for
  the checkpoint of the model it holds (``AdoptCheckpoint(state=True)``, training goes on)
  and merges only once the state is in.
"""

from __future__ import annotations

from typing import Any

from edge_swarm.swarm.committee import Committee
from edge_swarm.swarm.committee_round import CommitteeBook, quorum_winner
from edge_swarm.swarm.rounds import (
    Action,
    AdoptCheckpoint,
    Append,
    Appended,
    CheckpointAdopted,
    Commit,
    EnvelopeStored,
    Event,
    FinalRefused,
    Merge,
    MergeDone,
    MergeFailed,
    RoundPolicy,
    RoundState,
    Tick,
    Train,
    TrainingDone,
    attest_payload,
)
from ledger_lite.commits import commit_payload, val_metrics


class Participant:
    """An agent's side of the round protocol (see the module header).

    ``model_hash`` is the hash of the model the agent holds now; the wiring keeps the
    parameters, the machine keeps which round they belong to and what to do next.
    ``policy`` is the genesis's (``RoundPolicy.from_params``); only its ``merge_by`` and
    ``committee_k`` matter here. None means "all", today's rounds.
    """

    def __init__(self, node: str, model_hash: str, policy: RoundPolicy | None = None) -> None:
        self.node = node
        self.model_hash = model_hash
        self.by_committee = policy is not None and policy.by_committee
        self.committees = CommitteeBook(policy.committee_k if policy is not None else 0)
        self._votes: dict[int, dict[str, tuple[str, str]]] = {}  # round -> member -> pair
        self._updates: dict[int, dict[str, str]] = {}  # round -> member -> update sha256
        self.state_known = True  # False once the model came from an update (no merge state)
        self.model_round = 0
        self.open: RoundState | None = None
        self.commits: dict[int, dict[str, str]] = {}
        self.samples: dict[int, dict[str, int]] = {}
        self.stored: dict[int, set[str]] = {}
        self.merged: dict[int, str] = {}
        self.finals: dict[int, str] = {}
        self._final_pairs: dict[int, tuple[str, str]] = {}  # round -> (model, state) hash
        self.trained: set[int] = set()
        self.attested: set[int] = set()  # rounds our attestation is on the ledger for
        # While the wiring replays the ledger's history the machine only folds it; the
        # wiring calls ``catch_up`` at the end to act on where the history left off.
        self.replaying = False
        self._closing: dict[int, Merge] = {}
        self._merging: set[int] = set()
        self._adopting: int | None = None
        self._now = 0  # the device's monotonic clock, ms (the last Tick)
        self._ledger_now: int | None = None  # its ledger clock at that Tick, once it has one
        self._window_end: int | None = None  # the open round's, monotonic; None until seen
        self._open_ts = 0  # the open round's round_open ts (the coordinator's clock)

    def handle(self, event: Event) -> list[Action]:
        """Fold one event and return the actions it calls for."""
        if isinstance(event, Tick):
            self._now, self._ledger_now = event.now_ms, event.ledger_ms
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
            # A non-member never asked for this merge; were it done anyway, it must not vote.
            attest = [Append("model_attest", attest_payload(event))]
            return (attest if self.is_member(event.round) else []) + self._maybe_commit(event.round)
        if isinstance(event, MergeFailed):
            self._merging.discard(event.round)
            return []
        if isinstance(event, CheckpointAdopted):
            return self._on_adopted(event)
        return []

    def catch_up(self, now_ms: int, ledger_ms: int | None = None) -> list[Action]:
        """After a replay of the ledger: adopt the latest final model if ours is not it.
        ``now_ms`` and ``ledger_ms`` as in ``Tick``: a round the history left open is seen
        now, and its training window starts now."""
        self.replaying = False
        self._now, self._ledger_now = now_ms, ledger_ms
        if self.open is not None and self._window_end is None:
            self._start_window()
        if not self.finals:
            return self._maybe_train()
        last = max(self.finals)
        if self.finals[last] != self.model_hash:
            self._adopting = last
            return [AdoptCheckpoint(last, self.finals[last])]
        self.model_round = last
        return self._maybe_train()

    def retry_merge(self, rnd: int) -> list[Action]:
        """Merge round ``rnd`` now if it waits for nothing this machine knows of (a merge
        that failed for want of something the wiring holds, e.g. secure aggregation's
        reveals)."""
        return self._maybe_merge(rnd)

    def is_member(self, rnd: int) -> bool:
        """Whether this node merges round ``rnd`` (and so needs its deltas): always in "all"
        mode; in committee mode iff it was drawn (False for a round not drawn yet)."""
        if not self.by_committee:
            return True
        drawn = self.committees.of(rnd)
        return drawn is not None and self.node in drawn

    def missing(self, rnd: int) -> list[tuple[str, str]]:
        """Committee mode: the (node, envelope sha256) a member still lacks to merge closed
        round ``rnd`` (it subscribed to the round's deltas only at round_open, racing the
        first ones; the wiring asks their authors). Empty otherwise, and in "all" mode."""
        merge = self._closing.get(rnd)
        if not self.by_committee or merge is None or rnd in self.merged:
            return []
        stored = self.stored.get(rnd, set())
        return [(n, sha) for n, sha in merge.included if n not in stored]

    def update_backed(self, rnd: int, update_sha256: str) -> bool:
        """Whether a quorum of round ``rnd``'s committee attested this downlink update and
        the final (model, state) pair on the ledger: what a light agent checks before it
        applies an update. False before the round's ``model_final``."""
        drawn, final = self.committees.of(rnd), self._final_pairs.get(rnd)
        if drawn is None or final is None:
            return False
        votes, updates = self._votes.get(rnd, {}), self._updates.get(rnd, {})
        backing = [
            a for a in drawn.members if votes.get(a) == final and updates.get(a) == update_sha256
        ]
        return len(backing) >= drawn.quorum

    def committee(self, rnd: int) -> Committee | None:
        """Round ``rnd``'s committee (committee mode, from its round_open until the round
        after it is final), else None."""
        return self.committees.of(rnd) if self.by_committee else None

    def _on_appended(self, ev: Appended) -> list[Action]:
        p = ev.payload
        if self.by_committee:
            self.committees.fold(ev)  # enrolments and revocations: who may be drawn
        if ev.kind == "round_open":
            if self.open is not None and p["round"] <= self.open.number:
                return []  # a second open of the same round: the first one counts
            if self.by_committee:
                self.committees.draw(p["round"], ev)  # the same draw as the coordinator's
            self.open = RoundState(p["round"], p["base_model_hash"], p["deadline_ms"])
            self._open_ts, self._window_end = ev.ts, None
            if not self.replaying:  # from history, the entry has no "seen" time: catch_up
                self._start_window()
            return self._fetch_state(p["round"]) + self._maybe_train()
        if ev.kind == "delta_commit":
            self.commits.setdefault(p["round"], {})[ev.author] = p["envelope_sha256"]
            self.samples.setdefault(p["round"], {})[ev.author] = p["n_samples"]
            if ev.author == self.node:  # committed before a restart: never a second delta
                self.trained.add(p["round"])
        elif ev.kind == "round_close":
            rnd = p["round"]
            # Compact (a light agent's): the included list and the rows are digests.
            included = p["included"] if isinstance(p["included"], list) else []
            if self.open is not None and self.open.number == rnd:
                self.open.included = tuple(included)
            rows = p.get("commits") if isinstance(p.get("commits"), list) else []
            for node, sha, n, *_ in rows:  # committee mode: folded commits
                self.commits.setdefault(rnd, {})[node] = sha
                self.samples.setdefault(rnd, {})[node] = n
                if node == self.node:
                    self.trained.add(rnd)
            commits = self.commits.get(rnd, {})
            if not self.is_member(rnd):
                return []  # the committee merges: this node adopts at model_final
            if included and all(n in commits for n in included):
                samples = self.samples.get(rnd, {})
                self._closing[rnd] = Merge(
                    rnd,
                    tuple((n, commits[n]) for n in included),
                    tuple((n, samples.get(n, 0)) for n in included),
                )
                return self._maybe_merge(rnd)
        elif ev.kind == "model_attest":
            if ev.author == self.node:
                self.attested.add(p["round"])
            if self.by_committee:  # what a model_final must be backed by (_unbacked)
                votes = self._votes.setdefault(p["round"], {})
                votes[ev.author] = (p["model_hash"], p["state_hash"])
                if "update_sha256" in p:
                    self._updates.setdefault(p["round"], {})[ev.author] = p["update_sha256"]
        elif ev.kind == "model_final":
            why = self._unbacked(p)
            if why is not None:
                return [FinalRefused(p["round"], p["model_hash"], why)]
            self.finals[p["round"]] = p["model_hash"]
            self._final_pairs[p["round"]] = (p["model_hash"], p["state_hash"])
            return self._maybe_commit(p["round"])
        return []

    def _unbacked(self, p: dict[str, Any]) -> str | None:
        """Committee mode: why a model_final is not to be taken (None if it is). The ledger
        checks each attestation's signature and author; that a quorum of the round's
        committee attested exactly these bytes is this machine's to check, so a coordinator
        that appends a final on its own word moves no model."""
        rnd = p["round"]
        drawn = self.committees.of(rnd) if self.by_committee else None
        if drawn is None:
            return None  # "all" mode, or a round whose open this machine never saw
        if "abandoned" in p and p["model_hash"] == self.model_hash:
            return None  # finalised on the model it started from: nothing changes hands
        pair = (p["model_hash"], p["state_hash"])
        if quorum_winner(drawn, self._votes.get(rnd, {})) == pair:
            return None
        n = sum(1 for a, v in self._votes.get(rnd, {}).items() if a in drawn and v == pair)
        return (
            f"round {rnd}: model_final {pair[0][:12]} is backed by {n} of the {drawn.quorum} "
            f"attestations of its committee ({', '.join(drawn.members)}) it needs"
        )

    def _start_window(self) -> None:
        """The open round is seen now: its training window ends its budget from now, less
        the time the ledger clock (when there is one) says has passed since it opened."""
        assert self.open is not None
        budget = self.open.deadline_ms - self._open_ts  # both on the coordinator's clock
        late = 0 if self._ledger_now is None else max(0, self._ledger_now - self._open_ts)
        self._window_end = self._now + budget - late

    def _maybe_train(self) -> list[Action]:
        cur = self.open
        if cur is None or self.replaying or cur.included is not None:
            return []
        if cur.number in self.trained or self._window_end is None:
            return []
        if self._now >= self._window_end:
            return []
        if cur.base_hash != self.model_hash or self._adopting is not None:
            return []
        self.trained.add(cur.number)
        return [Train(cur.number, cur.base_hash)]

    def _on_trained(self, ev: TrainingDone) -> list[Action]:
        if self.by_committee:  # folded into round_close: the row carries validation only
            val = val_metrics(ev.metrics)
            payload = commit_payload(ev.round, self.node, ev.envelope_sha256, ev.n_samples, val)
            return [Append("delta_commit", payload)]
        payload = {
            "round": ev.round,
            "node": self.node,
            "envelope_sha256": ev.envelope_sha256,
            "n_samples": ev.n_samples,
            "metrics": ev.metrics,
        }
        return [Append("delta_commit", payload)]

    def _fetch_state(self, rnd: int) -> list[Action]:
        """Drawn onto round ``rnd``'s committee while holding a model without its merge
        state (it came from an update): ask for the checkpoint of the model held."""
        if self.state_known or self.replaying or not self.is_member(rnd):
            return []
        if self._adopting is not None or self.model_round not in self.finals:
            return []  # an adoption under way brings the state; round 0 has none to fetch
        return [AdoptCheckpoint(self.model_round, self.model_hash, state=True)]

    def _maybe_merge(self, rnd: int) -> list[Action]:
        merge = self._closing.get(rnd)
        if merge is None or self.replaying or rnd in self._merging or rnd in self.merged:
            return []
        if not self.state_known:
            return []  # merging without the state would attest a state nobody else holds
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
            self.state_known = True
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
        self.state_known = ev.with_state
        self._forget_before(ev.round)
        # A member that fetched the state may now merge the round it holds closed.
        closing = self.open is not None and self.open.number in self._closing
        merge = self._maybe_merge(self.open.number) if closing and self.open else []
        fetch = self._fetch_state(self.open.number) if self.open is not None else []
        return self._maybe_train() + merge + fetch

    def _forget_before(self, rnd: int) -> None:
        for table in (self.commits, self.samples, self.stored, self.merged):
            for old in [r for r in table if r < rnd]:
                del table[old]
        self.trained = {r for r in self.trained if r >= rnd}
        self.attested = {r for r in self.attested if r >= rnd}
        self.committees.forget_before(rnd)
        self._votes = {r: v for r, v in self._votes.items() if r >= rnd}
        self._updates = {r: v for r, v in self._updates.items() if r >= rnd}
        self._final_pairs = {r: v for r, v in self._final_pairs.items() if r >= rnd}
