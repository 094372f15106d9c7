"""The source-text parser on the three texts and on the shapes other patient texts take."""

from __future__ import annotations

import pytest

from procfhir.config import PROJECT_ROOT
from procfhir.source import SourceDocument, load_source, parse_text

TEXTS = {
    "vertebroplasty-kyphoplasty": PROJECT_ROOT / "source" / "vertebroplasty-kyphoplasty.txt",
    "lumbar-puncture": PROJECT_ROOT / "examples" / "lumbar-puncture" / "lumbar-puncture.txt",
    "radiofrequency-ablation": PROJECT_ROOT
    / "examples"
    / "radiofrequency-ablation"
    / "radiofrequency-ablation.txt",
}


def outline(doc: SourceDocument) -> list[tuple[str | None, str | None, int]]:
    """Per section: its heading, the list it is an item of, its number of sentences."""
    return [
        (
            s.heading.text if s.heading else None,
            s.list_item_of,
            sum(len(p) for p in s.paragraphs),
        )
        for s in doc.sections
    ]


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_every_word_of_the_text_is_in_exactly_one_segment(name: str) -> None:
    doc = load_source(TEXTS[name])
    covered = [0] * len(doc.text)
    for seg in doc.segments:
        for sp in seg.spans:
            for i in range(sp.start, sp.end):
                covered[i] += 1
    assert max(covered) == 1, "segments overlap"
    left_out = [(i, c) for i, c in enumerate(doc.text) if not covered[i] and not c.isspace()]
    # only the period closing a heading split over a paragraph break ("EMBOLUS.") is in no segment
    assert all(c == "." and doc.text[i - 7 : i] == "EMBOLUS" for i, c in left_out), left_out


def test_lumbar_puncture_structure() -> None:
    doc = load_source(TEXTS["lumbar-puncture"])
    assert doc.title is not None and doc.title.text == "Lumbar Puncture"
    assert len(doc.segments) == 27
    intro = doc.segment("s13")
    assert intro.text == "The possible complications include:" and intro.introduces_list
    assert outline(doc) == [
        (None, None, 12),
        ("Headache", "s13", 3),
        (None, "s13", 1),  # back pain: a paragraph of its own in the list, no heading
        (None, "s13", 3),  # bleeding into the spinal canal
        ("Infection", "s13", 2),
        ("Nerve Irritation", "s13", 2),
    ]
    assert doc.segment("s15").text.endswith("follows in about 1 in 10 patients.")


def test_radiofrequency_ablation_structure() -> None:
    doc = load_source(TEXTS["radiofrequency-ablation"])
    assert doc.title is not None and doc.title.text == "Radiofrequency Ablation of the Spinal Joints"
    assert len(doc.segments) == 24
    intro = doc.segment("s16")
    assert intro.text == "Side effects and complications of this procedure include:" and intro.introduces_list
    assert outline(doc) == [
        (None, None, 15),
        ("Increased Pain", "s16", 1),
        ("Numbness or Burning", "s16", 2),
        (None, "s16", 1),  # bleeding and infection at the needle sites
        ("Nerve Injury", "s16", 1),
    ]
    assert doc.segment("s9").text == "Two methods are used."


OTHER_SHAPES = """Knee Arthroscopy
A knee arthroscopy looks inside the joint through small cuts,
e.g. to repair a torn cartilage. Dr. Smith and the team
perform it as a day case.

Before the procedure

Tell us if you take:
- blood thinners, such as warfarin
  or aspirin
- medicines for diabetes
No food for 6 hours before.

Risks
Possible problems include:
1) Infection. This is rare.
2) Bleeding into the joint
3) Blood clots in the leg
"""


def test_other_shapes_of_patient_texts() -> None:
    doc = parse_text(OTHER_SHAPES)
    assert doc.title is not None and doc.title.text == "Knee Arthroscopy"  # no blank line after it
    texts = [s.text for s in doc.segments]
    assert texts == [
        "Knee Arthroscopy",
        "A knee arthroscopy looks inside the joint through small cuts, e.g. to repair a torn cartilage.",
        "Dr. Smith and the team perform it as a day case.",
        "Before the procedure",
        "Tell us if you take:",
        "blood thinners, such as warfarin or aspirin",
        "medicines for diabetes",
        "No food for 6 hours before.",
        "Risks",
        "Possible problems include:",
        "Infection.",
        "This is rare.",
        "Bleeding into the joint",
        "Blood clots in the leg",
    ]
    by_text = {s.text: s for s in doc.segments}
    assert by_text["Tell us if you take:"].introduces_list
    assert by_text["Possible problems include:"].introduces_list
    assert [s.kind for s in doc.segments if s.kind == "heading"] == ["heading"] * 3
    assert by_text["Risks"].kind == "heading" and by_text["Before the procedure"].kind == "heading"
    # offsets slice the text's own words (the markers are not part of an item)
    item = by_text["blood thinners, such as warfarin or aspirin"]
    assert doc.text[item.start : item.end] == "blood thinners, such as warfarin\n  or aspirin"
    # a wrapped line of a sentence is not taken for a heading
    wrapped = parse_text("Title\n\nWe perform this on\nOutpatients only.\n\nMore text here.\n")
    assert [s.text for s in wrapped.segments][1] == "We perform this on Outpatients only."
    # Windows line ends: the same segments
    crlf = parse_text(OTHER_SHAPES.replace("\n", "\r\n"))
    assert [s.text for s in crlf.segments] == texts
