"""How a gateway that lost the last final model asks the swarm for it, and how a node answers
(``edge_swarm/node/model_share.py``): pure timing and choice, no sockets."""

from __future__ import annotations

from edge_swarm.node.model_share import ANSWER_EVERY_S, ModelAnswers, ModelAsks

H = "ab" * 32


def asks_made() -> tuple[ModelAsks, list[tuple[int, str, str]]]:
    made: list[tuple[int, str, str]] = []
    return ModelAsks("gw", lambda r, node, h: made.append((r, node, h))), made


def test_nothing_is_asked_until_the_model_is_wanted() -> None:
    asks, made = asks_made()
    asks.tick(5, H, ["a1", "a2"], now=100.0)
    assert made == []


def test_holders_are_asked_one_at_a_time_in_turn_backing_off_and_never_itself() -> None:
    asks, made = asks_made()
    asks.want(5, now=0.0)
    times = [0.0, 1.0, 3.0, 8.0, 9.0, 21.0]  # due at 0, 3, 9 (3 s), 21 (+12 s)...
    for t in times:
        asks.tick(5, H, ["gw", "a1", "a2"], now=t)
    assert made == [(5, "a1", H), (5, "a2", H), (5, "a1", H), (5, "a2", H)]


def test_a_delay_gives_the_retained_checkpoint_its_chance_first() -> None:
    asks, made = asks_made()
    asks.want(5, now=0.0, delay_s=3.0)
    asks.tick(5, H, ["a1"], now=2.9)
    assert made == []
    asks.held()  # the retained checkpoint came
    asks.tick(5, H, ["a1"], now=10.0)
    assert made == []


def test_a_newer_final_round_is_asked_for_instead() -> None:
    asks, made = asks_made()
    asks.want(5, now=0.0)
    asks.tick(5, H, ["a1"], now=0.0)
    asks.tick(6, "cd" * 32, ["a2"], now=3.0)  # the swarm finalised round 6 meanwhile
    assert made == [(5, "a1", H), (6, "a2", "cd" * 32)]
    asks.want(6, now=3.5)  # the same round again keeps its backoff
    asks.tick(6, "cd" * 32, ["a2"], now=4.0)
    assert len(made) == 2


def test_with_no_other_holder_nothing_is_sent_and_it_tries_again_later() -> None:
    asks, made = asks_made()
    asks.want(5, now=0.0)
    asks.tick(5, H, ["gw"], now=0.0)
    asks.tick(5, H, [], now=3.0)
    assert made == []
    asks.tick(5, H, ["a1"], now=9.0)  # an attestation names a holder at last
    assert made == [(5, "a1", H)]


def test_a_node_answers_only_for_exactly_its_model_and_not_in_a_loop() -> None:
    ans = ModelAnswers()
    assert not ans.should_send(5, H, held_round=4, held_hash=H, now=0.0)
    assert not ans.should_send(5, H, held_round=5, held_hash="cd" * 32, now=0.0)
    assert ans.should_send(5, H, held_round=5, held_hash=H, now=0.0)
    assert not ans.should_send(5, H, held_round=5, held_hash=H, now=ANSWER_EVERY_S / 2)
    assert ans.should_send(5, H, held_round=5, held_hash=H, now=ANSWER_EVERY_S)


def test_missing_deltas_are_asked_for_after_a_moment_then_backing_off() -> None:
    from edge_swarm.node.model_share import DeltaAsks

    made: list[tuple[int, str, str]] = []
    asks = DeltaAsks(lambda r, node, sha: made.append((r, node, sha)))
    asks.start(now=0.0, rnd=4)  # those on their way get RESEND_FIRST_S (3 s) first
    missing = [("a1", "11" * 32), ("a2", "22" * 32)]
    asks.tick(4, missing, now=2.9)
    assert made == []
    asks.tick(4, missing, now=3.0)
    assert made == [(4, "a1", "11" * 32), (4, "a2", "22" * 32)]
    asks.tick(4, missing[1:], now=5.9)  # the next ask waits 3 s, then 6 s, ...
    assert len(made) == 2
    asks.tick(4, missing[1:], now=6.0)
    assert made[2:] == [(4, "a2", "22" * 32)]
    asks.tick(4, [], now=100.0)  # nothing missing: nothing sent
    assert len(made) == 3


def test_a_members_asks_start_quickly_and_start_over_each_round() -> None:
    from edge_swarm.node.model_share import MEMBER_ASK_S, DeltaAsks

    made: list[tuple[int, str, str]] = []
    asks = DeltaAsks(lambda r, node, sha: made.append((r, node, sha)), first_s=MEMBER_ASK_S)
    asks.tick(1, [("a", "11" * 32)], now=10.0)  # first seen missing: asked MEMBER_ASK_S later
    assert made == []
    asks.tick(1, [("a", "11" * 32)], now=10.0 + MEMBER_ASK_S)
    assert made == [(1, "a", "11" * 32)]
    asks.tick(2, [("b", "22" * 32)], now=11.0)  # a new round: its own short first wait
    asks.tick(2, [("b", "22" * 32)], now=11.0 + MEMBER_ASK_S)
    assert made[-1] == (2, "b", "22" * 32)
