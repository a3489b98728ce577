"""``edge-swarm keygen | admin init | enroll | revoke``: the operator's key and ledger tasks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_swarm.cli.privacy_options import describe, privacy_policy
from edge_swarm.site.operator import (
    EnrollRequest,
    OperatorError,
    admin_init,
    append_to_bootstrap,
    enc_key_path,
    enroll_tx,
    keygen,
    publish_tx,
    revoke_tx,
)
from ledger_lite import SigningKey, Tx
from ledger_lite.errors import LedgerError


def run_operator(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (OperatorError, LedgerError, OSError, ValueError) as exc:
        print(f"edge-swarm {args.op}: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.op == "keygen":
        return _keygen(args)
    if args.op == "admin-init":
        return _admin_init(args)
    admin = SigningKey.load(args.admin_key)
    if args.op == "enroll":
        tx = enroll_tx(admin, args.swarm, _read_request(args.request), args.expires_days)
        what = "enrolled " + tx.payload["node"]
    else:
        tx = revoke_tx(admin, args.swarm, args.node, args.reason)
        what = "revoked " + args.node
    return _deliver(args, tx, what)


def _keygen(args: argparse.Namespace) -> int:
    """The request alone goes to stdout (``keygen ... > req.json``); the words to stderr."""
    req = keygen(args.key, args.node_id, args.role)
    print(
        f"keys written to {args.key} and {enc_key_path(args.key)} (owner-only; set them as "
        f"[node] key and enc_key)\n"
        f"the enrolment request is the JSON on standard output (`> {req.node}.json` saves it "
        f"alone); give it to the operator for `edge-swarm enroll ... --request {req.node}.json`",
        file=sys.stderr,
        flush=True,
    )
    print(req.to_json(), flush=True)
    return 0


def _read_request(source: str) -> EnrollRequest:
    """The request from a file, or stdin for ``-``; the error names where it came from."""
    where = "standard input" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        return EnrollRequest.from_json(text)
    except UnicodeDecodeError:
        problem = "not an enrolment request (not text)"
    except OSError as exc:
        raise OperatorError(f"--request {where}: cannot read it ({exc.strerror or exc})") from None
    except OperatorError as exc:
        problem = str(exc)
    raise OperatorError(
        f"--request {where}: {problem}; it must be the JSON that `edge-swarm keygen` "
        "prints on standard output"
    )


def _deliver(args: argparse.Namespace, tx: Tx, what: str) -> int:
    if args.bootstrap is not None:
        entry = append_to_bootstrap(args.bootstrap, tx)
        print(f"{what}: entry {entry.height} appended to {args.bootstrap}")
        return 0
    host, _, port = args.broker.rpartition(":")
    if not host or not port.isdigit():
        raise OperatorError("--broker takes HOST:PORT")
    entry = publish_tx(tx, host, int(port))
    print(f"{what}: ledger entry {entry.height} ({entry.hash[:16]})")
    return 0


def _admin_init(args: argparse.Namespace) -> int:
    from edge_swarm.cli.demo import parse_codec
    from edge_swarm.learn.model import ModelSpec
    from edge_swarm.site.demo import DEFAULT_LOCAL, DEFAULT_MERGE
    from edge_swarm.site.provision import SwarmParams
    from edge_swarm.swarm.merge import parse_merge

    try:
        sizes = tuple(int(s) for s in args.model.split(","))
    except ValueError:
        raise OperatorError("--model takes layer sizes like 64,32,10") from None
    try:
        rule = parse_merge(args.merge, DEFAULT_MERGE)
    except ValueError as exc:
        raise OperatorError(f"--merge {args.merge}: {exc}") from None
    try:
        privacy = privacy_policy(args, args.rounds)
    except ValueError as exc:
        raise OperatorError(str(exc)) from None
    params = SwarmParams(
        model=ModelSpec(sizes=sizes),
        local=DEFAULT_LOCAL,
        merge=rule,
        rounds=args.rounds,
        codec=parse_codec(args.codec),
        security=args.security,
        merge_by=args.merge_by,
        # The gateways are not known yet at genesis: two drawn agents keep any site safe.
        committee_k=2 if args.committee_k is None else args.committee_k,
        downlink=parse_codec(args.downlink),
        cadence_s=args.cadence_s,
        stop=args.stop,
        privacy=privacy,
    )
    bootstrap, genesis = admin_init(args.out, args.swarm, params.to_dict())
    print(describe(privacy, args.rounds))  # docs/SECURITY.md: what it protects, what it costs
    print(
        f"merge rule: {rule.aggregation} over {rule.name}" + (f", f = {rule.f}" if rule.f else "")
    )
    if rule.min_deltas() > 1:
        print(
            f"  it needs at least {rule.min_deltas()} agents' deltas per round; a round with "
            "fewer falls back to the coordinate-wise median (noted on the ledger)"
        )
    print(f"admin key: {args.out / 'admin.key'} (owner-only; keep it off the clinic network)")
    print(f"genesis {genesis.hash}\nbootstrap file: {bootstrap}")
    return 0
