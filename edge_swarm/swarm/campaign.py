"""Training campaigns: how many rounds the swarm trains, and when it stops, as a ledger fold.

How it works
------------
The genesis opens campaign 1 with its ``rounds`` as the budget (``null`` or absent: open
ended). Admin-signed ``campaign`` entries steer it: ``extend`` (``rounds`` more), ``pause``,
``resume``, ``end`` (with a ``reason``), ``new`` (campaign n + 1 from the current model,
budgeted by its ``rounds`` or open-ended). The coordinating gateway may append one kind of
its own: ``end`` with the reason its stop rule gave (``convergence``).

``CampaignBook.fold`` takes every entry (kind, author, payload) in ledger order: campaign
entries, and ``round_open`` / ``round_close`` / ``model_final`` to count rounds, and the
sites' validation metrics (``convergence.MetricBook``). ``why_not_open`` says whether the
coordinator may open a round now; ``refusal`` whether an operator's entry applies at all
(the coordinator refuses one that does not, with that reason, before it reaches the ledger).

Invariants
----------
* Pure: no clock, no I/O. Every process folds the same entries to the same state, so a
  restarted gateway, a follower and the operator's ``campaign status`` all agree.
* A round belongs to the campaign in force when its ``round_open`` was appended; it counts
  against that campaign's budget from then on, and a pause or an end lets a round already
  open finish (its agents are at work) but opens no other.
* An entry that does not apply (extend an ended campaign, resume a running one, extend an
  open-ended one) changes nothing: it is on the ledger, so the fold must take it, and the
  note it returns says why it did nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from edge_swarm.swarm.convergence import DEFAULT_METRIC, MetricBook, StopRule, stop_reason

MAX_PAST = 32  # finished campaigns kept for ``status`` (older ones only on the ledger)


class CampaignError(ValueError):
    """The genesis's campaign settings (rounds, cadence_s, stop) are not usable."""


@dataclass(frozen=True)
class CampaignSettings:
    """What the genesis says about campaigns: the first budget (None: open-ended), the
    shortest time between two round openings (ms, 0: none), and the stop rule, if any."""

    rounds: int | None = None
    cadence_ms: int = 0
    stop: StopRule | None = None

    def __post_init__(self) -> None:
        r = self.rounds
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
            raise CampaignError(f"rounds must be an int >= 1 or null (open-ended), not {r!r:.40}")
        c = self.cadence_ms
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise CampaignError(f"cadence must be a time >= 0, not {c!r:.40}")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> CampaignSettings:
        """Read ``rounds``, ``cadence_s`` and ``stop`` from the genesis ``params``."""
        rounds = params.get("rounds")
        if isinstance(rounds, float) and rounds.is_integer():
            rounds = int(rounds)  # a genesis written by hand may say 20.0
        cadence = params.get("cadence_s")
        if cadence is None:
            cadence = 0
        if isinstance(cadence, bool) or not isinstance(cadence, (int, float)):
            raise CampaignError(f"cadence_s must be a number of seconds, not {cadence!r:.40}")
        if not 0 <= cadence < math.inf:
            raise CampaignError(f"cadence_s must be >= 0, not {cadence!r:.40}")
        return cls(rounds, int(cadence * 1000), StopRule.from_params(params.get("stop")))


@dataclass(frozen=True)
class Campaign:
    """One campaign as the ledger says it is now."""

    number: int
    budget: int | None  # rounds it may open in all; None: open-ended
    after_round: int = 0  # the last round opened before it: its model is where it starts
    opened: int = 0  # rounds opened in it
    finished: int = 0  # of those, final or closed void
    paused: str | None = None  # why, while paused ("" if no reason was given)
    ended: str | None = None  # why, once ended
    ended_by: str = ""

    @property
    def state(self) -> str:
        """running, paused, spent (its budget is used up: extend or new goes on) or ended."""
        if self.ended is not None:
            return "ended"
        if self.budget is not None and self.opened >= self.budget:
            return "spent"
        return "paused" if self.paused is not None else "running"

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else max(0, self.budget - self.opened)


class CampaignBook:
    """The fold of the ledger's campaigns (see the module header)."""

    def __init__(self, settings: CampaignSettings) -> None:
        self.settings = settings
        self.current = Campaign(1, settings.rounds)
        self.past: dict[int, Campaign] = {}
        self.last_round = 0  # the last round opened, whatever its campaign
        self._round_of: dict[int, int] = {}  # round not finished yet -> its campaign
        metric = settings.stop.metric if settings.stop is not None else DEFAULT_METRIC
        self.metrics = MetricBook(metric)
        # The coordinator asks at every tick between rounds: answer again only on news.
        self._verdict: tuple[tuple[int, int], str | None] = ((-1, -1), None)

    # -- folding
    def fold(self, kind: str, author: str, payload: dict[str, Any]) -> str | None:
        """Fold one entry the ledger accepted; returns a note on what a campaign entry did
        (for the log), None for other kinds."""
        if kind == "campaign":
            return self._fold_op(author, payload)
        self.metrics.fold(kind, author, payload)
        rnd = payload.get("round")
        if kind == "round_open" and isinstance(rnd, int) and rnd > self.last_round:
            for earlier in [r for r in self._round_of if r < rnd]:
                self._finished(earlier)  # one round at a time: a void one a light copy missed
            self.last_round = rnd
            self._round_of[rnd] = self.current.number
            self.current = replace(self.current, opened=self.current.opened + 1)
        # A void round is over at its close (compact, a light copy sees that at the next open).
        elif kind == "model_final" or (kind == "round_close" and payload.get("included") == []):
            self._finished(rnd)
        return None

    def _finished(self, rnd: Any) -> None:
        number = self._round_of.pop(rnd, None) if isinstance(rnd, int) else None
        if number == self.current.number:
            self.current = replace(self.current, finished=self.current.finished + 1)
        elif number in self.past:
            old = self.past[number]
            self.past[number] = replace(old, finished=old.finished + 1)

    def _fold_op(self, author: str, p: dict[str, Any]) -> str:
        cur, op = self.current, p.get("op")
        reason = p.get("reason", "") if isinstance(p.get("reason"), str) else ""
        if op == "new":
            superseded = f"superseded by campaign {cur.number + 1}"
            ended = (
                cur if cur.ended is not None else replace(cur, ended=superseded, ended_by=author)
            )
            self.past[cur.number] = ended
            for old in sorted(self.past)[: max(0, len(self.past) - MAX_PAST)]:
                del self.past[old]
            budget = p.get("rounds") if isinstance(p.get("rounds"), int) else None
            self.current = Campaign(cur.number + 1, budget, after_round=self.last_round)
            return f"campaign {cur.number + 1} started ({_budget(budget)})" + _why(reason)
        why_not = self._not_applicable(op, p)
        if why_not is not None:
            return f"campaign {op} changes nothing: {why_not}"
        if op == "extend":
            self.current = replace(cur, budget=(cur.budget or 0) + p["rounds"])
            now = _budget(self.current.budget)
            return f"campaign {cur.number} extended by {p['rounds']} ({now} now)"
        if op == "pause":
            self.current = replace(cur, paused=reason)
            return f"campaign {cur.number} paused" + _why(reason)
        if op == "resume":
            self.current = replace(cur, paused=None)
            return f"campaign {cur.number} resumed"
        self.current = replace(cur, ended=reason, ended_by=author)  # end
        return f"campaign {cur.number} ended by {author}" + _why(reason)

    def _not_applicable(self, op: Any, p: dict[str, Any]) -> str | None:
        cur = self.current
        if op == "new":
            return None
        if cur.ended is not None:
            return f"campaign {cur.number} has ended; `campaign new` starts another"
        if op == "extend" and cur.budget is None:
            return f"campaign {cur.number} is open-ended; it has no budget to extend"
        if op == "pause" and cur.paused is not None:
            return f"campaign {cur.number} is already paused"
        if op == "resume" and cur.paused is None:
            return f"campaign {cur.number} is not paused"
        if op not in ("extend", "pause", "resume", "end"):
            return f"unknown campaign op {op!r:.40}"
        return None

    # -- questions
    def refusal(self, payload: Any) -> str | None:
        """Why an operator's campaign entry would change nothing now (None: it applies)."""
        if not isinstance(payload, dict):
            return "a campaign payload is an object"
        return self._not_applicable(payload.get("op"), payload)

    def why_not_open(self) -> str | None:
        """Why the current campaign opens no round now, or None if it may."""
        cur = self.current
        state = cur.state
        if state == "ended":
            return f"campaign {cur.number} ended" + _why(cur.ended or "")
        if state == "spent":
            return f"campaign {cur.number} spent its budget of {cur.budget} rounds"
        if state == "paused":
            return f"campaign {cur.number} is paused" + _why(cur.paused or "")
        return None

    def stop_reason(self) -> str | None:
        """The stop rule's verdict on the current campaign's rounds (None: go on, or no
        rule). Only rounds scored from the model the campaign started from count."""
        rule = self.settings.stop
        if rule is None or self.current.ended is not None:
            return None
        key = (self.metrics.version, self.current.after_round)
        if self._verdict[0] != key:
            per_round = self.metrics.per_round(since=self.current.after_round)
            self._verdict = (key, stop_reason(per_round, rule))
        return self._verdict[1]

    def status(self) -> dict[str, Any]:
        """The current campaign and the settings, as plain values (``campaign status``)."""
        cur = self.current
        stop = self.settings.stop
        return {
            **asdict(cur),
            "state": cur.state,
            "remaining": cur.remaining,
            "cadence_s": self.settings.cadence_ms / 1000,
            "stop": stop.to_dict() if stop is not None else None,
            "last_round": self.last_round,
            "means": self.metrics.means(since=cur.after_round),
        }


def _budget(budget: int | None) -> str:
    return "open-ended" if budget is None else f"budget {budget} rounds"


def _why(reason: str) -> str:
    return f": {reason}" if reason else ""


class Cadence:
    """Rounds open ``every_ms`` apart at the earliest, on the coordinator's monotonic clock.
    After a restart or a change of coordinator the last opening's time is unknown (a
    monotonic reading means nothing to another process): the wait counts from then."""

    def __init__(self, every_ms: int) -> None:
        self.every_ms = every_ms
        self._since: int | None = None  # monotonic ms of the last opening (or of the start)

    def restart(self) -> None:
        """This coordinator starts acting: count from its next reading."""
        self._since = None

    def opened(self, mono_ms: int | None) -> None:
        """A round opened (seen live) at ``mono_ms``."""
        if mono_ms is not None:
            self._since = mono_ms

    def ready(self, mono_ms: int | None) -> bool:
        """Whether a round may open at ``mono_ms`` (None: no reading, so not with a cadence)."""
        if self.every_ms <= 0:
            return True
        if mono_ms is None:
            return False
        if self._since is None:
            self._since = mono_ms
        return mono_ms - self._since >= self.every_ms
