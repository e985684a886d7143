"""A tiny threaded HTTP server on 127.0.0.1 for fake providers: records every request,
and plays scripted faults (429, 5xx, a dropped connection after processing) before the
provider logic answers. Each fake provider subclasses `FakeProvider` and implements
`handle(request) -> Reply` with the provider's documented protocol and checks."""
from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode("utf-8"), keep_blank_values=True).items()}


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fault:
    reply: Optional[Reply]  # None: drop the connection without an answer
    process: bool = False  # apply the request to the provider's state first


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeProvider/1.0"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _serve(self) -> None:
        provider: FakeProvider = self.server.provider  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        parts = urlsplit(self.path)
        request = Request(self.command, parts.path, parse_qs(parts.query),
                          {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
        reply = provider.dispatch(request)
        if reply is None:
            self.close_connection = True
            self.connection.shutdown(2)
            return
        data = b"" if reply.body is None else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve


class FakeProvider:
    """Base of the fakes: start()/stop(), `url`, `requests`, `faults`, `problems` (every
    protocol violation the fake noticed — a conformance test asserts it stays empty)."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.faults: deque[Fault] = deque()
        self.problems: list[str] = []
        self.rejected: set[str] = set()  # identities the provider refuses per record
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None

    # -- lifecycle
    def start(self) -> "FakeProvider":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.provider = self  # type: ignore[attr-defined]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- scripting
    def fail_next(self, count: int, reply: Optional[Reply], *, process: bool = False) -> None:
        for _ in range(count):
            self.faults.append(Fault(reply, process))

    def problem(self, message: str) -> Reply:
        self.problems.append(message)
        return Reply(400, {"message": message})

    def dispatch(self, request: Request) -> Optional[Reply]:
        with self._lock:
            self.requests.append(request)
            if self.faults:
                fault = self.faults.popleft()
                if fault.process:
                    self.handle(request)
                return fault.reply
            return self.handle(request)

    def handle(self, request: Request) -> Reply:  # pragma: no cover - abstract
        raise NotImplementedError
