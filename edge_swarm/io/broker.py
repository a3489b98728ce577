"""Brokers for development, demos and tests: embedded amqtt, or a Mosquitto subprocess.

How it works
------------
- ``EmbeddedBroker`` runs amqtt's ``Broker`` on its own asyncio loop in its own thread.
  The listening socket is ours (amqtt's "external" listener type): each accepted connection
  is handed to amqtt, and ``stop()`` closes every connection before amqtt shuts down, which
  keeps shutdown prompt (see ``_serve``). ``start()`` returns once the socket is bound (or
  raises ``BrokerStartError``); ``stop()`` joins the thread. Only the anonymous-auth plugin
  is loaded: no ``$SYS`` publishing, no packet logging. amqtt has no packet size limit of
  its own; the clients' ``max_payload`` is the only bound there.
- ``MosquittoBroker`` writes a minimal configuration (listener on 127.0.0.1, anonymous,
  no persistence, log to stderr) into a work directory and runs ``mosquitto -c`` on it;
  ``start()`` returns once the port accepts TCP connections.
- Both can be stopped and started again on the same port (tests restart brokers);
  ``MosquittoBroker.kill()`` ends the process with SIGKILL instead (a power cut).
- ``run_embedded_broker`` blocks until SIGINT/SIGTERM: the future ``edge-swarm broker``.

No sleeps: waits are bounded and event- or port-driven.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_swarm.io.ports import free_port, free_ports

__all__ = [
    "BrokerStartError",
    "EmbeddedBroker",
    "MosquittoBroker",
    "find_mosquitto",
    "free_port",
    "free_ports",
    "port_open",
    "run_embedded_broker",
]

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
"""How long ``start()`` waits for a broker to listen, in seconds."""

STOP_TIMEOUT_S = 10.0
"""How long ``stop()`` waits for a broker to end before giving up (thread) or killing
(process), in seconds."""

SHUTDOWN_TIMEOUT_S = 5.0
"""How long the embedded broker's own shutdown may take once its connections are closed."""

KEEPALIVE_GRACE_S = 5
"""Extra seconds amqtt allows past a client's keepalive before its reader times out. amqtt
times out at exactly the keepalive, while paho pings at about the keepalive: without grace a
quiet client could be dropped."""


class BrokerStartError(RuntimeError):
    """A broker did not come up (port taken, binary missing, crashed at start)."""


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------------- embedded amqtt


class EmbeddedBroker:
    """amqtt's broker on a private event loop thread.

    ``port=0`` lets the OS pick a free port on first start; ``.port`` then holds the real
    one, and later restarts reuse it. Use as a context manager or call start()/stop().
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keepalive_grace_s: int = KEEPALIVE_GRACE_S,
    ) -> None:
        self.host = host
        self.port = port
        self.keepalive_grace_s = keepalive_grace_s
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """``mqtt://host:port`` of the listener."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the broker thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _config(self) -> dict[str, Any]:
        return {
            # "external": amqtt does not listen itself; _serve() owns the listening socket
            # and every connection, so stop() can close them all (see _serve).
            "listeners": {"default": {"type": "external"}},
            # Only anonymous auth: the default plugin set adds $SYS publishing every 20 s
            # and per-packet logging, neither wanted in-process.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
            "timeout_disconnect_delay": self.keepalive_grace_s,
        }

    def start(self, timeout: float = START_TIMEOUT_S) -> EmbeddedBroker:
        """Start listening; return self once bound. Raises BrokerStartError otherwise."""
        if self.running:
            raise RuntimeError("EmbeddedBroker already running")
        try:
            import amqtt.broker  # noqa: F401 - fail here, clearly, if the extra is missing
        except ImportError as exc:
            raise BrokerStartError(
                "amqtt is not installed: pip install 'edge-swarm[broker]'"
            ) from exc
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(
            target=self._run, name=f"es-embedded-broker-{self.port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise BrokerStartError(f"embedded broker not listening after {timeout:.0f} s")
        if self._error is not None:
            self._thread.join(STOP_TIMEOUT_S)
            self._thread = None
            raise BrokerStartError(
                f"embedded broker failed to start on {self.host}:{self.port}: {self._error}"
            ) from self._error
        log.info("embedded MQTT broker listening on %s", self.url)
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Shut the broker down and join its thread. Idempotent."""
        thread, loop, ev = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and ev is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closed in between
                loop.call_soon_threadsafe(ev.set)
        thread.join(timeout)
        if thread.is_alive():
            log.warning("embedded broker thread did not end within %.0f s", timeout)
        else:
            self._thread = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start() or logged
            if not self._ready.is_set():
                self._error = exc
            else:
                log.exception("embedded broker crashed")
        finally:
            self._ready.set()
            _close_loop(loop)
            self._loop = None

    async def _serve(self) -> None:
        """Serve until stop(): our listener hands each connection to amqtt.

        amqtt's own TCP listener is not used because its shutdown can hang for good when a
        QoS 1 delivery is in flight (its PUBACK waiter is registered after the PUBLISH is
        written, so a fast PUBACK is "unknown", and cancelling the reader then never ends).
        Owning the sockets lets stop() close every connection first, after which amqtt
        shuts down promptly; its shutdown is still bounded, and abandoned past the bound.
        """
        from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
        from amqtt.broker import Broker

        from edge_swarm.io._amqtt_fixes import fix_broker

        self._stop_event = asyncio.Event()
        broker = Broker(self._config())  # must be built inside the running loop
        fix_broker(broker)  # concurrent subscribers dropped connections (_amqtt_fixes.py)
        writers: set[asyncio.StreamWriter] = set()

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.add(writer)
            try:
                await broker.external_connected(
                    StreamReaderAdapter(reader), StreamWriterAdapter(writer), "default"
                )
            except Exception:  # noqa: BLE001 - one bad connection must not stop the broker
                log.debug("connection ended with an error", exc_info=True)
            finally:
                writers.discard(writer)
                writer.transport.close()

        await broker.start()
        try:
            server = await asyncio.start_server(
                on_connection, self.host, self.port, reuse_address=True
            )
        except BaseException:
            await asyncio.wait({asyncio.ensure_future(broker.shutdown())}, timeout=1.0)
            raise
        try:
            self.port = int(server.sockets[0].getsockname()[1])
            self._ready.set()
            await self._stop_event.wait()
        finally:
            server.close()
            open_transports = [w.transport for w in writers]
            for transport in open_transports:
                transport.close()  # FIN after pending bytes: clients see the broker go away
            shutdown = asyncio.ensure_future(broker.shutdown())
            done, _ = await asyncio.wait({shutdown}, timeout=SHUTDOWN_TIMEOUT_S)
            if not done:
                log.warning("amqtt still shutting down after %.0f s; abandoned", SHUTDOWN_TIMEOUT_S)
            for transport in open_transports:
                transport.abort()  # whatever could not flush: the loop is about to close


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what amqtt left running, then close the loop."""
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    except Exception:  # noqa: BLE001 - closing anyway
        log.debug("error while closing the broker loop", exc_info=True)
    finally:
        loop.close()


def run_embedded_broker(
    host: str = "0.0.0.0",
    port: int = 1883,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Run an embedded broker until SIGINT or SIGTERM, then stop it cleanly.

    ``on_ready`` runs once the broker listens (e.g. to advertise it). Must be called from
    the main thread (signal handlers). Raises BrokerStartError if the broker cannot listen.
    """
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        log.info("signal %d: stopping the broker", signum)
        stop.set()

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with EmbeddedBroker(host, port) as broker:
            log.info("broker ready on %s (Ctrl-C to stop)", broker.url)
            if on_ready is not None:
                on_ready()
            stop.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


# ------------------------------------------------------------------------- Mosquitto


def find_mosquitto() -> str | None:
    """The path of the ``mosquitto`` binary, or None (also looks in /usr/sbin)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class MosquittoBroker:
    """A real ``mosquitto`` process on 127.0.0.1, configured for tests and demos.

    ``port=0`` picks a free port at the first start; restarts reuse it. ``extra_conf`` is
    appended to the generated configuration; ``conf`` replaces it entirely (it must then
    listen on 127.0.0.1 at ``port``). The broker's log goes to ``workdir/mosquitto.log``.
    """

    def __init__(
        self,
        port: int = 0,
        workdir: str | os.PathLike[str] | None = None,
        extra_conf: str = "",
        *,
        conf: str | None = None,
        binary: str | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.workdir = Path(workdir) if workdir is not None else None
        self.extra_conf = extra_conf
        self.conf = conf
        self.binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: Any = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:port``."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id while running."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        """Where the broker's own log goes."""
        return self._workdir() / "mosquitto.log"

    def _workdir(self) -> Path:
        if self.workdir is None:
            import tempfile

            self._tmpdir = tempfile.TemporaryDirectory(prefix="es-mosquitto-")
            self.workdir = Path(self._tmpdir.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self.workdir

    def render_conf(self) -> str:
        """The configuration text the broker will be started with."""
        if self.conf is not None:
            return self.conf
        return "\n".join(
            [
                f"listener {self.port} {self.host}",
                "allow_anonymous true",
                "persistence false",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
                "log_type notice",
                "log_type information",
                "connection_messages true",
                self.extra_conf,
                "",
            ]
        )

    def start(self, timeout: float = START_TIMEOUT_S) -> MosquittoBroker:
        """Start mosquitto and return once its port accepts connections.

        Raises BrokerStartError if the binary is missing, the process exits, or the port does
        not open within ``timeout`` seconds (the log tail is in the message).
        """
        if self._proc is not None:
            raise RuntimeError("MosquittoBroker already running")
        binary = self.binary or find_mosquitto()
        if binary is None:
            raise BrokerStartError("mosquitto not found (apt-get install mosquitto)")
        pick_port = self.port == 0
        for _attempt in range(3 if pick_port else 1):
            if pick_port:
                self.port = free_port(self.host)
            try:
                self._spawn(binary, timeout)
                return self
            except BrokerStartError as exc:
                # Only a port taken between free_port() and the bind is worth another try.
                if not pick_port or _attempt == 2 or "in use" not in str(exc):
                    raise
                log.info("port %d was taken meanwhile; trying another", self.port)
        raise AssertionError("unreachable")

    def _spawn(self, binary: str, timeout: float) -> None:
        if port_open(self.host, self.port):
            # Checked first: otherwise the other listener would pass for mosquitto's.
            raise BrokerStartError(f"port {self.port} on {self.host} is already in use")
        workdir = self._workdir()
        conf_path = workdir / "mosquitto.conf"
        conf_path.write_text(self.render_conf())
        with open(self.log_path, "ab") as logf:
            proc = subprocess.Popen(
                [binary, "-c", str(conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        deadline = time.monotonic() + timeout
        while not port_open(self.host, self.port):
            try:
                # Doubles as the pause between probes and the check for an early exit.
                proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                if time.monotonic() < deadline:
                    continue
                _terminate(proc)
                raise BrokerStartError(
                    f"mosquitto not listening on {self.port} after {timeout:.0f} s:\n"
                    + self._log_tail()
                ) from None
            raise BrokerStartError(f"mosquitto exited with {proc.returncode}:\n{self._log_tail()}")
        self._proc = proc
        log.info("mosquitto (pid %d) listening on %s", proc.pid, self.url)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Terminate mosquitto (SIGTERM, then SIGKILL after ``timeout``) and reap it."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc, timeout)

    def kill(self) -> None:
        """SIGKILL mosquitto, as a power cut would: no goodbye to its clients, and (with
        ``persistence false``) its retained messages and sessions are gone. The port is
        kept, so ``start()`` brings a fresh broker back on it."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(STOP_TIMEOUT_S)

    def close(self) -> None:
        """Stop, and remove the work directory if this object made it."""
        self.stop()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _terminate(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            log.warning("mosquitto (pid %d) ignored SIGTERM; killing it", proc.pid)
            proc.kill()
    proc.wait()
