"""A process's operator port: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

A worker replica serves it with ``--metrics-port``; a gateway serves the same paths on its call
port by default, or here with ``--metrics-port`` (then not on the call port).

Served by the standard library's WSGI server in its own threads (as prometheus_client's own
``start_http_server`` does), so a scrape or a probe never waits for the event loop, and a
replica whose loop is stuck still answers ``/healthz`` — Kubernetes restarts it through its
liveness probe only when the process is gone or wedged at the HTTP level. ``/readyz`` answers
503 with the reason while the replica cannot serve calls: Redis unavailable, its consumer
group not (yet) present, or draining after SIGTERM.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from callstream.shared.errors import ConfigError

Readiness = Callable[[], tuple[bool, str]]
StartResponse = Callable[..., Any]


class _ThreadingServer(WSGIServer):
    daemon_threads = True

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self._handle, args=(request, client_address), daemon=True)
        thread.start()

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # probes every few seconds would flood the log


class HealthServer:
    """Serves the replica's metrics and probes on ``host:port`` until :meth:`close`."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, readiness: Readiness
    ) -> None:
        metrics = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/healthz":
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ok\n"]
            if path == "/readyz":
                ready, why = readiness()
                status = "200 OK" if ready else "503 Service Unavailable"
                start_response(status, [("Content-Type", "text/plain")])
                return [f"{why}\n".encode()]
            result: Iterable[bytes] = metrics(environ, start_response)
            return result

        self._server = make_server(
            host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="worker-health", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_health(
    host: str, port: int | None, registry: CollectorRegistry, readiness: Readiness
) -> HealthServer | None:
    """A process's ``--metrics-port``: its :class:`HealthServer`, or None when not asked for;
    ConfigError when the port cannot be served."""
    if port is None:
        return None
    try:
        return HealthServer(host, port, registry, readiness)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on port {port}: {exc}") from None
