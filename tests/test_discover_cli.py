"""``edge-swarm discover`` against real adverts on loopback (python-zeroconf, real multicast)."""

from __future__ import annotations

import json

import pytest

from edge_swarm.cli.main import main
from edge_swarm.io.discovery import Discovery
from edge_swarm.swarm.adverts import SERVICE_MQTT, SERVICE_SWARM, broker_txt, swarm_txt

pytestmark = pytest.mark.network

GENESIS = "ab" * 32
ROGUE = "cd" * 32


def test_discover_lists_the_lan_and_says_what_a_node_would_trust(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ads = Discovery(["127.0.0.1"])
    try:
        ads.advertise(
            SERVICE_SWARM,
            "ward-gw",
            0,
            ["127.0.0.1"],
            swarm_txt("ward", GENESIS, "gateway", "gw-1", "0" * 16, state="online", round=7),
        )
        ads.advertise(SERVICE_MQTT, "ward-broker", 1883, ["127.0.0.1"], broker_txt("ward", GENESIS))
        ads.advertise(SERVICE_MQTT, "ward-rogue", 1884, ["127.0.0.1"], broker_txt("ward", ROGUE))
        argv = ["discover", "--timeout", "4", "--interface", "127.0.0.1", "--swarm", "ward"]
        assert main([*argv, "--genesis", GENESIS, "--json"]) == 0
    finally:
        ads.close()
    out = capsys.readouterr().out
    assert "broker for swarm ward: 127.0.0.1:1883 (plain)" in out
    rows = json.loads(out[out.index("[") :])
    by_name = {r["name"].split(".")[0]: r for r in rows}
    assert by_name["ward-gw"]["role"] == "gateway" and by_name["ward-gw"]["round"] == 7
    assert by_name["ward-gw"]["node"] == "gw-1" and by_name["ward-gw"]["state"] == "online"
    assert by_name["ward-broker"]["ignored_because"] is None
    assert by_name["ward-rogue"]["ignored_because"] == "wrong genesis"
