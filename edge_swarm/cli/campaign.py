"""``edge-swarm campaign extend N | pause | resume | end | new | status``: steer training.

Every action but ``status`` is an admin-signed ``campaign`` ledger entry, submitted to the
site over MQTT like ``enroll --broker``; the command waits until the ledger shows it (or
prints why the coordinator refused it) and then shows the campaign as the ledger now folds
it. ``status`` only reads: it copies the ledger from a gateway, checks it, and folds it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_swarm.site.campaigns import campaign_of, campaign_tx, read_ledger
from edge_swarm.site.operator import OperatorError, publish_tx
from ledger_lite import SigningKey
from ledger_lite.errors import LedgerError

MEANS_SHOWN = 5  # the last rounds' mean validation metric in the status table


def run_campaign(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (OperatorError, LedgerError, OSError, ValueError) as exc:
        print(f"edge-swarm campaign {args.action}: {exc}", file=sys.stderr)
        return 2


def _mqtt(args: argparse.Namespace) -> tuple[str, int, dict[str, Any]]:
    host, _, port = args.broker.rpartition(":")
    if not host or not port.isdigit():
        raise OperatorError("--broker takes HOST:PORT")
    options: dict[str, Any] = {}
    if args.tls_ca:
        from edge_swarm.io.mqtt import TlsSettings

        options["tls"] = TlsSettings(args.tls_ca)
    if args.username:
        if not args.password_file:
            raise OperatorError("--username needs --password-file")
        options.update(username=args.username, password=_first_line(args.password_file))
    return host, int(port), options


def _first_line(path: Path) -> str:
    lines = path.read_text().splitlines()
    if not lines:
        raise OperatorError(f"--password-file {path} is empty")
    return lines[0]


def _run(args: argparse.Namespace) -> int:
    host, port, options = _mqtt(args)
    if args.action != "status":
        admin = SigningKey.load(args.admin_key)
        rounds = args.rounds if args.action in ("extend", "new") else None
        reason = getattr(args, "reason", "") or ""
        tx = campaign_tx(admin, args.swarm, args.action, rounds, reason, args.admin_id)
        entry = publish_tx(tx, host, port, args.wait, options)
        print(f"campaign {args.action}: ledger entry {entry.height} ({entry.hash[:16]})")
    book = campaign_of(read_ledger(args.swarm, host, port, options, args.wait))
    status = book.status()
    if getattr(args, "json", False):
        print(json.dumps(status, sort_keys=True))
    else:
        _print_status(args.swarm, status)
    return 0


def _print_status(swarm: str, st: dict[str, Any]) -> None:
    budget = "open-ended" if st["budget"] is None else str(st["budget"])
    remaining = "-" if st["remaining"] is None else str(st["remaining"])
    why = st["ended"] if st["state"] == "ended" else st["paused"]
    stop = st["stop"]
    means = list(st["means"].items())[-MEANS_SHOWN:]
    rows = [
        ("campaign", str(st["number"])),
        ("state", st["state"] + (f" ({why})" if why else "")),
        ("budget (rounds)", budget),
        ("rounds opened / finished", f"{st['opened']} / {st['finished']}"),
        ("rounds remaining", remaining),
        ("started after round", str(st["after_round"])),
        ("last round", str(st["last_round"])),
        ("cadence", f"{st['cadence_s']:g} s" if st["cadence_s"] else "none"),
        (
            "stop rule",
            "none"
            if stop is None
            else f"{stop['metric']}: patience {stop['patience']}, min_delta {stop['min_delta']:g}",
        ),
        (
            "mean validation (model of round)",
            ", ".join(f"{r}: {m:.4f}" for r, m in means) if means else "none reported",
        ),
    ]
    if st["ended_by"]:
        rows.insert(3, ("ended by", st["ended_by"]))
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(f"swarm {swarm}: campaign")
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"  {k.ljust(width)}  {v}")
        return
    table = Table(title=f"swarm {swarm}: campaign")
    table.add_column("")
    table.add_column("")
    for k, v in rows:
        table.add_row(k, v)
    Console(width=None if sys.stdout.isatty() else 120).print(table)


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "campaign",
        help="steer training: extend, pause, resume, end or renew the campaign; its status",
        description="A campaign is the run of rounds the swarm trains; the genesis opens the "
        "first, with its round budget (or none: open-ended), cadence and stop rule. Each "
        "action but status is an admin-signed ledger entry, submitted to the running site over "
        "MQTT; the command waits until the ledger shows it, or prints why it was refused. "
        "See docs/CAMPAIGNS.md.",
    )
    csub = c.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser, signs: bool = True) -> None:
        p.add_argument("--broker", required=True, help="HOST:PORT of the site's broker")
        p.add_argument("--swarm", required=True, help="the swarm's id")
        p.add_argument("--tls-ca", type=Path, help="the swarm CA's certificate (a TLS broker)")
        p.add_argument("--username", help="the operator's broker login")
        p.add_argument("--password-file", type=Path)
        p.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the site (15)")
        if signs:
            p.add_argument("--admin-key", type=Path, required=True, help="the swarm's admin key")
            p.add_argument("--admin-id", default="admin", help="the admin's id (admin)")
        p.set_defaults(func=run_campaign)

    e = csub.add_parser("extend", help="give the campaign N more rounds")
    e.add_argument("rounds", type=_positive, metavar="N", help="how many more rounds")
    e.add_argument("--reason", default="", help="why, for the ledger")
    common(e)
    p = csub.add_parser("pause", help="open no more rounds (the round in progress finishes)")
    p.add_argument("--reason", default="", help="why, for the ledger")
    common(p)
    common(csub.add_parser("resume", help="open rounds again after a pause"))
    n = csub.add_parser("end", help="end the campaign: no more rounds (`new` starts another)")
    n.add_argument("--reason", default="", help="why, for the ledger")
    common(n)
    w = csub.add_parser(
        "new",
        help="start a new campaign from the current model (ends the current one)",
    )
    w.add_argument(
        "--rounds",
        type=_positive,
        metavar="N",
        help="its round budget (default: open-ended, until `end` or the stop rule)",
    )
    w.add_argument("--reason", default="", help="why, for the ledger (e.g. new data)")
    common(w)
    s = csub.add_parser("status", help="the campaign as the ledger says it is now")
    s.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    common(s, signs=False)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
