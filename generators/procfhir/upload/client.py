"""A small FHIR REST client: TLS rules, authentication, retries, request statistics."""

from __future__ import annotations

import copy
import ipaddress
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
import urllib3.exceptions

from procfhir.upload.auth import Auth, NoAuth, SmartBackendAuth
from procfhir.upload.errors import AuthError, OutcomeUnknown, TransportError, UploadError
from procfhir.upload.retry import NOT_PROCESSED_STATUSES, RETRY_STATUSES, RetryPolicy, parse_retry_after

FHIR_JSON = "application/fhir+json"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url_security(url: str, *, allow_insecure_http: bool = False, what: str = "server") -> None:
    """Refuse URLs that would leak credentials: plain http off loopback, user:password@ in the URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UploadError(f"the {what} URL {url!r} is not an http(s) URL")
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
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

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
        what = f"{method} {urlsplit(url).path}"
        while True:
            attempt += 1
            self.stats.add("requests")
            try:
                resp = self.session.request(
                    method,
                    url,
                    data=data,
                    params=params,
                    headers=hdrs,
                    auth=self.auth,
                    timeout=self.timeout,
                    verify=self.verify,
                )
            except requests.exceptions.SSLError:
                raise TransportError(f"{what}: TLS verification failed for {self.base_url}") from None
            except requests.RequestException as exc:
                kind = type(exc).__name__
                if not idempotent and not _not_sent(exc):
                    self.stats.add("lost_responses")
                    raise OutcomeUnknown(f"{what}: the response was lost ({kind})") from None
                delay = self.retry.delay(attempt, None)
                if delay is None:
                    raise TransportError(f"{what}: failed after {attempt} attempts ({kind})") from None
                self.stats.add("retries")
                self.retry.sleep(delay)
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
                if delay is None:
                    return resp
                self.stats.add("retries")
                resp.close()
                self.retry.sleep(delay)
                continue
            return resp
