"""The embedded broker (amqtt) keeps every client when many connect and subscribe at once.

amqtt 0.12 iterated its topic-filter table across awaits: a client subscribing meanwhile
made another connection fail ("dictionary changed size during iteration"), dropped 5 ms
after its CONNACK and back a second later (``edge_swarm/io/_amqtt_fixes.py``). A site starts
nine processes at once; here 12 clients connect together, each subscribing to its own
filters, five times over, through the real broker.
"""

from __future__ import annotations

import threading

import pytest

from edge_swarm.io._amqtt_fixes import SnapshotDict
from edge_swarm.io.broker import EmbeddedBroker
from edge_swarm.io.mqtt import Message, MqttClient

pytestmark = pytest.mark.network

N_CLIENTS = 12


def test_a_snapshot_table_may_change_while_it_is_walked() -> None:
    table = SnapshotDict({"a/#": [1], "b/+": [2]})
    for key in table:
        table[key + "/x"] = [3]  # a plain dict raises RuntimeError here
    for key, _ in table.items():
        del table[key]
    for key in list(table.keys()):
        table.pop(key)
    assert table == {} and type(table) is SnapshotDict


def test_clients_connecting_and_subscribing_together_are_all_kept(
    embedded_broker: EmbeddedBroker,
) -> None:
    # Retained messages, as a site has (checkpoints, statuses): amqtt sends a connecting
    # client those matching every filter in its table, awaiting each send, and it is during
    # those awaits that other clients' subscriptions changed the table.
    with MqttClient(
        "retainer", "127.0.0.1", embedded_broker.port, on_message=lambda m: None
    ) as retainer:
        assert retainer.wait_connected(15)
        for k in range(20):
            assert retainer.publish(f"t/all/r{k}", b"kept", qos=1, retain=True, wait=15)
    for attempt in range(5):
        got = [threading.Event() for _ in range(N_CLIENTS)]
        clients = []
        for i in range(N_CLIENTS):

            def on_message(
                msg: Message, i: int = i, a: int = attempt, got: list[threading.Event] = got
            ) -> None:
                if msg.topic == f"t{a}/{i}/echo":
                    got[i].set()

            c = MqttClient(
                f"c{attempt}-{i}", "127.0.0.1", embedded_broker.port, on_message=on_message
            )
            c.subscribe_all([f"t{attempt}/{i}/echo", f"t{attempt}/{i}/+/x", "t/all/#"], timeout=0)
            clients.append(c)
        try:
            for c in clients:  # as close together as threads allow
                c.start()
            assert all(c.wait_connected(15) for c in clients)
            for i, c in enumerate(clients):
                assert c.subscribe_all(
                    [f"t{attempt}/{i}/echo", f"t{attempt}/{i}/+/x", "t/all/#"], timeout=15
                )
                assert c.publish(f"t{attempt}/{i}/echo", b"ping", qos=1, wait=15)
            assert all(e.wait(15) for e in got)
            # One CONNACK each, and no connection lost: a dropped client would be on its second.
            assert [(c.stats.connects, c.stats.disconnects) for c in clients] == [
                (1, 0)
            ] * N_CLIENTS, attempt
        finally:
            for c in clients:
                c.stop()
