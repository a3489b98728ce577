"""What a gateway knows of the devices from their signed statuses and telemetry: who is
online (for the coordinator) and each device's latest numbers (for the dashboard)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge_swarm.node.vitals import RateLimitedLog
from edge_swarm.swarm.messages import MessageError, Status, Telemetry

MAX_EARLY_STATUS = 1024  # statuses held for nodes whose enrolment has not arrived yet
MAX_DEVICES = 1024  # devices whose numbers are kept for the dashboard


class DeviceBook:
    """Verified statuses and telemetry by node. ``public_key(node)`` is the enrolled, active
    key of a node (None if it has none now)."""

    def __init__(self, public_key: Callable[[str], str | None], drops: RateLimitedLog) -> None:
        self._public_key = public_key
        self._drops = drops
        self._early: dict[str, bytes] = {}  # statuses of nodes not enrolled here yet
        # node -> {role, state, round, telemetry numbers}: what the dashboard shows
        self.view: dict[str, dict[str, Any]] = {}

    def status(self, node: str, payload: bytes) -> bool | None:
        """A retained status from ``fleet/status/{node}``: whether the agent is online, or
        None if the message says nothing we can trust (yet)."""
        if not payload:
            return None  # a cleared retained status
        try:
            status = Status.decode(payload)
        except MessageError as exc:
            self._drops.drop("bad status", str(exc))
            return None
        if status.node != node or status.role != "agent":
            return None
        # Signed by the device's enrolled key: a rogue client cannot mark a device offline.
        # No freshness check: the last will is signed at connect time, before the "online"
        # it must override; replaying a device's own old status is what the broker's ACL
        # (only the device writes its status topic) stops.
        key = self._public_key(node)
        if key is None:
            # Retained statuses can arrive before the enrolments reach this replica: keep
            # the newest per node (bounded) and check it once the node is enrolled.
            if node in self._early or len(self._early) < MAX_EARLY_STATUS:
                self._early[node] = payload
            return None
        if not status.verify(key):
            self._drops.drop("bad status signature", node)
            return None
        device = self.view.setdefault(node, {"role": status.role})
        device.update(state=status.state, round=status.round)
        return status.state == "online"

    def enrolled(self, node: str) -> bytes | None:
        """The status held for ``node`` until its enrolment arrived, to be judged now."""
        return self._early.pop(node, None)

    def telemetry(self, node: str, payload: bytes) -> None:
        """Keep each device's latest verified numbers (for the dashboard)."""
        try:
            tm = Telemetry.decode(payload)
        except MessageError:
            return
        key = self._public_key(node)
        if tm.node != node or key is None or not tm.verify(key):
            self._drops.drop("bad telemetry signature", node)
            return
        if node in self.view or len(self.view) < MAX_DEVICES:
            self.view.setdefault(node, {"role": "agent"}).update(tm.values)
