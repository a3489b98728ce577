"""``edge-swarm demo``'s argument checks: each wrong option is refused with exit code 2 and a
message naming it, before any process starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_swarm.cli.main import main


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--codec", "int3"], "--codec int3"),
        (["--merge", "medain"], "--merge medain: 'medain' is not a server rule"),
        (["--merge", "nnm+median"], "needs f >= 1"),
        (["--merge", "bulyan,f=2"], "needs at least 11 agents per round, got --agents 8"),
        (["--attack", "sign_flip", "--attackers", "8"], "--attackers must be between 1 and 7"),
        (["--attack", "sign_flip", "--attackers", "0"], "--attackers must be between 1 and 7"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    workdir = tmp_path / "run"
    assert main(["demo", "--workdir", str(workdir), *args]) == 2
    assert says in capsys.readouterr().err
    assert not workdir.exists()


def test_unknown_attack_is_refused_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--attack", "backdoor"])
    assert exc.value.code == 2
    assert "invalid choice: 'backdoor'" in capsys.readouterr().err


def test_the_default_broker_is_embedded_for_small_fleets_and_mosquitto_above(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import edge_swarm.io.broker as broker
    from edge_swarm.cli.demo import _default_broker
    from edge_swarm.cli.main import EMBEDDED_BROKER_MAX_AGENTS

    assert _default_broker(8) == "embedded"
    assert _default_broker(EMBEDDED_BROKER_MAX_AGENTS) == "embedded"
    # find_mosquitto is the one fact of the machine this choice reads; both answers shown.
    monkeypatch.setattr(broker, "find_mosquitto", lambda: "/usr/sbin/mosquitto")
    assert _default_broker(100) == "mosquitto"
    assert "using Mosquitto" in capsys.readouterr().out
    monkeypatch.setattr(broker, "find_mosquitto", lambda: None)
    assert _default_broker(100) == "embedded"
    assert "apt-get install mosquitto" in capsys.readouterr().err


def test_a_negative_committee_size_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["demo", "--workdir", str(tmp_path / "w"), "--merge-by", "committee"]
    assert main([*args, "--committee-k", "-1"]) == 2
    assert "--committee-k must be 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_the_committee_draws_agents_only_where_the_gateways_are_too_few() -> None:
    from edge_swarm.cli.demo import default_committee_k

    # One or two gateways: two drawn agents, so that no single machine decides the model.
    assert [default_committee_k(g) for g in (1, 2)] == [2, 2]
    # Three or more are a majority on their own: every agent stays light.
    assert [default_committee_k(g) for g in (3, 5)] == [0, 0]
