"""UCUM unit codes: the parser against the installed UCUM tables (every UCUM code of the R4
examples, hand-made invalid codes), the tables' pinned installation, and the Quantity rule on
the R4 examples (only the examples' real defects are errors, the ones HAPI's $validate reports)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from procfhir import fhircache
from procfhir.terminology import ucum
from procfhir.terminology.sources import UCUM

# UCUM codes of the R4 examples that are not UCUM (HAPI's $validate: "The unit 'ea' is unknown")
EXAMPLES_INVALID_UCUM = {"TAB", "drop", "ea", "mEq", "mcg", "ml/hr", "month", "tbl"}
# Quantity units of the R4 examples not in their (complete, case-sensitive) code system, here
# v3-orderableDrugForm from THO (HAPI: "Unknown code '...v3-orderableDrugForm#patch'")
EXAMPLES_UNKNOWN_UNIT_CODES = {"Tab", "Vial", "patch", "tab"}


@pytest.fixture(scope="module")
def tables(terminology_installed: None) -> ucum.Tables:
    got = ucum.load()
    assert got is not None
    return got


def _ucum_codes(value: Any, out: set[str]) -> None:
    if isinstance(value, dict):
        if value.get("system") == ucum.SYSTEM and isinstance(value.get("code"), str):
            out.add(value["code"])
        for v in value.values():
            _ucum_codes(v, out)
    elif isinstance(value, list):
        for v in value:
            _ucum_codes(v, out)


def _example_files(marker: bytes) -> list[tuple[Path, dict[str, Any]]]:
    if not fhircache.is_filled():
        pytest.skip("the FHIR package cache is empty")
    out = []
    for path in sorted(fhircache.examples_dir().glob("*.json")):
        raw = path.read_bytes()
        if marker in raw:
            out.append((path, json.loads(raw)))
    return out


def test_every_ucum_code_of_the_r4_examples(tables: ucum.Tables) -> None:
    codes: set[str] = set()
    for _, res in _example_files(b"unitsofmeasure.org"):
        _ucum_codes(res, codes)
    rejected = {c for c in codes if not tables.is_valid(c)}
    assert rejected == EXAMPLES_INVALID_UCUM
    assert len(codes) - len(rejected) > 900  # prefixes, exponents, factors, annotations, brackets
    for code in ("10*3/uL", "mL/min/{1.73_m2}", "%{Negative Control}", "/(12.h)", "[in_i'H2O]", "g/cm-2"):
        assert code in codes and tables.is_valid(code)


@pytest.mark.parametrize(
    ("code", "why"),
    [
        ("ea", "the unit 'ea' is unknown (at position 0)"),
        ("mg/dl/hr", "the unit 'hr' is unknown (at position 6)"),
        ("12h", "the unit '12h' is unknown"),  # a factor needs an operator: 12.h
        ("kg[H20]", "the unit 'kg[H20]' is unknown"),
        ("mg/", "unexpected end of the expression"),
        ("(mg", "a closing parenthesis is expected"),
        ("mg)", "unexpected ')'"),
        ("m g", "unexpected character ' '"),
        ("µg", "unexpected character 'µ'"),
        ("mg{total", "is not closed"),
        ("m{é}", "not ASCII"),
        ("[in_i", "[ without ]"),
        ("m]", "] without ["),
        ("m[[H2O]]", "nested ["),
        ("m-", "must be followed by at least one digit"),
        ("kmin", "the unit 'kmin' is unknown"),  # min is not metric: no prefix
        ("(" * 100 + "m" + ")" * 100, "nested more than"),
    ],
)
def test_invalid_codes_say_why(tables: ucum.Tables, code: str, why: str) -> None:
    got = tables.check(code)
    assert got is not None and why in got, got


@pytest.mark.parametrize(
    "code",
    [
        "",
        "1",
        "/min",
        "{score}",
        "10*-3",
        "m-2",
        "s+1",
        "dam",
        "Pa",
        "cd",
        "kg.m/s2",
        "mL/(kg.h){total}",
        "m//s",
    ],
)
def test_valid_codes(tables: ucum.Tables, code: str) -> None:
    assert tables.check(code) is None


def test_tables_installed_from_the_pinned_wheel_and_checked(tables: ucum.Tables, tmp_path: Path) -> None:
    manifest = ucum.installed_manifest()
    assert manifest is not None
    assert manifest["artifact"] == {
        "registry": UCUM.registry,
        "name": UCUM.name,
        "version": UCUM.version,
        "sha256": UCUM.sha256,
    }
    essence = (ucum.ucum_dir() / ucum.ESSENCE_NAME).read_bytes()
    assert hashlib.sha256(essence).hexdigest() == manifest["sha256"]
    assert tables.version == "2.2" and "k" in tables.prefixes and tables.units["g"] is True
    # a copy whose file no longer matches its manifest is not used
    shutil.copytree(ucum.ucum_dir(), tmp_path / "ucum")
    assert ucum.load(tmp_path) is not None
    (tmp_path / "ucum" / ucum.ESSENCE_NAME).write_bytes(essence.replace(b'Code="g"', b'Code="q"'))
    ucum.load.cache_clear()
    assert ucum.load(tmp_path) is None
    assert ucum.load() is not None
    with pytest.raises(ucum.UcumError):
        ucum.install(b"<root xmlns='http://unitsofmeasure.org/ucum-essence'/>", {}, tmp_path / "other")
    assert not (tmp_path / "other" / "ucum" / ucum.MANIFEST_NAME).exists()


def test_r4_examples_quantity_units_only_real_defects(tables: ucum.Tables) -> None:
    """The Quantity rule on every R4 example with a coded unit: errors only for the units above
    (each also an error in HAPI's $validate), at Quantities or UCUM Codings."""
    from procfhir.validator import Validator

    v = Validator()
    files = _example_files(b"unitsofmeasure.org") + _example_files(b"v3-orderableDrugForm")
    ucum_bad: set[str] = set()
    ucum_warned: set[str] = set()  # units of Age, Duration...: warnings (the reference: nothing)
    unit_bad: set[str] = set()
    for path, res in files:
        for i in v.validate(res, source=path.name):
            if i.message_id == "UCUM_INVALID":
                (ucum_bad if i.is_error else ucum_warned).add(i.message.split("'")[1])
            elif i.message_id == "TX_UNKNOWN_CODE" and "the unit of a" in i.message:
                unit_bad.add(i.message.split("'")[1])
    assert ucum_bad == EXAMPLES_INVALID_UCUM
    assert not ucum_warned
    assert unit_bad == EXAMPLES_UNKNOWN_UNIT_CODES


def test_any_string_gets_a_verdict_not_an_exception(tables: ucum.Tables) -> None:
    """Random strings over UCUM's characters and a few others: the parser always answers (valid,
    or why not), never raises; valid ones stay valid when wrapped in parentheses."""
    import random

    rng = random.Random(12)
    alphabet = "mgLsdhk[]{}()./*^+-0123456789_'%\" aéuµ"
    for _ in range(20_000):
        code = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        why = tables.check(code)
        assert why is None or isinstance(why, str)
        if why is None and code and not code.startswith("/"):
            assert tables.check(f"({code})") is None, code
