"""The round protocol as two pure state machines: events in, actions out.

How it works
------------
Every fact the machines act on comes from the ledger (``Appended``: an entry the ledger
accepted), from the clock (``Tick``) or from the process wiring reporting that a piece of
work it was asked to do is finished (``TrainingDone``, ``MergeDone``, ``KeysReady`` …) or
failed (``MergeFailed``, ``AppendFailed``). The machines never touch a socket, a file or a
thread; they return actions for the wiring to carry out. The vocabulary is in ``rounds``,
the machines in ``coordinator`` and ``participant``; this module is their public surface.

* ``Coordinator`` runs on every gateway. It asks every gateway to merge each closed round
  (``Merge`` names the envelopes and sample counts), and, on the leading gateway only, opens
  a round (in a sealed swarm once ``EnsureKeys`` is answered), closes it when every expected
  peer has committed (or at the deadline with at least ``min_peers``), and finalises the
  model once a majority of the included nodes attest one hash. ``admit`` says whether an
  agent's submission fits the round in progress.
* ``Participant`` runs on each agent. It trains when a round opens on the model it holds,
  merges exactly the envelopes named by ``round_close``, attests the result, and adopts the
  retained checkpoint whenever its own bytes are not the ones the ledger finalised.
* Who merges is the genesis's ``merge_by`` (``RoundPolicy``). "all": every agent and gateway,
  as above. "committee": only the round's committee (the gateways plus ``committee_k``
  agents drawn from the ``round_open`` entry's hash, ``committee_round``) merges and
  attests; the coordinator finalises on a quorum of its members, or abandons the round on
  its base model; a participant outside the committee adopts the final model. Agents'
  commits reach the coordinator (``CommitReceived``) and are recorded, each with its
  agent's signature, in the round's ``round_close`` (``commits``): the ledger grows by a
  constant number of entries per round, whatever the fleet size.

Invariants
----------
* The coordinator's state is a fold of the ledger: a restarted gateway rebuilds it by
  replaying the chain through ``handle`` with ``replaying`` set, then ``finish_replay``.
* At most one round is open; round numbers increase by one from 1.
* ``round_close.included`` is sorted, and only nodes with a ``delta_commit`` for that round
  are included. A round closed with nobody leaves the model unchanged.
* A participant never trains on a base other than the one the ledger opened the round with.
* In committee mode every machine draws a round's committee from the ledger alone (the
  ``round_open`` hash and the enrolments folded up to it), so all draw the same members.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_swarm.swarm.committee import Committee
from edge_swarm.swarm.committee_round import CommitteeBook, quorum_winner
from edge_swarm.swarm.participant import Participant
from edge_swarm.swarm.rounds import (
    MERGE_BY,
    Action,
    AdoptCheckpoint,
    Append,
    Appended,
    AppendFailed,
    CheckpointAdopted,
    Commit,
    CommitReceived,
    EnsureKeys,
    EnvelopeStored,
    Event,
    FinalRefused,
    KeysReady,
    Merge,
    MergeDone,
    MergeFailed,
    PeerSeen,
    PublishCheckpoint,
    RoundPolicy,
    RoundState,
    SwarmDone,
    Tick,
    Train,
    TrainingDone,
    attest_payload,
)

if TYPE_CHECKING:
    from edge_swarm.swarm.coordinator import MAX_CLOCK_SKEW_MS, Coordinator


def __getattr__(name: str) -> object:
    """The coordinator, loaded when first asked for (PEP 562): only gateways run one, and an
    agent's memory is the budget of a small device (issue 20)."""
    if name in ("Coordinator", "MAX_CLOCK_SKEW_MS"):
        from edge_swarm.swarm import coordinator

        return getattr(coordinator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MAX_CLOCK_SKEW_MS",
    "MERGE_BY",
    "Action",
    "AdoptCheckpoint",
    "Append",
    "AppendFailed",
    "Appended",
    "CheckpointAdopted",
    "Commit",
    "CommitReceived",
    "Committee",
    "CommitteeBook",
    "Coordinator",
    "EnsureKeys",
    "EnvelopeStored",
    "Event",
    "FinalRefused",
    "KeysReady",
    "Merge",
    "MergeDone",
    "MergeFailed",
    "Participant",
    "PeerSeen",
    "PublishCheckpoint",
    "RoundPolicy",
    "RoundState",
    "SwarmDone",
    "Tick",
    "Train",
    "TrainingDone",
    "attest_payload",
    "quorum_winner",
]
