"""Synthetic patient contexts (deterministic, seeded) for tests and the benchmark.

Every context has its own patient, condition ids, onset dates and planned date; the clinical
facts vary over the plan's indications, lung disease, techniques and 1-3 levels. With
``bad_every`` every n-th context is broken in one of several ways (no indication, too many levels
with COPD, an unknown level, a duplicated level, an unknown technique, no patient).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCT = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
INDICATIONS = [
    (SCT, "42942008"),
    (SCT, "240198002"),
    (SCT, "94602001"),
    (SCT, "109989006"),
    (ICD, "M80.08XA"),
]
OTHER = [(SCT, "64859006"), (SCT, "33737001")]  # osteoporosis, rib fracture: not indications
LUNG = [(SCT, "13645005"), (SCT, "313299006"), (ICD, "J44.9")]
LEVELS = ["T11", "T12", "L1", "L2", "L3", "L4", "L5"]
GIVEN = ["Ada", "Ben", "Chloé", "Dmitri", "Eve", "Farid", "Grace", "Hiro", "Inès", "José"]
FAMILY = ["Martin", "Nguyen", "O'Brien", "Smith", "Müller", "Kowalski", "Rossi", "Dubois"]


def _condition(pid: str, cid: str, system: str, code: str, rng: random.Random) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
            ]
        },
        "verificationStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
            ]
        },
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "onsetDateTime": f"2026-{rng.randint(1, 10):02d}-{rng.randint(1, 28):02d}",
    }


def sample_context(i: int, rng: random.Random, bad: str | None = None) -> dict[str, Any]:
    pid = f"pat-{i:07d}"
    lung = rng.random() < 0.3
    n_levels = rng.choice([1, 1, 2] if lung else [1, 2, 3])
    conditions = [_condition(pid, f"cond-{i}-1", *rng.choice(INDICATIONS), rng)]
    if rng.random() < 0.3:
        conditions.append(_condition(pid, f"cond-{i}-2", *rng.choice(OTHER), rng))
    if lung:
        conditions.append(_condition(pid, f"cond-{i}-3", *rng.choice(LUNG), rng))
    start = rng.randint(0, len(LEVELS) - n_levels)
    ctx: dict[str, Any] = {
        "id": f"ctx-{i:07d}",
        "patient": {
            "resourceType": "Patient",
            "id": pid,
            "name": [{"family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)]}],
            "birthDate": f"{rng.randint(1930, 1970)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        },
        "conditions": conditions,
        "technique": rng.choice(["vertebroplasty", "kyphoplasty"]),
        "sites": LEVELS[start : start + n_levels],
        "date": f"2026-12-{rng.randint(1, 28):02d}",
        "performer": {"reference": f"Practitioner/dr-{rng.randint(1, 20)}"},
        "organization": {"reference": "Organization/example-hospital"},
    }
    if bad == "no-indication":
        ctx["conditions"] = [_condition(pid, f"cond-{i}-9", *OTHER[0], rng)]
    elif bad == "lung-3-levels":
        ctx["conditions"].append(_condition(pid, f"cond-{i}-8", *LUNG[0], rng))
        ctx["sites"] = ["T12", "L1", "L2"]
    elif bad == "unknown-level":
        ctx["sites"] = ["L7"]
    elif bad == "duplicate-level":
        ctx["sites"] = ["L1", "L1"]
    elif bad == "unknown-technique":
        ctx["technique"] = "cementoplasty"
    elif bad == "no-patient":
        del ctx["patient"]
    return ctx


BAD_KINDS = [
    "no-indication",
    "lung-3-levels",
    "unknown-level",
    "duplicate-level",
    "unknown-technique",
    "no-patient",
]


def sample_contexts(n: int, seed: int = 1, bad_every: int = 0) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    for i in range(n):
        bad = (
            BAD_KINDS[(i // bad_every) % len(BAD_KINDS)]
            if bad_every and i % bad_every == bad_every - 1
            else None
        )
        yield sample_context(i, rng, bad)


def write_ndjson(path: str | Path, n: int, seed: int = 1, bad_every: int = 0) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for ctx in sample_contexts(n, seed, bad_every):
            f.write(json.dumps(ctx, ensure_ascii=False, separators=(",", ":")) + "\n")
