"""A small FHIR REST client: TLS rules, authentication, retries, request statistics."""

from __future__ import annotations

import copy
import ipaddress
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import requests
import urllib3.exceptions

from procfhir.upload.auth import Auth, NoAuth, SmartBackendAuth
from procfhir.upload.errors import AuthError, OutcomeUnknown, TransportError, UploadError
from procfhir.upload.retry import NOT_PROCESSED_STATUSES, RETRY_STATUSES, RetryPolicy, parse_retry_after

FHIR_JSON = "application/fhir+json"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
# Limits on what a server may send us (after gzip inflation) and how long one exchange may take.
MAX_RESPONSE_BYTES = 512 * 1024 * 1024
REQUEST_DEADLINE = 600.0


class DeadlineExceeded(Exception):
    """One request took longer than its overall deadline (a silent or trickling server)."""


class ResponseTooLarge(UploadError):
    """The server sent more than we accept (after decompression)."""


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL: two URLs with the same origin are the same server."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    default = 443 if parts.scheme == "https" else 80
    return (parts.scheme.lower(), (parts.hostname or "").lower(), port or default)


def shown_url(url: str) -> str:
    """A URL safe to print: no user info, no control characters, at most 200 characters."""
    try:
        parts = urlsplit(url)
        text = parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()
    except ValueError:
        text = url.rsplit("@", 1)[-1]
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text[:200] + ("..." if len(text) > 200 else "")


def describe_body(resp: requests.Response, limit: int = 200) -> str:
    """What a non-FHIR answer is: its content type and the start of its text, printable."""
    ctype = (resp.headers.get("Content-Type") or "no content type").split(";")[0].strip()
    raw = resp.content or b""
    text = raw[:2000].decode("utf-8", errors="replace")
    if "html" in ctype.lower() or text.lstrip().lower().startswith(("<!doctype", "<html")):
        import re

        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
        text = re.sub(r"<[^>]+>", " ", title.group(1) if title else text)
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    snippet = f": {text[:limit]!r}" if text else " (empty)"
    return f"{ctype}, {len(raw):,} bytes{snippet}"


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url_security(url: str, *, allow_insecure_http: bool = False, what: str = "server") -> None:
    """Refuse URLs that would leak credentials: plain http off loopback, user:password@ in the URL."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is no number
    except ValueError as exc:
        raise UploadError(f"the {what} URL {shown_url(url)!r} is malformed ({exc})") from None
    if not url.isprintable() or any(c.isspace() for c in url):
        raise UploadError(f"the {what} URL {shown_url(url)!r} holds spaces or control characters")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UploadError(f"the {what} URL {shown_url(url)!r} is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise UploadError(f"the {what} URL must not carry credentials; use the authentication options")
    if parts.scheme == "http" and not is_loopback(parts.hostname) and not allow_insecure_http:
        raise UploadError(
            f"refusing plain http to the {what} {parts.hostname}: use https, "
            "or --allow-insecure-http if you accept sending data unencrypted"
        )


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    lost_responses: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)


def _not_sent(exc: requests.RequestException) -> bool:
    """True when the request certainly never reached the server (connection not established)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason: Any = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)
    return isinstance(reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError)


class FhirClient:
    """Sends FHIR requests to ``base_url`` with retries.

    Idempotent requests (GET, PUT, DELETE) are sent again after 429/502/503/504 or a dropped
    connection. A non-idempotent request (a transaction or batch POST) is sent again only when the
    server certainly did not process it (connection refused, 429, 503); when its response is lost
    (connection dropped after sending, read timeout, 502/504) :class:`OutcomeUnknown` is raised so
    that the caller checks the server's state before deciding anything.
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth: Auth | None = None,
        session: requests.Session | None = None,
        verify: bool | str = True,
        timeout: tuple[float, float] = (10.0, 300.0),
        retry: RetryPolicy | None = None,
        allow_insecure_http: bool = False,
        request_deadline: float = REQUEST_DEADLINE,
        run_deadline: float | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        check_url_security(base_url, allow_insecure_http=allow_insecure_http)
        if isinstance(verify, str) and not Path(verify).is_file():
            raise UploadError(f"the CA bundle {verify} does not exist")
        self.base_url = base_url.rstrip("/")
        self.auth = auth or NoAuth()
        self._own_session = session is None
        self.session = session or requests.Session()
        self.verify = verify
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.stats = ClientStats()
        self.request_deadline = request_deadline
        self.run_deadline = run_deadline  # time.monotonic() value; None: no limit
        self.max_response_bytes = max_response_bytes
        if isinstance(self.auth, SmartBackendAuth):
            self.auth.allow_insecure_http = allow_insecure_http  # type: ignore[attr-defined]
            self.auth.bind(self.base_url, self.session, verify, timeout[1])

    def fork(self) -> FhirClient:
        """The same client on a connection pool of its own (for another thread); shared statistics."""
        other = copy.copy(self)
        if self._own_session:  # a caller's session (mTLS, proxies...) is shared as it is
            other.session = requests.Session()
        return other

    def url(self, path: str) -> str:
        """The URL of ``path`` on our server; an absolute URL (a paging link) must be on it too."""
        if path.startswith(("http://", "https://")):
            if origin(path) != origin(self.base_url):
                raise UploadError(
                    f"the server sent a link to another server ({shown_url(path)}); not followed"
                )
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def set_run_timeout(self, seconds: float | None) -> None:
        """The whole run must end within ``seconds`` from now (None: no limit)."""
        self.run_deadline = None if seconds is None else time.monotonic() + seconds

    def _deadline(self) -> float:
        deadline = time.monotonic() + self.request_deadline
        if self.run_deadline is not None:
            deadline = min(deadline, self.run_deadline)
        return deadline

    def _run_time_left(self) -> float | None:
        return None if self.run_deadline is None else self.run_deadline - time.monotonic()

    def _exchange(
        self,
        method: str,
        url: str,
        *,
        data: bytes | None,
        params: Mapping[str, str] | None,
        headers: dict[str, str],
        deadline: float,
    ) -> requests.Response:
        """One HTTP exchange, body read in full (within limits), in a thread bounded by ``deadline``.

        Connect and read timeouts bound each wait on the socket; the deadline bounds the whole
        exchange, so a server answering one byte every few seconds cannot hold us."""
        box: dict[str, Any] = {}
        session = self.session
        limit = self.max_response_bytes

        def work() -> None:
            try:
                resp = session.request(
                    method,
                    url,
                    data=data,
                    params=params,
                    headers=headers,
                    auth=self.auth,
                    timeout=self.timeout,
                    verify=self.verify,
                    stream=True,
                    allow_redirects=False,
                )
                try:
                    box["resp"] = _read_body(resp, limit, deadline)
                finally:
                    resp.close()
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                box["exc"] = exc

        t = threading.Thread(target=work, daemon=True, name="procfhir-request")
        t.start()
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            # Abandoned: the thread ends with its socket's own timeout; we go on with new connections.
            if self._own_session:
                self.session = requests.Session()
            raise DeadlineExceeded()
        if "exc" in box:
            raise box["exc"]
        resp = box["resp"]
        assert isinstance(resp, requests.Response)
        return resp

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        form: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send one request (again as needed); return the final response whatever its status."""
        method = method.upper()
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        url = self.url(path)
        hdrs = {"Accept": FHIR_JSON}
        data = None
        if body is not None:
            hdrs["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if form is not None:
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
            data = urlencode(form).encode("ascii")
        if headers:
            hdrs.update(headers)
        attempt = 0
        refreshed = False
        redirects = 0
        what = f"{method} {urlsplit(url).path}"
        while True:
            attempt += 1
            self.stats.add("requests")
            left = self._run_time_left()
            if left is not None and left <= 0:
                raise TransportError(f"{what}: the upload's time limit (--timeout) is used up")
            try:
                resp = self._exchange(
                    method, url, data=data, params=params, headers=hdrs, deadline=self._deadline()
                )
            except requests.exceptions.SSLError:
                raise TransportError(f"{what}: TLS verification failed for {self.base_url}") from None
            except (requests.RequestException, DeadlineExceeded) as exc:
                kind = (
                    "no complete answer in time" if isinstance(exc, DeadlineExceeded) else type(exc).__name__
                )
                if not idempotent and not (isinstance(exc, requests.RequestException) and _not_sent(exc)):
                    self.stats.add("lost_responses")
                    raise OutcomeUnknown(f"{what}: the response was lost ({kind})") from None
                delay = self.retry.delay(attempt, None)
                left = self._run_time_left()
                if delay is None or (left is not None and delay >= left):
                    raise TransportError(f"{what}: failed after {attempt} attempts ({kind})") from None
                self.stats.add("retries")
                self.retry.sleep(delay)
                continue
            except ResponseTooLarge as exc:
                raise ResponseTooLarge(f"{what}: {exc}") from None
            if resp.status_code in REDIRECTS:
                target = urljoin(url, resp.headers.get("Location") or "")
                same = origin(target) == origin(self.base_url)
                keeps_method = resp.status_code in (307, 308) or method in ("GET", "HEAD")
                if not resp.headers.get("Location") or not same or not keeps_method:
                    why = (
                        "another server (scheme, host or port differ)"
                        if not same
                        else "a redirect that would change the request"
                    )
                    raise UploadError(
                        f"{what}: the server redirects (HTTP {resp.status_code}) to "
                        f"{shown_url(target) if resp.headers.get('Location') else '(no Location)'}: "
                        f"{why}; not followed, nothing sent there. If that is the right server, "
                        "give it as --server."
                    )
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise UploadError(f"{what}: more than {MAX_REDIRECTS} redirects")
                url, attempt = target, attempt - 1
                continue
            if resp.status_code == 401:
                if not refreshed and self.auth.refresh():
                    refreshed = True  # the token may have expired or been revoked: one new one
                    continue
                resp.close()
                hint = (
                    "a new token was fetched and refused too"
                    if refreshed
                    else f"credentials: {self.auth.name}"
                )
                raise AuthError(f"{what}: the server refused the credentials (HTTP 401; {hint})")
            if resp.status_code in RETRY_STATUSES:
                if not idempotent and resp.status_code not in NOT_PROCESSED_STATUSES:
                    self.stats.add("lost_responses")
                    raise OutcomeUnknown(f"{what}: HTTP {resp.status_code} from a gateway, outcome unknown")
                delay = self.retry.delay(attempt, parse_retry_after(resp.headers.get("Retry-After")))
                left = self._run_time_left()
                if delay is None or (left is not None and delay >= left):
                    return resp
                self.stats.add("retries")
                resp.close()
                self.retry.sleep(delay)
                continue
            return resp

    def json(self, resp: requests.Response, what: str) -> Any:
        """The JSON body of an answer, read strictly; anything else is an error saying what it is."""
        from procfhir.strictio import StrictInputError, loads_json

        try:
            return loads_json(resp.content or b"", "")
        except StrictInputError as exc:
            raise UploadError(
                f"{what}: the server answered HTTP {resp.status_code} with {describe_body(resp)}, "
                f"not FHIR JSON ({exc.problem})"
            ) from None


def _read_body(resp: requests.Response, limit: int, deadline: float) -> requests.Response:
    """Read the (decompressed) body into ``resp``, refusing more than ``limit`` bytes."""
    declared = resp.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ResponseTooLarge(
            f"the server's answer is {int(declared):,} bytes, more than {limit:,} accepted"
        )
    chunks: list[bytes] = []
    size = 0
    for chunk in resp.iter_content(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(f"the server's answer exceeds {limit:,} bytes (after decompression)")
        if time.monotonic() > deadline:
            raise DeadlineExceeded()
        chunks.append(chunk)
    resp._content = b"".join(chunks)
    resp._content_consumed = True  # type: ignore[attr-defined]
    return resp
