"""A small stand-in for the CI app: the receiving side of the runner's `http` reporter.

It records every request in arrival order, checks HTTP basic auth, and can be told to refuse for a while
(answer 503, or drop the connection) to simulate an outage.

In tests::

    app = CIApp(username="worker", token="s3cret").start()   # free port, background thread
    app.url, app.requests, app.refuse(True), app.stop()

Standalone (the lab demo prints every report)::

    python -m travis_lab.ciapp --port 9090 --username worker --token s3cret
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Request:
    method: str
    path: str
    body: Any  # decoded JSON (or the raw text if not JSON)
    authorized: bool
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)


class CIApp:
    def __init__(
        self,
        *,
        username: str = "worker",
        token: str = "token",
        host: str = "127.0.0.1",
        port: int = 0,
        echo: bool = False,
    ):
        self.username = username
        self.token = token
        self.echo = echo
        self.requests: list[Request] = []  # accepted (2xx) and refused, in arrival order
        self._lock = threading.Lock()
        self._refuse: str | None = None  # None | "503" | "close"
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- control ---------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._server.server_address[0]}:{self.port}"

    def refuse(self, on: bool = True, mode: str = "503") -> None:
        """While on, answer every request with 503 (mode "503") or close the connection (mode "close")."""
        if mode not in ("503", "close"):
            raise ValueError("mode must be '503' or 'close'")
        self._refuse = mode if on else None

    def start(self) -> CIApp:
        self._thread = threading.Thread(target=self._server.serve_forever, name="ciapp", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def accepted(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    # -- request handling ------------------------------------------------------------------------------
    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, token = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return user == self.username and token == self.token

    def _record(self, handler: BaseHTTPRequestHandler) -> tuple[int, dict[str, Any]]:
        length = int(handler.headers.get("Content-Length") or 0)
        text = handler.rfile.read(length).decode("utf-8", "replace") if length else ""
        try:
            body: Any = json.loads(text) if text else None
        except ValueError:
            body = text
        req = Request(
            handler.command,
            handler.path,
            body,
            self._authorized(handler.headers.get("Authorization")),
            headers=dict(handler.headers.items()),
        )
        if self._refuse == "503":
            req.status, answer = 503, {"error": "refusing on purpose (outage simulation)"}
        elif not req.authorized:
            req.status, answer = 401, {"error": "basic auth username:token required"}
        elif handler.command != "PUT" or not _known_path(handler.path):
            req.status, answer = 404, {"error": f"no route {handler.command} {handler.path}"}
        elif not isinstance(body, dict):
            req.status, answer = 400, {"error": "JSON object body required"}
        else:
            req.status, answer = 200, {"ok": True}
        with self._lock:
            self.requests.append(req)
        if self.echo and req.status == 200:
            print(f"{req.method} {req.path} {json.dumps(body)}", flush=True)
        return req.status, answer

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # TCP_NODELAY, as nginx/puma in front of a real app: without it the body, written after the
            # headers, waits for the client's delayed ACK (~40 ms per report on Linux loopback).
            disable_nagle_algorithm = True

            def _any(self) -> None:
                if app._refuse == "close":
                    self.close_connection = True
                    self.connection.close()
                    return
                status, answer = app._record(self)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="travis"')
                self.end_headers()
                self.wfile.write(data)

            do_PUT = do_GET = do_POST = _any

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("ciapp: " + fmt, *args)

        return Handler


def _known_path(path: str) -> bool:
    parts = path.strip("/").split("/")
    return len(parts) in (2, 3) and parts[0] == "jobs" and parts[1].isdigit() and parts[2:] in ([], ["log"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m travis_lab.ciapp", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--username", default="worker")
    parser.add_argument("--token", default="token")
    args = parser.parse_args(argv)
    app = CIApp(username=args.username, token=args.token, host=args.host, port=args.port, echo=True)
    print(f"ciapp listening on {app.url} (basic auth {args.username}:***)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        app.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
