"""The sign-off in the package: one FHIR Provenance per reviewer and sign-off time of a document.

From the document's review lock (:mod:`procfhir.signoff`): ``target`` = every resource with an
element resting on a sentence that reviewer signed then (found through the ``source-text``
extensions of the built resources), ``recorded`` = the sign-off time (the id is
``signoff-<key>-<date>-<time>``), ``agent`` = the reviewer (type *verifier*), ``activity`` =
*verifier* (``VRF``): R4 binds ``Provenance.activity`` to the value set
provenance-activity-type, which has no "verify" among its v3-DataOperation codes (create,
update, delete, ...) and takes the whole v3-ParticipationType system, whose ``VRF`` ("verifier:
verifies the correctness and appropriateness ... and hence takes on accountability") is the
clinical attestation a sign-off is. Only sentences whose wording still reads as signed count;
nothing is dated by the clock, so the output is deterministic.
"""

from __future__ import annotations

import re
from typing import Any

from procfhir.config import Config
from procfhir.model import Code, Document
from procfhir.narrative import narrative, table
from procfhir.offsets import source_text_extensions
from procfhir.signoff import SIGNED, Comparison

ACTIVITY = Code(
    "provenance-activity-verifier",
    "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
    "VRF",
    "verifier",
    "FHIR R4 specification, ValueSet provenance-activity-type (includes v3-ParticipationType)",
)
AGENT_TYPE = Code(
    "provenance-agent-verifier",
    "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
    "verifier",
    "Verifier",
    "FHIR R4 specification, ValueSet provenance-agent-type",
)
CODES = (ACTIVITY, AGENT_TYPE)  # for the terminology report


def _resting(cfg: Config, document: str, resources: list[dict[str, Any]]) -> dict[str, set[str]]:
    url = cfg.url("StructureDefinition", "source-text")
    out: dict[str, set[str]] = {}
    for res in resources:
        if res["resourceType"] == "Provenance":
            continue
        ref = f"{res['resourceType']}/{res['id']}"
        for _path, ext in source_text_extensions(res, url, ref):
            if ext.get("document") == document:
                out.setdefault(str(ext.get("sentence")), set()).add(ref)
    return out


def _ranges(ids: list[str]) -> str:
    """``s1, s2, s3, s5`` -> ``s1-s3, s5``."""
    nums = [int(i[1:]) for i in ids if i[1:].isdigit()]
    if len(nums) != len(ids):
        return ", ".join(ids)
    parts, start = [], None
    for n, cur in enumerate(nums):
        if start is None:
            start = cur
        if n + 1 == len(nums) or nums[n + 1] != cur + 1:
            parts.append(f"s{start}" if start == cur else f"s{start}-s{cur}")
            start = None
    return ", ".join(parts)


def _id(key: str, at: str, by: str) -> str:
    """``signoff-<document key>-<YYYYMMDD-hhmmss>``: stable across later sign-offs (at most 64)."""
    stamp = re.sub(r"\D", "", at)
    suffix = f"-{stamp[:8]}-{stamp[8:14]}"
    if by:  # two reviewers at the same second: tell them apart
        suffix += "-" + (re.sub(r"[^A-Za-z0-9]+", "-", by).strip("-").lower() or "reviewer")
    return (f"signoff-{key}"[: 64 - len(suffix)] + suffix)[-64:]


def build_provenances(
    cfg: Config, m: Document, comp: Comparison, resources: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The Provenance resources of a document's sign-off ([] when it has no lock)."""
    if comp.lock is None:
        return []
    groups: dict[tuple[str, str], list[str]] = {}
    for sid, st in comp.states.items():
        if st.state == SIGNED and st.signed is not None:
            groups.setdefault((st.signed.at, st.signed.by), []).append(sid)
    resting = _resting(cfg, m.key, resources)
    title = m.title
    text_file = m.text_file
    out = []
    for (at, by), sids in sorted(groups.items()):
        targets = sorted({ref for sid in sids for ref in resting.get(sid, set())})
        if not targets:
            continue  # only non-clinical sentences: nothing in the package rests on them
        rid = _id(m.key, at, by if sum(1 for a, _b in groups if a == at) > 1 else "")
        signed = f"{len(sids)} sentences and headings of {text_file} ({_ranges(sids)})"
        out.append(
            {
                "resourceType": "Provenance",
                "id": rid,
                "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/Provenance"]},
                "text": narrative(
                    ("p", f"Clinical sign-off of {title}: {by}, {at}."),
                    table(
                        ["Item", "Value"],
                        [
                            ["Signed", signed],
                            ["Review lock", comp.lock.path.name],
                            ["Resources resting on them", ", ".join(targets)],
                        ],
                    ),
                ),
                "target": [{"reference": ref} for ref in targets],
                "recorded": at,
                "activity": {"coding": [ACTIVITY.coding()], "text": "Clinical sign-off of the source text"},
                "agent": [{"type": {"coding": [AGENT_TYPE.coding()]}, "who": {"display": by}}],
                "entity": [
                    {
                        "role": "source",
                        "what": {"display": f"{title}: {signed}, as recorded in {comp.lock.path.name}"},
                    }
                ],
            }
        )
    return out
