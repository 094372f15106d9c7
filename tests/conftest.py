"""Shared fixtures. ``hapi_base_url``: ONE real HAPI FHIR server per test session.

The server (``hapi/``, see :mod:`procfhir.hapi_server`) starts on a free port of 127.0.0.1 with a
fresh in-memory database the first time a test asks for ``hapi_base_url``, and stops when the
session ends. It is shared by every test of the session: use resource ids and canonical urls
unique to your test (ids must contain a letter), and send ``Cache-Control: no-cache`` if you like
(the server never reuses cached search results anyway). A test that needs an empty server may call
:func:`procfhir.hapi_server.expunge_all`, but only if it can tolerate (and does not break)
other tests' data, i.e. practically never in a shared session.

Without Java 17+ or Maven, tests using the fixture are skipped with the reason, except under
``CI=true``, where that is an error: CI must run the integration tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from procfhir.hapi_server import HapiError, HapiServer, HapiUnavailable, free_port

IN_CI = os.environ.get("CI", "").lower() == "true"
START_TIMEOUT = float(os.environ.get("HAPI_START_TIMEOUT", "300"))


@pytest.fixture(scope="session")
def hapi_server() -> Iterator[HapiServer]:
    """The session's running :class:`HapiServer` (for its pid, RSS, log); prefer ``hapi_base_url``."""
    server = HapiServer(free_port())
    try:
        server.start(timeout=START_TIMEOUT)
    except HapiUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI=true but the HAPI FHIR server cannot be built/started: {exc}", pytrace=False)
        pytest.skip(f"HAPI FHIR integration test skipped: {exc} (install Java 17+ and Maven to run it)")
    except HapiError as exc:
        pytest.fail(f"HAPI FHIR server did not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def hapi_pg_server() -> Iterator[HapiServer]:
    """A second HAPI FHIR server, on PostgreSQL (a private cluster in a temporary folder, on
    127.0.0.1, started and removed with the session): for the suites that run on both databases."""
    server = HapiServer(free_port(), database="postgresql")
    try:
        server.start(timeout=START_TIMEOUT)
    except HapiUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI=true but HAPI FHIR on PostgreSQL cannot start: {exc}", pytrace=False)
        pytest.skip(f"HAPI FHIR on PostgreSQL skipped: {exc}")
    except HapiError as exc:
        pytest.fail(f"HAPI FHIR on PostgreSQL did not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def hapi_base_url(hapi_server: HapiServer) -> str:
    """``http://127.0.0.1:PORT/fhir`` of the session's real HAPI FHIR R4 server."""
    return hapi_server.base_url


@pytest.fixture(scope="session")
def terminology_installed() -> None:
    """The terminology content (concept store and UCUM tables), installed once if missing; CI
    fails when it cannot be installed, elsewhere the tests that need it are skipped."""
    from procfhir.terminology import install
    from procfhir.terminology.store import TerminologyError

    if install.is_filled():
        return
    try:
        install.fill()
    except TerminologyError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the terminology content cannot be installed: {exc}", pytrace=False)
        pytest.skip(f"terminology content not installed and the registries are unreachable: {exc}")


@pytest.fixture
def ran_with_python_modules(request: pytest.FixtureRequest) -> bool:
    """For a test that patches the validator's own classes or functions, which only its Python
    modules allow: when the compiled build is in use here (procfhir.native), the test is run in a
    fresh interpreter with ``PROCFHIR_NATIVE=0``, must pass there, and this gives True (the test
    then returns at once); False when this process has the Python modules (the test runs here)."""
    import subprocess
    import sys
    from pathlib import Path

    import procfhir.validator  # noqa: F401 - imports the compiled modules when they are in use
    from procfhir import native

    if not native.status().active:
        return False
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, native.ENV_SWITCH: "0"},
        timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    return True
