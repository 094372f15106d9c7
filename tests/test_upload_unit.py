"""Upload stage, the parts that need no server: retry timing, ordering, comparison, input, TLS rules."""

from __future__ import annotations

import io
import json
import random
import tarfile
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from procfhir.upload import RetryPolicy, UploadError, check_url_security, dependency_order, load_resources
from procfhir.upload.compare import differences
from procfhir.upload.retry import parse_retry_after


def test_retry_after_seconds_and_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_backoff_grows_with_jitter_and_is_bounded() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=4.0, rng=random.Random(1))
    delays = [policy.delay(n, None) for n in range(1, 5)]
    for n, d in enumerate(delays, start=1):
        ceiling = min(4.0, 2 ** (n - 1))
        assert ceiling / 2 <= d <= ceiling
    assert len({round(policy.backoff(3), 6) for _ in range(20)}) > 1  # jitter
    assert policy.delay(5, None) is None  # attempts are bounded
    assert policy.delay(1, 3.0) == 3.0  # Retry-After wins
    assert policy.delay(1, 1000.0) is None  # beyond max_retry_after: give up, do not hammer


def test_dependency_order_types_then_references() -> None:
    res = [
        {"resourceType": "Procedure", "id": "p1", "subject": {"reference": "Patient/pt"}},
        {
            "resourceType": "PlanDefinition",
            "id": "pd",
            "url": "http://x/PlanDefinition/pd",
            "action": [{"definitionCanonical": "http://x/ActivityDefinition/ad|1.0"}],
        },
        {
            "resourceType": "ActivityDefinition",
            "id": "ad",
            "url": "http://x/ActivityDefinition/ad",
            "version": "1.0",
        },
        {"resourceType": "Patient", "id": "pt", "link": [{"other": {"reference": "Patient/pt0"}}]},
        {"resourceType": "Patient", "id": "pt0"},
        {
            "resourceType": "ValueSet",
            "id": "vs2",
            "url": "http://x/vs2",
            "compose": {"include": [{"valueSet": ["http://x/vs1"]}]},
        },
        {"resourceType": "ValueSet", "id": "vs1", "url": "http://x/vs1"},
        {"resourceType": "StructureDefinition", "id": "sd", "url": "http://x/sd"},
        {"resourceType": "CodeSystem", "id": "cs", "url": "http://x/cs"},
        # a literal reference from a conformance resource pulls its target forward
        {
            "resourceType": "Library",
            "id": "lib",
            "relatedArtifact": [{"resource": "x"}],
            "subject": {"reference": "Group/g"},
        },
        {"resourceType": "Group", "id": "g"},
    ]
    order = [f"{r['resourceType']}/{r['id']}" for r in dependency_order(res)]
    assert order.index("CodeSystem/cs") < order.index("ValueSet/vs1") < order.index("ValueSet/vs2")
    assert (
        order.index("ValueSet/vs2")
        < order.index("StructureDefinition/sd")
        < order.index("ActivityDefinition/ad")
    )
    assert (
        order.index("ActivityDefinition/ad") < order.index("PlanDefinition/pd") < order.index("Patient/pt0")
    )
    assert order.index("Patient/pt0") < order.index("Patient/pt") < order.index("Procedure/p1")
    assert order.index("Group/g") < order.index("Library/lib")
    # cycles do not lose resources
    cyc = [
        {"resourceType": "Patient", "id": "a", "link": [{"other": {"reference": "Patient/b"}}]},
        {"resourceType": "Patient", "id": "b", "link": [{"other": {"reference": "Patient/a"}}]},
    ]
    assert len(dependency_order(cyc)) == 2


def test_differences_ignore_server_managed_meta_only() -> None:
    ours = {
        "resourceType": "Patient",
        "id": "x",
        "meta": {"profile": ["http://p"]},
        "active": True,
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>Hi</p>\n</div>'},
    }
    theirs = json.loads(json.dumps(ours))
    theirs["meta"].update(versionId="3", lastUpdated="2026-01-01T00:00:00Z", source="#abc")
    theirs["text"]["div"] = '<div xmlns="http://www.w3.org/1999/xhtml"><p>Hi</p></div>'
    assert differences(ours, theirs) == []
    theirs["gender"] = "other"
    theirs["active"] = False
    assert differences(ours, theirs) == ["Patient.active", "Patient.gender (only on the server)"]
    bare = {"resourceType": "Patient", "id": "x"}
    assert differences(bare, {"resourceType": "Patient", "id": "x", "meta": {"versionId": "1"}}) == []
    assert differences(bare, {"resourceType": "Patient", "id": "y"}, ignore_id=True) == []


def test_load_folder_bundle_and_tgz(tmp_path) -> None:
    a = {"resourceType": "Patient", "id": "a"}
    b = {"resourceType": "Patient", "id": "b"}
    (tmp_path / "Patient-a.json").write_text(json.dumps(a))
    (tmp_path / "bundle.json").write_text(
        json.dumps(
            {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": a}, {"resource": b}]}
        )
    )
    (tmp_path / "report.json").write_text(json.dumps({"not": "fhir"}))
    skipped: list[str] = []
    assert sorted(r["id"] for r in load_resources(tmp_path, skipped)) == ["a", "b"]
    assert skipped == [str(tmp_path / "report.json")]
    tgz = tmp_path / "p.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name, obj in [
            ("package/package.json", {"name": "x"}),
            ("package/Patient-a.json", a),
            ("package/example/Patient-b.json", b),
        ]:
            data = json.dumps(obj).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert [r["id"] for r in load_resources(tgz)] == ["a", "b"]


def test_bad_input_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(UploadError, match="no such file"):
        load_resources(tmp_path / "missing")
    bad = tmp_path / "bad.json"
    bad.write_text('{"resourceType": "Patient",')
    with pytest.raises(UploadError, match=r"bad.json:1: not valid JSON"):
        load_resources(bad)
    (tmp_path / "notgz.tgz").write_text("plain")
    with pytest.raises(UploadError, match="not a readable .tgz"):
        load_resources(tmp_path / "notgz.tgz")
    d = tmp_path / "dup"
    d.mkdir()
    (d / "1.json").write_text(json.dumps({"resourceType": "Patient", "id": "a", "active": True}))
    (d / "2.json").write_text(json.dumps({"resourceType": "Patient", "id": "a", "active": False}))
    with pytest.raises(UploadError, match="Patient/a also in .* with different content"):
        load_resources(d)


def test_plain_http_only_on_loopback() -> None:
    check_url_security("http://127.0.0.1:8080/fhir")
    check_url_security("http://localhost/fhir")
    check_url_security("http://[::1]:8080/fhir")
    check_url_security("https://fhir.example.org/fhir")
    with pytest.raises(UploadError, match="refusing plain http"):
        check_url_security("http://fhir.example.org/fhir")
    check_url_security("http://fhir.example.org/fhir", allow_insecure_http=True)
    with pytest.raises(UploadError, match="must not carry credentials"):
        check_url_security("https://user:pw@fhir.example.org/fhir")
