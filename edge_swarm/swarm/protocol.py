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

Invariants
----------
* The coordinator's state is a fold of the ledger: a restarted gateway rebuilds it by
  replaying the chain through ``handle`` with ``replaying`` set, then ``finish_replay``.
* At most one round is open; round numbers increase by one from 1.
* ``round_close.included`` is sorted, and only nodes with a ``delta_commit`` for that round
  are included. A round closed with nobody leaves the model unchanged.
* A participant never trains on a base other than the one the ledger opened the round with.
"""

from edge_swarm.swarm.coordinator import MAX_CLOCK_SKEW_MS, Coordinator
from edge_swarm.swarm.participant import Participant
from edge_swarm.swarm.rounds import (
    Action,
    AdoptCheckpoint,
    Append,
    Appended,
    AppendFailed,
    CheckpointAdopted,
    Commit,
    EnsureKeys,
    EnvelopeStored,
    Event,
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

__all__ = [
    "MAX_CLOCK_SKEW_MS",
    "Action",
    "AdoptCheckpoint",
    "Append",
    "AppendFailed",
    "Appended",
    "CheckpointAdopted",
    "Commit",
    "Coordinator",
    "EnsureKeys",
    "EnvelopeStored",
    "Event",
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
]
