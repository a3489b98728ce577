"""The MQTT topic scheme of a swarm, and its validation.

How it works
------------
Every topic of a swarm lives under one root, ``es/v1/{swarm}/``::

    round/{r}/delta/{node}      a node's signed delta envelope for round r
    round/{r}/resend/{node}     requests to ``node`` to publish chunks of its round-r
                                messages again (see ``swarm/chunking.py``), its whole
                                delta, or the final model of round r it holds
    round/{r}/model/{node}      ``node``'s copy of round r's final model, sent when a
                                gateway asked for it (``swarm/chunk_resend.py``)
    model/latest                the latest agreed checkpoint (retained)
    model/update                the committee's latest downlink update (retained; a
                                swarm with ``merge_by = "committee"``: swarm/downlink.py)
    ledger/submit               transactions sent to the gateways
    ledger/events               entries appended to the ledger, in their compact form
    ledger/bodies               the full form of those that have one (ledger_lite/detached.py:
                                a committee round's commits and merge report), for members
    ledger/query                ledger requests (request/response) ...
    ledger/reply/{client}       ... and the reply addressed to one client
    fleet/status/{node}         a node's status (retained; last will)
    fleet/telemetry/{node}      a node's telemetry
    fleet/cmd/{target}          an operator command for one node, or ``all``
    fleet/ack/{node}            a node's signed answer to a command

Invariants
----------
- Ids (swarm, node, client, target) match ``[A-Za-z0-9_.-]{1,64}``: they never hold ``/``,
  ``+``, ``#`` or ``$``, so a built topic is always a valid MQTT topic name and ``parse`` of it
  gives back exactly what built it.
- Rounds are integers in ``[0, 2**32 - 1]`` (the envelope stores them as u32), written in
  decimal without leading zeros; ``parse`` refuses any other spelling, so each round has one
  topic.
- ``parse`` takes untrusted input and raises only ``TopicError``.

Pure: no sockets, no threads, no logging.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "ALL",
    "MAX_ROUND",
    "ParsedTopic",
    "TopicError",
    "TopicKind",
    "Topics",
    "validate_id",
    "validate_round",
]

ALL = "all"
"""The ``fleet_cmd`` target that addresses every node; do not enroll a node with this id."""

MAX_ROUND = 2**32 - 1
"""The largest round number (rounds travel as u32 in the delta envelope)."""

_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ROUND_RE = re.compile(r"0|[1-9][0-9]{0,9}")
_PREFIX = "es/v1/"


class TopicError(ValueError):
    """A topic or id that is not part of the scheme (bad input, or misuse by our code)."""


class TopicKind:
    """The kinds of topic, as plain strings (so they hash, print and compare as strings)."""

    DELTA = "delta"
    RESEND = "resend"
    MODEL_LATEST = "model_latest"
    MODEL_UPDATE = "model_update"
    MODEL_CHUNK = "model_chunk"
    MODEL_OFFER = "model_offer"
    LEDGER_SUBMIT = "ledger_submit"
    LEDGER_EVENTS = "ledger_events"
    LEDGER_BODIES = "ledger_bodies"
    LEDGER_QUERY = "ledger_query"
    LEDGER_REPLY = "ledger_reply"
    FLEET_STATUS = "fleet_status"
    FLEET_TELEMETRY = "fleet_telemetry"
    FLEET_CMD = "fleet_cmd"
    FLEET_ACK = "fleet_ack"
    SHARE = "share"  # secure aggregation: a sealed seed share for one neighbour
    REVEAL = "reveal"  # secure aggregation: what an agent reveals once the round closed


@dataclass(frozen=True)
class ParsedTopic:
    """A topic taken apart: its kind, and the round and node id where the kind has them.

    ``node`` holds the node for ``delta``, ``resend``, ``fleet_status`` and
    ``fleet_telemetry``, the client for ``ledger_reply`` and the target (a node or ``all``)
    for ``fleet_cmd``.
    """

    kind: str
    round: int | None = None
    node: str | None = None


def validate_id(value: object, what: str = "id") -> str:
    """Return ``value`` if it is a valid id (``[A-Za-z0-9_.-]{1,64}``), else raise TopicError."""
    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None:
        raise TopicError(f"invalid {what}: {value!r}")
    return value


def validate_round(value: object) -> int:
    """Return ``value`` if it is an int round in ``[0, MAX_ROUND]``, else raise TopicError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ROUND:
        raise TopicError(f"invalid round: {value!r}")
    return value


def _parse_round(text: str) -> int:
    if _ROUND_RE.fullmatch(text) is None:
        raise TopicError(f"invalid round in topic: {text!r}")
    return validate_round(int(text))


# Fixed suffixes (no variable level) and their kinds.
_FIXED: dict[tuple[str, ...], str] = {
    ("model", "latest"): TopicKind.MODEL_LATEST,
    ("model", "update"): TopicKind.MODEL_UPDATE,
    ("ledger", "submit"): TopicKind.LEDGER_SUBMIT,
    ("ledger", "events"): TopicKind.LEDGER_EVENTS,
    ("ledger", "bodies"): TopicKind.LEDGER_BODIES,
    ("ledger", "query"): TopicKind.LEDGER_QUERY,
}

# Suffixes of the form (a, b, {id}) and their kinds.
_WITH_ID: dict[tuple[str, str], str] = {
    ("ledger", "reply"): TopicKind.LEDGER_REPLY,
    ("fleet", "status"): TopicKind.FLEET_STATUS,
    ("fleet", "telemetry"): TopicKind.FLEET_TELEMETRY,
    ("fleet", "cmd"): TopicKind.FLEET_CMD,
    ("fleet", "ack"): TopicKind.FLEET_ACK,
    ("model", "chunk"): TopicKind.MODEL_CHUNK,
}

# Suffixes of the form (round, {r}, a, {node}) and their kinds.
_PER_ROUND: dict[str, str] = {
    "delta": TopicKind.DELTA,
    "resend": TopicKind.RESEND,
    "model": TopicKind.MODEL_OFFER,
    "share": TopicKind.SHARE,
    "reveal": TopicKind.REVEAL,
}


@dataclass(frozen=True)
class Topics:
    """The topics of one swarm. Building a topic validates its ids and raises TopicError."""

    swarm: str

    def __post_init__(self) -> None:
        validate_id(self.swarm, "swarm id")

    @property
    def root(self) -> str:
        """The root every topic of this swarm starts with, ending in ``/``."""
        return f"{_PREFIX}{self.swarm}/"

    def delta(self, r: int, node: str) -> str:
        """The topic of ``node``'s delta envelope for round ``r``."""
        return f"{self.root}round/{validate_round(r)}/delta/{validate_id(node, 'node id')}"

    def delta_filter(self) -> str:
        """A subscription filter matching every delta of every round."""
        return f"{self.root}round/+/delta/+"

    def round_delta_filter(self, r: int) -> str:
        """A subscription filter matching every delta of round ``r``."""
        return f"{self.root}round/{validate_round(r)}/delta/+"

    def resend(self, r: int, node: str) -> str:
        """Where receivers ask ``node`` to publish missing chunks of its round-``r`` messages."""
        return f"{self.root}round/{validate_round(r)}/resend/{validate_id(node, 'node id')}"

    def resend_filter(self, node: str | None = None) -> str:
        """A filter matching resend requests of every round: to ``node``, or to every node."""
        target = "+" if node is None else validate_id(node, "node id")
        return f"{self.root}round/+/resend/{target}"

    def model_offer(self, r: int, node: str) -> str:
        """Where ``node`` sends its copy of round ``r``'s final model when asked for it."""
        return f"{self.root}round/{validate_round(r)}/model/{validate_id(node, 'node id')}"

    def model_offer_filter(self) -> str:
        """A subscription filter matching every node's model offers of every round."""
        return f"{self.root}round/+/model/+"

    def share(self, r: int, recipient: str) -> str:
        """Where a secure-aggregation seed share for ``recipient`` of round ``r`` goes."""
        return f"{self.root}round/{validate_round(r)}/share/{validate_id(recipient, 'node id')}"

    def share_filter(self, recipient: str) -> str:
        """Every round's seed shares for ``recipient``."""
        return f"{self.root}round/+/share/{validate_id(recipient, 'node id')}"

    def reveal(self, r: int, node: str) -> str:
        """Where ``node`` sends what it reveals for round ``r``'s unmasking."""
        return f"{self.root}round/{validate_round(r)}/reveal/{validate_id(node, 'node id')}"

    def reveal_filter(self, r: int | None = None) -> str:
        """Every node's reveals of round ``r``, or of every round (the committee's)."""
        level = "+" if r is None else str(validate_round(r))
        return f"{self.root}round/{level}/reveal/+"

    def model_latest(self) -> str:
        """The retained topic of the latest agreed checkpoint."""
        return f"{self.root}model/latest"

    def model_update(self) -> str:
        """The retained topic of the committee's latest downlink update."""
        return f"{self.root}model/update"

    def model_chunk(self, index: int) -> str:
        """Retained chunk ``index`` of a checkpoint too large for one packet (node = index)."""
        return f"{self.root}model/chunk/{validate_round(index)}"

    def model_chunk_filter(self) -> str:
        """A subscription filter matching every retained checkpoint chunk."""
        return f"{self.root}model/chunk/+"

    def ledger_submit(self) -> str:
        """Where nodes send ledger transactions."""
        return f"{self.root}ledger/submit"

    def ledger_events(self) -> str:
        """Where gateways announce appended entries."""
        return f"{self.root}ledger/events"

    def ledger_bodies(self) -> str:
        """Where gateways publish the full form of entries whose event is compact."""
        return f"{self.root}ledger/bodies"

    def ledger_query(self) -> str:
        """Where clients send ledger queries."""
        return f"{self.root}ledger/query"

    def ledger_reply(self, client: str) -> str:
        """Where the answer to ``client``'s ledger query goes."""
        return f"{self.root}ledger/reply/{validate_id(client, 'client id')}"

    def fleet_status(self, node: str) -> str:
        """The retained status topic of ``node`` (also its last-will topic)."""
        return f"{self.root}fleet/status/{validate_id(node, 'node id')}"

    def fleet_status_filter(self) -> str:
        """A subscription filter matching every node's status."""
        return f"{self.root}fleet/status/+"

    def fleet_telemetry(self, node: str) -> str:
        """The telemetry topic of ``node``."""
        return f"{self.root}fleet/telemetry/{validate_id(node, 'node id')}"

    def fleet_telemetry_filter(self) -> str:
        """A subscription filter matching every node's telemetry."""
        return f"{self.root}fleet/telemetry/+"

    def fleet_cmd(self, target: str) -> str:
        """The command topic of ``target``: a node id, or ``ALL`` for every node."""
        return f"{self.root}fleet/cmd/{validate_id(target, 'command target')}"

    def fleet_ack(self, node: str) -> str:
        """The topic on which ``node`` answers commands."""
        return f"{self.root}fleet/ack/{validate_id(node, 'node id')}"

    def fleet_ack_filter(self) -> str:
        """A subscription filter matching every node's answers."""
        return f"{self.root}fleet/ack/+"

    def parse(self, topic: object) -> ParsedTopic:
        """Take apart a topic of this swarm.

        Takes any value (untrusted input). Returns a ParsedTopic; raises only TopicError, for
        anything that is not a topic this object would build (another swarm, a wildcard, an
        unknown suffix, a bad id or round).
        """
        if not isinstance(topic, str):
            raise TopicError(f"topic is not a string: {type(topic).__name__}")
        root = self.root
        if not topic.startswith(root):
            raise TopicError(f"topic outside swarm {self.swarm!r}: {topic[:200]!r}")
        levels = tuple(topic[len(root) :].split("/"))
        kind = _FIXED.get(levels)
        if kind is not None:
            return ParsedTopic(kind)
        if len(levels) == 3 and levels[:2] in _WITH_ID:
            return ParsedTopic(_WITH_ID[levels[:2]], node=validate_id(levels[2], "id in topic"))
        if len(levels) == 4 and levels[0] == "round" and levels[2] in _PER_ROUND:
            r = _parse_round(levels[1])
            node = validate_id(levels[3], "node id")
            return ParsedTopic(_PER_ROUND[levels[2]], round=r, node=node)
        raise TopicError(f"unknown topic: {topic[:200]!r}")
