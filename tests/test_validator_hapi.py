"""Our validator and HAPI FHIR's $validate (the HL7 validator in a real server) on the same input:
the generated package and the known-invalid fixtures. Prints the agreement table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from procfhir.validator.hapi_compare import (
    Agreement,
    agreement_table,
    hapi_errors,
    hapi_location,
    hapi_validate,
    install_definitions,
)

FIXTURES = Path(__file__).parent / "fixtures" / "invalid"
EXPECTED: dict[str, list[dict[str, str]]] = json.loads((FIXTURES / "expected.json").read_text())

# Fixtures where the verdict is not "same errors", with the reason (measured against HAPI 8.8.0).
# Every other fixture must get errors from both. A change either way fails the test.
KNOWN_DIFFERENCES: dict[str, tuple[str, str]] = {
    "binding-extensible": ("both valid", "a code outside an extensible binding is a warning in both"),
    "narrative-missing-dom-6": ("both valid", "dom-6 is a best-practice warning in both"),
    "code-system-not-absolute": ("both valid", "a relative Coding.system is a warning in both"),
    "extension-unknown": (
        "both valid",
        "an unknown extension is a warning for ours, information for HAPI's $validate "
        "(an error for ours with --strict, our package's policy)",
    ),
    "narrative-external-image": (
        "both valid",
        "R4's narrative rules allow external images; our package's policy (--strict) forbids them",
    ),
    "reference-canonical-unresolved": (
        "both valid",
        "an unresolvable canonical is a warning in both (an error for ours with --strict when it is "
        "under the package's base)",
    ),
    "quantity-age-ucum-invalid": (
        "both valid",
        "the HL7 validator checks the unit code of Quantity only, not of Age, Distance, Duration, "
        "Count: ours reports a non-UCUM unit there as a warning",
    ),
    "reference-wrong-target-type": (
        "ours only",
        "HAPI does not compare the resource type of an "
        "unresolvable literal reference with the element's target profiles",
    ),
}

pytestmark = pytest.mark.hapi


@pytest.fixture(scope="module")
def package() -> list[dict[str, Any]]:
    from procfhir.build import build

    return build(write=False, validate=False).resources


@pytest.fixture(scope="module")
def installed(hapi_base_url: str, package: list[dict[str, Any]]) -> requests.Session:
    session = requests.Session()
    assert install_definitions(session, hapi_base_url, package) >= 10
    test_defs = [json.loads(p.read_text()) for p in sorted((FIXTURES.parent / "definitions").glob("*.json"))]
    install_definitions(session, hapi_base_url, test_defs)
    return session


def _ours(package: list[dict[str, Any]]):
    from procfhir.validator import Validator

    test_defs = [json.loads(p.read_text()) for p in sorted((FIXTURES.parent / "definitions").glob("*.json"))]
    return Validator(extra_definitions=[r for r in package if "url" in r] + test_defs)


def test_hapi_finds_no_error_in_our_package(
    hapi_base_url: str, installed: requests.Session, package: list[dict[str, Any]]
) -> None:
    ours = _ours(package)
    problems = []
    for r in package:
        if r["resourceType"] == "ImplementationGuide":
            continue
        assert not [i for i in ours.validate(r) if i.is_error]
        errs = hapi_errors(hapi_validate(installed, hapi_base_url, r))
        if errs:
            problems.append(
                f"{r['resourceType']}/{r['id']}: "
                + "; ".join(f"{hapi_location(i)}: {i.get('diagnostics')}" for i in errs)
            )
    assert not problems, "\n".join(problems)


def test_agreement_on_known_invalid_fixtures(
    hapi_base_url: str, installed: requests.Session, package: list[dict[str, Any]]
) -> None:
    ours = _ours(package)
    rows = []
    for name in sorted(EXPECTED):
        resource = json.loads((FIXTURES / f"{name}.json").read_text())
        mine = [f"{i.location}: {i.message}" for i in ours.validate(resource) if i.is_error]
        theirs = [
            f"{hapi_location(i)}: {i.get('diagnostics', '')}"
            for i in hapi_errors(hapi_validate(installed, hapi_base_url, resource))
        ]
        rows.append(Agreement(name, mine, theirs))
    table = agreement_table(rows)
    print("\n" + table)
    wrong = []
    for r in rows:
        want = KNOWN_DIFFERENCES.get(r.name, ("same errors", ""))[0]
        if r.verdict != want:
            wrong.append(f"{r.name}: {r.verdict} (expected {want}); ours {r.ours[:2]}; HAPI {r.hapi[:2]}")
    assert not wrong, "\n".join(wrong) + "\n" + table
