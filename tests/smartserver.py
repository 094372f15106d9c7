"""A SMART Backend Services authorization server of our own on loopback, for tests.

HAPI FHIR has no authorization server: this one checks the signed client assertion (RFC 7523)
and issues numbered tokens ``tok-1``, ``tok-2``... ``issued`` lists them in order.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def keypair(alg: str) -> tuple[str, object]:
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if alg == "RS384"
        else ec.generate_private_key(ec.SECP384R1())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return pem, key.public_key()


class TokenServer:
    """A SMART authorization server of our own on loopback: checks the client assertion."""

    def __init__(self, public_key: object, alg: str, refuse: bool = False) -> None:
        self.public_key, self.alg, self.refuse = public_key, alg, refuse
        self.assertions: list[dict] = []
        self.forms: list[dict[str, list[str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def _json(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/fhir/.well-known/smart-configuration":
                    self._json(
                        200,
                        {"token_endpoint": server.token_url, "grant_types_supported": ["client_credentials"]},
                    )
                else:
                    self._json(404, {})

            def do_POST(self) -> None:
                form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                server.forms.append(form)
                if server.refuse:
                    self._json(400, {"error": "invalid_client", "error_description": "unknown key"})
                    return
                try:
                    claims = jwt.decode(
                        form["client_assertion"][0],
                        server.public_key,
                        algorithms=[server.alg],
                        audience=server.token_url,
                    )
                    header = jwt.get_unverified_header(form["client_assertion"][0])
                except jwt.PyJWTError as exc:
                    self._json(400, {"error": "invalid_client", "error_description": str(exc)})
                    return
                server.assertions.append({"claims": claims, "header": header})
                self._json(
                    200,
                    {
                        "access_token": f"tok-{len(server.assertions)}",
                        "token_type": "bearer",
                        "expires_in": 300,
                        "scope": form["scope"][0],
                    },
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.token_url = f"{self.base}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def issued(self) -> list[str]:
        return [f"tok-{i + 1}" for i in range(len(self.assertions))]
