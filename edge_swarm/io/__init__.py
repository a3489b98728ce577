"""Adapters between the pure core and the network: MQTT client and brokers.

``mqtt`` wraps paho-mqtt (always installed); ``broker`` runs an embedded amqtt broker (the
``broker`` extra, imported only when started) or a Mosquitto subprocess.
"""

from edge_swarm.io.broker import (
    BrokerStartError,
    EmbeddedBroker,
    MosquittoBroker,
    find_mosquitto,
    free_port,
    run_embedded_broker,
)
from edge_swarm.io.mqtt import DEFAULT_MAX_PAYLOAD, Message, MqttClient, MqttStats, Will

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
