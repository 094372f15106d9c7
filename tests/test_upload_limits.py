"""Faults a real FHIR server does not produce, from small servers of our own on loopback: a server
that never answers, one that answers a byte at a time, redirects elsewhere, HTML and broken JSON
answers, a gzip bomb, answers echoing credentials. Each upload must end, with a clear message,
having sent nothing where it should not, and without printing any fragment of a secret."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from procfhir.upload import Uploader
from tests.cliutil import run_upload_cli

SECRET = "tok-9fK2qLm7ZxW4vB8nR3sT6yU1"
PATIENT = {"resourceType": "Patient", "id": "limits-p1", "name": [{"family": "Test"}]}

Handler = Callable[[BaseHTTPRequestHandler], None]


class Server:
    """A threaded HTTP server on 127.0.0.1 whose every request goes to ``handle``; counts requests."""

    def __init__(self, handle: Handler) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                outer.requests.append((self.command, self.path, dict(self.headers)))
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], Server]]:
    servers: list[Server] = []

    def start(handle: Handler) -> Server:
        s = Server(handle)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def _reply(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str, **headers: str) -> None:
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    for k, v in headers.items():
        h.send_header(k.replace("_", "-"), v)
    h.end_headers()
    h.wfile.write(body)


def _resource_file(tmp_path: Path) -> Path:
    p = tmp_path / "r.json"
    p.write_text(json.dumps(PATIENT))
    return p


def _run(
    tmp_path: Path, server: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # the subprocess timeout only guards the test run itself against a hang (that is a failure)
    return run_upload_cli(
        [str(_resource_file(tmp_path)), "--server", server, "--max-attempts", "2", *args],
        env=env,
        timeout=120,
    )


def test_a_silent_server_ends_the_upload(tmp_path: Path) -> None:
    """The server accepts connections and never answers: the run's time limit ends it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    try:
        server = f"http://127.0.0.1:{listener.getsockname()[1]}/fhir"
        r = _run(tmp_path, server, "--timeout", "4", "--request-timeout", "2")
    finally:
        stop.set()
        listener.close()
        for s in accepted:
            s.close()
    assert r.returncode in (1, 2) and "Traceback" not in r.stderr, r.stderr
    assert "no complete answer in time" in r.stderr or "time limit" in r.stderr, r.stderr
    assert accepted, "the uploader never connected"


def test_a_trickling_server_ends_the_upload(tmp_path: Path, serve: Callable[[Handler], Server]) -> None:
    """Headers at once, then one byte of body every 0.3 s: each read is quick, the whole is not."""
    stop = threading.Event()

    def trickle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/fhir+json")
        h.send_header("Content-Length", "100000")
        h.end_headers()
        h.wfile.flush()
        while not stop.is_set():
            h.wfile.write(b" ")
            h.wfile.flush()
            time.sleep(0.3)

    s = serve(trickle)
    try:
        r = _run(tmp_path, s.base, "--timeout", "5", "--request-timeout", "2")
    finally:
        stop.set()
    assert r.returncode in (1, 2) and "Traceback" not in r.stderr, r.stderr
    assert "no complete answer in time" in r.stderr or "time limit" in r.stderr, r.stderr


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_to_another_server_are_not_followed(
    tmp_path: Path, serve: Callable[[Handler], Server], status: int
) -> None:
    elsewhere = serve(lambda h: _reply(h, 200, b"{}", "application/fhir+json"))
    target = f"{elsewhere.base}/Patient/_search"
    s = serve(lambda h: _reply(h, status, b"", "text/plain", Location=target))
    r = _run(tmp_path, s.base, "--auth", "bearer", "--token-env", "PF_TOKEN", env={"PF_TOKEN": SECRET})
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"redirects (HTTP {status}) to {target}" in r.stderr and "not followed" in r.stderr, r.stderr
    assert elsewhere.requests == [], "data or credentials went to a server nobody named"
    assert SECRET[:8] not in r.stdout + r.stderr


def test_a_redirect_to_plain_http_is_not_followed(serve: Callable[[Handler], Server]) -> None:
    """Same host and port, but https -> http (scheme differs: another origin)."""
    from procfhir.upload.client import origin

    assert origin("https://127.0.0.1:8443/fhir") != origin("http://127.0.0.1:8443/fhir")
    assert origin("https://h/fhir") == origin("https://H:443/other")


def test_paging_links_to_another_server_are_not_followed(serve: Callable[[Handler], Server]) -> None:
    elsewhere = serve(lambda h: _reply(h, 200, b"{}", "application/fhir+json"))
    page = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "next", "url": f"{elsewhere.base}/page2"}],
        "entry": [],
    }
    s = serve(lambda h: _reply(h, 200, json.dumps(page).encode(), "application/fhir+json"))
    report = Uploader(s.base).upload([PATIENT], dry_run=True)
    assert report.fatal and "another server" in report.fatal and elsewhere.requests == []


@pytest.mark.parametrize(
    ("body", "ctype", "says"),
    [
        (
            b"<html><head><title>502 Proxy Error</title></head><body>oops</body></html>",
            "text/html",
            "502 Proxy Error",
        ),
        (b'{"resourceType": "Bundle", "entry": [', "application/fhir+json", "not valid JSON"),
        (b'{"resourceType": "Bundle", "total": NaN}', "application/fhir+json", "NaN"),
        (b"", "application/fhir+json", "empty"),
    ],
)
def test_non_json_answers_are_reported_as_what_they_are(
    tmp_path: Path, serve: Callable[[Handler], Server], body: bytes, ctype: str, says: str
) -> None:
    def handle(h: BaseHTTPRequestHandler) -> None:
        if h.command == "POST" and h.path.endswith("/_search"):
            _reply(h, 404, b"", "text/plain")  # no search: the uploader falls back to reads
        else:
            _reply(h, 200, body, ctype)

    s = serve(handle)
    r = _run(tmp_path, s.base)
    out = r.stdout + r.stderr
    assert r.returncode in (1, 2) and "Traceback" not in out and "JSONDecodeError" not in out, out
    assert says in out and ctype in out, out


def test_a_gzip_bomb_is_refused_without_inflating_it(serve: Callable[[Handler], Server]) -> None:
    bomb = gzip.compress(b" " * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB of spaces, ~64 KiB

    def handle(h: BaseHTTPRequestHandler) -> None:
        _reply(h, 200, bomb, "application/fhir+json", Content_Encoding="gzip")

    s = serve(handle)
    up = Uploader(s.base)
    up.client.max_response_bytes = 4 * 1024 * 1024
    report = up.upload([PATIENT], dry_run=True)
    assert report.fatal and "exceeds 4,194,304 bytes" in report.fatal, report.fatal


def test_a_huge_declared_answer_is_refused(serve: Callable[[Handler], Server]) -> None:
    def handle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/fhir+json")
        h.send_header("Content-Length", str(10 * 1024**3))
        h.end_headers()

    s = serve(handle)
    up = Uploader(s.base)
    report = up.upload([PATIENT], dry_run=True)
    assert report.fatal and "more than" in report.fatal and "accepted" in report.fatal


def _fragments(secret: str, n: int = 6) -> set[str]:
    return {secret[i : i + n] for i in range(len(secret) - n + 1)}


def _echo_401(h: BaseHTTPRequestHandler) -> None:
    """A server that refuses and echoes the credentials it got, in its body and headers."""
    auth = h.headers.get("Authorization", "")
    body = json.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "login", "diagnostics": f"bad credentials: {auth}"}],
        }
    ).encode()
    _reply(h, 401, body, "application/fhir+json", WWW_Authenticate=f'Bearer error="{auth[:40]}"')


@pytest.mark.parametrize("kind", ["bearer-env", "bearer-file", "basic-env", "basic-file"])
def test_no_fragment_of_a_secret_is_printed_on_any_failing_auth_path(
    tmp_path: Path, serve: Callable[[Handler], Server], kind: str
) -> None:
    s = serve(_echo_401)
    (tmp_path / "secret").write_text(SECRET + "\n")
    auth, how = kind.split("-")
    args = ["--auth", auth]
    env = {"PF_SECRET": SECRET}
    if auth == "basic":
        args += ["--user", "uploader"]
        args += (
            ["--password-env", "PF_SECRET"] if how == "env" else ["--password-file", str(tmp_path / "secret")]
        )
    else:
        args += ["--token-env", "PF_SECRET"] if how == "env" else ["--token-file", str(tmp_path / "secret")]
    r = _run(tmp_path, s.base, *args, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "refused the credentials" in out, out
    assert s.requests, "the server was never asked"
    leaked = sorted(f for f in _fragments(SECRET) if f in out)
    assert not leaked, f"fragments of the secret printed: {leaked}"
    # the basic header's base64 form too
    import base64

    b64 = base64.b64encode(f"uploader:{SECRET}".encode()).decode()
    assert not [f for f in _fragments(b64, 8) if f in out]
