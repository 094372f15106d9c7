"""The HAPI FHIR test server of ``hapi/`` itself, against the REAL server (fixture
``hapi_base_url``): what the uploader, the validator and the package steps rely on."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import uuid
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.hapi
FHIR_JSON = {"Content-Type": "application/fhir+json", "Cache-Control": "no-cache"}


def tag() -> str:
    return "t" + uuid.uuid4().hex[:10]


def post(url: str, body: Any, **kw: Any) -> requests.Response:
    return requests.post(url, data=json.dumps(body), headers=FHIR_JSON, timeout=120, **kw)


def put(url: str, body: Any) -> requests.Response:
    return requests.put(url, data=json.dumps(body), headers=FHIR_JSON, timeout=120)


def get(url: str, **kw: Any) -> requests.Response:
    return requests.get(url, headers=FHIR_JSON, timeout=120, **kw)


def issues(outcome: dict[str, Any], severity: str) -> list[str]:
    return [
        (i.get("diagnostics") or "") + " @ " + ",".join(i.get("expression", []) or i.get("location", []))
        for i in outcome.get("issue", [])
        if i.get("severity") == severity
    ]


def code_system(t: str, codes: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "CodeSystem",
        "id": f"{t}-cs",
        "url": f"http://example.org/{t}/CodeSystem/cs",
        "version": "1.0.0",
        "name": "TestCodes",
        "status": "active",
        "content": "complete",
        "concept": [{"code": c, "display": c.title()} for c in codes],
    }


def value_set(t: str) -> dict[str, Any]:
    return {
        "resourceType": "ValueSet",
        "id": f"{t}-vs",
        "url": f"http://example.org/{t}/ValueSet/vs",
        "version": "1.0.0",
        "name": "TestValues",
        "status": "active",
        "compose": {"include": [{"system": f"http://example.org/{t}/CodeSystem/cs"}]},
    }


def test_metadata(hapi_base_url: str) -> None:
    resp = get(f"{hapi_base_url}/metadata")
    assert resp.status_code == 200
    cap = resp.json()
    assert cap["resourceType"] == "CapabilityStatement"
    assert cap["fhirVersion"] == "4.0.1"
    assert cap["software"]["version"] == "8.8.0"
    rest = cap["rest"][0]
    assert "install-package" in {op["name"] for op in rest["operation"]}
    assert "transaction" in {i["code"] for i in rest["interaction"]}
    code_system_res = next(r for r in rest["resource"] if r["type"] == "CodeSystem")
    assert {"url", "version"} <= {p["name"] for p in code_system_res["searchParam"]}
    assert "validate" in {op["name"] for op in code_system_res.get("operation", [])}


def test_transaction_conditional_update_search_and_history(hapi_base_url: str) -> None:
    t = tag()
    cs, vs = code_system(t, ["a"]), value_set(t)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in (cs, vs)
        ],
    }
    resp = post(hapi_base_url, bundle)
    assert resp.status_code == 200, resp.text
    assert [e["response"]["status"][:3] for e in resp.json()["entry"]] == ["201", "201"]
    assert get(f"{hapi_base_url}/ValueSet/{t}-vs").json()["url"] == vs["url"]

    # Conditional update on url + version, without the id: updates the same resource.
    changed = {k: v for k, v in code_system(t, ["a", "b"]).items() if k != "id"}
    resp = put(f"{hapi_base_url}/CodeSystem?url={cs['url']}&version=1.0.0", changed)
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == f"{t}-cs" and resp.json()["meta"]["versionId"] == "2"
    # The same content again changes nothing (no new version).
    resp = put(f"{hapi_base_url}/CodeSystem?url={cs['url']}&version=1.0.0", changed)
    assert resp.status_code == 200 and resp.json()["meta"]["versionId"] == "2"

    found = get(f"{hapi_base_url}/CodeSystem", params={"url": cs["url"], "version": "1.0.0"}).json()
    assert found["total"] == 1
    assert [c["code"] for c in found["entry"][0]["resource"]["concept"]] == ["a", "b"]
    other_version = {"url": cs["url"], "version": "9.9.9"}
    assert get(f"{hapi_base_url}/CodeSystem", params=other_version).json()["total"] == 0
    assert get(f"{hapi_base_url}/ValueSet", params={"url": vs["url"]}).json()["total"] == 1

    history = get(f"{hapi_base_url}/CodeSystem/{t}-cs/_history").json()
    assert history["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    first = get(f"{hapi_base_url}/CodeSystem/{t}-cs/_history/1").json()
    assert [c["code"] for c in first["concept"]] == ["a"]


def test_transaction_is_atomic_and_batch_is_not(hapi_base_url: str) -> None:
    t = tag()
    good = {"resourceType": "Patient", "id": f"{t}-pat", "gender": "female"}
    dangling = {
        "resourceType": "Procedure",
        "id": f"{t}-proc",
        "status": "completed",
        "subject": {"reference": f"Patient/{t}-missing"},
    }
    entries = [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in (good, dangling)
    ]
    resp = post(hapi_base_url, {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert resp.status_code in (400, 404, 409, 412, 422), resp.text
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert issues(resp.json(), "error"), resp.text
    assert get(f"{hapi_base_url}/Patient/{t}-pat").status_code == 404  # nothing written

    resp = post(hapi_base_url, {"resourceType": "Bundle", "type": "batch", "entry": entries})
    assert resp.status_code == 200, resp.text
    statuses = [e["response"]["status"][:3] for e in resp.json()["entry"]]
    assert statuses[0] == "201" and statuses[1][0] == "4", statuses
    assert get(f"{hapi_base_url}/Patient/{t}-pat").status_code == 200
    assert get(f"{hapi_base_url}/Procedure/{t}-proc").status_code == 404


def test_numeric_ids_rejected_and_expunge_of_one_resource(hapi_base_url: str) -> None:
    resp = put(f"{hapi_base_url}/Patient/12345", {"resourceType": "Patient", "id": "12345"})
    assert resp.status_code == 400 and "HAPI-0960" in resp.text
    t = tag()
    assert put(f"{hapi_base_url}/Patient/{t}", {"resourceType": "Patient", "id": t}).status_code == 201
    assert requests.delete(f"{hapi_base_url}/Patient/{t}", timeout=60).status_code == 200
    assert get(f"{hapi_base_url}/Patient/{t}").status_code == 410  # deleted, history kept
    expunge = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "expungeDeletedResources", "valueBoolean": True},
            {"name": "expungePreviousVersions", "valueBoolean": True},
        ],
    }
    assert post(f"{hapi_base_url}/Patient/{t}/$expunge", expunge).status_code == 200
    assert get(f"{hapi_base_url}/Patient/{t}").status_code == 404  # gone for good


def test_validate_against_core_and_our_uploaded_conformance(hapi_base_url: str) -> None:
    # Core: a bad code in a required binding of a primitive code is refused when parsing.
    resp = post(f"{hapi_base_url}/Patient/$validate", {"resourceType": "Patient", "gender": "bogus"})
    assert resp.status_code == 400 and "gender" in json.dumps(issues(resp.json(), "error"))
    # Core: an invariant (pat-1) and a required CodeableConcept binding, reported by the validator.
    no_contact_details = {"resourceType": "Patient", "contact": [{"gender": "male"}]}
    resp = post(f"{hapi_base_url}/Patient/$validate", no_contact_details)
    assert resp.status_code == 200 and any("pat-1" in m for m in issues(resp.json(), "error"))
    ok = post(f"{hapi_base_url}/Patient/$validate", {"resourceType": "Patient", "gender": "female"})
    assert ok.status_code == 200 and issues(ok.json(), "error") == []

    # Ours: a differential-only profile bound (required) to our ValueSet over our CodeSystem.
    t = tag()
    cs, vs = code_system(t, ["alpha", "beta"]), value_set(t)
    profile_url = f"http://example.org/{t}/StructureDefinition/proc"
    profile = {
        "resourceType": "StructureDefinition",
        "id": f"{t}-proc",
        "url": profile_url,
        "version": "1.0.0",
        "name": "TestProcedure",
        "status": "active",
        "fhirVersion": "4.0.1",
        "kind": "resource",
        "abstract": False,
        "type": "Procedure",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Procedure",
        "derivation": "constraint",
        "differential": {
            "element": [
                {
                    "id": "Procedure.code",
                    "path": "Procedure.code",
                    "min": 1,
                    "binding": {"strength": "required", "valueSet": vs["url"]},
                },
                {"id": "Procedure.performed[x]", "path": "Procedure.performed[x]", "min": 1},
            ]
        },
    }
    for r in (cs, vs, profile):
        assert put(f"{hapi_base_url}/{r['resourceType']}/{r['id']}", r).status_code == 201

    def validate(code: str, system: str, performed: bool = True, profiled: bool = True) -> dict[str, Any]:
        proc: dict[str, Any] = {
            "resourceType": "Procedure",
            "status": "completed",
            "subject": {"display": "x"},
            "code": {"coding": [{"system": system, "code": code}]},
        }
        if profiled:
            proc["meta"] = {"profile": [profile_url]}
        if performed:
            proc["performedDateTime"] = "2026-01-02"
        resp = post(f"{hapi_base_url}/Procedure/$validate", proc)
        assert resp.status_code == 200, resp.text
        return resp.json()

    assert issues(validate("alpha", cs["url"]), "error") == []
    errors = issues(validate("gamma", cs["url"], performed=False), "error")
    assert any("gamma" in e for e in errors), errors
    assert any("performed" in e and "minimum required = 1" in e for e in errors), errors
    # The profile through ?profile= too, on a resource that does not declare it.
    resp = requests.post(
        f"{hapi_base_url}/Procedure/$validate",
        params={"profile": profile_url},
        data=json.dumps({"resourceType": "Procedure", "status": "completed", "subject": {"display": "x"}}),
        headers=FHIR_JSON,
        timeout=120,
    )
    assert any("Procedure.code" in e for e in issues(resp.json(), "error")), resp.text

    # A changed profile is used at once (the validation caches are cleared on write).
    profile["differential"]["element"] = profile["differential"]["element"][:1]
    assert put(f"{hapi_base_url}/StructureDefinition/{t}-proc", profile).status_code == 200
    assert issues(validate("alpha", cs["url"], performed=False), "error") == []

    # Codes of terminologies the server does not hold (no SNOMED CT / CPT content loaded):
    # measured in HAPI 8.8.0: an unknown SNOMED CT code gets no issue at all, CPT a warning
    # (core Procedure.code has an example binding).
    snomed = validate("999999999999", "http://snomed.info/sct", profiled=False)
    assert not [m for m in issues(snomed, "error") if "snomed" in m.lower() or "999999999999" in m]
    assert not [m for m in issues(snomed, "warning") if "999999999999" in m]
    cpt = validate("22513", "http://www.ama-assn.org/go/cpt", profiled=False)
    assert any("ama-assn.org/go/cpt" in m and "unknown" in m.lower() for m in issues(cpt, "warning"))


def npm_tgz(files: dict[str, dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, obj in files.items():
            data = json.dumps(obj).encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_install_package(hapi_base_url: str) -> None:
    t = tag()
    name = f"example.test.{t}"
    cs = dict(code_system(t, ["x"]), status="draft")  # draft resources are installed too
    plan = {
        "resourceType": "PlanDefinition",
        "id": f"{t}-pd",
        "url": f"http://example.org/{t}/PlanDefinition/pd",
        "version": "0.1.0",
        "status": "draft",
        "action": [{"title": "first"}],
    }
    patient = {"resourceType": "Patient", "id": f"{t}-pat", "gender": "male"}
    procedure = {
        "resourceType": "Procedure",
        "id": f"{t}-proc",
        "status": "completed",
        "subject": {"reference": f"Patient/{t}-pat"},
    }
    manifest = {
        "name": name,
        "version": "0.1.0",
        "fhirVersions": ["4.0.1"],
        "dependencies": {"hl7.fhir.r4.core": "4.0.1"},
    }
    files = {
        "package.json": manifest,
        "CodeSystem-cs.json": cs,
        "PlanDefinition-pd.json": plan,
        "Procedure-proc.json": procedure,
        "Patient-pat.json": patient,
    }
    url = f"{hapi_base_url}/$install-package"
    resp = requests.post(url, data=npm_tgz(files), headers={"Content-Type": "application/gzip"}, timeout=300)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["resourceType"] == "Parameters"
    assert out["parameter"][0] == {"name": "package", "valueString": f"{name}#0.1.0"}
    installed = {
        (parts["resourceType"], parts["id"])
        for p in out["parameter"]
        if p["name"] == "resource"
        for parts in [{q["name"]: next(v for k, v in q.items() if k.startswith("value")) for q in p["part"]}]
    }
    assert installed == {
        ("CodeSystem", f"{t}-cs"),
        ("PlanDefinition", f"{t}-pd"),
        ("Patient", f"{t}-pat"),
        ("Procedure", f"{t}-proc"),
    }
    assert get(f"{hapi_base_url}/CodeSystem/{t}-cs").json()["url"] == cs["url"]
    assert get(f"{hapi_base_url}/PlanDefinition/{t}-pd").json()["action"][0]["title"] == "first"
    assert get(f"{hapi_base_url}/Procedure/{t}-proc").json()["subject"]["reference"] == f"Patient/{t}-pat"

    # The same name#version again, with a changed PlanDefinition: the new content is installed.
    files["PlanDefinition-pd.json"] = dict(plan, action=[{"title": "second"}])
    resp = requests.post(url, data=npm_tgz(files), headers={"Content-Type": "application/gzip"}, timeout=300)
    assert resp.status_code == 200, resp.text
    stored = get(f"{hapi_base_url}/PlanDefinition/{t}-pd").json()
    assert stored["action"][0]["title"] == "second" and stored["meta"]["versionId"] == "2"
    assert get(f"{hapi_base_url}/PlanDefinition", params={"url": plan["url"]}).json()["total"] == 1

    # Bad input: clear errors, nothing installed.
    bad = requests.post(url, data=b"not a tarball", headers={"Content-Type": "application/gzip"}, timeout=60)
    assert bad.status_code == 400 and "not a readable FHIR NPM package" in bad.text
    wrong_type = requests.post(url, data=npm_tgz(files), headers={"Content-Type": "text/plain"}, timeout=60)
    assert wrong_type.status_code == 415 and "application/gzip" in wrong_type.text
    no_manifest = npm_tgz({f"CodeSystem-{t}.json": dict(cs, id=f"{t}-other")})
    resp = requests.post(url, data=no_manifest, headers={"Content-Type": "application/gzip"}, timeout=60)
    assert resp.status_code == 400, resp.text
    assert get(f"{hapi_base_url}/CodeSystem/{t}-other").status_code == 404


def test_cli_status(hapi_base_url: str) -> None:
    port = hapi_base_url.split(":")[2].split("/")[0]
    proc = subprocess.run(
        [sys.executable, "-m", "procfhir.cli", "hapi", "status", "--port", port],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{hapi_base_url}: answering" in proc.stdout


def test_plan_definition_apply(hapi_base_url: str) -> None:
    """PlanDefinition/$apply (cqf-fhir-cr-hapi 4.4.0): FHIRPath applicability conditions see the
    subject as ``%subject`` (``%patient`` is unknown to it)."""
    t = tag()
    assert (
        put(
            f"{hapi_base_url}/Patient/{t}-pat",
            {"resourceType": "Patient", "id": f"{t}-pat", "gender": "female"},
        ).status_code
        == 201
    )
    ad_url = f"http://example.org/{t}/ActivityDefinition/ad"
    ad = {
        "resourceType": "ActivityDefinition",
        "id": f"{t}-ad",
        "url": ad_url,
        "version": "1",
        "status": "active",
        "kind": "ServiceRequest",
        "intent": "proposal",
        "code": {"text": "procedure"},
    }
    assert put(f"{hapi_base_url}/ActivityDefinition/{t}-ad", ad).status_code == 201

    def when(expression: str) -> list[dict[str, Any]]:
        fhirpath = {"language": "text/fhirpath", "expression": expression}
        return [{"kind": "applicability", "expression": fhirpath}]

    plan = {
        "resourceType": "PlanDefinition",
        "id": f"{t}-pd",
        "url": f"http://example.org/{t}/PlanDefinition/pd",
        "version": "1",
        "status": "active",
        "action": [
            {
                "title": "women",
                "definitionCanonical": ad_url,
                "condition": when("%subject.gender = 'female'"),
            },
            {"title": "men", "condition": when("%subject.gender = 'male'")},
        ],
    }
    assert put(f"{hapi_base_url}/PlanDefinition/{t}-pd", plan).status_code == 201
    resp = get(f"{hapi_base_url}/PlanDefinition/{t}-pd/$apply", params={"subject": f"Patient/{t}-pat"})
    assert resp.status_code == 200, resp.text
    care_plan = resp.json()
    assert care_plan["resourceType"] == "CarePlan"
    groups = [c for c in care_plan.get("contained", []) if c["resourceType"] == "RequestGroup"]
    assert [a["title"] for a in groups[0]["action"]] == ["women"]
    assert not [c for c in care_plan.get("contained", []) if c["resourceType"] == "OperationOutcome"]


def test_install_our_package(hapi_base_url: str) -> None:
    """The package the build writes (fhir/*.tgz, examples included) installs through
    $install-package on a server that does not hold it yet, and every resource reads back."""
    from procfhir.config import PROJECT_ROOT
    from procfhir.upload.compare import differences

    fhir_dir = PROJECT_ROOT / "fhir"
    tgz = next(fhir_dir.glob("*.tgz"))
    with tarfile.open(tgz) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(".json") and "/." not in m.name]
        resources = [json.load(tar.extractfile(m)) for m in members if m.name != "package/package.json"]
    resp = requests.post(
        f"{hapi_base_url}/$install-package",
        data=tgz.read_bytes(),
        headers={"Content-Type": "application/gzip"},
        timeout=600,
    )
    assert resp.status_code == 200, resp.text
    installed = {
        (parts["resourceType"], parts["id"])
        for p in resp.json()["parameter"]
        if p["name"] == "resource"
        for parts in [{q["name"]: next(v for k, v in q.items() if k.startswith("value")) for q in p["part"]}]
    }
    assert installed == {(r["resourceType"], r["id"]) for r in resources}
    for res in resources:
        stored = get(f"{hapi_base_url}/{res['resourceType']}/{res['id']}")
        assert stored.status_code == 200, (res["id"], stored.text)
        if res["resourceType"] != "StructureDefinition":  # the installer may regenerate snapshots
            assert not differences(res, stored.json()), res["id"]
