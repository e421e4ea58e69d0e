"""A plain local HTTP server standing in for a pod in proxy and discovery tests and the proxy benchmark.

    with Backend("127.1.250.2", port) as b: ...   # serves in a thread until the block ends

`GET /` answers the server's own address (so a client sees which backend answered), `GET /slow?seconds=S`
answers after S seconds (a request in flight across a proxy reconfiguration), `GET /metrics` a Prometheus
text exposition with a counter of the requests served, or what `metrics()` returns (a fake serving pod's
series, e.g. tests/devcluster/test_dashboard_check.py). Keep-alive (HTTP/1.1), as a vLLM server does.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit


class Backend:
    def __init__(self, address: str, port: int, metrics: Callable[[], str] | None = None) -> None:
        self.address = address
        self.port = port
        self.served = 0
        self.in_flight = 0
        self._lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                with backend._lock:
                    backend.served += 1
                    backend.in_flight += 1
                try:
                    if url.path == "/slow":
                        time.sleep(float(parse_qs(url.query).get("seconds", ["1"])[0]))
                    if url.path == "/metrics" and metrics is not None:
                        body = metrics().encode()
                    elif url.path == "/metrics":
                        body = (
                            "# HELP testbackend_requests_total Requests served.\n"
                            "# TYPE testbackend_requests_total counter\n"
                            f"testbackend_requests_total {backend.served}\n"
                        ).encode()
                    else:
                        body = f"{backend.address}:{backend.port}\n".encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with backend._lock:
                        backend.in_flight -= 1

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

        self.server = _QuietServer((address, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"backend-{address}", daemon=True)

    def __enter__(self) -> Backend:
        self.thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client (or the proxy) closing its keep-alive connection is normal here, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]
