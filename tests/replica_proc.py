"""One ledger replica in its own process, driven over stdin/stdout (tests and benchmark).

    python tests/replica_proc.py --self 127.0.0.1:P --peer 127.0.0.1:Q ... --path FILE \
        --genesis GENESIS.json [--compact-entries N]

Prints one JSON line when the replica is up: ``{"ready": true, "pid", "height", "tip"}``,
or ``{"error": "corrupt", "height": H, "reason": ...}`` and exits 3 if the stored chain does
not verify. Then reads newline-delimited JSON requests on stdin:

    {"op": "submit", "id": N, "tx": {...}}   -> {"id": N, "ok": true, "height", "hash", "ms"}
                                                {"id": N, "ok": false, "reason", "detail"}
                                                {"id": N, "ok": false, "error": code}
    {"op": "status", "id": N}                -> {"id": N, "status": {...Replica.status()}}

Answers come in completion order; ``ms`` is submit -> durable ack inside this process.
Exits 0 after closing the replica on stdin EOF or SIGTERM (and dies at once on SIGKILL,
which is the point).

Imported, the module gives the driving side: `ReplicaProcess` starts one such process and
waits on its answers with deadlines (never a fixed sleep); `free_port` picks a port.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ledger_lite import CorruptStore, Entry, LedgerError, Refused, Tx  # noqa: E402
from ledger_lite.replica import Replica, ReplicationError  # noqa: E402
from ledger_lite.replica_raft import RaftTiming  # noqa: E402
from tests.waiting import wait_until  # noqa: E402, F401 - re-exported for the drivers

_out_lock = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    line = json.dumps(obj, separators=(",", ":")) + "\n"
    with _out_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def _answer(req_id: Any, t0: float, entry: Entry | None, error: LedgerError | None) -> None:
    if entry is not None:
        ms = (time.perf_counter() - t0) * 1000
        emit({"id": req_id, "ok": True, "height": entry.height, "hash": entry.hash, "ms": ms})
    elif isinstance(error, Refused):
        emit({"id": req_id, "ok": False, "reason": error.reason, "detail": error.detail})
    elif isinstance(error, ReplicationError):
        emit({"id": req_id, "ok": False, "error": error.code, "detail": error.detail})
    else:
        emit({"id": req_id, "ok": False, "error": repr(error)})


def serve(replica: Replica, stop: threading.Event) -> None:
    for line in sys.stdin:
        if stop.is_set():
            break
        req = json.loads(line)
        req_id = req.get("id")
        if req["op"] == "submit":
            t0 = time.perf_counter()
            replica.submit(
                Tx.from_dict(req["tx"]),
                lambda e, err, i=req_id, t=t0: _answer(i, t, e, err),
                timeout=req.get("timeout"),
            )
        elif req["op"] == "status":
            emit({"id": req_id, "status": replica.status()})
    stop.set()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--self", dest="self_addr", required=True)
    p.add_argument("--peer", action="append", default=[])
    p.add_argument("--path", required=True)
    p.add_argument("--genesis", required=True)
    p.add_argument("--compact-entries", type=int, default=20_000)
    p.add_argument("--log", default="WARNING")
    args = p.parse_args()
    logging.basicConfig(
        level=args.log, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    genesis = Entry.from_bytes(Path(args.genesis).read_bytes())
    timing = RaftTiming(connect_retry_s=0.2)
    try:
        replica = Replica(
            args.self_addr,
            args.peer,
            args.path,
            genesis,
            timing=timing,
            compact_entries=args.compact_entries,
        )
    except CorruptStore as exc:
        emit({"error": "corrupt", "height": exc.height, "reason": exc.reason})
        return 3
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    emit({"ready": True, "pid": os.getpid(), "height": replica.height, "tip": replica.tip})
    threading.Thread(target=serve, args=(replica, stop), daemon=True).start()
    stop.wait()
    replica.close()
    return 0


# -- the driving side ----------------------------------------------------------------------

SCRIPT = Path(__file__).resolve()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: the sockets stay bound until all are picked, since ports
    picked one at a time can repeat."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class ReplicaProcess:
    """A replica process driven over its stdin/stdout; answers are collected by a reader
    thread and waited on with deadlines."""

    def __init__(
        self,
        addr: str,
        peers: Sequence[str],
        path: Path,
        genesis_file: Path,
        *,
        compact_entries: int | None = None,
        log_level: str = "WARNING",
    ) -> None:
        self.addr, self.peers, self.path = addr, list(peers), Path(path)
        self.genesis_file = genesis_file
        self.compact_entries = compact_entries
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._cond = threading.Condition()
        self._answers: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._stderr: IO[bytes] | None = None
        self.ready: dict[str, Any] = {}

    def start(self, timeout: float = 60.0) -> dict[str, Any]:
        """Start the process; return its first line (``ready`` or ``error``)."""
        cmd = [sys.executable, str(SCRIPT), "--self", self.addr, "--path", str(self.path)]
        cmd += ["--genesis", str(self.genesis_file), "--log", self.log_level]
        for peer in self.peers:
            cmd += ["--peer", peer]
        if self.compact_entries is not None:
            cmd += ["--compact-entries", str(self.compact_entries)]
        self._stderr = open(f"{self.path}.stderr.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
        )
        assert self.proc.stdout is not None
        first = _readline_with_deadline(self.proc, timeout)
        self.ready = json.loads(first)
        self._answers = {}
        self._reader = threading.Thread(
            target=self._read, args=(self.proc.stdout,), name=f"replica-reader-{self.addr}"
        )
        self._reader.daemon = True
        self._reader.start()
        return self.ready

    def _read(self, stdout: IO[bytes]) -> None:
        for line in stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self._answers[obj["id"]] = obj
                self._cond.notify_all()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, requests: Iterable[dict[str, Any]]) -> list[int]:
        """Write requests (each gets a fresh ``id``); return their ids."""
        assert self.proc is not None and self.proc.stdin is not None
        ids, lines = [], []
        for req in requests:
            req_id = next(self._ids)
            ids.append(req_id)
            lines.append(json.dumps({**req, "id": req_id}, separators=(",", ":")))
        self.proc.stdin.write(("\n".join(lines) + "\n").encode())
        self.proc.stdin.flush()
        return ids

    def submit(self, txs: Iterable[Tx], timeout: float | None = None) -> list[int]:
        reqs = [{"op": "submit", "tx": tx.to_dict(), "timeout": timeout} for tx in txs]
        return self.send(reqs)

    def answer(self, req_id: int) -> dict[str, Any] | None:
        with self._cond:
            return self._answers.get(req_id)

    def wait(self, ids: Sequence[int], timeout: float) -> list[dict[str, Any]]:
        """The answers to `ids`, in order; TimeoutError if any is missing after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                missing = [i for i in ids if i not in self._answers]
                if not missing:
                    return [self._answers[i] for i in ids]
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive():
                    raise TimeoutError(f"{self.addr}: {len(missing)} of {len(ids)} unanswered")
                self._cond.wait(min(left, 0.1))

    def status(self, timeout: float = 10.0) -> dict[str, Any]:
        (req_id,) = self.send([{"op": "status"}])
        return self.wait([req_id], timeout)[0]["status"]  # type: ignore[no-any-return]

    def rss_kib(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak) of the process, in KiB (Linux)."""
        out = {}
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":")
                    out[key] = int(value.split()[0])
        return out

    def kill(self) -> None:
        """SIGKILL the process and reap it."""
        assert self.proc is not None
        self.proc.kill()
        self._reap(10.0)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for a clean exit; return the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self._reap(timeout)

    def _reap(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout)
        for fh in (self.proc.stdin, self.proc.stdout, self._stderr):
            if fh is not None:
                with contextlib.suppress(OSError):
                    fh.close()
        return code


def _readline_with_deadline(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The process's first stdout line, or TimeoutError / RuntimeError if it exits first."""
    out: list[bytes] = []
    stdout = proc.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: out.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not out:
        proc.kill()
        proc.wait()
        raise TimeoutError(f"replica process gave no first line in {timeout} s")
    if not out[0]:
        proc.wait()
        raise RuntimeError(f"replica process exited with status {proc.returncode}")
    return out[0]


if __name__ == "__main__":
    sys.exit(main())
