"""Authentication of the uploader: SMART Backend Services against a token endpoint of our own
(HAPI has no authorization server), and secrets never appearing in the CLI's output."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from procfhir.upload import AuthError, SmartBackendAuth
from tests.cliutil import run_upload_cli
from tests.smartserver import TokenServer, keypair

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_smart_backend_services_token(alg: str) -> None:
    pem, public = keypair(alg)
    ts = TokenServer(public, alg)
    try:
        auth = SmartBackendAuth("my-client", pem, algorithm=alg, key_id="k1", scope="system/*.rs")
        import requests

        auth.bind(f"{ts.base}/fhir", requests.Session(), True, 10)
        assert auth.token() == "tok-1"  # discovered through .well-known/smart-configuration
        assert auth.token() == "tok-1"  # cached
        auth.refresh()
        assert auth.token() == "tok-2"
        form = ts.forms[0]
        assert form["grant_type"] == ["client_credentials"]
        assert form["client_assertion_type"] == ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
        assert form["scope"] == ["system/*.rs"]
        first, second = ts.assertions
        assert (
            first["header"]["alg"] == alg
            and first["header"]["kid"] == "k1"
            and first["header"]["typ"] == "JWT"
        )
        c = first["claims"]
        assert c["iss"] == c["sub"] == "my-client" and c["aud"] == ts.token_url
        assert 0 < c["exp"] - time.time() <= 300
        assert first["claims"]["jti"] != second["claims"]["jti"]
        assert "BEGIN" not in repr(auth)
    finally:
        ts.close()


def test_smart_refusal_is_a_clear_error_without_secrets() -> None:
    pem, public = keypair("RS384")
    ts = TokenServer(public, "RS384", refuse=True)
    try:
        auth = SmartBackendAuth("c", pem, token_url=ts.token_url)
        with pytest.raises(AuthError, match=r"refused the request \(HTTP 400\): invalid_client") as info:
            auth.token()
        assert ts.forms[0]["client_assertion"][0] not in str(info.value)
    finally:
        ts.close()
    with pytest.raises(AuthError, match="not a readable unencrypted PEM"):
        SmartBackendAuth("c", "-----BEGIN PRIVATE KEY-----\nsecretstuff\n-----END PRIVATE KEY-----\n")


def _resources(tmp_path: Path) -> Path:
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"resourceType": "Patient", "id": "secret-test"}))
    return f


def test_cli_secrets_never_printed_on_errors(tmp_path: Path) -> None:
    res = _resources(tmp_path)
    dead = "https://127.0.0.1:9/fhir"  # nothing listens there
    token = "tok-SECRET-3f9a1c"
    r = run_upload_cli(
        [str(res), "--server", dead, "--auth", "bearer", "--max-attempts", "1"], {"FHIR_TOKEN": token}
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert token not in r.stdout + r.stderr
    pw = tmp_path / "pw"
    pw.write_text("pw-SECRET-77aa\n")
    r = run_upload_cli(
        [
            str(res),
            "--server",
            dead,
            "--auth",
            "basic",
            "--user",
            "u",
            "--password-file",
            str(pw),
            "--max-attempts",
            "1",
        ]
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "pw-SECRET-77aa" not in r.stdout + r.stderr
    r = run_upload_cli([str(res), "--server", dead, "--auth", "bearer", "--token-env", "NOT_SET_ANYWHERE"])
    assert r.returncode == 2 and "NOT_SET_ANYWHERE, which is not set" in r.stderr
    # SMART: the token endpoint refuses; neither the key nor the signed assertion is printed
    pem, public = keypair("RS384")
    ts = TokenServer(public, "RS384", refuse=True)
    try:
        key = tmp_path / "key.pem"
        key.write_text(pem)
        r = run_upload_cli(
            [
                str(res),
                "--server",
                "http://127.0.0.1:9/fhir",
                "--auth",
                "smart",
                "--client-id",
                "c",
                "--private-key-file",
                str(key),
                "--token-url",
                ts.token_url,
                "--max-attempts",
                "1",
            ]
        )
    finally:
        ts.close()
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "invalid_client" in r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert ts.forms and ts.forms[0]["client_assertion"][0] not in out
    assert not any(line in out for line in pem.splitlines() if "-----" not in line)


def test_cli_refuses_plain_http_off_loopback(tmp_path: Path) -> None:
    r = run_upload_cli([str(_resources(tmp_path)), "--server", "http://fhir.example.org/fhir"])
    assert r.returncode == 2 and "refusing plain http" in r.stderr
