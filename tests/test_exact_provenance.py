"""Exact provenance: the embedded text is the file as received, byte for byte, with the SHA-1 of
those bytes; every ``source-text`` extension's start/end slice the embedded text to exactly its
quote (checked here independently of the generator's own check), on the committed package and on
a copy of the text with Windows line ends. And an entry's own words agree with its quotes."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from procfhir.build import BuildResult, build
from procfhir.config import PROJECT_ROOT, load_config
from procfhir.errors import BuildError
from procfhir.offsets import provenance_problems
from tests.buildutil import copy_inputs, mapping_path, text_path

FHIR_DIR = PROJECT_ROOT / "fhir"
SOURCE_TEXT = PROJECT_ROOT / "source" / "vertebroplasty-kyphoplasty.txt"
SPLIT_HEADING = "Leakage of Cement into Veins and Pulmonary"


def committed_resources() -> list[dict[str, Any]]:
    skip = {"bundle.json", "trace.json", "terminology-report.json", "package.json", ".index.json"}
    return [
        json.loads(p.read_text(encoding="utf-8"))
        for p in sorted(FHIR_DIR.glob("*.json"))
        if p.name not in skip
    ]


def embedded(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for res in resources:
        for art in res.get("relatedArtifact", []) if res["resourceType"] == "PlanDefinition" else []:
            if art.get("type") == "derived-from" and "data" in art.get("document", {}):
                out[art["label"]] = art["document"]
    return out


def extensions(node: Any, url: str) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        if node.get("url") == url and "extension" in node:
            found.append({e["url"]: e.get("valueString", e.get("valueInteger")) for e in node["extension"]})
        else:
            for value in node.values():
                found += extensions(value, url)
    elif isinstance(node, list):
        for item in node:
            found += extensions(item, url)
    return found


def assert_exact(
    resources: list[dict[str, Any]], url: str, received: dict[str, bytes]
) -> list[dict[str, Any]]:
    """The embedded texts are the files' bytes; every extension slices its quote; return them."""
    docs = embedded(resources)
    assert sorted(docs) == sorted(received)
    texts = {}
    for key, att in docs.items():
        raw = base64.b64decode(att["data"])
        assert raw == received[key], f"{key}: the embedded text is not the file as received"
        assert att["size"] == len(raw)
        assert att["hash"] == base64.b64encode(hashlib.sha1(raw).digest()).decode()  # noqa: S324
        texts[key] = raw.decode("utf-8")
    exts = [e for r in resources for e in extensions(r, url)]
    assert len(exts) > 40
    for e in exts:
        assert texts[e["document"]][e["start"] : e["end"]] == e["quote"], e
    return exts


def test_committed_package_embeds_the_file_and_slices_every_quote() -> None:
    resources = committed_resources()
    url = load_config().url("StructureDefinition", "source-text")
    exts = assert_exact(resources, url, {"vertebroplasty-kyphoplasty": SOURCE_TEXT.read_bytes()})
    # the heading split over a paragraph break is recorded as the text has it (51 characters)
    split = [e for e in exts if e["quote"].startswith(SPLIT_HEADING)]
    assert split and all(e["quote"] == SPLIT_HEADING + "\n\nEMBOLUS" for e in split)
    assert all(e["end"] - e["start"] == 51 for e in split)


def without_offsets(node: Any) -> Any:
    """The clinical content: no offsets, no quotes as laid out, no embedded bytes."""
    if isinstance(node, dict):
        if node.get("url") in ("start", "end"):
            return None
        if node.get("url") == "quote":
            return {"url": "quote", "valueString": " ".join(node["valueString"].split())}
        out = {k: without_offsets(v) for k, v in node.items() if k not in ("data", "size", "hash")}
        return out
    if isinstance(node, list):
        return [x for x in (without_offsets(v) for v in node) if x is not None]
    return node


@pytest.fixture(scope="module")
def crlf_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuildResult, bytes]:
    tmp = tmp_path_factory.mktemp("crlf")
    cfg = copy_inputs(tmp)
    lf = text_path(tmp).read_bytes()
    crlf = b"\r\n".join(line.rstrip(b"\n") + (b"  " if line.strip() else b"") for line in lf.split(b"\n"))
    text_path(tmp).write_bytes(crlf)
    return build(cfg, tmp / "out", validate=False), crlf


def test_crlf_text_is_embedded_as_received_with_exact_offsets(crlf_build: tuple[BuildResult, bytes]) -> None:
    result, crlf = crlf_build
    assert b"\r\n" in crlf and b"  \r\n" in crlf
    url = result.config.url("StructureDefinition", "source-text")
    exts = assert_exact(result.resources, url, {"vertebroplasty-kyphoplasty": crlf})
    split = [e for e in exts if e["quote"].startswith(SPLIT_HEADING)]
    assert split and all(e["quote"] == SPLIT_HEADING + "  \r\n\r\nEMBOLUS" for e in split)
    # the trace shows the text as received too
    assert result.trace["documents"][0]["text"].encode("utf-8") == crlf


def test_crlf_text_has_the_same_clinical_content(crlf_build: tuple[BuildResult, bytes]) -> None:
    result, _crlf = crlf_build
    lf = build(write=False, validate=False)
    assert [s.text for s in result.mappings[0].source.segments] == [
        s.text for s in lf.mappings[0].source.segments
    ]
    assert len(result.resources) == len(lf.resources)
    for mine, theirs in zip(result.resources, lf.resources, strict=True):
        if mine["resourceType"] == "ImplementationGuide":
            continue  # carries the package date and resource list only
        assert without_offsets(mine) == without_offsets(theirs), f"{mine['resourceType']}/{mine['id']}"


def test_the_generators_own_check_finds_an_inexact_quote() -> None:
    resources = committed_resources()
    url = load_config().url("StructureDefinition", "source-text")
    assert provenance_problems(resources, url) == []
    broken = copy.deepcopy(resources)
    for e in (x for r in broken for x in _raw_extensions(r, url)):
        for sub in e["extension"]:
            if sub["url"] == "quote" and sub["valueString"].startswith(SPLIT_HEADING):
                sub["valueString"] = SPLIT_HEADING + " EMBOLUS"  # the old, 50-character quote
    problems = provenance_problems(broken, url)
    assert problems and all("51 characters" in p and "EMBOLUS" in p for p in problems), problems
    pd = next(r for r in broken if r["resourceType"] == "PlanDefinition")
    pd["relatedArtifact"][0]["document"]["data"] = base64.b64encode(b"other text").decode()
    assert any("not the SHA-1" in p for p in provenance_problems(broken, url))


def _raw_extensions(node: Any, url: str) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        if node.get("url") == url and "extension" in node:
            found.append(node)
        for value in node.values():
            found += _raw_extensions(value, url)
    elif isinstance(node, list):
        for item in node:
            found += _raw_extensions(item, url)
    return found


# --- an entry agrees with its quotes -----------------------------------------------------------


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) >= 1, old
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_entry_saying_90_percent_with_an_80_percent_quote_is_refused(tmp_path: Path) -> None:
    cfg = copy_inputs(tmp_path)
    _edit(text_path(tmp_path), "About 90% of the patients", "About 80% of the patients")
    _edit(mapping_path(tmp_path), '"About 90% of the patients', '"About 80% of the patients')
    with pytest.raises(BuildError) as err:
        build(cfg, tmp_path / "out", validate=False)
    lines = mapping_path(tmp_path).read_text(encoding="utf-8").splitlines()
    problems = err.value.problems
    assert len(problems) == 1, problems
    assert "goals pain-improvement-osteoporotic" in problems[0] and "'90%' (percentage)" in problems[0]
    line = int(problems[0].split(":")[1])
    assert "about 90% of patients" in lines[line - 1]
    assert not (tmp_path / "out").exists()
    # the entry corrected to the text: builds
    _edit(mapping_path(tmp_path), "about 90% of patients", "about 80% of patients")
    build(cfg, tmp_path / "out", validate=False, write=False)


def test_limit_and_frequency_disagreements_are_refused(tmp_path: Path) -> None:
    cfg = copy_inputs(tmp_path)
    _edit(mapping_path(tmp_path), "maximum: 2", "maximum: 3")
    _edit(
        mapping_path(tmp_path),
        "{code: frequency-rare, text: rarely occurs}",
        "{code: frequency-common, text: rarely occurs}",
    )
    _edit(
        mapping_path(tmp_path),
        "management: Even more rarely requires surgery.",
        "management: Never requires surgery.",
    )
    _edit(mapping_path(tmp_path), "have no more than 2 levels treated", "have no more than 3 levels treated")
    with pytest.raises(BuildError) as err:
        build(cfg, tmp_path / "out", validate=False, write=False)
    text = "\n".join(err.value.problems)
    assert "limits lung-disease-level-limit: maximum is 3" in text
    assert "limits lung-disease-level-limit: text says '3' (number)" in text
    assert "risks new-fracture: frequency code 'frequency-common'" in text
    assert "risks new-fracture: management says 'Never' (frequency)" in text
    assert len(err.value.problems) == 4, err.value.problems
