"""``edge-swarm discover``: what edge-swarm nodes and brokers are on this LAN.

Browses zeroconf for a few seconds and prints one row per advert: role, swarm, node id,
address, state and model round. With ``--swarm`` and ``--genesis`` it also says which
adverts a node of that swarm would trust, and why it would ignore the others.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

from edge_swarm.swarm.adverts import Advert, Expectation, choose


def run_discover(args: argparse.Namespace) -> int:
    from edge_swarm.io.discovery import Discovery
    from edge_swarm.site.report import print_table

    interfaces = list(args.interface) or None
    discovery = Discovery(interfaces)
    try:
        discovery.browse()
        threading.Event().wait(args.timeout)  # adverts arrive in the background meanwhile
        adverts = sorted(discovery.adverts(), key=lambda a: (a.swarm or "", _role(a), a.name))
    finally:
        discovery.close()
    verdicts: dict[str, str] = {}
    if args.swarm and args.genesis:
        choice = choose(adverts, Expectation(args.swarm, args.genesis))
        verdicts = {r.advert.name: r.reason for r in choice.rejected}
        if choice.broker is not None:
            b = choice.broker
            print(
                f"broker for swarm {args.swarm}: {b.host}:{b.port} ({'TLS' if b.tls else 'plain'})"
            )
    if args.swarm and not args.genesis:
        adverts = [a for a in adverts if a.swarm == args.swarm]
    if args.json:
        print(json.dumps([_row_dict(a, verdicts.get(a.name, "")) for a in adverts], indent=2))
        return 0
    if not adverts:
        print(f"no edge-swarm adverts seen in {args.timeout:g} s", file=sys.stderr)
        return 1
    rows = [
        [
            _role(a),
            a.swarm or "?",
            a.node or "",
            f"{','.join(a.addresses)}:{a.port}" if a.port else ",".join(a.addresses),
            a.state or "",
            "" if a.round is None else a.round,
            (a.genesis or "")[:12],
            verdicts.get(a.name, "ok" if verdicts or args.genesis else ""),
        ]
        for a in adverts
    ]
    print_table(
        f"edge-swarm on the LAN ({len(adverts)} adverts in {args.timeout:g} s)",
        ["role", "swarm", "node", "address", "state", "round", "genesis", "trust"],
        rows,
    )
    return 0


def _role(a: Advert) -> str:
    if a.is_broker:
        return "broker (TLS)" if a.tls else "broker"
    return a.role or "?"


def _row_dict(a: Advert, verdict: str) -> dict[str, object]:
    return {
        "role": _role(a),
        "swarm": a.swarm,
        "node": a.node,
        "addresses": list(a.addresses),
        "port": a.port,
        "state": a.state,
        "round": a.round,
        "genesis": a.genesis,
        "name": a.name,
        "ignored_because": verdict or None,
    }


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("discover", help="list the edge-swarm nodes and brokers on this LAN")
    d.add_argument("--timeout", type=float, default=3.0, help="seconds to listen (default 3)")
    d.add_argument("--swarm", help="only this swarm (with --genesis: which adverts it trusts)")
    d.add_argument("--genesis", help="the swarm's genesis hash, to check adverts against")
    d.add_argument(
        "--interface", action="append", default=[], help="IPv4 address to listen on (repeatable)"
    )
    d.add_argument("--json", action="store_true", help="print JSON instead of a table")
    d.set_defaults(func=run_discover)
