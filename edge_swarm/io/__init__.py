"""Adapters between the pure core and the network: MQTT client and brokers.

``mqtt`` wraps paho-mqtt (always installed); ``broker`` runs an embedded amqtt broker (the
``broker`` extra, imported only when started) or a Mosquitto subprocess. An agent never runs
a broker, so ``broker`` (asyncio, subprocess) loads only when one of its names is asked for.
"""

from __future__ import annotations

from edge_swarm.io.mqtt import DEFAULT_MAX_PAYLOAD, Message, MqttClient, MqttStats, Will

_BROKER = frozenset(
    {
        "BrokerStartError",
        "EmbeddedBroker",
        "MosquittoBroker",
        "find_mosquitto",
        "free_port",
        "run_embedded_broker",
    }
)


def __getattr__(name: str) -> object:
    """The broker's names, loaded on first use (PEP 562)."""
    if name in _BROKER:
        from edge_swarm.io import broker

        return getattr(broker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "BrokerStartError",
    "EmbeddedBroker",
    "Message",
    "MosquittoBroker",
    "MqttClient",
    "MqttStats",
    "Will",
    "find_mosquitto",
    "free_port",
    "run_embedded_broker",
]
