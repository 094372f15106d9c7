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


def read_secret(*, env: str | None = None, file: str | Path | None = None, what: str = "secret") -> str:
    """The secret from the file (first line, stripped) or else the environment variable."""
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise AuthError(f"cannot read the {what} file {file}: {exc.strerror}") from None
        value = text.strip() if what != "private key" else text
        if not value.strip():
            raise AuthError(f"the {what} file {file} is empty")
        return value
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise AuthError(f"the {what} is expected in the environment variable {env}, which is not set")
        return value
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
        self._token = token

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
        self._key = key
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
                url, timeout=self._timeout, verify=self._verify, headers={"Accept": "application/json"}
            )
        except requests.RequestException as exc:
            raise AuthError(f"cannot read {url}: {type(exc).__name__}") from None
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
        return self._jwt.encode(claims, self._key, algorithm=self.algorithm, headers=headers)

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
            )
        except requests.RequestException as exc:
            raise AuthError(f"cannot reach the token endpoint {token_url}: {type(exc).__name__}") from None
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
        self._token = str(body["access_token"])
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
