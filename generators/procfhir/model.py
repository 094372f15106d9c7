"""The typed knowledge model of one document: what its mapping states, checked and resolved.

:func:`procfhir.mapping.load_mapping` returns a :class:`Document`; every later stage (builders,
trace, review, terminology report) reads its attributes and never the mapping's YAML. Every node
that rests on the text carries its :class:`Quote` s (document, sentence id, exact words,
offsets), the way SUSHI's FSH entities carry their source location. Codes are resolved to
:class:`Code` objects and references (a goal's indications, a step's activity...) to the nodes
they name. All classes are frozen; collections are tuples (mappings: read-only by convention).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from procfhir.source import SourceDocument


@dataclass(frozen=True)
class Quote:
    """Where a statement came from: the exact words of one sentence (or heading) of a text."""

    document: str  # the document key
    sentence: str  # the segment id (s1, s2... in document order)
    text: str  # the exact quoted words (a substring of the sentence)
    start: int  # character offsets of the words in the text (0-based, end exclusive)
    end: int


Quotes = tuple[Quote, ...]


@dataclass(frozen=True)
class Code:
    """A code used by the package, with where it was confirmed (``local``: our own CodeSystem)."""

    key: str
    system: str
    code: str
    display: str
    source: str
    local: bool = False
    definition: str | None = None  # local codes only
    quotes: Quotes = ()
    defined_at: str = ""  # "file:line" of the definition in the mapping
    synonym_source: str | None = None  # the display is an allowed synonym, as this source states
    no_standard_code: str | None = None  # local codes: why no standard code is used

    def coding(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, "display": self.display}


@dataclass(frozen=True)
class Text:
    """A statement of the mapping's own wording with the quotes it rests on."""

    text: str
    quotes: Quotes


@dataclass(frozen=True)
class Patients:
    """The patients a rule applies to: those with one of the conditions or taking one of the
    medications; or, when no expression can tell them, the text's words only (``text_only``)."""

    conditions: tuple[Code, ...] = ()
    medications: tuple[Code, ...] = ()
    text_only: str | None = None

    @property
    def computable(self) -> bool:
        return self.text_only is None


@dataclass(frozen=True)
class BodySites:
    """The body sites a plan treats (a value set of the mapping) and how the text names them."""

    value_set: str  # id of a ValueSetDef of the same document
    label: str  # how the text names them: forms say "{label} to be treated"
    each: str  # one site in quantities ("2 needle(s) per {each}")
    required: bool = True


@dataclass(frozen=True)
class Indication:
    id: str
    text: str
    codes: tuple[Code, ...]
    quotes: Quotes


@dataclass(frozen=True)
class Activity:
    id: str
    kind: str  # ServiceRequest, MedicationRequest, Task, CommunicationRequest
    name: str
    title: str
    text: str
    codes: tuple[Code, ...]
    quotes: Quotes
    codes_by_site: tuple[SiteCode, ...] = ()


@dataclass(frozen=True)
class SiteCode:
    """A code of an activity used only for some body sites (e.g. a CPT code by region)."""

    code: Code
    sites: tuple[Code, ...] = ()  # used when the first treated site is one of these
    additional: bool = False  # an add-on code, once for each site after the first


@dataclass(frozen=True)
class QuantityPerSite:
    value: int
    unit: str  # the text's noun, "needle(s)"


@dataclass(frozen=True)
class Step:
    id: str
    title: str
    text: str
    quotes: Quotes
    activity: Activity | None = None
    codes: tuple[Code, ...] = ()
    before: str | None = None  # id of a later step of the same technique
    quantity_per_site: QuantityPerSite | None = None
    applies_to: Patients | None = None  # None: every patient of the technique
    wording: str = ""  # the text's own words: the quoted sentences in text order


@dataclass(frozen=True)
class Material:
    code: Code
    kind: str  # material | device


@dataclass(frozen=True)
class Technique:
    id: str
    title: str
    text: str
    activity: Activity
    steps: tuple[Step, ...]
    quotes: Quotes
    code: Code | None = None  # the technique's own code, when its id is a code key
    materials: tuple[Material, ...] = ()


@dataclass(frozen=True)
class Period:
    value: int
    unit: str  # day | week | month | year


@dataclass(frozen=True)
class Limit:
    """A limit the text states: ``sites-per-session`` (at most ``maximum`` sites, within each of
    ``groups`` when given), ``repetitions-per-period`` (at most ``maximum`` treatments within
    ``period``, the planned one included) or ``min-interval`` (not sooner than ``period`` after the
    last treatment); for ``applies_to`` patients only, or every patient."""

    id: str
    title: str
    text: str
    type: str
    quotes: Quotes
    maximum: int | None = None
    groups: tuple[tuple[Code, ...], ...] = ()
    period: Period | None = None
    preferred: int | None = None
    warning: str | None = None
    applies_to: Patients | None = None
    wording: str = ""  # the text's own words (the refusal message): quoted sentences in text order


@dataclass(frozen=True)
class Advice:
    """Advice the text gives a group of patients ("patients with diabetes should...")."""

    id: str
    title: str
    text: str
    applies_to: Patients
    quotes: Quotes
    wording: str = ""  # the text's own words: the quoted sentences in text order


@dataclass(frozen=True)
class Goal:
    id: str
    text: str
    quotes: Quotes
    addresses: tuple[Indication, ...] = ()
    techniques: tuple[str, ...] | None = None  # None: every technique


@dataclass(frozen=True)
class Choice:
    id: str
    title: str
    text: str
    quotes: Quotes


@dataclass(frozen=True)
class Plan:
    id: str
    name: str
    title: str
    description: Text
    indications: tuple[Indication, ...]
    techniques: tuple[Technique, ...]
    goals: tuple[Goal, ...]
    choice: Choice | None = None
    setting: Text | None = None
    limits: tuple[Limit, ...] = ()
    advice: tuple[Advice, ...] = ()
    body_sites: BodySites | None = None

    def technique(self, technique_id: str) -> Technique:
        return next(t for t in self.techniques if t.id == technique_id)


@dataclass(frozen=True)
class Frequency:
    text: str  # the text's own words ("about 1 in 10", "extremely rare")
    code: Code | None = None
    numerator: int | None = None
    denominator: int | None = None


@dataclass(frozen=True)
class RiskModifier:
    """What changes a risk ("higher in patients who take blood thinners")."""

    text: str
    effect: str  # higher | lower
    quotes: Quotes
    applies_to: Patients | None = None


@dataclass(frozen=True)
class Risk:
    id: str
    title: str
    outcome: str
    codes: tuple[Code, ...]
    quotes: Quotes
    wording: str  # the text's own wording: the quoted sentences in text order, headings left out
    frequency: Frequency | None = None
    management: str | None = None
    modifiers: tuple[RiskModifier, ...] = ()


@dataclass(frozen=True)
class Consent:
    id: str
    title: str
    heading: str  # the sentence of the text that introduces the risks
    procedures: tuple[Technique, ...]
    risks: tuple[Risk, ...]
    quotes: Quotes


@dataclass(frozen=True)
class ValueSetDef:
    id: str
    name: str
    title: str
    codes: tuple[Code, ...]
    role: str | None = None  # indication | complication | procedure | body-site | material


@dataclass(frozen=True)
class ExamplePatient:
    id: str
    family: str
    given: str


@dataclass(frozen=True)
class ExampleProcedure:
    id: str
    technique: Technique
    status: str
    codes: tuple[Code, ...]
    reason: Indication
    performed: str
    sites: tuple[Code, ...] = ()
    used: tuple[Code, ...] = ()
    complications: tuple[Code, ...] = ()


@dataclass(frozen=True)
class Examples:
    patient: ExamplePatient
    procedures: tuple[ExampleProcedure, ...]


@dataclass(frozen=True)
class NonClinical:
    """A sentence the mapping claims as carrying no clinical content, and why."""

    quote: Quote | None  # None when the quote was not found (the load then fails)
    reason: str


@dataclass(frozen=True)
class Document:
    """One text and the knowledge its mapping states."""

    key: str
    path: Path  # the mapping file
    title: str
    text_file: str  # the text's file name, as the mapping gives it
    source: SourceDocument
    quotes: Quotes  # of the title
    codes: Mapping[str, Code]  # every code key of the mapping (standard and local)
    plan: Plan
    activities: tuple[Activity, ...]
    consent: Consent
    value_sets: tuple[ValueSetDef, ...]
    non_clinical: tuple[NonClinical, ...] = ()
    examples: Examples | None = None
    claims: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # segment id -> entries

    def code(self, key: str) -> Code:
        return self.codes[key]

    @property
    def local_codes(self) -> tuple[Code, ...]:
        return tuple(c for c in self.codes.values() if c.local)

    def value_set(self, role: str) -> ValueSetDef | None:
        return next((vs for vs in self.value_sets if vs.role == role), None)
