"""FHIR XML read by the validator (validator/fhirxml.py): an XML resource becomes the same JSON
as its JSON form, an XML profile given with -d is applied like a JSON one, and what is not FHIR
XML is an issue on the file (tests/test_validator.py: no namespace, DTD, broken XML)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_validator import _cli_outcome, message_id

XML = Path(__file__).parent / "fixtures" / "xml"
PROFILE = XML / "StructureDefinition-xml-patient.xml"


def test_xml_resource_reads_as_its_json_form() -> None:
    from procfhir.validator.fhirxml import xml_to_json

    got = xml_to_json((XML / "Patient-xml-example.xml").read_bytes())
    assert got == json.loads((XML / "Patient-xml-example.json").read_text())


def test_xml_profile_and_resource_through_the_cli(tmp_path: Path) -> None:
    # the XML patient conforms to the XML profile, the XML profile itself is valid
    code, by_file = _cli_outcome(
        ["-d", str(PROFILE), str(XML / "Patient-xml-example.xml"), str(PROFILE)], tmp_path
    )
    assert code == 0, by_file
    # a patient the XML profile rejects: no name, no birthDate, a family name too long
    bad = json.loads((XML / "Patient-xml-example.json").read_text())
    del bad["birthDate"], bad["_birthDate"]
    bad["name"][0]["family"] = "Leeeeeeeeeeeeeeee"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    code, by_file = _cli_outcome(["-d", str(PROFILE), str(path)], tmp_path)
    assert code == 1
    errors = {(i["expression"][0], message_id(i)) for i in by_file["bad"] if i["severity"] == "error"}
    assert errors == {("Patient.birthDate", "CARD_MIN"), ("Patient.name[0].family", "DT_MAX_LENGTH")}


def test_xml_in_a_folder_of_definitions(tmp_path: Path) -> None:
    """A folder given with -d: its XML profile is loaded (the profile's rule applies); an XML
    file that is not FHIR is skipped with a warning, not an error."""
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / PROFILE.name).write_bytes(PROFILE.read_bytes())
    (defs / "pom.xml").write_text("<project><modelVersion>4.0.0</modelVersion></project>")
    patient = {
        "resourceType": "Patient",
        "meta": {"profile": ["http://example.test/StructureDefinition/xml-patient"]},
        "name": [{"family": "Lee"}],
    }
    path = tmp_path / "p.json"
    path.write_text(json.dumps(patient))
    code, by_file = _cli_outcome(["-d", str(defs), str(path)], tmp_path)
    assert code == 1
    assert {(i["severity"], message_id(i)) for i in by_file["pom"]} == {("warning", "INPUT_XML_INVALID")}
    assert [message_id(i) for i in by_file["p"] if i["severity"] == "error"] == ["CARD_MIN"]


def test_mutated_xml_gives_issues_not_tracebacks() -> None:
    """The example XML cut, with characters dropped or tags renamed: either not FHIR XML
    (XmlError) or a resource the validator judges without an internal error."""
    import random

    from procfhir.validator import Validator
    from procfhir.validator.fhirxml import XmlError, xml_to_json

    rng = random.Random(7)
    src = (XML / "Patient-xml-example.xml").read_text()
    v = Validator()
    seen = 0
    for _ in range(300):
        text = src
        kind = rng.randrange(4)
        at = rng.randrange(len(text))
        if kind == 0:
            text = text[:at]
        elif kind == 1:
            text = text[:at] + text[at + rng.randint(1, 20) :]
        elif kind == 2:
            text = text.replace("<family", "<familyName").replace("</family", "</familyName")
        else:
            text = text.replace('value="true"', 'value="yes"').replace('value="2"', 'value="two"')
        try:
            res = xml_to_json(text.encode())
        except XmlError:
            continue
        seen += 1
        assert all(i.message_id != "INTERNAL_ERROR" for i in v.validate(res))
    assert seen > 50
