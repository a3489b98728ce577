"""The gateway's side of the round protocol (see ``protocol`` for the whole picture).

Invariants
----------
* The state is a fold of the ledger: every gateway feeds every applied entry as ``Appended``
  (its own too); a restarted one replays the chain with ``replaying`` set (nothing is
  returned) and then calls ``finish_replay``.
* Every gateway merges every closed round (``Merge``), so that any of them can take over;
  only the leading one (``leading``) appends: opens, closes and finalises rounds, attests.
* At most one entry of its own is in flight (``_pending``); ``AppendFailed`` allows a retry.
* In a sealed swarm no round opens before ``KeysReady`` answered ``EnsureKeys`` for it.
* Who a round waits for comes from the ledger and from statuses: the agents online when it
  opened, or, for a round opened before a restart, the agents of the last merged round; a
  peer is no longer waited for once its status says offline. A peer whose status has not
  arrived yet (right after a restart) is still waited for, never taken as gone.
* A closed round nobody can merge (the deltas it names died in a power cut, and with them a
  device's kept copy) does not stall the site: once no merge has come for a deadline plus
  an attestation timeout, counted from the close or from when this coordinator started
  acting, whichever is later, it is finalised on the model it started from, with the reason
  in ``abandoned``; the next round goes on from there.
* A round opens only while the campaign allows (``swarm/campaign.py``: a fold of the
  genesis's budget and the ``campaign`` entries): not paused, not ended, budget not spent.
  ``SwarmDone`` says so once the last round of a spent or ended campaign is over; an
  extension or a new campaign opens rounds again. With the genesis's stop rule, the leader
  appends ``campaign{op: end, reason}`` instead of opening a round once the sites'
  validation metrics on the ledger have converged (``swarm/convergence.py``), so a
  restarted leader reaches the same verdict from the same entries. The genesis's cadence
  spaces openings on the ``Tick.mono_ms`` clock, counted afresh when this gateway starts
  acting (a monotonic reading means nothing to another process).

In ``merge_by = "committee"`` (the genesis's choice; "all" keeps every rule above as it is):

* Each round's committee is drawn when its ``round_open`` is folded, from that entry's hash
  (``Appended.hash``) and the gateways and agents enrolled, unrevoked and unexpired as of
  that entry (``committee_round.CommitteeBook``): never from who is online, so a replaying
  or following gateway draws the same members as the leader.
* Only members' attestations count, and ``model_final`` needs a quorum (a strict majority)
  of members attesting the same (model_hash, state_hash); it names the members in
  ``committee`` and only the agreeing members in ``attesters``. The leader's own merge
  counts only through its attestation, like any member's: there is no "the coordinator's
  merge decides" fallback, since one machine must not decide the model.
* Every gateway is a member, so every gateway that is not replaying attests its own merge,
  followers included (in "all" mode only the leader does).
* No quorum in a deadline plus an attestation timeout (counted as above): the round is
  finalised on the model it started from, as an abandoned round, even when this
  coordinator has a merge of its own.
* ``admit`` refuses an attestation of the round being finalised from a non-member.
* Agents' commits are not ledger entries: each comes in as ``CommitReceived`` (checked by
  the wiring) and ``round_close`` records the included ones as rows (``commits``, each its
  agent's own signature: ``ledger_lite/commits.py``), so a round adds the same number of
  entries at any fleet size. A fold of ``round_close`` takes the commits from those rows
  (a follower or a restarted gateway never saw them come in). Commits held for a round not
  yet closed are lost with a restart; their agents send them again until the round closes.
* Those rows, the included list and the merge report grow with the fleet, so committee
  entries detach them (``detached``: signed and hashed as Merkle digests,
  ``ledger_lite/detached.py``): agents receive the compact form, members the full one.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from edge_swarm.swarm.campaign import Cadence, CampaignBook, CampaignSettings
from edge_swarm.swarm.committee_round import CommitteeBook, quorum_winner
from edge_swarm.swarm.privacy import budget_stop
from edge_swarm.swarm.rounds import (
    Action,
    Append,
    Appended,
    AppendFailed,
    CommitReceived,
    EnsureKeys,
    Event,
    KeysReady,
    MergeDone,
    PeerSeen,
    PublishCheckpoint,
    RoundPolicy,
    RoundState,
    SwarmDone,
    Tick,
    attest_payload,
)

MAX_CLOCK_SKEW_MS = 5 * 60 * 1000
"""How far a submission's timestamp may be from the coordinator's clock."""
COORDINATOR_KINDS = frozenset({"round_open", "round_close", "model_final"})


class Coordinator:
    """Opens, closes and finalises rounds from the ledger's facts (see the module header).

    ``initial_hash`` is the hash of the genesis model; ``started_ms`` the coordinator's clock
    at start (the first round waits ``start_grace_ms`` for a fleet that is still booting).
    In committee mode ``committees.of(round)`` is the round's drawn committee (until final).
    """

    def __init__(
        self,
        policy: RoundPolicy,
        initial_hash: str,
        started_ms: int,
        leading: bool = True,
        initial_state_hash: str | None = None,
    ) -> None:
        self.policy = policy
        self.model_hash = initial_hash
        self.state_hash = initial_state_hash  # of the merge state beside model_hash
        self.finished_rounds = 0
        self.last_round = 0
        self.last_final_round = 0
        # Who said on the ledger they hold the last final model: whom a gateway that lost
        # it asks for it (the attesters its model_final names, then later attestations).
        self.final_holders: tuple[str, ...] = ()
        self.privacy_spent: dict[str, Any] | None = None  # the last model_final's privacy
        self._campaign_due = 0  # mono ms: an admitted campaign entry lands before a round opens
        self.current: RoundState | None = None
        self.agents: set[str] = set()
        self.online: set[str] = set()
        self.offline: set[str] = set()  # whose latest status said offline
        self._last_included: frozenset[str] = frozenset()  # of the last round merged
        self.leading = leading
        # While a restarted gateway replays its ledger the coordinator only folds entries.
        self.replaying = False
        self._attested: set[tuple[int, str]] = set()  # (round, node) of this and the last round
        self._started_ms = started_ms
        self._acting_since_ms = started_ms  # a restart or a new leader gives a merge its time
        self._last_tick_ms: int | None = None
        self._pending: str | None = None
        self._keys_ready = not policy.sealed
        self._done = False
        # Who may sit on a round's committee, and each round's draw (committee mode only).
        self.committees = CommitteeBook(policy.committee_k)
        # Whether the campaign lets a round open (swarm/campaign.py), and how soon.
        self.campaign = CampaignBook(
            CampaignSettings(policy.rounds, policy.cadence_ms, policy.stop)
        )
        self.cadence = Cadence(policy.cadence_ms)
        self._mono_ms: int | None = None  # the last Tick's monotonic reading

    # -- inputs
    def handle(self, event: Event) -> list[Action]:
        """Fold one event and return the actions it calls for."""
        if isinstance(event, Appended):
            return self._on_appended(event)
        if isinstance(event, PeerSeen):
            if event.online:
                self.online.add(event.node)
                self.offline.discard(event.node)
                cur = self.current
                if cur is not None and not cur.closed and event.node in self.agents:
                    # Back during the round (after a broker restart, say): it trains this
                    # round too, so an early close waits for it (the deadline still bounds).
                    cur.expected = cur.expected | {event.node}
            else:
                self.online.discard(event.node)
                self.offline.add(event.node)
            return self._progress(None)
        if isinstance(event, MergeDone) and self._is_closing(event.round):
            assert self.current is not None
            self.current.own = (event.model_hash, event.state_hash)
            # A committee counts every gateway as a member: a follower attests too.
            member = self.policy.by_committee and not self.replaying
            attests = self._acting or member
            attest = [Append("model_attest", attest_payload(event))] if attests else []
            return attest + self._progress(None)
        if isinstance(event, CommitReceived):
            return self._on_commit(event)
        if isinstance(event, AppendFailed) and self._pending == event.kind:
            self._pending = None  # the next tick tries again
        elif isinstance(event, KeysReady) and self._pending == "key_epoch":
            self._pending, self._keys_ready = None, True
            return self._progress(self._last_tick_ms)  # the answer to a tick: open now
        elif isinstance(event, Tick):
            self._last_tick_ms, self._mono_ms = event.now_ms, event.mono_ms
            return self._progress(event.now_ms)
        return []

    def finish_replay(self) -> list[Action]:
        """End a replay: ask for the merge of a round that is closed but not final."""
        self.replaying = False
        cur = self.current
        if cur is None or not cur.included or any(n not in cur.commits for n in cur.included):
            return []
        return [cur.merge()]

    def set_leading(self, leading: bool) -> None:
        """This gateway became (or stopped being) the one that appends. An entry we were
        waiting for may have been lost with the old leader: forget it."""
        self.leading = leading
        self._pending = None
        self._keys_ready = not self.policy.sealed
        self.cadence.restart()  # the old coordinator's last opening is not on our clock
        if leading and self._last_tick_ms is not None:
            self._acting_since_ms = self._last_tick_ms

    def admit(self, kind: str, author: str, payload: Any, ts: int, now_ms: int) -> str | None:
        """Whether an agent's submission fits the round in progress: None if it does, else
        why not. (The ledger checks signature, enrolment and policy on every replica.)"""
        if abs(ts - now_ms) > MAX_CLOCK_SKEW_MS:
            # ledger_lite judges authority at the author's timestamp: bound it here, so an
            # expired or revoked device cannot backdate an entry.
            return f"timestamp {ts} is over {MAX_CLOCK_SKEW_MS // 1000} s off the gateway's clock"
        cur = self.current
        rnd = payload.get("round") if isinstance(payload, dict) else None
        if kind == "delta_commit":
            if cur is None or cur.number != rnd or cur.closed:
                return f"round {rnd} is not open for commits"
            if author in cur.commits:
                return f"{author} already committed to round {rnd}"
        elif kind == "model_attest":
            # Attestations of the round just finalised still count for the audit: a node
            # that merged a moment after the majority proves it holds the same bytes.
            if not self._is_closing(rnd) and rnd != self.last_final_round:
                return f"round {rnd} is not awaiting attestations"
            if (rnd, author) in self._attested:
                return f"{author} already attested round {rnd}"
            drawn = self.committees.of(rnd) if self._is_closing(rnd) else None
            if self.policy.by_committee and drawn is not None and author not in drawn:
                return f"{author} is not in round {rnd}'s committee"
        elif kind in COORDINATOR_KINDS:
            return "only the coordinator opens, closes and finalises rounds"
        elif kind == "campaign":  # refused if it would change nothing; else no round opens
            why = self.campaign.refusal(payload)  # until it lands (bounded: it may be refused)
            self._campaign_due = 0 if why or self._mono_ms is None else self._mono_ms + 5000
            return why
        return None

    def holds_commit(self, node: str, rnd: object, sig: str) -> bool:
        """Committee mode: whether this exact commit of ``node`` to round ``rnd`` is already
        recorded (an agent sends it again until the round closes: nothing to tell it)."""
        cur = self.current
        row = cur.rows.get(node) if cur is not None and cur.number == rnd else None
        return row is not None and row[4] == sig

    def _on_commit(self, ev: CommitReceived) -> list[Action]:
        if not self.policy.by_committee or not self._is_open(ev.round):
            return []
        cur = self.current
        assert cur is not None
        if ev.node in cur.commits or ev.node not in self.agents:
            return []
        cur.commits[ev.node] = ev.envelope_sha256
        cur.samples[ev.node] = ev.n_samples
        cur.rows[ev.node] = ev.row
        return self._progress(None)

    @property
    def done(self) -> bool:
        return self._done

    @property
    def _acting(self) -> bool:
        return self.leading and not self.replaying

    # -- ledger folding
    def _on_appended(self, ev: Appended) -> list[Action]:
        p = ev.payload
        if self._pending == ev.kind:
            self._pending = None
        if self.policy.by_committee:
            self.committees.fold(ev)  # enrolments and revocations: who may be drawn
        self.campaign.fold(ev.kind, ev.author, p)  # rounds, campaign entries, site metrics
        if ev.kind == "campaign":
            self._campaign_due = 0
            return self._check_done() + self._progress(None)
        if ev.kind == "enroll" and p.get("role") == "agent":
            self.agents.add(p["node"])
        elif ev.kind == "revoke":
            self.agents.discard(p["node"])
            self.online.discard(p["node"])
            cur = self.current
            if cur is not None and not cur.closed and p["node"] in cur.rows:
                # A revoked device's folded commit would make round_close invalid.
                for table in (cur.commits, cur.samples, cur.rows):
                    table.pop(p["node"], None)
        elif ev.kind == "round_open":
            if p["round"] <= self.last_round:
                return []  # a second open of a round (two leaders a moment apart): the first counts
            if self.policy.by_committee:
                self.committees.draw(p["round"], ev)  # as of this entry: the roster folded so far
            self.current = RoundState(p["round"], p["base_model_hash"], p["deadline_ms"])
            # Replaying, nobody's status is known yet: the ledger says who was active.
            active = self._last_included if self.replaying else self.online
            self.current.expected = frozenset(active & self.agents)
            self.last_round = p["round"]
            self._keys_ready = not self.policy.sealed  # each round asks again
            if not self.replaying:
                self.cadence.opened(self._mono_ms)
        elif (
            ev.kind == "delta_commit" and self._is_open(p["round"]) and not self.policy.by_committee
        ):
            assert self.current is not None
            self.current.commits[ev.author] = p["envelope_sha256"]
            self.current.samples[ev.author] = p["n_samples"]
        elif ev.kind == "round_close" and self._is_open(p["round"]):
            return self._on_close(ev)
        elif ev.kind == "model_attest":
            self._attested.add((p["round"], ev.author))
            if p["round"] == self.last_final_round and p["model_hash"] == self.model_hash:
                self.final_holders = tuple(dict.fromkeys((*self.final_holders, ev.author)))
            if self._is_closing(p["round"]):
                assert self.current is not None
                self.current.attests[ev.author] = (p["model_hash"], p["state_hash"])
        elif ev.kind == "model_final":
            return self._on_final(p)
        return self._progress(None)

    def _on_close(self, ev: Appended) -> list[Action]:
        cur = self.current
        assert cur is not None
        cur.included = tuple(ev.payload["included"])
        cur.closed_at_ms = ev.ts
        for node, sha, n, *_ in ev.payload.get("commits", ()):  # committee mode: the rows
            cur.commits[node], cur.samples[node] = sha, n
        if cur.included:
            self._last_included = frozenset(cur.included)
        else:  # a void round: the model stays, the next round may open
            self.current = None
            self.finished_rounds += 1
            return self._check_done()
        if self.replaying or any(n not in cur.commits for n in cur.included):
            return []  # (a committee round_close without its commits: abandoned in time)
        return [cur.merge()]

    def _on_final(self, p: dict[str, Any]) -> list[Action]:
        self.model_hash, self.state_hash = p["model_hash"], p["state_hash"]
        self.finished_rounds += 1
        self.last_final_round = p["round"]
        self.final_holders = tuple(a for a in p.get("attesters", ()) if isinstance(a, str))
        if isinstance(p.get("privacy"), dict):  # what the gateway recorded (private_merge.py)
            self.privacy_spent = p["privacy"]
        self.current = None
        self._attested = {a for a in self._attested if a[0] >= p["round"]}
        self.committees.forget_before(p["round"] + 1)
        done = self._check_done()
        return [] if self.replaying else [PublishCheckpoint(p["round"], p["model_hash"])] + done

    def _maybe_abandon(self, now_ms: int | None) -> list[Action]:
        """Finalise the closed round on the model it started from if nobody has merged it in
        a deadline plus an attestation timeout: this coordinator has no merge of its own (it
        asks every author for its delta meanwhile), and no majority agreed on one. In
        committee mode, once no quorum of the committee agreed in that time, whether or not
        this coordinator merged (its merge alone must not decide)."""
        cur = self.current
        assert cur is not None
        committee = self.committees.of(cur.number) if self.policy.by_committee else None
        if now_ms is None or self.state_hash is None:
            return []
        if committee is None and cur.own is not None:
            return []
        since = max(cur.closed_at_ms, self._acting_since_ms)
        if now_ms - since < self.policy.round_deadline_ms + self.policy.attest_timeout_ms:
            return []
        self._pending = "model_final"
        payload: dict[str, Any] = {
            "round": cur.number,
            "model_hash": self.model_hash,
            "state_hash": self.state_hash,
            "attesters": [],
            "abandoned": "no merge in time: the deltas round_close named are gone",
        }
        if committee is not None:
            payload["abandoned"] = (
                f"no quorum of the committee agreed in time ({committee.quorum} of"
                f" {len(committee.members)} members needed)"
            )
            payload["committee"] = list(committee.members)
        return [Append("model_final", payload)]

    def _check_done(self) -> list[Action]:
        """Say once, when no round is in progress, that the campaign opens no more rounds
        (its budget is spent, or it ended); again if it is extended or renewed and stops
        again. A pause is not an end: nothing is said."""
        if self.campaign.current.state not in ("spent", "ended"):
            self._done = False
            return []
        if self._done or self.current is not None:
            return []
        self._done = True
        why = self.campaign.why_not_open() or ""
        return [] if self.replaying else [SwarmDone(self.finished_rounds, why)]

    def _is_open(self, rnd: int) -> bool:
        return self.current is not None and self.current.number == rnd and not self.current.closed

    def _is_closing(self, rnd: object) -> bool:
        return self.current is not None and self.current.number == rnd and self.current.closed

    # -- decisions (only the leading gateway makes them)
    def _progress(self, now_ms: int | None) -> list[Action]:
        if self._pending is not None or not self._acting:
            return []
        if self.current is None:
            return self._maybe_open(now_ms)
        if not self.current.closed:
            return self._maybe_close(now_ms)
        return self._maybe_final(now_ms)

    def _maybe_open(self, now_ms: int | None) -> list[Action]:
        waiting = self._mono_ms is not None and self._mono_ms < self._campaign_due
        if now_ms is None or waiting or self.campaign.why_not_open() is not None:
            return []
        spent = budget_stop(self.policy.epsilon_budget, self.privacy_spent, self.last_final_round)
        stop = self.campaign.stop_reason() or spent  # both read from the ledger
        if stop is not None:
            self._pending = "campaign"
            return [Append("campaign", {"op": "end", "reason": stop})]
        if self.last_round > 0 and not self.cadence.ready(self._mono_ms):
            return []  # the genesis's cadence: not yet
        ready = len(self.online & self.agents)
        everyone = bool(self.agents) and self.agents <= self.online
        # The grace only delays the first round, so that a fleet that is still booting
        # starts together; later rounds go on with whoever is online.
        grace_over = self.last_round > 0 or now_ms - self._started_ms >= self.policy.start_grace_ms
        if ready < self.policy.min_peers or not (everyone or grace_over):
            return []
        if not self._keys_ready:
            # Until KeysReady, or until a fresh key_epoch lands (then we ask again).
            self._pending = "key_epoch"
            return [EnsureKeys()]
        rnd = self.last_round + 1
        deadline = now_ms + self.policy.round_deadline_ms
        payload = {"round": rnd, "base_model_hash": self.model_hash, "deadline_ms": deadline}
        self._pending = "round_open"
        return [Append("round_open", payload)]

    def _maybe_close(self, now_ms: int | None) -> list[Action]:
        cur = self.current
        assert cur is not None
        committed = set(cur.commits)
        # Peers that went offline (or were revoked) after the round opened are no longer
        # waited for; one not heard of yet since a restart still is.
        waiting_for = (cur.expected & self.agents) - self.offline - committed
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
        payload: dict[str, Any] = {"round": cur.number, "included": included, "reason": reason}
        if self.policy.by_committee:  # agents take the compact form (ledger_lite/detached.py)
            payload["commits"] = [list(cur.rows[n]) for n in included]
            payload["detached"] = ["commits", "included"]
        return [Append("round_close", payload)]

    def _maybe_final(self, now_ms: int | None) -> list[Action]:
        if self.policy.by_committee:
            return self._maybe_final_by_committee(now_ms)
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
            return self._maybe_abandon(now_ms)
        attesters = sorted(n for n, v in cur.attests.items() if v == winner)
        payload = {
            "round": cur.number,
            "model_hash": winner[0],
            "state_hash": winner[1],
            "attesters": attesters,
        }
        self._pending = "model_final"
        return [Append("model_final", payload)]

    def _maybe_final_by_committee(self, now_ms: int | None) -> list[Action]:
        """Committee mode: final once a quorum of the round's members attested one pair;
        the members are named in ``committee``, the agreeing ones in ``attesters``."""
        cur = self.current
        assert cur is not None
        committee = self.committees.of(cur.number)
        assert committee is not None, "committee mode draws at every round_open"
        winner = quorum_winner(committee, cur.attests)
        if winner is None:
            return self._maybe_abandon(now_ms)
        attesters = sorted(n for n, v in cur.attests.items() if v == winner and n in committee)
        payload = {
            "round": cur.number,
            "model_hash": winner[0],
            "state_hash": winner[1],
            "attesters": attesters,
            "committee": list(committee.members),
            "detached": ["merge"],  # the merge report the gateway adds: a weight per agent
        }
        self._pending = "model_final"
        return [Append("model_final", payload)]
