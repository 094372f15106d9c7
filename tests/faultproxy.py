"""A fault-injecting HTTP proxy of our own, on loopback, between a client and a real server.

It forwards every request to ``upstream`` unchanged, except where a fault rule matches:

- ``drop``: close the connection without forwarding (the request never reached the server);
- ``drop_response``: forward, let the server process it, then close without answering
  (the client loses the response of a request that was applied);
- ``status``: answer ``code`` (429, 503, ...) with an optional ``Retry-After`` without forwarding
  (with ``forward=True``: forward first, then answer ``code`` anyway, like a failing gateway);
- ``delay``: wait ``seconds`` then forward.

``gate(check)`` makes it a resource server's front door too: a request whose bearer token
``check(method, path, token)`` refuses gets 401 with ``WWW-Authenticate: Bearer`` (HAPI has no
authorization of its own).

Rules are consumed in order of listing, each ``times`` times, for requests matching ``method``
and a ``path`` substring. ``chaos(rate, seed)`` adds seeded random faults instead. ``log`` lists
every request seen with the fault applied and the upstream status.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-encoding",
    "content-length",
    "host",
}
TRANSIENT_OUTCOME = b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient"}]}'
LOGIN_OUTCOME = b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"login"}]}'


@dataclass
class Fault:
    kind: str  # drop | drop_response | status | delay
    method: str | None = None
    path: str | None = None  # substring of the request path (with query)
    body: str | None = None  # substring of the request body
    times: int = 1
    code: int = 503
    retry_after: str | None = None
    seconds: float = 0.0
    forward: bool = False  # status: forward to the server first, then answer the status anyway

    def matches(self, method: str, path: str, body: str) -> bool:
        return (
            (self.body is None or self.body in body)
            and self.times > 0
            and (self.method is None or self.method == method)
            and (self.path is None or self.path in path)
        )


@dataclass
class Seen:
    method: str
    path: str
    fault: str | None
    upstream_status: int | None
    headers: dict[str, str]
    body: bytes


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults: list[Fault] = []
        self.log: list[Seen] = []
        self._lock = threading.Lock()
        self._chaos: tuple[float, random.Random, tuple[str, ...]] | None = None
        self._gate: Callable[[str, str, str | None], bool] | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- configuration
    def add(self, kind: str, **kw: object) -> Fault:
        fault = Fault(kind, **kw)  # type: ignore[arg-type]
        with self._lock:
            self.faults.append(fault)
        return fault

    def chaos(
        self,
        rate: float,
        seed: int,
        kinds: tuple[str, ...] = ("drop", "drop_response", "429", "503", "502", "504", "delay"),
    ) -> None:
        with self._lock:
            self._chaos = (rate, random.Random(seed), kinds)

    def gate(self, check: Callable[[str, str, str | None], bool] | None) -> None:
        """Refuse (401) requests whose bearer token ``check(method, path, token)`` rejects."""
        with self._lock:
            self._gate = check

    def _refused(self, method: str, path: str, authorization: str | None) -> bool:
        with self._lock:
            check = self._gate
        if check is None:
            return False
        token = authorization[7:] if authorization and authorization.startswith("Bearer ") else None
        return not check(method, path, token)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self._chaos = None

    def _pick(self, method: str, path: str, body: bytes) -> Fault | None:
        text = body.decode("utf-8", "replace")
        with self._lock:
            for f in self.faults:
                if f.matches(method, path, text):
                    f.times -= 1
                    return Fault(
                        f.kind, code=f.code, retry_after=f.retry_after, seconds=f.seconds, forward=f.forward
                    )
            if self._chaos:
                rate, rng, kinds = self._chaos
                if rng.random() < rate:
                    k = rng.choice(kinds)
                    if k in ("429", "503"):
                        return Fault("status", code=int(k), retry_after=str(rng.choice([0, 1])))
                    if k in ("502", "504"):  # a gateway that forwarded, then failed to answer
                        return Fault("status", code=int(k), forward=True)
                    return Fault(k, seconds=rng.uniform(0.05, 0.5))
        return None

    def _forward(self, method: str, path: str, headers: Any, body: bytes) -> requests.Response:
        hdrs = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
        hdrs["Accept-Encoding"] = "identity"
        return requests.request(
            method, self.upstream + path, data=body or None, headers=hdrs, timeout=600, allow_redirects=False
        )

    # -------------------------------------------------------------- running
    def start(self) -> str:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def _answer(self, code: int, payload: bytes, headers: dict[str, str]) -> None:
                """Answer without forwarding: ``code`` with an OperationOutcome body."""
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._pick(self.command, self.path, body)
                kind = fault.kind if fault else None
                seen = Seen(
                    self.command,
                    self.path,
                    kind if kind != "status" else f"status {fault.code}",
                    None,
                    dict(self.headers.items()),
                    body,
                )
                with proxy._lock:
                    proxy.log.append(seen)
                if proxy._refused(self.command, self.path, self.headers.get("Authorization")):
                    seen.fault = "status 401"
                    self._answer(401, LOGIN_OUTCOME, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
                    return
                if fault and fault.kind == "drop":
                    self.close_connection = True
                    return
                if fault and fault.kind == "status" and fault.forward:
                    seen.upstream_status = proxy._forward(
                        self.command, self.path, self.headers, body
                    ).status_code
                if fault and fault.kind == "status":
                    retry = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                    self._answer(fault.code, TRANSIENT_OUTCOME, retry)
                    return
                if fault and fault.kind == "delay":
                    time.sleep(fault.seconds)
                resp = proxy._forward(self.command, self.path, self.headers, body)
                seen.upstream_status = resp.status_code
                if fault and fault.kind == "drop_response":
                    self.close_connection = True
                    return
                content = resp.content
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def requests_to(self, method: str, path: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self.log if s.method == method and path in s.path]
