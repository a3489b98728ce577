"""The convergence stop: the rule on per-round site metrics, and reading them off the ledger."""

from __future__ import annotations

import math
import re

import pytest

from edge_swarm.swarm.convergence import (
    MetricBook,
    SiteMetric,
    StopRule,
    StopRuleError,
    site_metrics,
    stop_reason,
)

RULE = StopRule(patience=3, min_delta=0.005)


def rounds(*means: float) -> dict[int, list[float]]:
    """Round r (from 0) scored by two sites around ``means[r]``."""
    return {r: [m - 0.01, m + 0.01] for r, m in enumerate(means)}


def test_improving_rounds_go_on() -> None:
    assert stop_reason(rounds(0.5, 0.6, 0.7, 0.8, 0.85, 0.9), RULE) is None
    assert stop_reason({}, RULE) is None
    assert stop_reason(rounds(0.5), RULE) is None


def test_patience_rounds_without_min_delta_stop_with_the_reason() -> None:
    why = stop_reason(rounds(0.5, 0.8, 0.802, 0.801, 0.804), RULE)
    assert why == (
        "converged: mean validation accuracy improved < 0.005 for 3 rounds "
        "(best 0.8000, model of round 1)"
    )
    # One round fewer without improvement: not yet.
    assert stop_reason(rounds(0.5, 0.8, 0.802, 0.801), RULE) is None


def test_slow_creep_counts_once_it_adds_up_to_min_delta() -> None:
    # Each step is under min_delta, but against the best so far every other one is over it.
    creeping = rounds(0.800, 0.003 + 0.800, 0.006 + 0.800, 0.009 + 0.800, 0.012 + 0.800)
    assert stop_reason(creeping, RULE) is None


def test_a_drop_after_the_best_counts_as_no_improvement() -> None:
    assert stop_reason(rounds(0.9, 0.7, 0.8, 0.85), RULE) is not None


def test_rounds_are_taken_in_round_order_and_empty_ones_skipped() -> None:
    per_round = {5: [0.8], 2: [0.5], 3: [], 4: [0.79], 6: [0.8], 7: [0.801]}
    # In order: 0.5 (r2), 0.79 (r4, better), 0.8 (r5, better by 0.01), 0.8, 0.801: two waits.
    assert stop_reason(per_round, RULE) is None
    per_round[8] = [0.8]
    assert "model of round 5" in (stop_reason(per_round, RULE) or "")


def test_the_mean_is_over_sites_and_garbage_values_are_ignored() -> None:
    per_round = {1: [0.6, 1.0], 2: [0.8, 0.8, math.nan], 3: [0.8, True], 4: [0.8, 0.8]}  # type: ignore[list-item]
    assert stop_reason(per_round, StopRule(patience=3)) == (
        "converged: mean validation accuracy improved < 0 for 3 rounds "
        "(best 0.8000, model of round 1)"
    )


def test_a_loss_metric_improves_downwards() -> None:
    rule = StopRule(patience=2, min_delta=0.01, metric="val_loss")
    assert stop_reason({1: [0.9], 2: [0.7], 3: [0.5]}, rule) is None
    why = stop_reason({1: [0.9], 2: [0.5], 3: [0.495], 4: [0.6]}, rule)
    assert why is not None and why.startswith("converged: mean val_loss improved < 0.01")


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({"min_delta": 0.1}, "stop needs patience"),
        ({"patience": 0}, "stop.patience must be an int"),
        ({"patience": 2.5}, "stop.patience must be an int"),
        ({"patience": True}, "stop.patience must be an int"),
        ({"patience": 2, "min_delta": -1}, "stop.min_delta must be a number >= 0"),
        ({"patience": 2, "min_delta": "0.1"}, "stop.min_delta must be a number"),
        ({"patience": 2, "metric": ""}, "stop.metric must be a metric name"),
        ({"patience": 2, "typo": 1}, "stop has unknown fields ['typo']"),
        ([3], "stop must be an object"),
    ],
)
def test_a_bad_stop_rule_in_the_genesis_is_refused(value: object, match: str) -> None:
    with pytest.raises(StopRuleError, match=re.escape(match)):
        StopRule.from_params(value)


def test_the_stop_rule_reads_from_the_genesis() -> None:
    assert StopRule.from_params(None) is None
    rule = StopRule.from_params({"patience": 3, "min_delta": 0.005})
    assert rule == RULE and rule.to_dict() == {
        "patience": 3,
        "min_delta": 0.005,
        "metric": "val_acc",
    }


# --------------------------------------------------------------------------- the fold


def commit(node: str, rnd: int, metrics: object) -> dict:
    return {
        "round": rnd,
        "node": node,
        "envelope_sha256": "ab" * 32,
        "n_samples": 10,
        "metrics": metrics,
    }


def row(node: str, metrics: object = None) -> list:
    base = [node, "ab" * 32, 10, 1, "cd" * 64]
    return base if metrics is None else [*base, metrics]


def test_a_delta_commit_reports_the_model_it_started_from_or_the_round_it_names() -> None:
    assert site_metrics("delta_commit", "a", commit("a", 4, {"val_acc": 0.9}), "val_acc") == [
        SiteMetric("a", 3, 0.9)
    ]
    named = commit("a", 4, {"val_acc": 0.9, "val_n": 30, "val_round": 2})
    assert site_metrics("delta_commit", "a", named, "val_acc") == [SiteMetric("a", 2, 0.9)]


@pytest.mark.parametrize(
    "metrics",
    [
        {},
        {"accuracy": 0.9},
        {"val_acc": "0.9"},
        {"val_acc": None},
        {"val_acc": True},
        {"val_acc": math.inf},
        {"val_acc": 0.9, "val_round": -1},
        {"val_acc": 0.9, "val_round": "3"},
        [0.9],
        None,
    ],
)
def test_a_commit_without_a_usable_metric_reports_nothing(metrics: object) -> None:
    assert site_metrics("delta_commit", "a", commit("a", 4, metrics), "val_acc") == []


def test_round_close_rows_of_five_carry_nothing_rows_of_six_their_metrics() -> None:
    close = {
        "round": 7,
        "included": ["a", "b", "c", "d"],
        "reason": "all",
        "commits": [
            row("a"),  # today's row: no metrics
            row("b", {"val_acc": 0.8, "val_n": 20}),
            row("c", {"val_acc": 0.7, "val_round": 5}),
            row("d", "not an object"),
        ],
    }
    assert site_metrics("round_close", "gw", close, "val_acc") == [
        SiteMetric("b", 6, 0.8),
        SiteMetric("c", 5, 0.7),
    ]
    compact = {**close, "commits": {"sha256": "ab" * 32, "n": 4}}  # a light copy's digest
    assert site_metrics("round_close", "gw", compact, "val_acc") == []
    assert site_metrics("round_close", "gw", "garbage", "val_acc") == []
    assert site_metrics("round_open", "gw", close, "val_acc") == []


def test_the_book_keeps_each_sites_latest_value_per_round() -> None:
    book = MetricBook()
    book.fold("delta_commit", "b", commit("b", 2, {"val_acc": 0.5}))
    book.fold("delta_commit", "a", commit("a", 2, {"val_acc": 0.7}))
    book.fold("delta_commit", "a", commit("a", 2, {"val_acc": 0.6}))  # a re-report: latest wins
    book.fold("round_close", "gw", {"round": 3, "commits": [row("a", {"val_acc": 0.9})]})
    assert book.per_round() == {1: [0.6, 0.5], 2: [0.9]}
    assert book.per_round(since=2) == {2: [0.9]}
    assert book.means() == {1: pytest.approx(0.55), 2: pytest.approx(0.9)}
