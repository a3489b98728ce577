"""The round protocol's vocabulary: the events the machines take, the actions they return,
and the policy (quorum, timing, who merges) they follow. See ``protocol`` for how the
machines work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge_swarm.swarm.campaign import CampaignSettings
from edge_swarm.swarm.convergence import StopRule

# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Tick:
    """The clock moved. ``now_ms`` is in milliseconds on the machine's own clock: the
    gateway's wall clock for the ``Coordinator`` (its clock is the swarm's: it stamps the
    ledger's round entries), the device's monotonic clock for a ``Participant``, which never
    reads a wall clock. ``ledger_ms``, for a participant only: its ledger clock's reading at
    that moment (``swarm.ledger_clock``), None while it has none. ``mono_ms``, for the
    coordinator only: its monotonic clock, which times the genesis's cadence (None: no
    reading; under a cadence no round opens until there is one)."""

    now_ms: int
    ledger_ms: int | None = None
    mono_ms: int | None = None


@dataclass(frozen=True)
class Appended:
    """The ledger accepted an entry (kind, author, payload, ts in ms; ``hash``: the entry's
    hash, lowercase hex). The hash seeds the draw of a round's merge committee, so in
    ``merge_by = "committee"`` the wiring must pass it for ``round_open`` entries (it may
    pass it for every entry); "" means not given, which ``merge_by = "all"`` never needs."""

    kind: str
    author: str
    payload: dict[str, Any]
    ts: int
    hash: str = ""


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
class CommitReceived:
    """Committee mode, coordinator only: an agent's signed delta commit came in, checked
    by the wiring (signature, enrolment, ``admit``); it is recorded in the round's
    ``round_close`` (``row``: ``ledger_lite.commits``), not appended on its own."""

    node: str
    round: int
    envelope_sha256: str
    n_samples: int
    row: tuple[Any, ...]


@dataclass(frozen=True)
class EnvelopeStored:
    """A verified envelope for (round, node) is in the inbox."""

    round: int
    node: str
    sha256: str


@dataclass(frozen=True)
class MergeDone:
    """The wiring merged ``round`` and holds the candidate model with these hashes;
    ``update_sha256``: the sha256 of the round's downlink update frame, in a swarm whose
    committee publishes one (``swarm/downlink.py``), else None."""

    round: int
    model_hash: str
    state_hash: str
    update_sha256: str | None = None


@dataclass(frozen=True)
class MergeFailed:
    """The wiring could not merge ``round`` (an envelope never arrived or did not match)."""

    round: int
    reason: str


@dataclass(frozen=True)
class CheckpointAdopted:
    """The wiring loaded a checkpoint whose hash matches the ledger's ``model_final``, or
    (``with_state`` False) applied the round's downlink update: the model, without the
    merge state a committee member needs (``Participant`` fetches it when drawn)."""

    round: int
    model_hash: str
    with_state: bool = True


@dataclass(frozen=True)
class AppendFailed:
    """The ledger refused (or lost) the entry of ``kind`` the coordinator asked for."""

    kind: str


@dataclass(frozen=True)
class KeysReady:
    """The newest key epoch wraps the data key for exactly the members who should read the
    next round (the answer to ``EnsureKeys``; the wiring knows the ledger's membership)."""


Event = (
    Tick
    | Appended
    | PeerSeen
    | TrainingDone
    | CommitReceived
    | EnvelopeStored
    | MergeDone
    | MergeFailed
    | CheckpointAdopted
    | AppendFailed
    | KeysReady
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
    """Merge exactly these (node, envelope sha256) pairs, in this (node-id) order; each
    node's delta weighs ``samples[node]`` (its commit's ``n_samples``)."""

    round: int
    included: tuple[tuple[str, str], ...]
    samples: tuple[tuple[str, int], ...] = ()

    @property
    def sample_counts(self) -> dict[str, int]:
        return dict(self.samples)


@dataclass(frozen=True)
class Commit:
    """The candidate model of ``round`` is final: make it the current model."""

    round: int
    model_hash: str


@dataclass(frozen=True)
class AdoptCheckpoint:
    """Take the final model of ``round`` and check it has ``model_hash``: from the round's
    downlink update when the swarm has one and it applies, else the retained checkpoint.
    ``state``: the merge state is wanted too (a member-to-be that holds the model from an
    update): the checkpoint, then."""

    round: int
    model_hash: str
    state: bool = False


@dataclass(frozen=True)
class FinalRefused:
    """Committee mode: a ``model_final`` this participant does not take (``reason``: it is
    not backed by a quorum of its committee's attestations on the ledger); it keeps its
    model. Only a coordinator not running this code appends one."""

    round: int
    model_hash: str
    reason: str


@dataclass(frozen=True)
class PublishCheckpoint:
    """Publish the final model of ``round`` as the retained checkpoint."""

    round: int
    model_hash: str


@dataclass(frozen=True)
class SwarmDone:
    """The campaign opens no more rounds: its budget is spent, or it ended (``reason``)
    (swarm/campaign.py). Not final: an extension or a new campaign goes on."""

    rounds: int
    reason: str = ""


@dataclass(frozen=True)
class EnsureKeys:
    """A sealed swarm is about to open a round: make the newest key epoch fit the members
    (append a fresh one if it does not), then report ``KeysReady``."""


Action = (
    Append
    | Train
    | Merge
    | Commit
    | AdoptCheckpoint
    | FinalRefused
    | PublishCheckpoint
    | SwarmDone
    | EnsureKeys
)

# --------------------------------------------------------------------------- policy

MERGE_BY = ("all", "committee")
"""Who merges a round: every agent and gateway ("all", today's rounds), or the round's
committee (the gateways plus ``committee_k`` agents drawn from the round_open hash)."""


@dataclass(frozen=True)
class RoundPolicy:
    """Timing, quorum and merging of rounds; all times in milliseconds. Raises ValueError
    on a value out of range, naming what is allowed. ``rounds`` is the first campaign's
    budget (None: open-ended), ``cadence_ms`` the least time between two round openings,
    ``stop`` the convergence rule (swarm/campaign.py, swarm/convergence.py)."""

    rounds: int | None = None
    min_peers: int = 2
    round_deadline_ms: int = 60_000
    attest_timeout_ms: int = 30_000
    start_grace_ms: int = 30_000
    sealed: bool = False  # a key epoch must fit the members before each round opens
    merge_by: str = "all"  # one of MERGE_BY
    committee_k: int = 2  # agents drawn per round beside the gateways (committee mode)
    cadence_ms: int = 0
    stop: StopRule | None = None
    epsilon_budget: float | None = None  # the genesis's privacy budget (swarm/privacy.py)

    def __post_init__(self) -> None:
        CampaignSettings(self.rounds, self.cadence_ms, self.stop)  # raises CampaignError
        if self.min_peers < 1:
            raise ValueError("min_peers must be at least 1")
        if min(self.round_deadline_ms, self.attest_timeout_ms, self.start_grace_ms) < 0:
            raise ValueError("timeouts must be non-negative")
        if not isinstance(self.merge_by, str) or self.merge_by not in MERGE_BY:
            allowed = " or ".join(repr(m) for m in MERGE_BY)
            raise ValueError(f"merge_by must be {allowed}, not {self.merge_by!r:.80}")
        k = self.committee_k
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"committee_k must be an int >= 0, not {k!r:.80}")

    @property
    def by_committee(self) -> bool:
        """Whether the round's committee, not every node, merges and decides the model."""
        return self.merge_by == "committee"

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> RoundPolicy:
        """Build from the genesis ``params`` (seconds there, milliseconds here). Raises
        ValueError on a value ``__post_init__`` refuses."""
        campaign = CampaignSettings.from_params(params)
        return cls(
            rounds=campaign.rounds,
            cadence_ms=campaign.cadence_ms,
            stop=campaign.stop,
            min_peers=int(params.get("min_peers", 2)),
            round_deadline_ms=int(float(params.get("round_deadline_s", 60)) * 1000),
            attest_timeout_ms=int(float(params.get("attest_timeout_s", 30)) * 1000),
            start_grace_ms=int(float(params.get("start_grace_s", 30)) * 1000),
            sealed=params.get("security", "signed") == "sealed",  # as trust.epochs reads it
            # Taken as the genesis spells them: a typo or a float is refused, not coerced
            # (every node must draw the same committee from the same k).
            merge_by=params.get("merge_by", "all"),
            committee_k=params.get("committee_k", 2),
            epsilon_budget=(params.get("privacy") or {}).get("epsilon_budget"),
        )


@dataclass
class RoundState:
    """One round as the machines know it from the ledger."""

    number: int
    base_hash: str
    deadline_ms: int
    commits: dict[str, str] = field(default_factory=dict)  # node -> envelope sha256
    samples: dict[str, int] = field(default_factory=dict)  # node -> n_samples
    included: tuple[str, ...] | None = None
    closed_at_ms: int = 0
    attests: dict[str, tuple[str, str]] = field(default_factory=dict)
    own: tuple[str, str] | None = None
    expected: frozenset[str] = frozenset()
    rows: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # folded commits (committee)

    @property
    def closed(self) -> bool:
        return self.included is not None

    def merge(self) -> Merge:
        """The merge of this closed round: its included nodes' envelopes and sample counts."""
        assert self.included is not None
        return Merge(
            self.number,
            tuple((n, self.commits[n]) for n in self.included),
            tuple((n, self.samples.get(n, 0)) for n in self.included),
        )


def attest_payload(ev: MergeDone) -> dict[str, Any]:
    """The ``model_attest`` payload for a merge's result (with the update's hash when the
    swarm has a downlink: a light agent applies only an update a quorum attested)."""
    payload = {"round": ev.round, "model_hash": ev.model_hash, "state_hash": ev.state_hash}
    if ev.update_sha256 is not None:
        payload["update_sha256"] = ev.update_sha256
    return payload
