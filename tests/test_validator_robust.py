"""No input gives a traceback: the R4 examples mutated at random (every value replaced in turn by
values of the wrong JSON type, profiles and extensions pointed at odd definitions) go through the
validator without an exception and without an internal error; each failure is an issue."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest

from procfhir import fhircache
from tests.profiles import profile as make_profile

ODD: list[Any] = [None, [], {}, [None], 1.5, -1, True, "", " x ", "\u00a0", {"id": "x"}, [[1]], "#"]
ODD += ["urn:uuid:x", -1e308, 2**70]


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*at, i))
    return out


def _set(root: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    cur = root
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = new
    return root


@pytest.fixture(scope="module")
def samples() -> list[dict[str, Any]]:
    if not fhircache.is_filled():
        pytest.skip("FHIR package cache not filled")
    files = [f for f in sorted(fhircache.examples_dir().glob("*.json")) if f.name != "package.json"]
    small = [f for f in files if f.stat().st_size < 20000][::60]
    return [json.loads(f.read_text()) for f in small]


def test_mutated_examples_give_issues_not_tracebacks(samples: list[dict[str, Any]]) -> None:
    from procfhir.validator import Validator

    rng = random.Random(12)
    v = Validator()
    runs = 0
    internal = []
    for res in samples:
        paths = _paths(res)
        for path in rng.sample(paths, min(12, len(paths))):
            for odd in rng.sample(ODD, 4):
                mutated = _set(copy.deepcopy(res), path, copy.deepcopy(odd))
                issues = v.validate(mutated)  # must not raise
                runs += 1
                internal += [(path, odd, i) for i in issues if i.message_id == "INTERNAL_ERROR"]
    assert runs > 1000
    assert not internal, internal[:5]


def test_odd_definitions_give_issues_not_tracebacks(tmp_path: Path) -> None:
    """Profiles and extensions that are no usable StructureDefinition: issues on the resource."""
    from procfhir.validator import Validator

    bad_defs: list[dict[str, Any]] = [
        {"resourceType": "StructureDefinition", "url": "http://x.test/p1", "type": "Patient"},
        {
            "resourceType": "StructureDefinition",
            "url": "http://x.test/p2",
            "type": "Patient",
            "baseDefinition": "http://x.test/p2",
            "derivation": "constraint",
            "differential": {"element": [{"id": "Patient.name", "min": "one"}]},
        },
        {
            "resourceType": "StructureDefinition",
            "url": "http://x.test/p3",
            "type": "Patient",
            "snapshot": {"element": [{"id": "Patient"}, {"path": "Patient.x", "max": "many"}]},
        },
        {"resourceType": "ValueSet", "url": "http://x.test/p4"},
    ]
    v = Validator(extra_definitions=bad_defs)
    for d in bad_defs:
        patient = {
            "resourceType": "Patient",
            "meta": {"profile": [d["url"]]},
            "extension": [{"url": d["url"], "valueString": "x"}],
        }
        issues = v.validate(patient)
        assert issues and all(i.message_id != "INTERNAL_ERROR" for i in issues), issues


def test_base64_pattern_possessive_form_accepts_the_same_strings() -> None:
    """The base64Binary check uses a possessive form of R4's pattern (no backtracking memory on
    large attachments): both accept exactly the same strings, valid ones and near misses."""
    import re

    from procfhir.validator.rules import _BASE64_POSSESSIVE, _BASE64_R4

    r4, ours = re.compile(_BASE64_R4, re.ASCII), re.compile(_BASE64_POSSESSIVE, re.ASCII)
    rnd = random.Random(12)
    accepted = 0
    for _ in range(20000):
        parts = []
        for _ in range(rnd.randint(0, 4)):
            parts.append(rnd.choice(["", " ", "\n", " \t\r", "\x0b"]))
            parts.append("".join(rnd.choice("Az9+/=") for _ in range(rnd.choice([4, 4, 8, 3, 5]))))
        text = "".join(parts) + rnd.choice(["", " ", "\n"])
        if text and rnd.random() < 0.3:
            k = rnd.randrange(len(text))
            text = text[:k] + rnd.choice([" ", "A", "-", "\u00a0", "é"]) + text[k:]
        assert bool(r4.fullmatch(text)) == bool(ours.fullmatch(text)), repr(text)
        accepted += bool(r4.fullmatch(text))
    assert 2000 < accepted < 18000  # both outcomes well represented


def test_fullurl_check_is_the_regular_expression() -> None:
    """The Bundle rule's fullUrl check (string operations) agrees with the expression it replaces,
    ``/Type/id(/_history/[^/]+)?$``, on ordinary and odd URLs."""
    import re

    from procfhir.validator.rules import _names_resource

    urls = ["http://a/Patient/1", "http://a/Patient/12", "http://a/XPatient/1", "Patient/1", "urn:x"]
    urls += [u + tail for u in urls for tail in ("/_history/2", "/_history/", "/_history/2/x", "\n")]
    urls += ["http://a/Patient/1/_history/a\n", "http://a/Patient/1/_history//_history/x"]
    for url in urls:
        for rtype, rid in (("Patient", "1"), ("Patient", "1\n"), ("Patient", "1/_history/2")):
            want = bool(re.search(rf"/{re.escape(rtype)}/{re.escape(rid)}(/_history/[^/]+)?$", url))
            assert _names_resource(url, rtype, rid) is want, (url, rtype, rid)


def test_outcome_file_bytes_are_the_standard_encoders() -> None:
    """The OperationOutcome written by orjson is byte for byte json.dumps(indent=2,
    ensure_ascii=False), control characters and non-ASCII text included."""
    from procfhir.commands.validate import _outcome_bytes

    text = '\x00\x01\x1f\x7f\u2028"\\ é 😀 \b\f\n\r\t'
    outcome = {"resourceType": "OperationOutcome", "issue": [{"diagnostics": text, "expression": []}]}
    assert _outcome_bytes(outcome) == (json.dumps(outcome, indent=2, ensure_ascii=False) + "\n").encode()
    # written piece by piece from the issues (validate --outcome): the same bytes
    from procfhir.commands.validate import _outcome_chunks
    from procfhir.validator.issues import Issue, sort_issues, to_operation_outcome

    for issues in (
        [],
        [Issue("error", "A.b", text, "value", "k-1", "f.json", "MID")],
        [Issue("warning", "", "x"), Issue("information", "C", "y\nz", source="g.json")],
        # more than one batch of issues, the last one short
        [
            Issue("error", f"A.b[{n}]", f"{text} {n}", "value", "", f"f{n % 7}.json", "MID")
            for n in range(2345)
        ],
    ):
        whole = to_operation_outcome(issues)
        want = (json.dumps(whole, indent=2, ensure_ascii=False) + "\n").encode()
        assert b"".join(_outcome_chunks(sort_issues(issues))) == want


def test_large_inputs_first_same_issues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second pass validates large files first (memory); every input is still validated
    once per time it is named, with the same issues."""
    if not fhircache.is_filled():
        pytest.skip("FHIR package cache not filled")
    from procfhir.validator import run as run_mod

    a = tmp_path / "a.json"
    a.write_text(json.dumps({"resourceType": "Patient", "gender": "x"}))
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"resourceType": "Patient", "active": "yes", "id": "b"}))
    monkeypatch.setattr(run_mod, "KEEP_BYTES", 0)  # the two-pass path
    normal = run_mod.run([str(a), str(b), str(a)])
    monkeypatch.setattr(run_mod, "BIG_BYTES", 10)  # every file "large"
    first = run_mod.run([str(a), str(b), str(a)])
    assert normal.resources == first.resources == 3
    assert sorted(normal.issues) == sorted(first.issues) and normal.issues
    assert sorted(i.source for i in normal.issues) == sorted(i.source for i in first.issues)


def test_patterns_checked_by_forbidden_characters_are_the_regexes() -> None:
    """rules._FORBIDDEN_ONLY: for R4's string/markdown and uri patterns, a non-empty value fully
    matches (re.ASCII, as the validator compiles them) exactly when it holds none of the listed
    characters; checked on every short string over a telling alphabet and on random longer ones."""
    import itertools
    import re

    from procfhir.validator.rules import _FORBIDDEN_ONLY

    alphabet = " \t\n\r\x0b\x0c\x1c\x85\xa0\u2028\u3000aZ0-é"
    rng = random.Random(7)
    samples = ["".join(p) for n in (1, 2, 3) for p in itertools.product(alphabet, repeat=n)]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(5000)]
    assert len(_FORBIDDEN_ONLY) == 2
    for pattern, forbidden in _FORBIDDEN_ONLY.items():
        rx = re.compile(pattern, re.ASCII)
        for s in samples:
            assert (rx.fullmatch(s) is not None) == (not any(c in s for c in forbidden)), (pattern, s)


def test_validation_makes_no_reference_cycles() -> None:
    """The walk leaves no cyclic garbage (run calls the cycle collector only once a million
    containers were kept: see procfhir.validator.run.COLLECT_GROWTH): validating resources that
    make a profile's snapshot and read a CodeSystem's nested concepts, then collecting, finds
    nothing unreachable while the validator (and its caches) lives."""
    if not fhircache.is_filled():
        pytest.skip("FHIR package cache not filled")
    import gc

    from procfhir.validator.engine import Validator

    base = "http://example.org/fhir"
    profile = make_profile(
        f"{base}/StructureDefinition/p",
        [
            {"id": "Patient.gender", "path": "Patient.gender", "min": 1},
            {"id": "Patient.contact.name", "path": "Patient.contact.name", "min": 1},
        ],
    )
    codes = {
        "resourceType": "CodeSystem",
        "url": f"{base}/CodeSystem/c",
        "status": "draft",
        "content": "complete",
        "concept": [{"code": "a", "concept": [{"code": "b", "concept": [{"code": "c"}]}]}],
    }
    patient = {"resourceType": "Patient", "meta": {"profile": [profile["url"]]}, "contact": [{"gender": "x"}]}
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": codes["url"], "code": "c"}, {"system": codes["url"], "code": "z"}]},
    }
    validator = Validator(extra_definitions=[profile, codes])
    validator.validate({"resourceType": "Basic", "code": {"text": "x"}})  # core loaded
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        issues = validator.validate(patient) + validator.validate(observation)
        assert validator.defs.sd(profile["url"]) is not None  # its snapshot was made
        assert validator.terminology.code_system(codes["url"]) is not None
        gc.set_debug(gc.DEBUG_SAVEALL)  # the unreachable kept in gc.garbage, to be told apart
        gc.collect()
    finally:
        gc.set_debug(0)
        if collecting:
            gc.enable()
    # (only the validator's: other tests' leftovers, such as a server whose thread ended, may
    # become unreachable meanwhile)
    ours = [o for o in gc.garbage if _of_procfhir(o)]
    gc.garbage.clear()
    found = {(i.location, i.message_id) for i in issues if i.severity == "error"}
    assert ("Patient.contact[0].name", "CARD_MIN") in found  # from the snapshot (expanded)
    assert ("Observation.code.coding[1].code", "TX_UNKNOWN_CODE") in found  # "c", nested, is known
    assert not any(loc.startswith("Observation.code.coding[0]") for loc, _ in found), found
    assert ours == []


def _of_procfhir(obj: Any) -> bool:
    """Whether ``obj`` is a function of procfhir's or an instance of one of its classes (compiled
    closures are instances of classes named after their function)."""
    module = getattr(obj, "__module__", None) if callable(obj) and not isinstance(obj, type) else None
    return str(module or type(obj).__module__).startswith("procfhir")
