"""The other procedures, end to end: each example builds alone, validates, matches its committed
output, is on its review page, and ``$apply`` follows each of its rules on its sample contexts;
the package of all three documents builds and validates too."""

from __future__ import annotations

import html
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from procfhir.apply import Applier, ApplyResult, NotApplicable, load_plan
from procfhir.build import BuildResult, build
from procfhir.config import PROJECT_ROOT

EXAMPLES = PROJECT_ROOT / "examples"
NAMES = ("lumbar-puncture", "radiofrequency-ablation")
PLANS = {
    "lumbar-puncture": "https://fhir.example.org/lumbar-puncture/PlanDefinition/lumbar-puncture",
    "radiofrequency-ablation": (
        "https://fhir.example.org/radiofrequency-ablation/PlanDefinition/radiofrequency-ablation"
    ),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuildResult]:
    out = tmp_path_factory.mktemp("examples")
    return {name: build(EXAMPLES / name / "package.yaml", out / name) for name in NAMES}


@pytest.fixture(scope="module")
def appliers(built: dict[str, BuildResult]) -> dict[str, Applier]:
    out: dict[str, Applier] = {}
    for name, result in built.items():
        assert result.out_dir is not None
        out[name] = Applier(load_plan(result.out_dir, PLANS[name]))
    return out


def context(name: str, file: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / name / "contexts" / f"{file}.json").read_text())
    return data


def files_of(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def requests_for(result: ApplyResult, activity: str) -> list[dict[str, Any]]:
    """The requests ``$apply`` made from the ActivityDefinition ``activity``."""
    out = []
    for r in result.resources:
        canon = r.get("instantiatesCanonical")
        urls = canon if isinstance(canon, list) else [canon] if canon else []
        if any(str(u).endswith(f"/ActivityDefinition/{activity}") for u in urls):
            out.append(r)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_example_builds_alone_validates_and_matches_its_committed_output(
    name: str, built: dict[str, BuildResult]
) -> None:
    result = built[name]
    errors = [f for f in result.validation if getattr(f[1], "severity", "") in ("error", "fatal")]
    assert not errors
    assert result.out_dir is not None
    plans = [r for r in result.resources if r["resourceType"] == "PlanDefinition"]
    assert [p["url"] for p in plans] == [PLANS[name]]
    committed_dir = EXAMPLES / name / "fhir"
    fresh = files_of(result.out_dir)
    committed = files_of(committed_dir)
    assert sorted(map(str, committed)) == sorted(map(str, fresh)), f"{committed_dir} has other files"
    stale = [str(n) for n, data in fresh.items() if committed[n] != data]
    assert not stale, f"{committed_dir} is stale: procfhir build --config examples/{name}/package.yaml"


@pytest.mark.parametrize("name", NAMES)
def test_every_sentence_is_represented_and_on_the_review_page(
    name: str, built: dict[str, BuildResult]
) -> None:
    result = built[name]
    (mapping,) = result.mappings
    page = result.files["review.html"].decode()
    assert html.escape(mapping.source.title.text if mapping.source.title else "") in page
    traced = {
        seg["id"]: seg for doc in result.trace["documents"] for seg in doc["segments"] if doc["key"] == name
    }
    for seg in mapping.source.segments:
        assert html.escape(seg.text, quote=False) in page or html.escape(seg.text) in page, seg.text
        # every sentence reaches a FHIR element, or is claimed as carrying nothing clinical
        assert traced[seg.id]["elements"] or traced[seg.id]["non_clinical"], f"{seg.id} ({seg.text!r})"


# --- lumbar puncture ---------------------------------------------------------------------------


def test_lumbar_puncture_blood_thinners_stopped_exactly_for_patients_taking_them(
    appliers: dict[str, Applier],
) -> None:
    lp = appliers["lumbar-puncture"]
    on_thinner = lp.apply(context("lumbar-puncture", "meningitis-on-blood-thinner"))
    assert len(requests_for(on_thinner, "lumbar-puncture")) == 1
    (stop,) = requests_for(on_thinner, "stop-blood-thinners")
    assert stop["resourceType"] == "Task"
    for file in ("multiple-sclerosis-no-medication", "blood-thinner-already-stopped"):
        other = lp.apply(context("lumbar-puncture", file))
        assert len(requests_for(other, "lumbar-puncture")) == 1
        assert requests_for(other, "stop-blood-thinners") == [], file


def test_lumbar_puncture_head_ct_left_to_the_clinician_in_the_texts_words(
    appliers: dict[str, Applier],
) -> None:
    result = appliers["lumbar-puncture"].apply(context("lumbar-puncture", "multiple-sclerosis-no-medication"))
    (ct,) = requests_for(result, "head-ct")
    notes = " ".join(n["text"] for n in ct.get("note", []))
    assert "in patients who may have raised pressure inside the skull" in notes


def test_lumbar_puncture_refused_without_an_indication(appliers: dict[str, Applier]) -> None:
    with pytest.raises(NotApplicable) as err:
        appliers["lumbar-puncture"].apply(context("lumbar-puncture", "no-indication"))
    assert "does not apply" in str(err.value)


# --- radiofrequency ablation -------------------------------------------------------------------


def test_rfa_four_joints_each_side_after_six_months_is_planned(appliers: dict[str, Applier]) -> None:
    result = appliers["radiofrequency-ablation"].apply(
        context("radiofrequency-ablation", "conventional-four-joints-each-side")
    )
    (rfa,) = requests_for(result, "conventional-rfa")
    assert len(rfa.get("bodySite", [])) == 8
    assert requests_for(result, "cooled-rfa") == []
    assert requests_for(result, "device-check") == []  # no pacemaker, no defibrillator


def test_rfa_more_than_four_joints_on_one_side_refused_with_the_texts_words(
    appliers: dict[str, Applier],
) -> None:
    with pytest.raises(NotApplicable) as err:
        appliers["radiofrequency-ablation"].apply(context("radiofrequency-ablation", "five-joints-one-side"))
    assert "No more than 4 joints on each side are treated in one session." in str(err.value)
    assert [c.name for c in err.value.failed] == ["JointsPerSide"]


def test_rfa_repeated_sooner_than_six_months_refused_with_the_texts_words(
    appliers: dict[str, Applier],
) -> None:
    with pytest.raises(NotApplicable) as err:
        appliers["radiofrequency-ablation"].apply(context("radiofrequency-ablation", "repeated-too-soon"))
    assert "not sooner than 6 months after the last treatment" in str(err.value)
    assert [c.name for c in err.value.failed] == ["RepeatInterval"]


def test_rfa_device_checked_exactly_for_patients_with_a_pacemaker(appliers: dict[str, Applier]) -> None:
    result = appliers["radiofrequency-ablation"].apply(context("radiofrequency-ablation", "pacemaker-cooled"))
    assert len(requests_for(result, "cooled-rfa")) == 1
    assert len(requests_for(result, "device-check")) == 1


def test_apply_cli_on_an_example_package(built: dict[str, BuildResult], tmp_path: Path) -> None:
    out_dir = built["radiofrequency-ablation"].out_dir
    assert out_dir is not None
    contexts = EXAMPLES / "radiofrequency-ablation" / "contexts"

    def run(file: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "procfhir.cli", "apply", "--package", str(out_dir)]
            + ["--plan", PLANS["radiofrequency-ablation"], str(contexts / f"{file}.json")]
            + ["--out", str(tmp_path / f"{file}.json")],
            capture_output=True,
            text=True,
            check=False,
        )

    ok = run("pacemaker-cooled")
    assert ok.returncode == 0, ok.stderr
    refused = run("five-joints-one-side")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "No more than 4 joints on each side are treated in one session." in refused.stderr


# --- all three documents in one package --------------------------------------------------------


def test_the_three_documents_build_into_one_package(tmp_path: Path) -> None:
    result = build(EXAMPLES / "all" / "package.yaml", tmp_path / "all")
    plans = sorted(r["id"] for r in result.resources if r["resourceType"] == "PlanDefinition")
    assert plans == ["lumbar-puncture", "radiofrequency-ablation", "vertebral-augmentation"]
    errors = [f for f in result.validation if getattr(f[1], "severity", "") in ("error", "fatal")]
    assert not errors
    assert {m.key for m in result.mappings} == {
        "vertebroplasty-kyphoplasty",
        "lumbar-puncture",
        "radiofrequency-ablation",
    }


def test_each_plan_has_its_own_procedure_profile(built: dict[str, BuildResult]) -> None:
    """The example Procedures conform to their plan's generated profile, which holds its body sites:
    required and from the facet joints for RFA, none for the lumbar puncture."""
    from procfhir.validator import Validator

    def errors(name: str, proc: dict[str, Any]) -> list[str]:
        validator = Validator(extra_definitions=built[name].resources)
        return [i.message for i in validator.validate(proc) if i.severity in ("error", "fatal")]

    procs = {name: [r for r in built[name].resources if r["resourceType"] == "Procedure"] for name in NAMES}
    rfa = procs["radiofrequency-ablation"][0]
    assert rfa["meta"]["profile"] == [
        "https://fhir.example.org/radiofrequency-ablation/StructureDefinition/radiofrequency-ablation-procedure"
    ]
    assert not errors("radiofrequency-ablation", rfa) and len(rfa["bodySite"]) == 4
    no_site = {k: v for k, v in rfa.items() if k != "bodySite"}
    assert any("Procedure.bodySite" in e for e in errors("radiofrequency-ablation", no_site))
    lp = procs["lumbar-puncture"][0]
    assert not errors("lumbar-puncture", lp) and "bodySite" not in lp
    with_site = dict(lp, bodySite=rfa["bodySite"])
    assert any("bodySite" in e for e in errors("lumbar-puncture", with_site))
