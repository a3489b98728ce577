"""The operator's tasks: device keys, a new swarm's genesis, enrolment and revocation."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_swarm.cli.main import main
from edge_swarm.site.operator import enc_key_path, keygen
from ledger_lite import Entry, verify_chain


def read_chain(path: Path) -> list[Entry]:
    return [Entry.from_dict(json.loads(ln)) for ln in path.read_text().splitlines() if ln]


def test_keygen_admin_init_enroll_and_revoke_build_a_valid_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "pi" / "device.key"
    assert main(["keygen", "--node-id", "pi-1", "--key", str(key)]) == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    out = capsys.readouterr()
    request = out.out  # the request alone: `keygen ... > req.json` is what enroll reads
    assert json.loads(request)["node"] == "pi-1"
    assert "keys written to" in out.err
    # A device keeps its key: a second keygen does not overwrite it.
    assert main(["keygen", "--node-id", "pi-1", "--key", str(key)]) == 2

    site = tmp_path / "site"
    assert main(["admin", "init", "--swarm", "clinic", "--out", str(site)]) == 0
    (tmp_path / "req.json").write_text(request)
    common = ["--admin-key", str(site / "admin.key"), "--swarm", "clinic"]
    boot = ["--bootstrap", str(site / "bootstrap.jsonl")]
    assert main(["enroll", *common, *boot, "--request", str(tmp_path / "req.json")]) == 0
    assert main(["revoke", *common, *boot, "--node", "pi-1"]) == 0

    chain = read_chain(site / "bootstrap.jsonl")
    assert [e.kind for e in chain] == ["genesis", "enroll", "revoke"]
    assert chain[0].payload["params"]["codec"]["name"] == "int8"
    assert chain[0].payload["params"]["security"] == "sealed"  # encryption on by default
    # The enrolment carries the device's encryption key, made by keygen next to its key.
    assert chain[1].payload["enc_pubkey"] == json.loads(request)["enc_pubkey"]
    assert stat.S_IMODE(enc_key_path(key).stat().st_mode) == 0o600
    assert verify_chain(chain).ok


def test_operator_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site"
    assert main(["admin", "init", "--swarm", "clinic", "--out", str(site)]) == 0
    assert main(["admin", "init", "--swarm", "clinic", "--out", str(site)]) == 2
    assert "one genesis per swarm" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"node": "x"}')
    args = ["enroll", "--admin-key", str(site / "admin.key"), "--swarm", "clinic"]
    args += ["--bootstrap", str(site / "bootstrap.jsonl"), "--request", str(tmp_path / "bad.json")]
    assert main(args) == 2
    assert "enrolment request" in capsys.readouterr().err
    (site / "admin.key").chmod(0o644)
    assert main([*args[:-1], str(tmp_path / "bad.json")]) == 2
    assert "chmod 600" in capsys.readouterr().err


def edge_swarm(*args: str | Path, stdout: Any = subprocess.PIPE) -> str:
    """Run the real command line; returns its stderr and fails with it on a nonzero exit."""
    proc = subprocess.run(
        [sys.executable, "-m", "edge_swarm", *map(str, args)],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_keygen_redirected_to_a_file_is_what_enroll_takes(tmp_path: Path) -> None:
    site = tmp_path / "site"
    edge_swarm("admin", "init", "--swarm", "clinic", "--out", site)
    # The shell's `keygen --node-id x --key tmp/k > r.json`: stdout is the file itself.
    with (tmp_path / "r.json").open("w") as f:
        err = edge_swarm("keygen", "--node-id", "x", "--key", tmp_path / "k", stdout=f)
    text = (tmp_path / "r.json").read_text()
    request = json.loads(text)  # the whole of stdout is one JSON document ...
    assert text.endswith("}\n") and text.count("\n") == 1  # ... on one terminated line
    assert (request["node"], request["role"]) == ("x", "agent")
    # Everything said to the person went to stderr: where the keys are, what to do next.
    assert f"keys written to {tmp_path / 'k'} and {tmp_path / 'k.enc'}" in err
    assert "edge-swarm enroll" in err and "{" not in err

    boot = site / "bootstrap.jsonl"
    err = edge_swarm(
        *("enroll", "--admin-key", site / "admin.key", "--swarm", "clinic"),
        *("--bootstrap", boot, "--request", tmp_path / "r.json"),
    )
    assert err == ""
    chain = read_chain(boot)
    assert [e.kind for e in chain] == ["genesis", "enroll"]
    assert chain[1].payload["node"] == "x"
    assert chain[1].payload["pubkey"] == request["pubkey"]
    assert chain[1].payload["enc_pubkey"] == request["enc_pubkey"]
    assert verify_chain(chain).ok


@pytest.mark.parametrize(
    ("content", "why"),
    [
        # What an older keygen printed: a sentence, then the JSON.
        ('keys written to k; give the operator this request:\n{"node": "x"}\n', "not JSON"),
        ('{"node": "x", "role": "agent"}\n', "no 'pubkey'"),
        ("[]\n", "not a JSON object"),
        (None, "cannot read it"),
    ],
)
def test_enroll_refuses_a_file_that_is_not_a_request_in_one_line(
    tmp_path: Path, content: str | None, why: str
) -> None:
    site = tmp_path / "site"
    edge_swarm("admin", "init", "--swarm", "clinic", "--out", site)
    bad = tmp_path / "r.json"
    if content is not None:
        bad.write_text(content)
    proc = subprocess.run(
        [sys.executable, "-m", "edge_swarm", "enroll", "--admin-key", str(site / "admin.key")]
        + ["--swarm", "clinic", "--bootstrap", str(site / "bootstrap.jsonl")]
        + ["--request", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    err = proc.stderr
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"edge-swarm enroll: --request {bad}: ") and why in err
    if content is not None:
        assert "the JSON that `edge-swarm keygen` prints on standard output" in err
    assert [e.kind for e in read_chain(site / "bootstrap.jsonl")] == ["genesis"]


def test_admin_init_takes_the_merge_rule_into_the_genesis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "site"
    args = ["admin", "init", "--swarm", "clinic", "--out", str(site)]
    assert main([*args, "--merge", "nnm+median,f=2,clip=3"]) == 0
    merge = read_chain(site / "bootstrap.jsonl")[0].payload["params"]["merge"]
    assert (merge["name"], merge["momentum"]) == ("fedavgm", 0.5)  # the standard server rule
    assert (merge["aggregator"], merge["mix"], merge["f"], merge["clip"]) == ("median", "nnm", 2, 3)
    out = capsys.readouterr().out
    assert "merge rule: nnm+median over fedavgm, f = 2" in out
    assert "needs at least 5 agents' deltas per round" in out
    assert main([*args[:-1], str(tmp_path / "other"), "--merge", "nnm+median"]) == 2
    assert "--merge nnm+median: mix 'nnm' needs f >= 1" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("too_open", ["signing", "encryption"])
def test_an_agent_refuses_to_start_with_a_key_others_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], too_open: str
) -> None:
    import numpy as np

    from edge_swarm.node.config import NodeConfig, dump_config

    req = keygen(tmp_path / "device.key", "pi-1")
    assert req.enc_pubkey is not None
    key, enc = tmp_path / "device.key", enc_key_path(tmp_path / "device.key")
    assert (key.stat().st_mode & 0o777, enc.stat().st_mode & 0o777) == (0o600, 0o600)
    (key if too_open == "signing" else enc).chmod(0o640)  # group may read it
    data = tmp_path / "data.npz"
    np.savez(data, X=np.zeros((2, 64), np.float32), y=np.array([0, 1]))
    cfg = NodeConfig(
        node_id="pi-1",
        role="agent",
        swarm="clinic",
        key_path=key,
        enc_key_path=enc,
        state_dir=tmp_path / "state",
        data_path=data,
    )
    (tmp_path / "agent.toml").write_text(dump_config(cfg))
    assert main(["agent", "--config", str(tmp_path / "agent.toml")]) == 2
    err = capsys.readouterr().err
    assert "cannot start" in err and "chmod 600" in err
    assert str(key if too_open == "signing" else enc) in err
