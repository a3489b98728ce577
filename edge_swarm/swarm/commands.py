"""Fleet commands and their acknowledgements: admin-signed orders, device-signed answers.

How it works
------------
A command is a ledger transaction of kind ``fleet_command`` signed by an admin key; its
payload is ``Command``: a random id, the target (a node id or ``all``), the operation, its
arguments and an expiry time. The operator publishes the transaction on
``fleet/cmd/{target}`` (for the devices, at once) and submits it to the ledger (for the
record; devices that follow the ledger see it there too). A device acts on a command only
if ``judge`` finds it sound: our swarm, addressed to this device, signed by a genesis admin,
not expired, not seen before (ids make commands idempotent: the copy from the ledger and the
one from ``fleet/cmd`` run once), a known operation with valid arguments. Either way the
device answers on ``fleet/ack/{node}`` with an ``Ack`` signed by its own key: ``done``,
``refused`` (and why) or ``failed`` (and why).

Pure: no sockets, no clocks (``now_ms`` is passed in), no logging.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from edge_swarm.swarm.topics import ALL, TopicError, validate_id
from ledger_lite import SigningKey, Tx, make_tx
from ledger_lite import verify as verify_signature
from ledger_lite.canonical import canonical_bytes, parse_json
from ledger_lite.errors import DecodeError, LedgerError

OPS = ("start", "stop", "pause", "resume", "set", "rollout", "rollback", "logs")
SETTINGS = ("log_level", "telemetry_every_s")  # what ``set`` may change on a running device
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_TTL_S = 120.0
MAX_TTL_S = 7 * 24 * 3600.0
MAX_COMMAND = 16 * 1024  # bytes of a command message
MAX_ACK = 64 * 1024  # bytes of an answer (``logs`` carries lines)
ACK_TYPE = "edge-swarm/fleet-ack/v1"
STATUSES = ("done", "refused", "failed")
_ID_RE = re.compile(r"[0-9a-f]{32}")
_SIG_RE = re.compile(r"[0-9a-f]{128}")

# Refusal reasons (the ``detail`` of a refused Ack starts with one of these).
MALFORMED = "malformed"
OTHER_SWARM = "other swarm"
NOT_FOR_ME = "not for this device"
NOT_ADMIN = "not signed by an admin"
BAD_SIGNATURE = "bad signature"
EXPIRED = "expired"
REPLAYED = "replayed"
BAD_ARGS = "bad arguments"


class CommandError(ValueError):
    """A command or an answer that is not well formed."""


@dataclass(frozen=True)
class Command:
    """The payload of a ``fleet_command`` entry."""

    id: str
    target: str
    op: str
    args: Mapping[str, Any] = field(default_factory=dict)
    expires_ms: int = 0

    def to_payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "op": self.op,
            "args": dict(self.args),
            "expires_ms": self.expires_ms,
        }

    @classmethod
    def from_payload(cls, obj: object) -> Command:
        """Parse untrusted JSON; raises only CommandError (also for bad arguments)."""
        if not isinstance(obj, Mapping) or set(obj) != {"id", "target", "op", "args", "expires_ms"}:
            raise CommandError("a command is {id, target, op, args, expires_ms}")
        cid, target, op, args, expires = (
            obj["id"],
            obj["target"],
            obj["op"],
            obj["args"],
            obj["expires_ms"],
        )
        if not isinstance(cid, str) or not _ID_RE.fullmatch(cid):
            raise CommandError("command id must be 32 lowercase hex characters")
        try:
            validate_id(target, "command target")
        except TopicError as exc:
            raise CommandError(str(exc)) from None
        if op not in OPS:
            raise CommandError(f"unknown operation {op!r}; known: {list(OPS)}")
        if (
            not isinstance(args, Mapping)
            or isinstance(expires, bool)
            or not isinstance(expires, int)
        ):
            raise CommandError("args must be an object and expires_ms an integer")
        command = cls(cid, target, op, dict(args), expires)
        problem = args_problem(op, command.args)
        if problem:
            raise CommandError(f"{BAD_ARGS}: {problem}")
        return command


def args_problem(op: str, args: Mapping[str, Any]) -> str | None:
    """What is wrong with ``args`` for ``op``, or None."""
    if op == "set":
        if set(args) != {"name", "value"} or args["name"] not in SETTINGS:
            return f"set takes {{name, value}} with name one of {list(SETTINGS)}"
        value = args["value"]
        if args["name"] == "log_level" and value not in LOG_LEVELS:
            return f"log_level must be one of {list(LOG_LEVELS)}"
        if args["name"] == "telemetry_every_s" and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 0.5 <= value <= 3600
        ):
            return "telemetry_every_s must be a number of seconds in [0.5, 3600]"
    elif op in ("rollout", "rollback"):
        rnd = args.get("round")
        if set(args) != {"round"} or isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 1:
            return f"{op} takes {{round}}: the model version, a round number >= 1"
    elif op == "logs":
        lines = args.get("lines", 100)
        if (
            set(args) - {"lines"}
            or isinstance(lines, bool)
            or not isinstance(lines, int)
            or not 1 <= lines <= 500
        ):
            return "logs takes {lines} in 1..500"
    elif args:
        return f"{op} takes no arguments"
    return None


def make_command(
    admin: SigningKey,
    admin_id: str,
    swarm: str,
    target: str,
    op: str,
    args: Mapping[str, Any] | None,
    now_ms: int,
    ttl_s: float = DEFAULT_TTL_S,
) -> Tx:
    """An admin-signed ``fleet_command`` transaction; ValueError on a bad command."""
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"a command lives 0..{MAX_TTL_S:.0f} s, not {ttl_s}")
    payload = Command(
        secrets.token_hex(16), target, op, dict(args or {}), now_ms + int(ttl_s * 1000)
    ).to_payload()
    Command.from_payload(payload)  # the same checks a device makes
    return make_tx(admin, swarm, "fleet_command", admin_id, payload, now_ms)


def judge(
    raw: object,
    *,
    swarm: str,
    node: str,
    admins: Mapping[str, str],
    now_ms: int,
    seen: Callable[[str], bool],
) -> tuple[Command | None, str | None, str | None]:
    """Whether this device should run ``raw`` (a transaction dict from ``fleet/cmd`` or a
    ledger entry's): ``(command, None, None)`` if so, else ``(command or None, id or None,
    reason)`` — the id, when readable, lets the device say which command it refused."""
    try:
        tx = raw if isinstance(raw, Tx) else Tx.from_dict(raw)  # type: ignore[arg-type]
    except (LedgerError, ValueError, TypeError) as exc:
        return None, None, f"{MALFORMED}: {exc}"
    cid = tx.payload.get("id") if isinstance(tx.payload, dict) else None
    cid = cid if isinstance(cid, str) and _ID_RE.fullmatch(cid) else None
    if tx.kind != "fleet_command":
        return None, cid, f"{MALFORMED}: kind {tx.kind!r}"
    if tx.swarm != swarm:
        return None, cid, f"{OTHER_SWARM}: {tx.swarm}"
    key = admins.get(tx.author)
    if key is None:
        return None, cid, f"{NOT_ADMIN}: {tx.author}"
    if not verify_signature(key, tx.signing_bytes(), bytes.fromhex(tx.sig)):
        return None, cid, BAD_SIGNATURE
    try:
        command = Command.from_payload(tx.payload)
    except CommandError as exc:
        return None, cid, f"{MALFORMED}: {exc}"
    if command.target not in (node, ALL):
        return command, cid, f"{NOT_FOR_ME}: {command.target}"
    if command.expires_ms < now_ms:
        return command, cid, f"{EXPIRED} {(now_ms - command.expires_ms) / 1000:.0f} s ago"
    if seen(command.id):
        return command, cid, REPLAYED
    return command, None, None


@dataclass(frozen=True)
class Ack:
    """A device's answer to a command, signed by its key."""

    id: str
    node: str
    status: str
    detail: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    ts_ms: int = 0
    sig: str = ""

    def signing_bytes(self) -> bytes:
        body = {k: v for k, v in asdict(self).items() if k != "sig"}
        return canonical_bytes({"type": ACK_TYPE, **body, "data": dict(self.data)})

    def signed(self, sign: Callable[[bytes], bytes]) -> Ack:
        return replace(self, sig=bytes(sign(self.signing_bytes())).hex())

    def verify(self, public_hex: str) -> bool:
        try:
            return bool(_SIG_RE.fullmatch(self.sig)) and verify_signature(
                public_hex, self.signing_bytes(), bytes.fromhex(self.sig)
            )
        except Exception:  # noqa: BLE001 - anything odd is "not verified"
            return False

    def encode(self) -> bytes:
        obj = {**asdict(self), "data": dict(self.data)}
        data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
        if len(data) > MAX_ACK:
            raise ValueError(f"an answer of {len(data)} bytes exceeds {MAX_ACK}")
        return data

    @classmethod
    def decode(cls, data: bytes) -> Ack:
        """Parse untrusted bytes; raises only CommandError."""
        if not isinstance(data, (bytes, bytearray)):
            raise CommandError(f"an answer is bytes, not {type(data).__name__}")
        if len(data) > MAX_ACK:
            raise CommandError(f"answer of {len(data)} bytes exceeds {MAX_ACK}")
        try:
            obj = parse_json(data)
        except DecodeError as exc:
            raise CommandError(str(exc)) from None
        fields = {"id", "node", "status", "detail", "data", "ts_ms", "sig"}
        if not isinstance(obj, dict) or set(obj) != fields:
            raise CommandError(f"an answer is {sorted(fields)}")
        ok = (
            isinstance(obj["id"], str)
            and _ID_RE.fullmatch(obj["id"])
            and isinstance(obj["node"], str)
            and obj["status"] in STATUSES
            and isinstance(obj["detail"], str)
            and isinstance(obj["data"], dict)
            and isinstance(obj["ts_ms"], int)
            and not isinstance(obj["ts_ms"], bool)
            and isinstance(obj["sig"], str)
        )
        if not ok:
            raise CommandError("an answer field has the wrong type or value")
        return cls(**obj)
