"""The dashboard's HTTP server: ``/`` (the page) and ``/api/state`` (JSON) from a
`edge_swarm.dashboard.source.DashboardSource`, on the stdlib `ThreadingHTTPServer` on a daemon
thread.

How it works
------------
`DashboardServer.respond` maps a path to (status, content type, body, extra headers); it is
plain code, so tests can call it without a socket. `_Handler` wraps it for
`http.server`: it adds the common headers, turns any failure into a 500 and one log line,
and answers malformed requests with the same short reply. `_HTTPServer` bounds the
connections served at once with a semaphore, so a small gateway never starts a thread per
client. The server is kept apart from the source and the page because it is the only part
with sockets and threads (STYLE: I/O at the edges).

Invariants
----------
- Read-only: GET and HEAD only; every other standard method gets 405, unknown ones 501.
- A handler never raises: a failure becomes a short 500 and one log line.
- Responses are bounded: a body over `MAX_BODY` bytes is refused with 500 rather than
  sent (the source's caps keep a real one far below it); each connection times out after
  `REQUEST_TIMEOUT_S`; past `MAX_CLIENTS` at once, connections are closed unserved.
- Every response is uncached (``Cache-Control: no-store``), ``nosniff`` and sends no
  referrer; the page also gets a Content-Security-Policy with a fresh nonce per response.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from edge_swarm.dashboard.page import render_page
from edge_swarm.dashboard.views import _cut

if TYPE_CHECKING:  # a runtime import would be a cycle: edge_swarm.dashboard.source re-exports us
    from edge_swarm.dashboard.source import DashboardSource

log = logging.getLogger(__name__)  # under "edge_swarm.dashboard", with the source's

MAX_BODY = 4 * 1024 * 1024
"""Largest response body (bytes); the source's caps keep a real one far below it."""
REQUEST_TIMEOUT_S = 10.0
"""Socket timeout per connection (seconds): a stalled client holds one thread, not forever."""
MAX_CLIENTS = 16
"""Connections served at once; more are closed at once rather than given a thread each."""


def _csp(nonce: str) -> str:
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


_TEXT = "text/plain; charset=utf-8"
Response = tuple[int, str, bytes, dict[str, str]]


class _Handler(BaseHTTPRequestHandler):
    """GET/HEAD of ``/`` and ``/api/state``; 405 for other methods. Never raises."""

    server: _HTTPServer
    server_version = "edge-swarm-dashboard"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S
    # Answer even a malformed or HTTP/0.9 request with a status line and our headers.
    default_request_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _not_allowed(self) -> None:
        self.close_connection = True  # the unread body must not be parsed as a request
        self._send((405, _TEXT, b"read-only: GET and HEAD only\n", {"Allow": "GET, HEAD"}))

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _serve(self) -> None:
        path = urlsplit(self.path).path
        try:
            response = self.server.dashboard.respond(path)
        except Exception as exc:
            log.error("dashboard: GET %s failed: %r", _cut(path, 80), exc)
            response = (500, _TEXT, b"internal error, see the gateway's log\n", {})
        self._send(response)

    def _send(self, response: Response) -> None:
        status, ctype, body, extra = response
        try:
            self.send_response(status)
            headers = {
                "Content-Type": ctype,
                "Content-Length": str(len(body)),
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                **extra,
            }
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD" and status >= 200 and status not in (204, 304):
                self.wfile.write(body)
        except OSError as exc:  # the client went away; nothing to tell it
            log.debug("dashboard: client %s gone: %r", self.client_address[0], exc)
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests (400, 414, 431, 501): the same short, uncached reply."""
        self.close_connection = True
        text = f"{code} {_cut(message or self.responses.get(code, ('error',))[0], 80)}\n"
        self._send((code, _TEXT, text.encode("utf-8", "replace"), {}))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dashboard: %s " + format, self.client_address[0], *args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never blocks stop()
    dashboard: DashboardServer
    slots: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        # A gateway is a small board: past `slots` clients, drop the connection instead of
        # starting one more thread for it.
        if not self.slots.acquire(blocking=False):
            log.debug("dashboard: busy, dropping a connection from %s", client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("dashboard: request from %s failed", client_address[0], exc_info=True)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class DashboardServer:
    """Serves a `DashboardSource` over HTTP on a daemon thread: ``/`` and ``/api/state``.

    `host` is the address to bind ("0.0.0.0" or the gateway's LAN address on a site; the
    default keeps it on this machine); `port` 0 picks a free one, read back from `.port`
    after `start()`. At most `max_clients` connections are served at once.
    """

    def __init__(
        self,
        source: DashboardSource,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.source = source
        self.host = host
        self._port = port
        self.max_clients = max_clients
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port once started, else the one asked for."""
        return self._httpd.server_address[1] if self._httpd else self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> DashboardServer:
        """Bind and serve; returns self. Raises OSError if the address cannot be bound."""
        if self._httpd is not None:
            raise RuntimeError("dashboard server already started")
        cls = _HTTPServer6 if ":" in self.host else _HTTPServer
        self._httpd = cls((self.host, self._port), _Handler)
        self._httpd.dashboard = self
        self._httpd.slots = threading.BoundedSemaphore(self.max_clients)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="es-dashboard"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("dashboard on %s", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the socket (idempotent); waits up to `timeout` seconds."""
        httpd, thread, self._httpd, self._thread = self._httpd, self._thread, None, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def respond(self, path: str) -> Response:
        """(status, content type, body, extra headers) for a GET of `path`. Raises whatever
        the source raises; the handler turns that into a 500."""
        if path == "/":
            nonce = secrets.token_urlsafe(16)
            body = render_page(self.source.state(), nonce).encode()
            response = (
                200,
                "text/html; charset=utf-8",
                body,
                {"Content-Security-Policy": _csp(nonce)},
            )
        elif path == "/api/state":
            text = json.dumps(self.source.state(), allow_nan=False, separators=(",", ":"))
            response = (200, "application/json", text.encode(), {})
        else:
            return 404, _TEXT, b"not found\n", {}
        if len(response[2]) > MAX_BODY:
            log.error("dashboard: %s would be %d bytes, over MAX_BODY", path, len(response[2]))
            return 500, _TEXT, b"response too large\n", {}
        return response


def start_for_gateway(where: str, entries: Any, devices: Any) -> DashboardServer | None:
    """A gateway's page on ``where`` (``host:port``): the ledger's ``entries`` reader and a
    ``devices()`` snapshot. None, after one logged line, when it cannot listen there: a taken
    port must not stop the gateway's real work."""
    from edge_swarm.dashboard.source import DashboardSource

    host, _, port = where.rpartition(":")
    source = DashboardSource(entries, devices, entries_from=entries)
    try:
        server = DashboardServer(source, host=host, port=int(port)).start()
    except OSError as exc:
        logging.getLogger("edge_swarm.node.gateway").error(
            "dashboard not started on %s: %s", where, exc
        )
        return None
    logging.getLogger("edge_swarm.node.gateway").info(
        "dashboard on http://%s:%d/", host, server.port
    )
    return server
