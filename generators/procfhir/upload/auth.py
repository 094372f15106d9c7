"""Authentication: none, HTTP Basic, a bearer token, SMART Backend Services.

Every class keeps its secret out of ``repr``/``str`` and out of the messages of the errors it
raises. Secrets are read from an environment variable or a file by :func:`read_secret`.
"""

from __future__ import annotations

import base64
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from procfhir.upload.errors import AuthError

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SMART_ALGORITHMS = ("RS384", "ES384")


MAX_SECRET_BYTES = 64 * 1024


def check_secret(value: str, what: str, source: str) -> str:
    """Refuse a secret holding control characters (a line break, a NUL...), without echoing it.

    Such a secret cannot go into an HTTP header; sent anyway, parts of it end up in error
    messages. A private key (PEM) may hold line breaks and nothing else."""
    allowed = "\n\r" if what == "private key" else ""
    bad = [c for c in value if (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0) and c not in allowed]
    if bad:
        kind = "a line break" if bad[0] in "\r\n" else "a control character"
        raise AuthError(
            f"the {what} in {source} contains {kind} ({len(bad)} in all); refusing to use it. "
            f"Store the {what} alone, on one line"
        )
    if what != "private key" and not value.isascii():
        raise AuthError(f"the {what} in {source} holds non-ASCII characters; refusing to use it")
    return value


def read_secret(*, env: str | None = None, file: str | Path | None = None, what: str = "secret") -> str:
    """The secret from the file (one line; a final line break is dropped) or else the environment
    variable; refused (never echoed) when empty, too long or holding control characters."""
    if file is not None:
        source = f"the file {file}"
        try:
            with open(file, "rb") as f:
                raw = f.read(MAX_SECRET_BYTES + 1)
        except IsADirectoryError:
            raise AuthError(f"the {what} file {file} is a folder") from None
        except OSError as exc:
            raise AuthError(f"cannot read the {what} file {file}: {exc.strerror}") from None
        if len(raw) > MAX_SECRET_BYTES:
            raise AuthError(f"the {what} file {file} is larger than {MAX_SECRET_BYTES:,} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise AuthError(f"the {what} file {file} is not UTF-8 text") from None
        if what == "private key":
            value = text
        else:
            value = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
            value = value.strip(" \t")
        if not value.strip():
            raise AuthError(f"the {what} file {file} is empty")
        return check_secret(value, what, source)
    if env is not None:
        from_env = os.environ.get(env)
        if not from_env:
            raise AuthError(f"the {what} is expected in the environment variable {env}, which is not set")
        return check_secret(from_env, what, f"the environment variable {env}")
    raise AuthError(f"no {what} given (use an environment variable or a file)")


class Auth(requests.auth.AuthBase):
    """Base: adds nothing. Subclasses set the Authorization header."""

    name = "none"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request

    def refresh(self) -> bool:
        """Get new credentials after a 401; True when that may help."""
        return False

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class NoAuth(Auth):
    name = "none"


class BasicAuth(Auth):
    name = "basic"

    def __init__(self, user: str, password: str) -> None:
        if not user:
            raise AuthError("HTTP Basic authentication needs a user name")
        if ":" in user or not user.isprintable():
            raise AuthError("the user name must be printable and hold no ':'")
        check_secret(password, "password", "the password given")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._header = f"Basic {token}"
        self.user = user

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._header
        return request

    def __repr__(self) -> str:
        return f"<BasicAuth user={self.user!r}>"


class BearerAuth(Auth):
    name = "bearer"

    def __init__(self, token: str) -> None:
        token = token.strip()
        if not token:
            raise AuthError("the bearer token is empty")
        self._token = check_secret(token, "token", "the token given")

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request


class SmartBackendAuth(Auth):
    """SMART Backend Services: client_credentials grant with a signed JWT client assertion.

    The token endpoint comes from ``token_url`` or from ``{base}/.well-known/smart-configuration``
    (fetched on first use through ``discover``). The access token is cached until shortly before
    it expires and fetched again after a 401.
    """

    name = "smart"

    def __init__(
        self,
        client_id: str,
        private_key_pem: str,
        *,
        algorithm: str = "RS384",
        key_id: str | None = None,
        token_url: str | None = None,
        scope: str = "system/*.read system/*.write",
        jku: str | None = None,
    ) -> None:
        import jwt  # PyJWT; imported here so that other auth modes do not pay for it

        if not client_id:
            raise AuthError("SMART Backend Services needs a client id")
        if algorithm not in SMART_ALGORITHMS:
            raise AuthError(f"SMART Backend Services signs with RS384 or ES384, not {algorithm!r}")
        try:
            from cryptography.hazmat.primitives.serialization import load_pem_private_key

            key = load_pem_private_key(private_key_pem.encode("utf-8"), password=None)
        except Exception:  # noqa: BLE001 - the key text must never reach the message
            raise AuthError("the SMART private key is not a readable unencrypted PEM private key") from None
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        if algorithm == "RS384" and not isinstance(key, rsa.RSAPrivateKey):
            raise AuthError("RS384 needs an RSA private key")
        if algorithm == "ES384" and not (
            isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        ):
            raise AuthError("ES384 needs an EC P-384 private key")
        self._jwt = jwt
        self._key: Any = key
        self.client_id = client_id
        self.algorithm = algorithm
        self.key_id = key_id
        self.token_url = token_url
        self.scope = scope
        self.jku = jku
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self._session: requests.Session | None = None
        self._verify: bool | str = True
        self._timeout: float = 30.0
        self._base_url: str | None = None

    def bind(self, base_url: str, session: requests.Session, verify: bool | str, timeout: float) -> None:
        """Called by the client: where the FHIR server is and how to reach the token endpoint."""
        self._base_url = base_url.rstrip("/")
        self._session = session
        self._verify = verify
        self._timeout = timeout

    def discover(self) -> str:
        if self.token_url:
            return self.token_url
        if self._base_url is None or self._session is None:
            raise AuthError("SMART Backend Services: no token endpoint given and no server to ask")
        url = f"{self._base_url}/.well-known/smart-configuration"
        try:
            resp = self._session.get(
                url,
                timeout=self._timeout,
                verify=self._verify,
                headers={"Accept": "application/json"},
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise AuthError(f"cannot read {url}: {type(exc).__name__}") from None
        _refuse_redirect(resp, url)
        if resp.status_code != 200:
            raise AuthError(f"{url} answered HTTP {resp.status_code}; give the token endpoint explicitly")
        try:
            endpoint = resp.json()["token_endpoint"]
        except (ValueError, KeyError, TypeError):
            raise AuthError(f"{url} does not name a token_endpoint") from None
        if not isinstance(endpoint, str) or not endpoint:
            raise AuthError(f"{url} does not name a token_endpoint")
        self.token_url = endpoint
        return endpoint

    def client_assertion(self, token_url: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_url,
            "exp": now + 300,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }
        headers: dict[str, Any] = {"typ": "JWT"}
        if self.key_id:
            headers["kid"] = self.key_id
        if self.jku:
            headers["jku"] = self.jku
        assertion: str = self._jwt.encode(claims, self._key, algorithm=self.algorithm, headers=headers)
        return assertion

    def _fetch_token(self) -> None:
        from procfhir.upload.client import check_url_security

        token_url = self.discover()
        check_url_security(
            token_url, allow_insecure_http=getattr(self, "allow_insecure_http", False), what="token endpoint"
        )
        session = self._session or requests.Session()
        data = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": self.client_assertion(token_url),
        }
        try:
            resp = session.post(
                token_url,
                data=data,
                timeout=self._timeout,
                verify=self._verify,
                headers={"Accept": "application/json"},
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise AuthError(f"cannot reach the token endpoint {token_url}: {type(exc).__name__}") from None
        _refuse_redirect(resp, token_url)
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
            detail = ""
            if isinstance(body, dict) and isinstance(body.get("error"), str):
                detail = f": {body['error']}"
                if isinstance(body.get("error_description"), str):
                    detail += f" ({body['error_description'][:200]})"
            raise AuthError(
                f"the token endpoint {token_url} refused the request (HTTP {resp.status_code}){detail}"
            )
        token = body["access_token"]
        if not isinstance(token, str) or not token or not token.isascii() or not token.isprintable():
            raise AuthError(f"the token endpoint {token_url} sent an access token that is no printable text")
        self._token = token
        try:
            lifetime = float(body.get("expires_in", 300))
        except (TypeError, ValueError):
            lifetime = 300.0
        self._expires_at = time.monotonic() + max(0.0, lifetime - 30.0)

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at:
                self._fetch_token()
            assert self._token is not None
            return self._token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        return request

    def refresh(self) -> bool:
        with self._lock:
            self._token = None
        return True

    def __repr__(self) -> str:
        return f"<SmartBackendAuth client_id={self.client_id!r} alg={self.algorithm}>"


def _refuse_redirect(resp: requests.Response, url: str) -> None:
    """SMART endpoints are never followed elsewhere: the client assertion must go where named."""
    if resp.status_code in (301, 302, 303, 307, 308):
        from procfhir.upload.client import shown_url

        target = resp.headers.get("Location") or "(no Location)"
        resp.close()
        raise AuthError(
            f"{shown_url(url)} redirects (HTTP {resp.status_code}) to {shown_url(target)}; not followed. "
            "Give the right endpoint explicitly (--token-url) if you trust it"
        )
