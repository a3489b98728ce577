"""``edge-swarm fleet ls | cmd | logs | watch``: steer the fleet from a laptop over MQTT.

``FleetClient`` is the operator's connection: it reads the enrolled keys from the ledger (a
query to the gateway), keeps every device's retained status and latest telemetry — each
checked against the device's enrolled key; a status or an answer that does not verify is
shown as such, never trusted — and sends admin-signed commands (on ``fleet/cmd/{target}``
and to the ledger) and collects the devices' signed answers.
"""

from __future__ import annotations

import argparse
import logging
import queue
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_swarm.dashboard.views import serving_text
from edge_swarm.io.mqtt import Message, MqttClient, handle_until
from edge_swarm.node.vitals import RateLimitedLog
from edge_swarm.swarm.commands import Ack, CommandError, make_command
from edge_swarm.swarm.messages import MessageError, Query, Reply, Status, Submission, Telemetry
from edge_swarm.swarm.topics import ALL, TopicError, Topics
from ledger_lite import Entry, SigningKey, Tx
from ledger_lite.errors import DecodeError
from ledger_lite.schema import payload_problem

QUERY_TIMEOUT_S = 10.0

log = logging.getLogger(__name__)


@dataclass
class Device:
    """What the operator knows of one device."""

    node: str
    role: str = "?"
    state: str = "?"
    round: int = 0
    verified: bool = False
    status_ms: int = 0
    telemetry: dict[str, float] = field(default_factory=dict)


class FleetClient:
    """The operator's view of a swarm's devices, and its channel for commands."""

    def __init__(
        self, swarm: str, host: str, port: int, mqtt_options: dict[str, Any] | None = None
    ) -> None:
        self.swarm = swarm
        self.topics = Topics(swarm)
        self.client_id = f"operator-{secrets.token_hex(4)}"
        self._inbox: queue.Queue[Message] = queue.Queue()
        self.mqtt = MqttClient(
            f"{swarm}.{self.client_id}",
            host,
            port,
            on_message=self._inbox.put,
            **(mqtt_options or {}),
        )
        self.keys: dict[str, str] = {}  # enrolled, unrevoked nodes -> Ed25519 public hex
        self.admins: dict[str, str] = {}
        self.devices: dict[str, Device] = {}
        self.acks: dict[str, dict[str, Ack | str]] = {}  # command id -> node -> Ack or a note
        self._reply: Reply | None = None
        self._reply_entries: list[Entry] = []  # its entries, each parsed and schema-checked
        self.drops = RateLimitedLog(log)  # what handling a message raised unexpectedly

    # -- connection
    def start(self, timeout: float = 15.0) -> None:
        self.mqtt.start()
        if not self.mqtt.wait_connected(timeout):
            raise RuntimeError(f"cannot reach the broker at {self.mqtt.host}:{self.mqtt.port}")
        t = self.topics
        self.mqtt.subscribe(t.ledger_reply(self.client_id), qos=1)
        self.load_keys()  # first: retained statuses are checked against these keys on arrival
        for topic in (t.fleet_status_filter(), t.fleet_telemetry_filter(), t.fleet_ack_filter()):
            self.mqtt.subscribe(topic, qos=1)

    def stop(self) -> None:
        self.mqtt.stop()

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Handle messages until ``predicate()`` holds or ``timeout`` seconds pass."""
        return handle_until(self._inbox, self._handle, predicate, timeout, self._on_error)

    # -- the ledger's enrolments
    def load_keys(self) -> None:
        """Copy the enrolments from the ledger (through the gateway): who may sign what."""
        start = 0
        while True:
            req = secrets.token_hex(8)
            self._reply = None
            q = Query(self.client_id, req, start=start)
            self.mqtt.publish(self.topics.ledger_query(), q.encode(), qos=1)
            if not self.wait(
                lambda r=req: self._reply is not None and self._reply.req == r, QUERY_TIMEOUT_S
            ):
                raise RuntimeError("no answer from a gateway to a ledger query: is one running?")
            reply = self._reply
            assert reply is not None
            for entry in self._reply_entries:
                self._fold(entry)
            start += len(reply.entries)
            if not reply.entries or start > reply.tip_height:
                return

    def _fold(self, e: Entry) -> None:
        p = e.payload
        if e.kind == "genesis":
            self.admins = dict(p["admins"])
        elif e.kind == "enroll":
            self.keys[p["node"]] = p["pubkey"]
        elif e.kind == "revoke":
            self.keys.pop(p["node"], None)

    # -- messages
    def _handle(self, msg: Message) -> None:
        try:
            parsed = self.topics.parse(msg.topic)
        except TopicError:
            return
        try:
            if parsed.kind == "ledger_reply":
                reply = Reply.decode(msg.payload)
                # A reply with one malformed entry is dropped whole (DecodeError below).
                self._reply_entries = [_checked_entry(raw) for raw in reply.entries]
                self._reply = reply
            elif parsed.kind == "fleet_status" and msg.payload and parsed.node:
                st = Status.decode(msg.payload)
                dev = self.devices.setdefault(parsed.node, Device(parsed.node))
                dev.role, dev.state, dev.round, dev.status_ms = (
                    st.role,
                    st.state,
                    st.round,
                    st.ts_ms,
                )
                key = self.keys.get(parsed.node)
                dev.verified = st.node == parsed.node and key is not None and st.verify(key)
            elif parsed.kind == "fleet_telemetry" and parsed.node:
                tm = Telemetry.decode(msg.payload)
                key = self.keys.get(parsed.node)
                if tm.node == parsed.node and key is not None and tm.verify(key):
                    self.devices.setdefault(parsed.node, Device(parsed.node)).telemetry = dict(
                        tm.values
                    )
            elif parsed.kind == "fleet_ack" and parsed.node:
                ack = Ack.decode(msg.payload)
                key = self.keys.get(parsed.node)
                if ack.node == parsed.node and key is not None and ack.verify(key):
                    self.acks.setdefault(ack.id, {})[ack.node] = ack
        except (MessageError, CommandError, ValueError):
            return  # someone else's garbage (every decoder's error is a ValueError)

    def _on_error(self, msg: Message, exc: Exception) -> None:
        self.drops.error(msg.topic, exc, msg.topic)

    # -- commands
    def send(self, tx: Tx, targets: set[str], timeout: float) -> dict[str, Ack | str]:
        """Publish an admin-signed command and submit it to the ledger; wait (bounded) for
        every target's signed answer. Returns node -> Ack, or a note for a silent device."""
        cid = tx.payload["id"]
        self.acks[cid] = {}  # sending again (a replay) waits for new answers
        topic = self.topics.fleet_cmd(tx.payload["target"])
        body = Submission(tx.to_dict()).encode()
        self.mqtt.publish(topic, json_of(tx), qos=1, wait=5.0)
        self.mqtt.publish(self.topics.ledger_submit(), body, qos=1, wait=5.0)
        self.wait(lambda: targets <= set(self.acks.get(cid, {})), timeout)
        got = dict(self.acks.get(cid, {}))
        for node in targets - set(got):
            got[node] = f"no answer within {timeout:g} s"
        return got

    def live(self) -> set[str]:
        """Devices whose verified status is online or paused (a command's natural targets)."""
        return {
            n
            for n, d in self.devices.items()
            if d.verified and d.state in ("online", "paused") and d.role == "agent"
        }


def _checked_entry(raw: object) -> Entry:
    """An entry of a ledger reply, its payload checked against its kind's schema (``_fold``
    reads its fields); raises only DecodeError."""
    entry = Entry.from_dict(raw)
    problem = payload_problem(entry.kind, entry.payload)
    if problem is not None:
        raise DecodeError(f"{entry.kind} payload: {problem}")
    return entry


def json_of(tx: Tx) -> bytes:
    import json

    return json.dumps(tx.to_dict(), sort_keys=True, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- the CLI


def run_fleet(args: argparse.Namespace) -> int:
    host, _, port = args.broker.rpartition(":")
    if not host or not port.isdigit():
        print("edge-swarm fleet: --broker takes HOST:PORT", file=sys.stderr)
        return 2
    options: dict[str, Any] = {}
    if args.tls_ca:
        from edge_swarm.io.mqtt import TlsSettings

        options["tls"] = TlsSettings(args.tls_ca)
    if args.username:
        if not args.password_file:
            print("edge-swarm fleet: --username needs --password-file", file=sys.stderr)
            return 2
        options.update(
            username=args.username, password=args.password_file.read_text().splitlines()[0]
        )
    fleet = FleetClient(args.swarm, host, int(port), options)
    try:
        fleet.start()
        fleet.wait(lambda: False, args.listen)  # retained statuses arrive at once; telemetry soon
        if args.fleet_command == "ls":
            _print_devices(fleet)
        elif args.fleet_command == "watch":
            return _watch(fleet, args.listen)
        else:
            return _command(fleet, args)
    except RuntimeError as exc:
        print(f"edge-swarm fleet: {exc}", file=sys.stderr)
        return 1
    finally:
        fleet.stop()
    return 0


def _command(fleet: FleetClient, args: argparse.Namespace) -> int:
    admin = SigningKey.load(args.admin_key)
    if args.fleet_command == "logs":
        op, target, cmd_args = "logs", args.node, {"lines": args.lines}
    else:
        op, target = args.op, args.target
        cmd_args = {}
        if op == "set":
            name, _, value = (args.set or "").partition("=")
            cmd_args = {"name": name, "value": _number_or_text(value)}
        elif op in ("rollout", "rollback"):
            cmd_args = {"round": args.round}
    try:
        tx = make_command(
            admin,
            args.admin_id,
            fleet.swarm,
            target,
            op,
            cmd_args,
            int(time.time() * 1000),
            args.ttl,
        )
    except ValueError as exc:
        print(f"edge-swarm fleet: {exc}", file=sys.stderr)
        return 2
    targets = fleet.live() if target == ALL else {target}
    answers = fleet.send(tx, targets, args.wait)
    if op == "logs":
        ack = answers.get(target)
        if isinstance(ack, Ack):
            print("\n".join(ack.data.get("lines", [])))
            return 0 if ack.status == "done" else 1
        print(f"{target}: {ack}", file=sys.stderr)
        return 1
    from edge_swarm.site.report import print_table

    print_table(
        f"{op} ({tx.payload['id'][:12]}) -> {target}",
        ["device", "answer", "detail"],
        [
            [n, a.status if isinstance(a, Ack) else "-", a.detail if isinstance(a, Ack) else a]
            for n, a in sorted(answers.items())
        ],
    )
    return 0 if all(isinstance(a, Ack) and a.status == "done" for a in answers.values()) else 1


def _number_or_text(value: str) -> object:
    try:
        return float(value) if "." in value else int(value)
    except ValueError:
        return value


def _rows(fleet: FleetClient) -> list[list[object]]:
    rows = []
    for node, d in sorted(fleet.devices.items()):
        tm = d.telemetry
        rows.append(
            [
                node,
                d.role,
                d.state if d.verified else f"{d.state} (unverified!)",
                d.round,
                "" if "peak_rss_kb" not in tm else round(tm["peak_rss_kb"] / 1024, 1),
                _val_cell(tm),
                serving_text(tm),
                tm.get("cpu_temp_c", ""),
                tm.get("disk_free_mib", ""),
                tm.get("clock_skew_s", ""),
            ]
        )
    return rows


def _val_cell(tm: dict[str, float]) -> str:
    """``0.968 (r19)``: the device's held-out accuracy of the last final model it took."""
    acc, rnd = tm.get("val_acc"), tm.get("val_round")
    return "" if acc is None else f"{acc:.3f} (r{int(rnd or 0)})"


# "clock skew s": how far the device's wall clock is from the ledger's (the gateways')
COLUMNS = [
    "device",
    "role",
    "state",
    "round",
    "RSS MiB",
    "val acc (of round)",  # the global model on the device's own held-out slice
    "serving",  # the round served; a newer one the safety gate held back, and why
    "CPU °C",
    "disk free MiB",
    "clock skew s",
]


def _print_devices(fleet: FleetClient) -> None:
    from edge_swarm.site.report import print_table

    print_table(f"swarm {fleet.swarm}: {len(fleet.devices)} devices", COLUMNS, _rows(fleet))


def _watch(fleet: FleetClient, every: float) -> int:
    """A live table until Ctrl-C (rich's Live when installed, plain reprints otherwise)."""
    try:
        from rich.live import Live
        from rich.table import Table
    except ImportError:
        Live = None  # type: ignore[assignment]  # noqa: N806
    try:
        if Live is None:
            while True:
                fleet.wait(lambda: False, every)
                _print_devices(fleet)
        with Live(refresh_per_second=2) as live:
            while True:
                fleet.wait(lambda: False, every)
                table = Table(title=f"swarm {fleet.swarm}")
                for c in COLUMNS:
                    table.add_column(c)
                for row in _rows(fleet):
                    table.add_row(*(str(c) for c in row))
                live.update(table)
    except KeyboardInterrupt:
        return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("fleet", help="the devices of a swarm: list, watch, command, fetch logs")
    fsub = f.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--broker", required=True, help="HOST:PORT of the site's broker")
        p.add_argument("--swarm", required=True)
        p.add_argument("--tls-ca", type=Path, help="the swarm CA's certificate (a TLS broker)")
        p.add_argument("--username", help="the operator's broker login")
        p.add_argument("--password-file", type=Path)
        p.add_argument("--listen", type=float, default=2.0, help="seconds to gather statuses (2)")
        p.set_defaults(func=run_fleet)

    ls_help = "a table of the devices: state, round, memory, validation accuracy, serving"
    common(fsub.add_parser("ls", help=ls_help))
    common(fsub.add_parser("watch", help="the same table, live, until Ctrl-C"))
    c = fsub.add_parser("cmd", help="send an admin-signed command; show each device's answer")
    common(c)
    c.add_argument("op", choices=["start", "stop", "pause", "resume", "set", "rollout", "rollback"])
    c.add_argument("--target", default=ALL, help="a device id, or all (default)")
    c.add_argument("--set", help="for set: NAME=VALUE (log_level, telemetry_every_s)")
    c.add_argument("--round", type=int, help="for rollout/rollback: the model version")
    c.add_argument("--ttl", type=float, default=120.0, help="seconds the command stays valid")
    c.add_argument("--wait", type=float, default=15.0, help="seconds to wait for answers")
    c.add_argument("--admin-key", type=Path, required=True)
    c.add_argument("--admin-id", default="admin")
    lg = fsub.add_parser("logs", help="fetch a device's last log lines")
    common(lg)
    lg.add_argument("node")
    lg.add_argument("--lines", type=int, default=100)
    lg.add_argument("--wait", type=float, default=15.0)
    lg.add_argument("--ttl", type=float, default=60.0)
    lg.add_argument("--admin-key", type=Path, required=True)
    lg.add_argument("--admin-id", default="admin")
