"""The compiled FHIRPath fast path agrees with fhirpathpy, the reference, on every input.

Differential test: every expression of the plan and a corpus exercising each compiled construct,
evaluated on sample patient contexts and on malformed ones (objects where lists are expected,
numbers and decimals where strings are, primitive-extension twins, missing variables). Where the
fast path answers, its answer (values and their types) is fhirpathpy's; where fhirpathpy fails,
the fast path must hand the input back rather than answer; and through the Evaluator every input
gives fhirpathpy's result or a KnowledgeError.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import fhirpathpy
import pytest

from procfhir.apply import load_plan
from procfhir.apply.compiled import Unsupported, compile_fast
from procfhir.apply.errors import KnowledgeError
from procfhir.apply.expressions import Evaluator, Expression, _r4
from tests.apply_samples import sample_contexts

R4 = _r4()

CORPUS = [
    "%sites.count()",
    "%sites.count() * 2",
    "(%sites.count() + 1).toString()",
    "%sites.count() <= 2",
    "%sites.count() > 1 and %conditions.exists()",
    "%sites.count() >= 1 or %conditions.empty()",
    "%sites.count() < 3",
    "%sites.display",
    "%sites.display.first() + ' and more'",
    "%sites.code = 'T12'",
    "%sites.where((system = 'urn:sites' and (code = 'T12' or code = 'L1'))).count() <= 1",
    "%sites.where(system = 'urn:sites' and code = 'L2').exists().not()",
    "%conditions.code.coding.code",
    "%conditions.code.coding.where(system = 'http://snomed.info/sct').code",
    "%conditions.exists(code.coding.code = '42942008')",
    "%conditions.where(code.coding.code != '42942008').count()",
    "%conditions.where(verificationStatus.exists().not()).exists()",
    "%conditions.where(code.coding.exists()).where(id = 'cond-1-1').empty()",
    "%conditions.first().id",
    "%conditions.id.toString()",
    "%conditions.verificationStatus.coding.code.not()",
    "%conditions.code.coding.code = '42942008' or %sites.empty()",
    "%conditions.onsetDateTime.first() < '2026-06-01'",
    "%conditions.code.text.length",
    "%patient.active.not()",
    "%patient.active and true",
    "%patient.name.given",
    "%patient.name.family + %patient.name.given",
    "%patient.birthDate.toString()",
    "%patient.multipleBirthInteger * 2",
    "%patient.multipleBirthInteger = 1",
    "%missing.exists()",
    "{}.exists()",
    "true or {}",
    "false and {}",
    "{} and {}",
    "{} or false",
    "1 = 1",
    "'a' != 'b'",
    "'it''s' = 'it''s'",
    "'x' + 'y' = 'xy'",
    "'' = ''",
    "'a\\'b' + '\\u0041\\`' + '\\t'",
    "%sites.display.first() + ' \\'quoted\\' \\n'",
    "%sites.count() = 2 and (%patient.active or %patient.deceasedBoolean)",
]
# outside the compiled subset on purpose: these always run in fhirpathpy
NOT_COMPILED = [
    "%conditions.select(id)",
    "%sites.count() / 2",
    "-1 < %sites.count()",
    "%conditions.code.coding.code contains 'x'",
    "%conditions.where($this.id = 'x').exists()",
    "Patient.name",
    "%sites.count() > 1.5",
    "%conditions.where(id).exists()",
]


def _malformed(ctx: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One of several ways a context's data can leave the happy path."""
    env = {"patient": ctx["patient"], "conditions": ctx["conditions"], "sites": ctx["sites"]}
    env = copy.deepcopy(env)
    cond = env["conditions"][0]
    coding = cond["code"]["coding"][0]
    kind = rng.randrange(14)
    if kind == 0:
        env["conditions"] = cond  # an object instead of a list
    elif kind == 1:
        env["conditions"] = None
    elif kind == 2:
        coding["_code"] = {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}
    elif kind == 3:
        coding["code"] = rng.choice([5, True, 1.5, {"nested": "x"}, ""])
    elif kind == 4:
        cond["verificationStatus"] = {"coding": []}
    elif kind == 5:
        del coding["system"]
    elif kind == 6:
        env["sites"] = []
    elif kind == 7:
        env["sites"] = [{"display": "T12"}, {"code": ["L1"]}, {"code": 3}, {"coding": [{"code": "L1"}]}]
    elif kind == 8:
        env["patient"]["active"] = rng.choice([False, True, "yes", 0])
        env["patient"]["_active"] = {"extension": [{"url": "http://example.org/a", "valueBoolean": True}]}
    elif kind == 9:
        env["patient"]["multipleBirthInteger"] = rng.choice([1, 2, 2.5, True])
        env["patient"]["deceasedBoolean"] = False
    elif kind == 10:
        del env["sites"]
    elif kind == 11:
        env["conditions"] = [*env["conditions"], *env["conditions"]]
        cond["code"]["text"] = "fracture"
    elif kind == 12:
        cond["id"] = rng.choice([None, [], 7])
    else:
        env["patient"]["name"] = [{"family": "A", "given": ["B", "C"]}, {"family": ["X"]}]
    return env


def _environments() -> list[dict[str, Any]]:
    rng = random.Random(7)
    envs = []
    for ctx in sample_contexts(150, seed=5):
        levels = [{"system": "urn:sites", "code": lbl, "display": lbl} for lbl in ctx["sites"]]
        envs.append({"patient": ctx["patient"], "conditions": ctx["conditions"], "sites": levels})
        envs.append(_malformed({**ctx, "sites": levels}, rng))
    return envs


def _reference(expression: str, env: dict[str, Any]) -> tuple[bool, Any]:
    try:
        return True, list(fhirpathpy.compile(expression, R4)({}, copy.deepcopy(env)))
    except Exception as exc:  # fhirpathpy raises assorted exceptions
        return False, repr(exc)


def _typed(values: list[Any]) -> list[tuple[str, Any]]:
    return [(type(v).__name__, v) for v in values]


def test_every_plan_expression_is_compiled():
    plan = load_plan()
    assert plan.expressions and all(x.fast is not None for x in plan.expressions)


@pytest.mark.parametrize("expression", NOT_COMPILED)
def test_constructs_outside_the_subset_are_not_compiled(expression):
    with pytest.raises(Unsupported):
        compile_fast(expression)


def test_compiled_agrees_with_fhirpathpy():
    expressions = [x.text for x in load_plan().expressions] + CORPUS
    envs = _environments()
    answered = handed_back = 0
    for text in expressions:
        fast = compile_fast(text)
        for env in envs:
            ok, ref = _reference(text, env)
            try:
                got = fast(copy.deepcopy(env))
            except Unsupported:
                handed_back += 1
                continue
            answered += 1
            assert ok, f"{text}: fhirpathpy fails ({ref}) but the fast path answered {got!r} on {env}"
            assert _typed(got) == _typed(ref), f"{text} on {env}"
    # the fast path answers the ordinary inputs; malformed ones may go back to fhirpathpy
    assert answered > 0.8 * (answered + handed_back)


def test_evaluator_always_gives_the_reference_result():
    expressions = [Expression(t, where=f"corpus[{i}]") for i, t in enumerate(CORPUS + NOT_COMPILED)]
    evaluator = Evaluator()
    for env in _environments()[:200]:
        for x in expressions:
            ok, ref = _reference(x.text, env)
            if ok:
                assert _typed(evaluator.evaluate(x, env)) == _typed(ref), f"{x.text} on {env}"
            else:
                with pytest.raises(KnowledgeError, match="evaluating the expression failed"):
                    evaluator.evaluate(x, env)
    assert evaluator.compiled > 0 and evaluator.fallbacks > 0
