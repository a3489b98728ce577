"""What an operator can ask of an agent (fleet commands, ``node/fleet.py`` judges and answers
them): pause and resume training, stop, change a setting, serve an earlier round, send logs."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from edge_swarm.node.fleet import Operation, Outcome
from edge_swarm.swarm.commands import Command

if TYPE_CHECKING:
    from edge_swarm.node.agent import Agent


def agent_operations(agent: Agent) -> dict[str, Operation]:
    """The operations ``FleetControl`` runs on ``agent``, by command name."""

    def set_state(state: str) -> Outcome:
        if agent.state == state:
            return "done", f"already {state}", {}
        agent.state = state
        agent.publish_status(state)
        return "done", state, {}

    def stop(command: Command) -> Outcome:
        agent.call_soon(agent.stop)  # after the answer is out
        return "done", "stopping", {}

    def set_value(command: Command) -> Outcome:
        name, value = command.args["name"], command.args["value"]
        if name == "log_level":
            logging.getLogger().setLevel(value)
        else:
            agent.telemetry_every_s = float(value)
        return "done", f"{name} = {value}", {}

    def serve_round(command: Command) -> Outcome:
        server = agent.device.server
        if server is None:
            return "failed", "this device does not serve models ([runtime] serve = false)", {}
        status, detail = server.serve_round(int(command.args["round"]))
        return status, detail, {}

    def logs(command: Command) -> Outcome:
        return "done", "", {"lines": agent.log_ring.tail(command.args.get("lines", 100))}

    return {
        "pause": lambda c: set_state("paused"),
        "resume": lambda c: set_state("online"),
        "start": lambda c: set_state("online"),  # a running device: train again
        "stop": stop,
        "set": set_value,
        "rollout": serve_round,
        "rollback": serve_round,
        "logs": logs,
    }
