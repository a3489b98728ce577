"""A device's side of fleet control: take commands, run the sound ones, answer every one.

Commands reach a device twice, on ``fleet/cmd/{node|all}`` and as ``fleet_command`` ledger
entries; ``swarm.commands.judge`` decides (admin signature, target, expiry, id not seen),
the device's operations run it, and the device publishes a signed ``Ack`` either way. Ids
are remembered (bounded), so the second copy of a command is not run again and a replay is
refused. ``LogRing`` keeps the device's last log lines for the ``logs`` command.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any

from edge_swarm.swarm.commands import REPLAYED, Ack, Command, judge
from ledger_lite.canonical import parse_json

log = logging.getLogger(__name__)

Outcome = tuple[str, str, dict[str, Any]]  # (status, detail, data)
Operation = Callable[[Command], Outcome]
SEEN_KEPT = 4096


class LogRing(logging.Handler):
    """The last ``capacity`` formatted log lines of this process, for ``logs`` commands."""

    def __init__(self, capacity: int = 500) -> None:
        super().__init__(logging.INFO)
        self.lines: deque[str] = deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record)[:500])
        except Exception:  # noqa: BLE001 - logging must never fail the caller
            self.handleError(record)

    def tail(self, n: int, max_bytes: int = 48 * 1024) -> list[str]:
        out: list[str] = []
        size = 0
        for line in reversed(list(self.lines)[-n:]):
            size += len(line) + 1
            if size > max_bytes:
                break
            out.append(line)
        return out[::-1]


class FleetControl:
    """Judges, runs and answers fleet commands for one device."""

    def __init__(
        self,
        node: str,
        swarm: str,
        admins: Callable[[], Mapping[str, str] | None],
        answer: Callable[[Ack], None],
        operations: Mapping[str, Operation],
        now_ms: Callable[[], int],
    ) -> None:
        self.node = node
        self.swarm = swarm
        self.admins = admins
        self.answer = answer
        self.operations = operations
        self.now_ms = now_ms
        self._seen: OrderedDict[str, None] = OrderedDict()

    def on_message(self, payload: bytes) -> None:
        """A command from ``fleet/cmd``: a transaction as JSON."""
        try:
            raw = parse_json(payload)
        except ValueError:  # parse_json raises only DecodeError, a ValueError
            log.warning("fleet: dropped a command that is not JSON")
            return
        self._take(raw, from_ledger=False)

    def on_entry(self, tx: dict[str, Any]) -> None:
        """A ``fleet_command`` entry the ledger copy has validated."""
        self._take(tx, from_ledger=True)

    def _take(self, raw: object, from_ledger: bool) -> None:
        admins = self.admins()
        if admins is None:
            return  # no genesis yet: the ledger will bring the command again
        command, cid, reason = judge(
            raw,
            swarm=self.swarm,
            node=self.node,
            admins=admins,
            now_ms=self.now_ms(),
            seen=lambda i: i in self._seen,
        )
        if reason is not None:
            quiet = reason.startswith("not for this device") or (
                reason == REPLAYED and from_ledger  # the ledger's copy of one we ran: normal
            )
            if not quiet:
                log.warning("fleet: refused command %s: %s", (cid or "?")[:12], reason)
                if cid is not None:
                    self._answer(cid, "refused", reason, {})
            return
        assert command is not None
        self._seen[command.id] = None
        while len(self._seen) > SEEN_KEPT:
            self._seen.popitem(last=False)
        op = self.operations.get(command.op)
        if op is None:
            self._answer(command.id, "refused", f"this device does not {command.op}", {})
            return
        try:
            status, detail, data = op(command)
        except Exception as exc:  # noqa: BLE001 - a failing operation is answered, not fatal
            log.exception("fleet: %s failed", command.op)
            status, detail, data = "failed", f"{type(exc).__name__}: {exc}", {}
        log.info("fleet: %s %s: %s %s", command.op, command.id[:12], status, detail)
        self._answer(command.id, status, detail, data)

    def _answer(self, cid: str, status: str, detail: str, data: dict[str, Any]) -> None:
        self.answer(Ack(cid, self.node, status, detail[:500], data, self.now_ms()))
