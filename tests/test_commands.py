"""Fleet commands without a network: what a device runs, refuses, and how it answers."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_swarm.node.fleet import FleetControl
from edge_swarm.swarm.commands import Ack, Command, CommandError, judge, make_command
from ledger_lite import SigningKey

ADMIN = SigningKey.generate()
ADMINS = {"admin": ADMIN.public_hex}
NOW = 1_800_000_000_000


def cmd(op: str = "pause", target: str = "all", args: dict | None = None, **kw: object):
    return make_command(
        ADMIN, "admin", "clinic", target, op, args, kw.get("now", NOW), kw.get("ttl", 60)
    )  # type: ignore[arg-type]


def verdict(tx: object, node: str = "pi-1", seen: set[str] | None = None) -> str | None:
    return judge(
        tx, swarm="clinic", node=node, admins=ADMINS, now_ms=NOW, seen=(seen or set()).__contains__
    )[2]


def test_a_sound_command_is_run() -> None:
    command, cid, reason = judge(
        cmd(), swarm="clinic", node="pi-1", admins=ADMINS, now_ms=NOW, seen=set().__contains__
    )
    assert reason is None and cid is None and isinstance(command, Command) and command.op == "pause"
    assert verdict(cmd(target="pi-1").to_dict()) is None  # as the JSON on fleet/cmd


def test_each_refusal_has_its_reason() -> None:
    stranger = SigningKey.generate()
    forged = make_command(stranger, "admin", "clinic", "all", "pause", None, NOW)
    assert verdict(forged) == "bad signature"
    assert (
        verdict(make_command(stranger, "pi-9", "clinic", "all", "pause", None, NOW))
        == "not signed by an admin: pi-9"
    )
    assert verdict(make_command(ADMIN, "admin", "other", "all", "pause", None, NOW)).startswith(
        "other swarm"
    )  # type: ignore[union-attr]
    assert verdict(cmd(target="pi-2")).startswith("not for this device")  # type: ignore[union-attr]
    assert verdict(cmd(now=NOW - 120_000)).startswith("expired")  # type: ignore[union-attr]
    tx = cmd()
    assert verdict(tx, seen={tx.payload["id"]}) == "replayed"
    assert verdict({"not": "a tx"}).startswith("malformed")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("set", {"name": "threads", "value": 2}),
        ("set", {"name": "log_level", "value": "LOUD"}),
        ("rollback", {"round": 0}),
        ("logs", {"lines": 10_000}),
        ("pause", {"x": 1}),
    ],
)
def test_bad_arguments_are_refused_before_sending(op: str, args: dict) -> None:
    with pytest.raises(ValueError, match="bad arguments"):
        cmd(op, args=args)


def test_device_runs_once_and_answers_every_command() -> None:
    answers: list[Ack] = []
    runs: list[str] = []
    fc = FleetControl(
        "pi-1",
        "clinic",
        lambda: ADMINS,
        answers.append,
        {"pause": lambda c: (runs.append(c.id), ("done", "paused", {}))[1]},
        lambda: NOW,
    )
    tx = cmd()
    fc.on_message(json.dumps(tx.to_dict()).encode())
    fc.on_entry(tx.to_dict())  # the ledger's copy of the same command: not run again, not answered
    fc.on_message(json.dumps(tx.to_dict()).encode())  # a replay on fleet/cmd: refused, answered
    fc.on_message(json.dumps(cmd("resume").to_dict()).encode())  # an operation this device lacks
    fc.on_message(b"{not json")
    assert runs == [tx.payload["id"]]
    assert [(a.status, a.detail) for a in answers] == [
        ("done", "paused"),
        ("refused", "replayed"),
        ("refused", "this device does not resume"),
    ]


def test_answers_are_signed_by_the_device_and_round_trip() -> None:
    key = SigningKey.generate()
    ack = Ack("ab" * 16, "pi-1", "done", "paused", {"lines": ["x"]}, NOW).signed(key.sign)
    back = Ack.decode(ack.encode())
    assert back == ack and back.verify(key.public_hex)
    assert not Ack.decode(ack.encode().replace(b"paused", b"pausex")).verify(key.public_hex)
    assert not back.verify(SigningKey.generate().public_hex)


@settings(max_examples=200)
@given(st.binary(max_size=300) | st.from_regex(r'\{"id":.*\}', fullmatch=True).map(str.encode))
def test_answer_decoding_raises_only_command_error(data: bytes) -> None:
    with contextlib.suppress(CommandError):
        Ack.decode(data)
