"""The round protocol as two pure state machines: events in, actions out.

How it works
------------
Every fact the machines act on comes from the ledger (``Appended``: an entry the ledger
accepted), from the clock (``Tick``) or from the process wiring reporting that a piece of
work it was asked to do is finished (``TrainingDone``, ``MergeDone`` …). The machines never
touch a socket, a file or a thread; they return actions for the wiring to carry out.

* ``Coordinator`` runs on the gateway. It opens a round, closes it when every expected peer
  has committed (or at the deadline with at least ``min_peers``), asks the wiring to merge,
  and finalises the model once a majority of the included nodes attest one hash.
* ``Participant`` runs on each agent. It trains when a round opens on the model it holds,
  merges exactly the envelopes named by ``round_close``, attests the result, and adopts the
  retained checkpoint whenever its own bytes are not the ones the ledger finalised.

Invariants
----------
* The coordinator's state is a fold of the ledger: a restarted gateway rebuilds it by
  replaying the chain through ``handle`` (actions produced during replay are discarded).
* At most one round is open; round numbers increase by one from 1.
* ``round_close.included`` is sorted, and only nodes with a ``delta_commit`` for that round
  are included. A round closed with nobody leaves the model unchanged.
* A participant never trains on a base other than the one the ledger opened the round with.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Tick:
    """The clock moved; ``now_ms`` is wall time in milliseconds."""

    now_ms: int


@dataclass(frozen=True)
class Appended:
    """The ledger accepted an entry (kind, author, payload, ts in ms)."""

    kind: str
    author: str
    payload: dict[str, Any]
    ts: int


@dataclass(frozen=True)
class PeerSeen:
    """An agent's status changed: online (retained status) or offline (its last will)."""

    node: str
    online: bool


@dataclass(frozen=True)
class TrainingDone:
    """The wiring trained for ``round`` and published an envelope with this sha256."""

    round: int
    envelope_sha256: str
    n_samples: int
    metrics: dict[str, Any]


@dataclass(frozen=True)
class EnvelopeStored:
    """A verified envelope for (round, node) is in the inbox."""

    round: int
    node: str
    sha256: str


@dataclass(frozen=True)
class MergeDone:
    """The wiring merged ``round`` and holds the candidate model with these hashes."""

    round: int
    model_hash: str
    state_hash: str


@dataclass(frozen=True)
class MergeFailed:
    """The wiring could not merge ``round`` (an envelope never arrived or did not match)."""

    round: int
    reason: str


@dataclass(frozen=True)
class CheckpointAdopted:
    """The wiring loaded a checkpoint whose hash matches the ledger's ``model_final``."""

    round: int
    model_hash: str


Event = (
    Tick
    | Appended
    | PeerSeen
    | TrainingDone
    | EnvelopeStored
    | MergeDone
    | MergeFailed
    | CheckpointAdopted
)

# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Append:
    """Sign and append an entry of ``kind`` to the ledger (coordinator) or submit it (agent)."""

    kind: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Train:
    """Train locally from the model with ``base_hash`` and publish the envelope."""

    round: int
    base_hash: str


@dataclass(frozen=True)
class Merge:
    """Merge exactly these (node, envelope sha256) pairs, in this (node-id) order."""

    round: int
    included: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Commit:
    """The candidate model of ``round`` is final: make it the current model."""

    round: int
    model_hash: str


@dataclass(frozen=True)
class AdoptCheckpoint:
    """Load the retained checkpoint of ``round`` and check it has ``model_hash``."""

    round: int
    model_hash: str


@dataclass(frozen=True)
class PublishCheckpoint:
    """Publish the final model of ``round`` as the retained checkpoint."""

    round: int
    model_hash: str


@dataclass(frozen=True)
class SwarmDone:
    """The round budget is spent."""

    rounds: int


Action = Append | Train | Merge | Commit | AdoptCheckpoint | PublishCheckpoint | SwarmDone

# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class RoundPolicy:
    """Timing and quorum of rounds; all times in milliseconds."""

    rounds: int = 20
    min_peers: int = 2
    round_deadline_ms: int = 60_000
    attest_timeout_ms: int = 30_000
    start_grace_ms: int = 30_000

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.min_peers < 1:
            raise ValueError("rounds and min_peers must be at least 1")
        if min(self.round_deadline_ms, self.attest_timeout_ms, self.start_grace_ms) < 0:
            raise ValueError("timeouts must be non-negative")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> RoundPolicy:
        """Build from the genesis ``params`` (seconds there, milliseconds here)."""
        return cls(
            rounds=int(params.get("rounds", 20)),
            min_peers=int(params.get("min_peers", 2)),
            round_deadline_ms=int(float(params.get("round_deadline_s", 60)) * 1000),
            attest_timeout_ms=int(float(params.get("attest_timeout_s", 30)) * 1000),
            start_grace_ms=int(float(params.get("start_grace_s", 30)) * 1000),
        )


@dataclass
class _Round:
    number: int
    base_hash: str
    deadline_ms: int
    commits: dict[str, str] = field(default_factory=dict)
    included: tuple[str, ...] | None = None
    closed_at_ms: int = 0
    attests: dict[str, tuple[str, str]] = field(default_factory=dict)
    own: tuple[str, str] | None = None
    expected: frozenset[str] = frozenset()


# --------------------------------------------------------------------------- coordinator


class Coordinator:
    """The gateway's side of the round protocol (see the module header).

    ``agents`` is the set of enrolled agent ids; ``initial_hash`` the hash of the genesis
    model. Feed every appended ledger entry (including the coordinator's own) as
    ``Appended``, and the clock as ``Tick``.
    """

    def __init__(self, policy: RoundPolicy, initial_hash: str, started_ms: int) -> None:
        self.policy = policy
        self.model_hash = initial_hash
        self.finished_rounds = 0
        self.last_round = 0
        self.current: _Round | None = None
        self.agents: set[str] = set()
        self.online: set[str] = set()
        self._started_ms = started_ms
        self._pending: str | None = None
        self._done = False
        # While a restarted gateway replays its ledger the coordinator only folds entries.
        self.replaying = False

    # -- inputs
    def handle(self, event: Event) -> list[Action]:
        """Fold one event and return the actions it calls for."""
        if isinstance(event, Appended):
            return self._on_appended(event)
        if isinstance(event, PeerSeen):
            (self.online.add if event.online else self.online.discard)(event.node)
            return self._progress(None)
        if isinstance(event, MergeDone) and self._is_closing(event.round):
            assert self.current is not None
            self.current.own = (event.model_hash, event.state_hash)
            return [Append("model_attest", _attest(event))] + self._progress(None)
        if isinstance(event, Tick):
            return self._progress(event.now_ms)
        return []

    def resume(self) -> list[Action]:
        """Start acting (after a replay, or on becoming the coordinator): forget an entry we
        were waiting for (it may have been lost with the old leader) and ask again for the
        merge of a round that was closed but not final."""
        self.replaying = False
        self._pending = None
        cur = self.current
        if cur is None or not cur.included:
            return []
        return [Merge(cur.number, tuple((n, cur.commits[n]) for n in cur.included))]

    def append_failed(self) -> None:
        """The wiring could not append the pending entry: allow a retry on the next tick."""
        self._pending = None

    @property
    def done(self) -> bool:
        return self._done

    # -- ledger folding
    def _on_appended(self, ev: Appended) -> list[Action]:
        p = ev.payload
        if self._pending == ev.kind:
            self._pending = None
        if ev.kind == "enroll" and p.get("role") == "agent":
            self.agents.add(p["node"])
        elif ev.kind == "revoke":
            self.agents.discard(p["node"])
            self.online.discard(p["node"])
        elif ev.kind == "round_open":
            if p["round"] <= self.last_round:
                return []  # a second open of a round (two leaders a moment apart): the first counts
            self.current = _Round(p["round"], p["base_model_hash"], p["deadline_ms"])
            self.current.expected = frozenset(self.online & self.agents)
            self.last_round = p["round"]
        elif ev.kind == "delta_commit" and self._is_open(p["round"]):
            assert self.current is not None
            self.current.commits[ev.author] = p["envelope_sha256"]
        elif ev.kind == "round_close" and self._is_open(p["round"]):
            return self._on_close(ev)
        elif ev.kind == "model_attest" and self._is_closing(p["round"]):
            assert self.current is not None
            self.current.attests[ev.author] = (p["model_hash"], p["state_hash"])
        elif ev.kind == "model_final":
            self.model_hash = p["model_hash"]
            self.finished_rounds += 1
            self.current = None
            return [PublishCheckpoint(p["round"], p["model_hash"])] + self._check_done()
        return self._progress(None)

    def _on_close(self, ev: Appended) -> list[Action]:
        cur = self.current
        assert cur is not None
        cur.included = tuple(ev.payload["included"])
        cur.closed_at_ms = ev.ts
        if not cur.included:  # a void round: the model stays, the next round may open
            self.current = None
            self.finished_rounds += 1
            return self._check_done()
        if self.replaying:
            return []
        return [Merge(cur.number, tuple((n, cur.commits[n]) for n in cur.included))]

    def _check_done(self) -> list[Action]:
        if self.finished_rounds >= self.policy.rounds and not self._done:
            self._done = True
            return [SwarmDone(self.finished_rounds)]
        return []

    def _is_open(self, rnd: int) -> bool:
        return self.current is not None and self.current.number == rnd and not self._closed

    def _is_closing(self, rnd: int) -> bool:
        return self.current is not None and self.current.number == rnd and self._closed

    @property
    def _closed(self) -> bool:
        return self.current is not None and self.current.included is not None

    # -- decisions
    def _progress(self, now_ms: int | None) -> list[Action]:
        if self._pending is not None or self._done or self.replaying:
            return []
        if self.current is None:
            return self._maybe_open(now_ms)
        if not self._closed:
            return self._maybe_close(now_ms)
        return self._maybe_final(now_ms)

    def _maybe_open(self, now_ms: int | None) -> list[Action]:
        if now_ms is None:
            return []
        ready = len(self.online & self.agents)
        everyone = bool(self.agents) and self.agents <= self.online
        # The grace only delays the first round, so that a fleet that is still booting
        # starts together; later rounds go on with whoever is online.
        grace_over = self.last_round > 0 or now_ms - self._started_ms >= self.policy.start_grace_ms
        if ready < self.policy.min_peers or not (everyone or grace_over):
            return []
        rnd = self.last_round + 1
        deadline = now_ms + self.policy.round_deadline_ms
        payload = {"round": rnd, "base_model_hash": self.model_hash, "deadline_ms": deadline}
        self._pending = "round_open"
        return [Append("round_open", payload)]

    def _maybe_close(self, now_ms: int | None) -> list[Action]:
        cur = self.current
        assert cur is not None
        committed = set(cur.commits)
        # Peers that went offline after the round opened are no longer waited for.
        waiting_for = (cur.expected & self.online) - committed
        all_in = not waiting_for and len(committed) >= self.policy.min_peers
        past_deadline = now_ms is not None and now_ms >= cur.deadline_ms
        if not (all_in or past_deadline):
            return []
        if len(committed) >= self.policy.min_peers:
            reason = "all expected peers committed" if all_in else "deadline"
            included = sorted(committed)
        else:
            reason, included = f"deadline with {len(committed)} < min_peers commits", []
        self._pending = "round_close"
        payload = {"round": cur.number, "included": included, "reason": reason}
        return [Append("round_close", payload)]

    def _maybe_final(self, now_ms: int | None) -> list[Action]:
        cur = self.current
        assert cur is not None and cur.included is not None
        votes = Counter(v for n, v in cur.attests.items() if n in cur.included)
        winner: tuple[str, str] | None = None
        if votes:
            ((top, count),) = votes.most_common(1)
            if count * 2 > len(cur.included):
                winner = top
        timed_out = (
            now_ms is not None and now_ms - cur.closed_at_ms >= self.policy.attest_timeout_ms
        )
        if winner is None and timed_out and cur.own is not None:
            winner = cur.own  # too few attests in time: the coordinator's own merge decides
        if winner is None:
            return []
        attesters = sorted(n for n, v in cur.attests.items() if v == winner)
        payload = {
            "round": cur.number,
            "model_hash": winner[0],
            "state_hash": winner[1],
            "attesters": attesters,
        }
        self._pending = "model_final"
        return [Append("model_final", payload)]


def _attest(ev: MergeDone) -> dict[str, Any]:
    return {"round": ev.round, "model_hash": ev.model_hash, "state_hash": ev.state_hash}


# --------------------------------------------------------------------------- participant


class Participant:
    """An agent's side of the round protocol (see the module header).

    ``model_hash`` is the hash of the model the agent holds now; the wiring keeps the
    parameters, the machine keeps which round they belong to and what to do next.
    """

    def __init__(self, node: str, model_hash: str, merge_timeout_ms: int = 30_000) -> None:
        self.node = node
        self.model_hash = model_hash
        self.merge_timeout_ms = merge_timeout_ms
        self.model_round = 0
        self.open: _Round | None = None
        self.commits: dict[int, dict[str, str]] = {}
        self.stored: dict[int, set[str]] = {}
        self.merged: dict[int, str] = {}
        self.finals: dict[int, str] = {}
        self.trained: set[int] = set()
        self.paused = False
        # While the wiring replays the ledger's history the machine only folds it; the
        # wiring calls ``catch_up`` at the end to act on where the history left off.
        self.replaying = False
        self._closing: dict[int, tuple[tuple[str, str], ...]] = {}
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
            return [Append("model_attest", _attest(event))] + self._maybe_commit(event.round)
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
            self.open = _Round(p["round"], p["base_model_hash"], p["deadline_ms"])
            return self._maybe_train()
        if ev.kind == "delta_commit":
            self.commits.setdefault(p["round"], {})[ev.author] = p["envelope_sha256"]
        elif ev.kind == "round_close":
            rnd = p["round"]
            if self.open is not None and self.open.number == rnd:
                self.open.included = tuple(p["included"])
            commits = self.commits.get(rnd, {})
            if p["included"] and all(n in commits for n in p["included"]):
                self._closing[rnd] = tuple((n, commits[n]) for n in p["included"])
                return self._maybe_merge(rnd)
        elif ev.kind == "model_final":
            self.finals[p["round"]] = p["model_hash"]
            return self._maybe_commit(p["round"])
        return []

    def _maybe_train(self) -> list[Action]:
        cur = self.open
        if cur is None or self.paused or self.replaying or cur.included is not None:
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
        included = self._closing.get(rnd)
        if included is None or self.replaying or rnd in self._merging or rnd in self.merged:
            return []
        if self.open is None or self.open.number != rnd or self.open.base_hash != self.model_hash:
            return []  # we do not hold the base: the checkpoint will bring us level
        if not {n for n, _ in included} <= self.stored.get(rnd, set()):
            return []
        self._merging.add(rnd)
        return [Merge(rnd, included)]

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
        for table in (self.commits, self.stored, self.merged):
            for old in [r for r in table if r < rnd]:
                del table[old]
