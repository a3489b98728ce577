"""The ``ledger-lite`` command: verify and inspect a ledger file.

    ledger-lite verify PATH       exit 0 "ok: N entries, tip H"; 1 "FAILED at height H: why";
                                  2 for a missing file or bad usage
    ledger-lite show PATH [--kind K] [--round R] [--json] [--limit N]

Both only read the file (SQLite read-only mode); ``show`` verifies the chain first and
refuses to display a corrupt one (run ``verify`` to see where). The table uses rich when
it is installed and stdout is a terminal, plain aligned text otherwise; ``--json`` prints
one canonical JSON object per entry (its eight fields plus ``hash``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from collections.abc import Iterator, Sequence

from .canonical import canonical_bytes
from .entry import Entry
from .errors import CorruptStore, LedgerError
from .store import SqliteStore
from .verify import verify_file

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
PAYLOAD_WIDTH = 60


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ledger-lite", description="Inspect a ledger_lite file.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="re-verify the whole chain from genesis")
    v.add_argument("path")
    s = sub.add_parser("show", help="list entries as a table (or JSON lines)")
    s.add_argument("path")
    s.add_argument("--kind", help="only entries of this kind")
    s.add_argument("--round", type=int, help="only entries whose payload round is R")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.add_argument("--limit", type=int, help="show at most N entries")
    return p


def _cmd_verify(path: str) -> int:
    try:
        report = verify_file(path)
    except FileNotFoundError:
        print(f"ledger-lite: no such ledger file: {path}", file=sys.stderr)
        return EXIT_USAGE
    if report.ok:
        print(f"ok: {report.n_entries} entries, tip {report.tip_hash}")
        return EXIT_OK
    where = "" if report.first_bad_height is None else f" at height {report.first_bad_height}"
    print(f"FAILED{where}: {report.reason}")
    return EXIT_FAILED


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


def _cmd_show(args: argparse.Namespace) -> int:
    try:
        store = SqliteStore(args.path, verify_only=True)
    except FileNotFoundError:
        print(f"ledger-lite: no such ledger file: {args.path}", file=sys.stderr)
        return EXIT_USAGE
    except CorruptStore as exc:
        print(f"FAILED at height {exc.height}: {exc.reason}", file=sys.stderr)
        return EXIT_FAILED
    with store:
        if args.json:
            for e in _selected(store, args):
                print(canonical_bytes({**e.to_dict(), "hash": e.hash}).decode("utf-8"))
        else:
            _print_table(_selected(store, args))
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
            return _cmd_verify(args.path)
        return _cmd_show(args)
    except LedgerError as exc:
        print(f"ledger-lite: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `ledger-lite show … | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
