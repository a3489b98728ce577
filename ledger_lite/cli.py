"""The ``ledger-lite`` command: verify and inspect a ledger file.

    ledger-lite verify PATH [--tree-head FILE]
                                  exit 0 "ok: N entries, tip H"; 1 "FAILED at height H: why";
                                  2 for a missing file or bad usage. With a tree head (an
                                  anchor file, a signed tree head or a proof bundle, as
                                  JSON; default: PATH's anchor if there is one) the file
                                  must also extend it: 1 "FAILED: PATH holds 35 entries but
                                  the tree head covers 82 …" otherwise
    ledger-lite recover --from SOURCE --to FILE [--anchor ANCHOR]
                                  rebuild FILE from another replica's copy or an agent's
                                  (SOURCE, read only; an agent's ledger.jsonl too),
                                  verified from genesis and checked against the
                                  anchor (default: FILE's); the old FILE is moved aside,
                                  never deleted (`ledger_lite.recover`). Exit 0 recovered
                                  (or nothing to do), 1 refused, 2 missing file
    ledger-lite show PATH [--kind K] [--round R] [--json] [--limit N]
    ledger-lite proof PATH --height H [--size N] [--json]
    ledger-lite proof PATH --consistency OLD [--size NEW] [--json]
                      [--sign KEYFILE --gateway-id ID]

All only read the file (SQLite read-only mode); ``show`` and ``proof`` verify the chain
first and refuse a corrupt one (run ``verify`` to see where). ``proof`` builds the RFC 9162
Merkle tree over the entry hashes, prints the inclusion proof of the entry at height H in
the tree of the first N entries (default: all), or the consistency proof from the first OLD
entries to the first NEW, and verifies it with the agents' verifier: exit 0 "ok: …
verified", 1 if it does not verify, 2 for a height or size out of range. ``--sign`` prints
instead the signed `ProofBundle` a gateway would send (the key file as ``SigningKey.load``).

The ``show`` table uses rich when it is installed and stdout is a terminal, plain aligned
text otherwise; ``--json`` prints one canonical JSON object per entry (its eight fields
plus ``hash``).

    ledger-lite replica --self HOST:PORT --peer HOST:PORT ... --path FILE [--genesis FILE]
                        [--password-file FILE] [--compact-entries N]

runs one Raft replica of the ledger at FILE in the foreground (`ledger_lite.replica`) until
SIGTERM or Ctrl-C, then stops cleanly (exit 0); exit 1 if the stored chain does not verify
("FAILED at height H: why") or the replica stops on a fault. ``--genesis`` (a file whose
first line is the genesis entry as JSON, as in a gateway bootstrap file) is needed to create
FILE. It takes no submissions itself: gateways embed `Replica` for that.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from .anchor import Anchor, anchor_path_for, mismatch, read_anchor
from .canonical import canonical_bytes
from .entry import Entry, is_id, now_ms
from .errors import CorruptStore, LedgerError
from .keys import SigningKey
from .merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from .state import LedgerState
from .store import SqliteStore
from .treehead import (
    ProofBundle,
    check_consistency,
    check_inclusion,
    sign_tree_head,
    verify_tree_head,
)
from .verify import verify_file_tree

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
PAYLOAD_WIDTH = 60


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ledger-lite", description="Inspect a ledger_lite file.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="re-verify the whole chain from genesis")
    v.add_argument("path")
    v.add_argument(
        "--tree-head", metavar="FILE", help="the file must extend this anchor or tree head"
    )
    r = sub.add_parser("recover", help="rebuild a damaged ledger file from a replica's copy")
    r.add_argument(
        "--from",
        dest="source",
        required=True,
        help="a healthy replica's ledger file, or an agent's copy of the chain (*.jsonl, in "
        "the agent's state directory)",
    )
    r.add_argument("--to", dest="target", required=True, help="the ledger file to rebuild")
    r.add_argument("--anchor", help="its anchor (default: the one beside --to)")
    s = sub.add_parser("show", help="list entries as a table (or JSON lines)")
    s.add_argument("path")
    s.add_argument("--kind", help="only entries of this kind")
    s.add_argument("--round", type=int, help="only entries whose payload round is R")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.add_argument("--limit", type=int, help="show at most N entries")
    _add_proof_parser(sub)
    _add_replica_parser(sub)
    return p


def _add_replica_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser("replica", help="run one Raft replica of a ledger in the foreground")
    r.add_argument("--self", dest="self_addr", required=True, metavar="HOST:PORT")
    r.add_argument("--peer", action="append", default=[], metavar="HOST:PORT")
    r.add_argument("--path", required=True, help="the replica's SQLite ledger file")
    r.add_argument("--genesis", help="file whose first line is the genesis entry (JSON)")
    r.add_argument("--password-file", help="cluster secret (needs the cryptography package)")
    r.add_argument("--compact-entries", type=int, default=20_000, help="snapshot every N")


def _add_proof_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("proof", help="print and verify a Merkle inclusion or consistency proof")
    p.add_argument("path")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--height", type=int, help="inclusion proof of the entry at height H")
    what.add_argument(
        "--consistency", type=int, metavar="OLD", help="consistency proof from OLD entries"
    )
    p.add_argument("--size", type=int, help="tree of the first N entries (default: all)")
    p.add_argument("--json", action="store_true", help="one canonical JSON object")
    p.add_argument("--sign", metavar="KEYFILE", help="print a ProofBundle signed with this key")
    p.add_argument("--gateway-id", help="the signer's id in the tree head (with --sign)")


def _cmd_verify(path: str, tree_head: str | None) -> int:
    if tree_head is None and anchor_path_for(path).is_file():
        tree_head = str(anchor_path_for(path))
    # The head is read before the file: a running gateway anchors only what it has
    # committed, so the file read afterwards holds everything the head covers.
    head = None if tree_head is None else read_anchor(tree_head)  # AnchorError: main says
    if tree_head is not None and head is None:
        print(f"ledger-lite: no such tree head file: {tree_head}", file=sys.stderr)
        return EXIT_USAGE
    try:
        report, state, tree = verify_file_tree(path)
    except FileNotFoundError:
        print(f"ledger-lite: no such ledger file: {path}", file=sys.stderr)
        return EXIT_USAGE
    if not report.ok:
        where = "" if report.first_bad_height is None else f" at height {report.first_bad_height}"
        print(f"FAILED{where}: {report.reason}")
        return EXIT_FAILED
    ok = f"ok: {report.n_entries} entries, tip {report.tip_hash}"
    if head is None or tree_head is None:
        print(ok)
        return EXIT_OK
    lost = mismatch(path, tree, head, tree_head, claim="the tree head covers")
    signed = _signature_note(head, state)
    if lost is not None or signed.startswith("FAILED"):
        print(signed if lost is None else f"FAILED: {lost}")
        return EXIT_FAILED
    root = head.root_hex[:16]
    print(
        f"{ok}; extends the tree head of {head.tree_size} in {tree_head} (root {root}…, {signed})"
    )
    return EXIT_OK


def _signature_note(head: Anchor, state: LedgerState | None) -> str:
    """How the head's signature checks out against its signer's key enrolled in the chain."""
    signer = head.signer
    if signer is None or head.head is None:
        return "unsigned"
    key = None if state is None else state.public_key(signer)
    if key is None:
        return f"signature not checked: {signer} is not enrolled in this chain"
    if not verify_tree_head(head.head, key):
        return f"FAILED: the tree head's signature does not verify under {signer}'s enrolled key"
    return f"signed by {signer}"


def _cmd_recover(args: argparse.Namespace) -> int:
    from .recover import recover

    try:
        done = recover(args.source, args.target, args.anchor)
    except FileNotFoundError as exc:
        print(f"ledger-lite recover: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CorruptStore as exc:
        print(f"FAILED: {args.source} does not verify at height {exc.height}: {exc.reason}")
        return EXIT_FAILED
    except LedgerError as exc:
        print(f"FAILED: {exc}")
        return EXIT_FAILED
    covered = (
        "no anchor to check"
        if done.anchor is None
        else (f"covers the {done.anchor.tree_size} acknowledged entries of {done.anchor_path}")
    )
    if done.nothing_to_do:
        print(f"nothing to recover: {args.target} holds all {done.entries} entries ({covered})")
        return EXIT_OK
    was = "did not verify" if done.held is None else f"{done.held} verified entries"
    kept = "" if done.aside is None else f"; the old file ({was}) is kept as {done.aside}"
    what = f"{done.entries} entries from {args.source}, tip {done.tip}"
    print(f"recovered {args.target}: {what}; {covered}{kept}")
    return EXIT_OK


def _selected(store: SqliteStore, args: argparse.Namespace) -> Iterator[Entry]:
    shown = 0
    for entry in store:
        if args.limit is not None and shown >= args.limit:
            return
        if args.kind is not None and entry.kind != args.kind:
            continue
        if args.round is not None and entry.payload.get("round") != args.round:
            continue
        shown += 1
        yield entry


def _time(ts_ms: int) -> str:
    try:
        when = dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.timezone.utc)
    except (OverflowError, ValueError, OSError):
        return str(ts_ms)
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _short(payload: dict[str, object]) -> str:
    text = canonical_bytes(payload).decode("utf-8")
    return text if len(text) <= PAYLOAD_WIDTH else text[: PAYLOAD_WIDTH - 1] + "…"


def _row(e: Entry) -> tuple[str, str, str, str, str]:
    return (str(e.height), _time(e.ts), e.kind, e.author, _short(e.payload))


HEADERS = ("height", "time (UTC)", "kind", "author", "payload")


def _print_table(entries: Iterator[Entry]) -> None:
    rows = [_row(e) for e in entries]
    if sys.stdout.isatty():
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:  # rich is optional (the "demo" extra)
            pass
        else:
            table = Table(*HEADERS)
            for r in rows:
                table.add_row(*r)
            Console().print(table)
            return
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(HEADERS)]
    for r in [HEADERS, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _open_verified(path: str) -> SqliteStore | int:
    """The store at `path`, verified; or the exit status after printing why not."""
    try:
        return SqliteStore(path, verify_only=True)
    except FileNotFoundError:
        print(f"ledger-lite: no such ledger file: {path}", file=sys.stderr)
        return EXIT_USAGE
    except CorruptStore as exc:
        print(f"FAILED at height {exc.height}: {exc.reason}", file=sys.stderr)
        return EXIT_FAILED


def _cmd_show(args: argparse.Namespace) -> int:
    store = _open_verified(args.path)
    if isinstance(store, int):
        return store
    with store:
        if args.json:
            for e in _selected(store, args):
                print(canonical_bytes({**e.to_dict(), "hash": e.hash}).decode("utf-8"))
        else:
            _print_table(_selected(store, args))
    return EXIT_OK


def _usage_error(message: str) -> int:
    print(f"ledger-lite proof: {message}", file=sys.stderr)
    return EXIT_USAGE


def _cmd_proof(args: argparse.Namespace) -> int:
    if (args.sign is None) != (args.gateway_id is None):
        return _usage_error("--sign and --gateway-id go together")
    if args.gateway_id is not None and not is_id(args.gateway_id):
        return _usage_error("--gateway-id must match [A-Za-z0-9_.-]{1,64}")
    store = _open_verified(args.path)
    if isinstance(store, int):
        return store
    with store:
        state = store.verified_state
        hashes = [bytes.fromhex(e.hash) for e in store]
    if state is None:
        print(f"ledger-lite: {args.path} holds no entries", file=sys.stderr)
        return EXIT_FAILED
    tree = MerkleTree(hashes)
    size = tree.size if args.size is None else args.size
    if not 1 <= size <= tree.size:
        return _usage_error(f"--size {size} not in [1, {tree.size}] (entries in the ledger)")
    if args.height is not None and not 0 <= args.height < size:
        return _usage_error(f"--height {args.height} not in [0, {size - 1}]")
    if args.consistency is not None and not 0 <= args.consistency <= size:
        return _usage_error(f"--consistency {args.consistency} not in [0, {size}]")
    if args.sign is not None:
        return _print_bundle(args, state.swarm, hashes, tree, size)
    if args.height is not None:
        report, ok = _inclusion_report(tree, hashes[args.height], args.height, size)
    else:
        report, ok = _consistency_report(tree, args.consistency, size)
    if args.json:
        print(canonical_bytes({**report, "verified": ok}).decode("utf-8"))
    else:
        _print_report(report)
        print(f"ok: {report['kind']} proof verified" if ok else "FAILED: proof does not verify")
    return EXIT_OK if ok else EXIT_FAILED


def _inclusion_report(
    tree: MerkleTree, entry_hash: bytes, height: int, size: int
) -> tuple[dict[str, object], bool]:
    proof, root = tree.inclusion_proof(height, size), tree.root(size)
    leaf = leaf_hash(entry_hash)  # recomputed, not read back from the tree
    report: dict[str, object] = {
        "kind": "inclusion",
        "height": height,
        "tree_size": size,
        "entry_hash": entry_hash.hex(),
        "leaf_hash": leaf.hex(),
        "root": root.hex(),
        "proof": [p.hex() for p in proof],
    }
    return report, verify_inclusion(leaf, height, size, proof, root)


def _consistency_report(tree: MerkleTree, old: int, size: int) -> tuple[dict[str, object], bool]:
    proof, old_root, new_root = tree.consistency_proof(old, size), tree.root(old), tree.root(size)
    report: dict[str, object] = {
        "kind": "consistency",
        "old_size": old,
        "new_size": size,
        "old_root": old_root.hex(),
        "new_root": new_root.hex(),
        "proof": [p.hex() for p in proof],
    }
    return report, verify_consistency(old, size, old_root, new_root, proof)


def _print_report(report: dict[str, object]) -> None:
    if report["kind"] == "inclusion":
        print(f"inclusion of height {report['height']} in the tree of size {report['tree_size']}")
        names = ("entry_hash", "leaf_hash", "root")
    else:
        print(f"consistency of size {report['old_size']} with size {report['new_size']}")
        names = ("old_root", "new_root")
    for name in names:
        print(f"{name:<12}{report[name]}")
    proof = report["proof"]
    assert isinstance(proof, list)
    print(f"{'proof':<12}{len(proof)} hashes, leaf end first")
    for i, h in enumerate(proof):
        print(f"{i:>10}  {h}")


def _print_bundle(
    args: argparse.Namespace, swarm: str, hashes: list[bytes], tree: MerkleTree, size: int
) -> int:
    """Print the signed ProofBundle a gateway would send, after checking it as an agent
    would (for consistency, against a tree head of the old size signed by the same key)."""
    key = SigningKey.load(args.sign)  # KeyFileError is a LedgerError: main reports it
    head = sign_tree_head(key, swarm, args.gateway_id, size, tree.root(size), now_ms())
    if args.height is not None:
        proof = tree.inclusion_proof(args.height, size)
        bundle = ProofBundle.for_inclusion(head, args.height, proof)
        ok = check_inclusion(bundle, hashes[args.height], key.public_hex, swarm=swarm)
    else:
        old_size = args.consistency
        old = sign_tree_head(
            key, swarm, args.gateway_id, old_size, tree.root(old_size), head.timestamp_ms
        )
        bundle = ProofBundle.for_consistency(head, old_size, tree.consistency_proof(old_size, size))
        ok = check_consistency(bundle, old, key.public_hex)
    print(bundle.encode().decode("utf-8"))
    if not ok:
        print("FAILED: proof does not verify", file=sys.stderr)
    return EXIT_OK if ok else EXIT_FAILED


def _cmd_replica(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .replica import Replica  # pysyncobj is only needed here

    genesis = None
    try:
        if args.genesis:
            text = Path(args.genesis).read_text(encoding="utf-8").strip()
            genesis = Entry.from_bytes(text.splitlines()[0].encode("utf-8")) if text else None
        password = None
        if args.password_file:
            password = Path(args.password_file).read_text(encoding="utf-8").strip()
    except (OSError, LedgerError) as exc:
        print(f"ledger-lite: bad --genesis or --password-file: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        replica = Replica(
            args.self_addr,
            args.peer,
            args.path,
            genesis,
            password=password,
            compact_entries=args.compact_entries,
        )
    except CorruptStore as exc:
        print(f"FAILED at height {exc.height}: {exc.reason}", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, ImportError) as exc:
        print(f"ledger-lite: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"replica {args.self_addr}: height {replica.height}, tip {replica.tip}", flush=True)
    while not stop.wait(0.5) and replica.failure is None:
        pass
    failure = replica.failure
    replica.close()
    if failure is not None:
        print(f"FAILED: the replica stopped: {failure}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with `argv` (default sys.argv[1:]); return the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and bad usage (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "verify":
            return _cmd_verify(args.path, args.tree_head)
        if args.command == "recover":
            return _cmd_recover(args)
        if args.command == "proof":
            return _cmd_proof(args)
        if args.command == "replica":
            return _cmd_replica(args)
        return _cmd_show(args)
    except LedgerError as exc:
        print(f"ledger-lite: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `ledger-lite show … | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
