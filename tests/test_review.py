"""The review page, rendered by a real headless Chromium (Debian's package, started here) and
checked from the browser's DOM: every sentence present and linked both ways, the plan diagram
with both techniques, the consent form with every risk, every code, every resource's validation
result; no external resource; HTML in the source text shown as text."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from procfhir.build import BuildResult, build
from procfhir.builders.consent import consent_form_html
from procfhir.config import PROJECT_ROOT
from tests.buildutil import copy_inputs, mapping_path, text_path

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@pytest.fixture(scope="module")
def chromium() -> str:
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path:
        return path
    reason = f"headless Chromium not found ({CHROMIUM}); install it: .ci/setup, or apt-get install chromium"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    return build(out_dir=tmp_path_factory.mktemp("review") / "fhir")


# --- the browser and its DOM -------------------------------------------------------------------


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self) -> Iterator[Node]:
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag)
            and (cls is None or cls in n.attrs.get("class", "").split())
            and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def one(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node:
        found = self.all(tag, cls, **attrs)
        assert len(found) == 1, f"expected one <{tag} class={cls} {attrs}>, found {len(found)}"
        return found[0]

    def by_id(self, ident: str) -> Node:
        return self.one(id=ident)

    def kids(self, cls: str) -> list[Node]:
        return [c for c in self.children if isinstance(c, Node) and cls in c.attrs.get("class", "").split()]


class DomBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.cur.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.cur
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.cur = node.parent

    def handle_data(self, data: str) -> None:
        self.cur.children.append(data)


def parse(html: str) -> Node:
    b = DomBuilder()
    b.feed(html)
    b.close()
    return b.root


def browser(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc


def dom(chromium: str, page: Path, tmp: Path) -> Node:
    out = browser(chromium, tmp / "profile-dom", "--dump-dom", page.as_uri()).stdout
    assert "</html>" in out, "chromium printed no DOM"
    return parse(out)


def title(action: Node) -> str:
    return action.all("h4", "action-title")[0].one("span", "name").text()


def without_badges(node: Node) -> str:
    return "".join(
        c if isinstance(c, str) else "" if "badge" in c.attrs.get("class", "").split() else without_badges(c)
        for c in node.children
    )


def norm(text: str) -> str:
    return " ".join(text.split())


# --- the page of the real package --------------------------------------------------------------


def test_review_page_in_chromium(built: BuildResult, chromium: str, tmp_path: Path) -> None:
    assert built.out_dir is not None
    page = built.out_dir / "review.html"
    assert page.read_bytes() == built.files["review.html"]
    doc = dom(chromium, page, tmp_path)
    # readable with JavaScript off: the script adds nothing, the browser shows the file's own content
    assert norm(doc.one("body").text()) == norm(parse(page.read_text(encoding="utf-8")).one("body").text())

    # every sentence and heading of the text: present, linked to what it became, linked back
    source = doc.by_id("source")
    for trace_doc in built.trace["documents"]:
        shown = source.one("div", "document", id=f"doc-{trace_doc['key']}")
        paragraphs = shown.one("div", "source-text").all("p")
        as_shown = " ".join(without_badges(p) for p in paragraphs)
        assert norm(as_shown) == norm(trace_doc["text"]), "the source text is not shown as it is"
        for seg in trace_doc["segments"]:
            sid = seg["id"]
            sent = doc.by_id(f"sent-{sid}")
            assert sent.tag == "a" and sent.attrs["href"] == f"#gen-{sid}", sid
            parts = [n.text() for n in source.all("a", "seg", data_seg=sid)]
            assert norm(" ".join(parts)) == norm(seg["text"]), sid
            gen = doc.by_id(f"gen-{sid}")
            assert gen.all("a", href=f"#sent-{sid}"), f"{sid}: no link back to the sentence"
            rows = gen.all("tr", "element")
            assert len(rows) == len(seg["elements"]), sid
            for row, el in zip(rows, seg["elements"], strict=True):
                back = row.one("a", "back")
                assert back.attrs["href"] == f"#sent-{sid}" and back.text() == el["path"]
                assert el["resource"] in row.text() and norm(el["value"]) in norm(row.text())
                doc.by_id(row.one("a", href=f"#res-{el['resource'].replace('/', '-')}").attrs["href"][1:])
    anchored = [n for n in source.all("a", "seg") if "id" in n.attrs]
    assert len(anchored) == sum(len(d["segments"]) for d in built.trace["documents"])

    # the plan diagram, built from the PlanDefinition: indications, the exclusive choice between
    # the two techniques with the steps of each, the lung-disease limit, the goals
    m = built.mappings[0]
    plan = doc.by_id("plan")
    choice = plan.one("div", "choice", data_selection="exactly-one")
    assert "exactly one" in choice.one("div", "choice-label").text().lower()
    alternatives = choice.one("div", "alternatives").kids("action")
    techniques = m.plan.techniques
    assert [title(a) for a in alternatives] == [t.title for t in techniques]
    assert [n.text() for n in choice.all("div", "or")] == ["or"] * (len(techniques) - 1)
    for alt, tech in zip(alternatives, techniques, strict=True):
        steps = alt.one("ol", "steps").kids("step")
        assert [title(s) for s in steps] == [s.title for s in tech.steps]
    indications = plan.one("div", "indications").text()
    for ind in m.plan.indications:
        assert ind.text in indications
    for lim in m.plan.limits:
        limit = [a for a in plan.all("div", "action") if title(a) == lim.title]
        assert len(limit) == 1 and "urgent" in limit[0].attrs["class"]
        assert lim.warning and lim.warning in limit[0].text()
    conditions = [norm(c.text()) for c in plan.all("div", "cond")]
    # a limit's condition states the text's own words (its quotes), the message a refusal shows
    assert all(any(all(norm(q.text) in c for q in lim.quotes) for c in conditions) for lim in m.plan.limits)
    goals = plan.one("div", "goals").text()
    for goal in m.plan.goals:
        assert goal.text in goals

    # the consent form exactly as the patient reads it, every risk in it
    form = doc.by_id("consent").one("article", "consent-form")
    expected = parse(consent_form_html(m)).one("body")
    assert norm(form.text()) == norm(expected.text())
    risks = form.all("li", "risk")
    assert [r.one("h3").text() for r in risks] == [r.title for r in m.consent.risks]
    for shown_risk, risk in zip(risks, m.consent.risks, strict=True):
        assert norm(risk.wording) in norm(shown_risk.text())

    # every code with its system, display and source; local codes awaiting review stand out
    terminology = doc.by_id("terminology")
    rows = terminology.one("tbody").all("tr")
    assert len(rows) == len(built.terminology["codes"])
    for row, code in zip(rows, built.terminology["codes"], strict=True):
        cells = [norm(td.text()) for td in row.all("td")]
        assert code["system"] in cells[0] and cells[1].startswith(code["code"])
        assert cells[2] == norm(code["display"]) and cells[3] == norm(code["source"])
        assert ("local" in row.attrs["class"].split()) == code["local"]
        assert bool(row.all("span", "local")) == code["local"]
    local = built.terminology["local_codes_awaiting_review"]
    assert (
        local
        and f"{len(local)} local code(s) awaiting terminology review"
        in terminology.one("div", "callout").text()
    )

    # the validation result of every resource, with its issues
    validation = doc.by_id("validation")
    shown_refs = [tr.attrs["data-resource"] for tr in validation.all("tr") if "data-resource" in tr.attrs]
    assert shown_refs == [f"{r['resourceType']}/{r['id']}" for r in built.resources]
    for ref, issue in built.validation:
        row = validation.one("tr", data_resource=ref)
        assert norm(issue.message) in norm(row.text())
    assert "not validated" not in validation.text()

    # nothing loaded from anywhere: only in-page links, no external element, a CSP that says so
    for node in doc.iter():
        for attr in ("src", "href", "action", "srcset", "data", "poster"):
            value = node.attrs.get(attr)
            assert value is None or value.startswith("#"), f"<{node.tag} {attr}={value!r}>"
        assert node.tag not in ("link", "img", "iframe", "object", "embed", "base"), node.tag
    csp = doc.one("meta", http_equiv="Content-Security-Policy").attrs["content"]
    assert "default-src 'none'" in csp
    assert [s.attrs.get("id") for s in doc.all("script")] == ["review-hover"]

    # a screenshot for the note
    shot = Path(os.environ.get("REVIEW_SCREENSHOT", tmp_path / "review-screenshot.png"))
    size = "--window-size=1280,4000"
    browser(chromium, tmp_path / "profile-shot", f"--screenshot={shot}", size, page.as_uri())
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1280, 4000)
    print(f"\nreview page screenshot: {shot} ({len(png)} bytes)")


# --- HTML in the source text -------------------------------------------------------------------

MARKUP = "Printed copies may show <script>alert(1)</script> and <b>bold</b> markup."
REASON = "A note about printing, <i>not</i> clinical content."


def test_html_in_source_text_is_shown_as_text(chromium: str, tmp_path: Path) -> None:
    cfg = copy_inputs(tmp_path)
    text = text_path(tmp_path)
    text.write_text(text.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + MARKUP + "\n", encoding="utf-8")
    mapping = mapping_path(tmp_path)
    yaml_text = mapping.read_text(encoding="utf-8")
    assert "non_clinical: []" in yaml_text
    quote = "<script>alert(1)</script> and <b>bold</b>"
    mapping.write_text(
        yaml_text.replace("non_clinical: []", f'non_clinical: [{{quote: "{quote}", reason: "{REASON}"}}]'),
        encoding="utf-8",
    )
    result = build(cfg, tmp_path / "out")
    segs = result.trace["documents"][0]["segments"]
    seg = next(s for s in segs if s["text"] == MARKUP)
    assert seg["non_clinical"]
    raw = (tmp_path / "out" / "review.html").read_text(encoding="utf-8")
    assert "<script>alert" not in raw and "<b>bold" not in raw and "<i>not" not in raw

    doc = dom(chromium, tmp_path / "out" / "review.html", tmp_path)
    sent = doc.by_id(f"sent-{seg['id']}")
    assert sent.text() == MARKUP and not [n for n in sent.iter() if n is not sent]
    assert "nc" in sent.attrs["class"].split()
    follower = sent.parent.children[sent.parent.children.index(sent) + 2]
    assert isinstance(follower, Node) and follower.text() == "non-clinical"
    gen = doc.by_id(f"gen-{seg['id']}")
    assert "nc" in gen.attrs["class"].split() and gen.one("span", "nc").text() == "non-clinical"
    assert REASON in gen.one("p", "nc-reason").text()
    allowed = {"section", "h2", "h3", "h4", "p", "div", "a", "span", "blockquote", "table", "colgroup", "col"}
    assert {n.tag for n in doc.by_id("source").all()} <= allowed | {"thead", "tbody", "tr", "th", "td"}
    scripts = doc.all("script")
    assert [s.attrs.get("id") for s in scripts] == ["review-hover"] and "alert" not in scripts[0].text()


# --- the command -------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "procfhir.cli", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip


def test_review_command_writes_the_page(built: BuildResult, tmp_path: Path) -> None:
    proc = run_cli("review", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "review.html").read_bytes() == built.files["review.html"]
    assert "review.html" in proc.stdout and not list(tmp_path.glob(".review-*"))

    missing = tmp_path / "no" / "such" / "folder" / "page.html"
    proc = run_cli("review", "--out", str(missing))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


# --- sign-off states ---------------------------------------------------------------------------

ADDED = "Please bring a list of the medicines you take."


def test_review_page_shows_the_sign_off_state_of_every_sentence(chromium: str, tmp_path: Path) -> None:
    cfg = copy_inputs(tmp_path)
    page_dir = tmp_path / "page"
    page_dir.mkdir()
    common = ("review", "--config", str(cfg), "--out", str(page_dir), "--no-validate")
    signed = run_cli(
        *common, "--sign-off", "--reviewer", "Dr. A Reviewer", "--at", "2026-11-30T09:00:00Z", "--yes"
    )
    assert signed.returncode == 0, signed.stderr
    # after the sign-off: a change in an unquoted gap of s2, and a new (non-clinical) paragraph
    text = text_path(tmp_path)
    old_s2 = "procedures that are typically performed"
    body = text.read_text(encoding="utf-8")
    text.write_text(
        body.replace(old_s2, "procedures that are no longer typically performed").rstrip("\n")
        + f"\n\n{ADDED}\n",
        encoding="utf-8",
    )
    mapping = mapping_path(tmp_path)
    mapping.write_text(
        mapping.read_text(encoding="utf-8").replace(
            "non_clinical: []", f'non_clinical: [{{quote: "{ADDED}", reason: "practical advice"}}]'
        ),
        encoding="utf-8",
    )
    proc = run_cli(*common)
    assert proc.returncode == 0, proc.stderr
    result = build(cfg, write=False, validate=False, enforce_signoff=False)
    segs = result.trace["documents"][0]["segments"]
    added = next(s["id"] for s in segs if s["text"] == ADDED)
    expected = {s["id"]: "signed" for s in segs} | {"s2": "changed", added: "unsigned"}

    doc = dom(chromium, page_dir / "review.html", tmp_path)
    labels = {"signed": "signed", "changed": "changed since sign-off", "unsigned": "never signed"}
    for sid, state in expected.items():
        sent = doc.by_id(f"sent-{sid}")
        states = {c[3:] for c in sent.attrs["class"].split() if c.startswith("so-")}
        assert states == {state}, (sid, sent.attrs["class"])
        badge = doc.by_id(f"gen-{sid}").one("span", "badge", data_signoff=state)
        assert badge.text() == labels[state], sid
    was = doc.by_id("gen-s2").one("p", "signoff-was")
    assert old_s2 in was.text() and "Dr. A Reviewer" in was.text() and "no longer" not in was.text()
    assert not doc.by_id("gen-s3").all("p", "signoff-was")
    row = doc.by_id("signoff").one("tr", data_document="vertebroplasty-kyphoplasty")
    assert "not signed off as it reads now" in row.text()
    assert f"{len(segs) - 2} signed, 1 changed since sign-off, 1 never signed" in norm(row.text())
    assert "vertebroplasty-kyphoplasty.lock.yaml" in row.text() and "Dr. A Reviewer" in row.text()


def test_committed_page_shows_the_text_never_signed(
    built: BuildResult, chromium: str, tmp_path: Path
) -> None:
    assert built.out_dir is not None
    doc = dom(chromium, built.out_dir / "review.html", tmp_path)
    segs = built.trace["documents"][0]["segments"]
    for seg in segs:
        assert "so-unsigned" in doc.by_id(f"sent-{seg['id']}").attrs["class"].split()
        assert (
            doc.by_id(f"gen-{seg['id']}").one("span", "badge", data_signoff="unsigned").text()
            == "never signed"
        )
    row = doc.by_id("signoff").one("tr", data_document="vertebroplasty-kyphoplasty")
    assert "no review lock: never signed off" in row.text() and f"{len(segs)} never signed" in row.text()
