"""An agent's bounded re-sends, driven with a clock we pass: they back off, outlast a gateway
restart, stop once settled, and give up in the end."""

from __future__ import annotations

from edge_swarm.node.resend import (
    MAX_REPUBLISH,
    MAX_SUBMITS,
    OwnDelta,
    PendingSubmissions,
    backoff_s,
)


def test_backoff_doubles_to_a_cap() -> None:
    assert [backoff_s(n) for n in range(1, 8)] == [3, 6, 12, 24, 30, 30, 30]


def test_submissions_are_sent_again_with_backoff_until_settled() -> None:
    sent: list[tuple[float, bytes]] = []
    now = [0.0]
    subs = PendingSubmissions(lambda payload: sent.append((now[0], payload)))
    subs.sent("tx1", b"a", 0.0)
    for t in range(0, 60):
        now[0] = float(t)
        subs.tick(now[0])
    assert [t for t, _ in sent] == [3.0, 9.0, 21.0, 45.0]
    subs.settled("tx1")
    for t in range(60, 400):
        subs.tick(float(t))
    assert len(sent) == 4


def test_a_submission_outlasts_a_gateway_restart_then_gives_up() -> None:
    sent: list[float] = []
    now = [0.0]
    subs = PendingSubmissions(lambda payload: sent.append(now[0]))
    subs.sent("tx1", b"a", 0.0)
    for t in range(0, 1000):
        now[0] = float(t)
        subs.tick(now[0])
    assert len(sent) == MAX_SUBMITS - 1  # the first send was the caller's
    assert sent[-1] > 120  # still trying two minutes on: a gateway restart fits in that


def test_own_delta_is_sent_again_only_while_its_round_is_not_merged() -> None:
    sent: list[tuple[str, bytes]] = []
    delta = OwnDelta(lambda topic, frame: sent.append((topic, frame)))
    assert not delta.due(100.0)  # nothing sent yet
    delta.sent(4, "t4", b"f4", 0.0)
    assert not delta.due(2.0) and delta.due(3.5)
    delta.republish(merged_round=3, now=3.5, why="test")
    assert sent == [("t4", b"f4")]
    assert not delta.due(9.0) and delta.due(9.6)  # backs off
    delta.republish(merged_round=4, now=9.6, why="merged")  # round 4 is merged: nothing
    assert len(sent) == 1
    for i in range(20):
        delta.republish(merged_round=3, now=100.0 + i, why="test")
    assert len(sent) == MAX_REPUBLISH


def test_the_kept_delta_survives_a_restart_and_a_damaged_one_is_ignored(tmp_path) -> None:
    path = tmp_path / "delta.bin"
    first = OwnDelta(lambda topic, frame: None, path)
    assert first.kept() is None
    first.keep(7, b"frame bytes")
    assert OwnDelta(lambda topic, frame: None, path).kept() == (7, b"frame bytes")
    path.write_bytes(b"junk")
    assert OwnDelta(lambda topic, frame: None, path).kept() is None
    assert OwnDelta(lambda topic, frame: None).kept() is None  # nowhere to keep it


def test_a_gateway_asking_for_a_delta_gets_exactly_the_committed_bytes(tmp_path) -> None:
    import hashlib

    sent: list[tuple[str, bytes]] = []
    delta = OwnDelta(lambda t, f: sent.append((t, f)), tmp_path / "d.bin", lambda r: f"r{r}")
    delta.keep(5, b"round five")
    sha = hashlib.sha256(b"round five").hexdigest()
    assert not delta.answer(5, "0" * 64, 0.0)  # not the bytes the commit names: nothing
    assert not delta.answer(4, sha, 0.0)  # not that round
    assert delta.answer(5, sha, 0.0)  # from disk (a restarted agent holds nothing in memory)
    assert sent == [("r5", b"round five")]
    assert not delta.answer(5, sha, 1.0)  # at most once per few seconds
    delta.sent(5, "t5", b"round five", 2.0)
    assert delta.answer(5, sha, 10.0) and sent[-1] == ("r5", b"round five")


def test_a_reply_to_any_outstanding_query_is_taken_and_retries_back_off() -> None:
    from edge_swarm.node.resend import MAX_OUTSTANDING_QUERIES, LedgerQueries

    q = LedgerQueries()
    q.sent("a", now=0.0)
    assert not q.due(1.9) and q.due(2.1)
    q.sent("b", now=2.1)  # the gateway is slow: a retry, whose wait doubles
    assert not q.due(5.9) and q.due(6.2)
    q.sent("c", now=6.2)
    # The livelock seen at 100 agents: the reply to the first query arrives after two
    # retries. It is taken (before, only the newest id was), and the backoff starts over.
    assert q.answered("a")
    assert not q.answered("b")  # answered queries and older ones are closed
    assert not q.answered("zzz")
    q.sent("d", now=7.0)
    assert q.due(9.1)
    # Waits stop growing at 30 s, and only the newest few ids are remembered.
    for i in range(20):
        q.sent(f"x{i}", now=10.0 + i)
    assert not q.due(10.0 + 19 + 29.9) and q.due(10.0 + 19 + 30.1)
    assert not q.answered("x0")
    assert q.answered(f"x{20 - MAX_OUTSTANDING_QUERIES}")


def test_a_delta_request_is_answered_once_per_wait_but_the_next_rounds_at_once() -> None:
    import hashlib

    from edge_swarm.node.resend import RESEND_FIRST_S, OwnDelta

    sent: list[tuple[str, bytes]] = []
    own = OwnDelta(lambda topic, frame: sent.append((topic, frame)), None, lambda r: f"t/{r}")
    f1, f2 = b"delta of round 1", b"delta of round 2"
    own.sent(1, "t/1", f1, now=0.0)
    sha1 = hashlib.sha256(f1).hexdigest()
    assert own.answer(1, sha1, now=1.0) and sent == [("t/1", f1)]
    assert not own.answer(1, sha1, now=1.5)  # the same delta: one answer reached everyone
    assert not own.answer(1, "00" * 32, now=9.0)  # bytes we do not hold: never
    own.sent(2, "t/2", f2, now=2.0)
    # Rounds of a fraction of a second: the next round's request must not wait out the last's.
    assert own.answer(2, hashlib.sha256(f2).hexdigest(), now=2.1)
    assert sent[-1] == ("t/2", f2)
    assert own.answer(2, hashlib.sha256(f2).hexdigest(), now=2.2 + RESEND_FIRST_S)


def test_a_gateway_heard_makes_an_unanswered_query_due_at_once() -> None:
    """A whole site starting at once: the agent's first query went out before the gateway
    listened. Its first ledger event makes the next query due now (issue 20), once until
    an answer; with nothing outstanding it changes nothing."""
    from edge_swarm.node.resend import LedgerQueries

    q = LedgerQueries()
    q.gateway_heard()  # nothing asked yet: it does not use up the once
    q.sent("a", now=0.0)
    assert not q.due(0.1)
    q.gateway_heard()
    assert q.due(0.1)
    q.sent("b", now=0.1)
    q.gateway_heard()  # once: the usual backoff again
    assert not q.due(0.2) and q.due(4.2)
    assert q.answered("b")
    q.sent("c", now=5.0)
    q.gateway_heard()  # an answer re-arms it
    assert q.due(5.0)
