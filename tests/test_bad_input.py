"""Bad input never hurts: a table of malformed inputs of our own over every command.

Each case sets up a working folder, runs one command on it (in-process, through the real CLI
entry point and its one error path) and checks that

- it ends with exit status 1 ("found problems") or 2 ("could not run"), as the case says;
- no traceback is printed and the message names what is wrong (a fragment given by the case);
- nothing in the working folder changed: no partial output, no temporary file left over;
- for credentials: no fragment of the secret appears anywhere in the output.

``python -m pytest tests/test_bad_input.py -q`` prints the counts at the end (see
``test_corpus_counts``).
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from procfhir.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOC = "vertebroplasty-kyphoplasty"
REFUSED = "http://127.0.0.1:9/fhir"  # nothing listens there: a case must fail before any request
SECRET = "s3cr3t-T0ken-Zq9xW7vK2mP4"

Setup = Callable[[Path], list[str]]


@dataclass
class Case:
    id: str
    setup: Setup
    codes: tuple[int, ...] = (2,)
    says: str = ""  # a fragment of the expected message (case-insensitive)
    env: dict[str, str] = field(default_factory=dict)
    secret: str = ""
    patch: dict[str, int] = field(default_factory=dict)  # "module:NAME" -> value (small limits)


CASES: list[Case] = []


def case(id: str, codes: tuple[int, ...] = (2,), says: str = "", **kw: object) -> Callable[[Setup], Setup]:
    def register(fn: Setup) -> Setup:
        CASES.append(Case(id, fn, codes, says, **kw))  # type: ignore[arg-type]
        return fn

    return register


# ---------------------------------------- helpers


def project(tmp: Path) -> Path:
    """A copy of the project's inputs (package.yaml, source text and mapping) in ``tmp``."""
    (tmp / "source").mkdir(parents=True, exist_ok=True)
    for ext in ("txt", "yaml"):
        shutil.copy(ROOT / "source" / f"{DOC}.{ext}", tmp / "source" / f"{DOC}.{ext}")
    shutil.copy(ROOT / "package.yaml", tmp / "package.yaml")
    return tmp / "package.yaml"


def config_with(tmp: Path, edit: Callable[[str], str]) -> Path:
    cfg = project(tmp)
    cfg.write_text(edit(cfg.read_text(encoding="utf-8")), encoding="utf-8")
    return cfg


def config_bytes(tmp: Path, data: bytes) -> Path:
    cfg = project(tmp)
    cfg.write_bytes(data)
    return cfg


def mapping_with(tmp: Path, edit: Callable[[str], str]) -> Path:
    cfg = project(tmp)
    m = tmp / "source" / f"{DOC}.yaml"
    m.write_text(edit(m.read_text(encoding="utf-8")), encoding="utf-8")
    return cfg


def mapping_bytes(tmp: Path, data: bytes) -> Path:
    cfg = project(tmp)
    (tmp / "source" / f"{DOC}.yaml").write_bytes(data)
    return cfg


def build_args(cfg: Path, tmp: Path) -> list[str]:
    return ["build", "--no-validate", "--config", str(cfg), "--out", str(tmp / "out")]


def deep_json(n: int) -> str:
    return '{"resourceType": "Basic", "extension": ' + "[" * n + "]" * n + "}"


PATIENT = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Test"}]}
# malformed JSON documents (name, bytes, message fragment)
BAD_JSON: list[tuple[str, bytes, str]] = [
    ("nan", b'{"resourceType": "Patient", "id": "p1", "x": NaN}', "NaN"),
    ("infinity", b'{"resourceType": "Patient", "id": "p1", "x": Infinity}', "Infinity"),
    ("minus-infinity", b'{"resourceType": "Patient", "id": "p1", "x": -Infinity}', "Infinity"),
    ("1e999", b'{"resourceType": "Patient", "id": "p1", "x": 1e999}', "out of range"),
    ("1e-999", b'{"resourceType": "Patient", "id": "p1", "x": 1e-999}', "out of range"),
    ("huge-int", b'{"resourceType": "Patient", "id": "p1", "x": 123456789012345678901234567890}', "range"),
    ("duplicate-key", b'{"resourceType": "Patient", "id": "p1", "id": "p2"}', "twice"),
    ("lone-surrogate", b'{"resourceType": "Patient", "id": "p1", "gender": "\\ud800"}', "surrogate"),
    ("utf16", json.dumps(PATIENT).encode("utf-16"), "UTF-16"),
    ("latin1", '{"resourceType": "Patient", "id": "p1", "x": "é"}'.encode("latin-1"), "UTF-8"),
    ("deep-100000", deep_json(100_000).encode(), "nested deeper"),
    ("deep-70", deep_json(70).encode(), "nested deeper"),
    ("truncated", b'{"resourceType": "Patient", "id": ', "not valid JSON"),
    ("empty", b"", "not valid JSON"),
    ("trailing-garbage", b'{"resourceType": "Patient", "id": "p1"} x', "extra data"),
    ("null", b"null", "null"),
    ("array", b"[1, 2]", ""),
    ("string", b'"Patient"', ""),
]


# ---------------------------------------- build: package.yaml

CONFIG_EDITS: list[tuple[str, Callable[[str], str], str]] = [
    ("unknown-key-typo", lambda t: t.replace("publisher:", "publsher:"), "did you mean 'publisher'"),
    ("unknown-key-documents", lambda t: t.replace("documents:", "documnets:"), "did you mean 'documents'"),
    ("unknown-key-extra", lambda t: t + "colour: blue\n", "unknown setting 'colour'"),
    ("duplicate-key", lambda t: t + "version: 9.9.9\n", "twice"),
    ("yaml-syntax", lambda t: t.replace("publisher:", "publisher: [unclosed"), "not valid YAML"),
    ("top-level-list", lambda t: "- a\n- b\n", "mapping of settings"),
    ("empty", lambda t: "", "mapping of settings"),
    ("canonical-not-url", lambda t: t.replace("canonical: https://", "canonical: ftp://"), "canonical"),
    ("version-not-semver", lambda t: t.replace("version: 0.1.0", "version: one"), "SemVer"),
    ("date-wrong", lambda t: t.replace('date: "2026-11-24"', "date: yesterday"), "YYYY-MM-DD"),
    ("package-name", lambda t: t.replace("package_name: example.", "package_name: Example "), "package_name"),
    ("documents-not-list", lambda t: t.replace("documents:\n", "documents: a.yaml\nx_:\n"), ""),
    (
        "documents-empty",
        lambda t: t.replace("documents:\n  - source/vertebroplasty-kyphoplasty.yaml", "documents: []"),
        "documents",
    ),
    (
        "documents-item-mapping",
        lambda t: t.replace("  - source/vertebroplasty-kyphoplasty.yaml", "  - {a: 1}"),
        "documents",
    ),
    ("document-missing", lambda t: t.replace("vertebroplasty-kyphoplasty.yaml", "nothing.yaml"), "not found"),
    ("document-is-folder", lambda t: t.replace("source/vertebroplasty-kyphoplasty.yaml", "source"), "folder"),
    ("status", lambda t: t.replace("status: draft", "status: final"), "status"),
    (
        "policy-javascript",
        lambda t: t.replace("https://fhir.example.org/policy", "javascript:alert(1)//"),
        "consent",
    ),
    ("email", lambda t: t.replace("fhir@example.org", "not an address"), "contact_email"),
    ("deep-nesting", lambda t: t + "title: " + "[" * 100 + "]" * 100 + "\n", "nested deeper"),
    ("python-tag", lambda t: t + "title: !!python/object:os.system x\n", "tag"),
    ("nan-version", lambda t: t.replace("version: 0.1.0", "version: .nan"), ""),
    ("huge-int", lambda t: t.replace("version: 0.1.0", "version: 123456789012345678901234567890"), "range"),
    ("null-publisher", lambda t: t.replace("publisher: Example", "publisher: ~\nx_: Example"), ""),
    ("list-publisher", lambda t: t.replace("publisher: Example", "publisher: [a, b]\nx_: Example"), ""),
    (
        "alias-bomb",
        lambda t: (
            t
            + "".join(
                f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}" if i else "lol"] * 10) + "]\n" for i in range(7)
            )
        ),
        "aliases",
    ),
]

for _name, _edit, _says in CONFIG_EDITS:

    def _setup(tmp: Path, edit: Callable[[str], str] = _edit) -> list[str]:
        return build_args(config_with(tmp, edit), tmp)

    _codes = (1, 2) if _name.startswith("document-") else (2,)  # a mapping's problem: "found problems"
    CASES.append(Case(f"build-config-{_name}", _setup, _codes, _says))


@case("build-config-not-utf8", says="UTF-8")
def _(tmp: Path) -> list[str]:
    cfg = project(tmp)
    return build_args(config_bytes(tmp, cfg.read_bytes().replace(b"Example Hospital", b"H\xf4pital")), tmp)


@case("build-config-utf16", says="UTF-16")
def _(tmp: Path) -> list[str]:
    cfg = project(tmp)
    return build_args(config_bytes(tmp, cfg.read_text(encoding="utf-8").encode("utf-16")), tmp)


@case("build-config-nul-byte", says="")
def _(tmp: Path) -> list[str]:
    cfg = project(tmp)
    return build_args(config_bytes(tmp, cfg.read_bytes().replace(b"Example Hospital", b"Ex\x00ample")), tmp)


@case("build-config-is-folder", says="")
def _(tmp: Path) -> list[str]:
    project(tmp)
    return ["build", "--no-validate", "--config", str(tmp / "source"), "--out", str(tmp / "out")]


@case("build-config-missing", says="")
def _(tmp: Path) -> list[str]:
    return ["build", "--no-validate", "--config", str(tmp / "nothing.yaml"), "--out", str(tmp / "out")]


# ---------------------------------------- build: output places


@case("build-out-is-project", says="did not write")
def _(tmp: Path) -> list[str]:
    cfg = project(tmp)
    return ["build", "--no-validate", "--config", str(cfg), "--out", str(tmp)]


@case("build-out-is-file", says="not a folder")
def _(tmp: Path) -> list[str]:
    cfg = project(tmp)
    (tmp / "out").write_text("mine")
    return ["build", "--no-validate", "--config", str(cfg), "--out", str(tmp / "out")]


@case("build-out-under-file", says="not a folder")
def _(tmp: Path) -> list[str]:
    cfg = project(tmp)
    (tmp / "plain").write_text("mine")
    return ["build", "--no-validate", "--config", str(cfg), "--out", str(tmp / "plain" / "out")]


@case("build-out-user-folder", says="did not write")
def _(tmp: Path) -> list[str]:
    cfg = project(tmp)
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("precious")
    return ["build", "--no-validate", "--config", str(cfg), "--out", str(tmp / "out")]


# ---------------------------------------- build: mappings and texts

MAPPING_EDITS: list[tuple[str, Callable[[str], str], str, tuple[int, ...]]] = [
    ("duplicate-top-key", lambda t: t + "document:\n  key: x\n", "twice", (1,)),
    ("duplicate-nested-key", lambda t: t.replace("  key: ", "  key: a\n  key: ", 1), "twice", (1,)),
    ("yaml-syntax", lambda t: t + "\n  - : : [\n", "not valid YAML", (1,)),
    ("empty", lambda t: "", "", (1,)),
    ("top-level-list", lambda t: "- 1\n", "", (1,)),
    ("deep-nesting", lambda t: t + "deep: " + "[" * 200 + "]" * 200 + "\n", "nested deeper", (1,)),
    ("inf-number", lambda t: t + "extra_number: .inf\n", "not allowed", (1,)),
    ("huge-int", lambda t: t + "extra_number: 99999999999999999999999\n", "range", (1,)),
    ("lone-surrogate", lambda t: t + 'extra: "\\ud800"\n', "", (1,)),
    ("python-tag", lambda t: t + "extra: !!python/name:os.system x\n", "tag", (1,)),
    (
        "one-mistyped-quote",
        lambda t: t.replace("is an extremely rare complication", "is an extremly rare complication"),
        "extremly rare complication",
        (1,),
    ),
    ("unknown-field", lambda t: t + "colour: blue\n", "colour", (1,)),
]

for _name, _edit, _says, _codes in MAPPING_EDITS:

    def _msetup(tmp: Path, edit: Callable[[str], str] = _edit) -> list[str]:
        return build_args(mapping_with(tmp, edit), tmp)

    CASES.append(Case(f"build-mapping-{_name}", _msetup, _codes, _says))


@case("build-mapping-not-utf8", codes=(1,), says="UTF-8")
def _(tmp: Path) -> list[str]:
    return build_args(mapping_bytes(tmp, b"document:\n  key: caf\xe9\n"), tmp)


@case("build-mapping-utf16", codes=(1,), says="UTF-16")
def _(tmp: Path) -> list[str]:
    return build_args(mapping_bytes(tmp, "document:\n  key: x\n".encode("utf-16")), tmp)


@case("build-source-not-utf8", codes=(1,), says="UTF-8")
def _(tmp: Path) -> list[str]:
    cfg = project(tmp)
    txt = tmp / "source" / f"{DOC}.txt"
    txt.write_bytes(txt.read_bytes().replace(b"extremely", b"extr\xe9mely", 1))
    return build_args(cfg, tmp)


@case("build-source-is-folder", codes=(1,), says="folder")
def _(tmp: Path) -> list[str]:
    cfg = project(tmp)
    txt = tmp / "source" / f"{DOC}.txt"
    txt.unlink()
    txt.mkdir()
    return build_args(cfg, tmp)


@case("build-source-missing", codes=(1,), says="not found")
def _(tmp: Path) -> list[str]:
    cfg = project(tmp)
    (tmp / "source" / f"{DOC}.txt").unlink()
    return build_args(cfg, tmp)


@case("build-mapping-is-folder", codes=(1,), says="folder")
def _(tmp: Path) -> list[str]:
    cfg = project(tmp)
    m = tmp / "source" / f"{DOC}.yaml"
    m.unlink()
    m.mkdir()
    return build_args(cfg, tmp)


# ---------------------------------------- review and draft


for _name, _edit, _says in CONFIG_EDITS[:8]:

    def _rsetup(tmp: Path, edit: Callable[[str], str] = _edit) -> list[str]:
        return [
            "review",
            "--no-validate",
            "--config",
            str(config_with(tmp, edit)),
            "--out",
            str(tmp / "r.html"),
        ]

    CASES.append(Case(f"review-config-{_name}", _rsetup, (1, 2), _says))


@case("review-out-missing-folder", codes=(1, 2), says="does not exist")
def _(tmp: Path) -> list[str]:
    cfg = project(tmp)
    return ["review", "--no-validate", "--config", str(cfg), "--out", str(tmp / "no" / "r.html")]


@case("review-out-user-file", says="did not write")
def _(tmp: Path) -> list[str]:
    cfg = project(tmp)
    (tmp / "notes.html").write_text("<html><body>my own notes</body></html>\n")
    return ["review", "--no-validate", "--config", str(cfg), "--out", str(tmp / "notes.html")]


@case("review-out-folder-with-user-review-html", says="did not write")
def _(tmp: Path) -> list[str]:
    cfg = project(tmp)
    (tmp / "site").mkdir()
    (tmp / "site" / "review.html").write_text(
        "<!DOCTYPE html>\n<html><head><title>Review</title></head></html>\n"
    )
    return ["review", "--no-validate", "--config", str(cfg), "--out", str(tmp / "site")]


@case("review-out-user-symlink", says="did not write")
def _(tmp: Path) -> list[str]:
    cfg = project(tmp)
    (tmp / "mine.txt").write_text("mine\n")
    (tmp / "r.html").symlink_to(tmp / "mine.txt")
    return ["review", "--no-validate", "--config", str(cfg), "--out", str(tmp / "r.html")]


@case("review-mapping-duplicate-key", codes=(1, 2), says="twice")
def _(tmp: Path) -> list[str]:
    cfg = mapping_with(tmp, lambda t: t + "document:\n  key: x\n")
    return ["review", "--no-validate", "--config", str(cfg), "--out", str(tmp / "r.html")]


def _draft_text(tmp: Path, data: bytes) -> Path:
    p = tmp / "new-procedure.txt"
    p.write_bytes(data)
    return p


@case("draft-text-not-utf8", codes=(1, 2), says="UTF-8")
def _(tmp: Path) -> list[str]:
    return ["draft", str(_draft_text(tmp, b"Caf\xe9 procedure.\n")), "--out", str(tmp / "m.yaml")]


@case("draft-text-utf16", codes=(1, 2), says="")
def _(tmp: Path) -> list[str]:
    return ["draft", str(_draft_text(tmp, "A procedure.\n".encode("utf-16"))), "--out", str(tmp / "m.yaml")]


@case("draft-text-missing", codes=(1, 2), says="")
def _(tmp: Path) -> list[str]:
    return ["draft", str(tmp / "none.txt"), "--out", str(tmp / "m.yaml")]


@case("draft-text-is-folder", codes=(1, 2), says="")
def _(tmp: Path) -> list[str]:
    (tmp / "folder.txt").mkdir()
    return ["draft", str(tmp / "folder.txt"), "--out", str(tmp / "m.yaml")]


@case("draft-out-exists", codes=(1, 2), says="")
def _(tmp: Path) -> list[str]:
    (tmp / "m.yaml").write_text("mine")
    return ["draft", str(_draft_text(tmp, b"A procedure.\n")), "--out", str(tmp / "m.yaml")]


@case("draft-out-force-user-file", says="did not write")
def _(tmp: Path) -> list[str]:
    (tmp / "m.yaml").write_text("document:\n  key: mine\n")
    return ["draft", str(_draft_text(tmp, b"A procedure.\n")), "--out", str(tmp / "m.yaml"), "--force"]


@case("draft-out-force-header-not-first", says="did not write")
def _(tmp: Path) -> list[str]:
    (tmp / "m.yaml").write_text("key: mine\n# Draft mapping of x.txt, written by `procfhir draft`.\n")
    return ["draft", str(_draft_text(tmp, b"A procedure.\n")), "--out", str(tmp / "m.yaml"), "--force"]


@case("draft-out-force-missing-folder", says="does not exist")
def _(tmp: Path) -> list[str]:
    return ["draft", str(_draft_text(tmp, b"A procedure.\n")), "--out", str(tmp / "no" / "m.yaml"), "--force"]


@case("draft-out-under-file", codes=(1, 2), says="")
def _(tmp: Path) -> list[str]:
    (tmp / "plain").write_text("mine")
    return ["draft", str(_draft_text(tmp, b"A procedure.\n")), "--out", str(tmp / "plain" / "m.yaml")]


# ---------------------------------------- validate

for _name, _data, _says in BAD_JSON:

    def _vsetup(tmp: Path, data: bytes = _data) -> list[str]:
        (tmp / "r.json").write_bytes(data)
        return ["validate", str(tmp / "r.json")]

    # the validator's own words for some (exit 2: an input it could not read)
    _v_says = {"duplicate-key": "more than once", "utf16": "UTF-8", "deep-100000": "deep", "deep-70": ""}.get(
        _name, _says
    )
    CASES.append(Case(f"validate-{_name}", _vsetup, (1, 2), _v_says))


def _tgz(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


@case("validate-tgz-not-gzip", codes=(1, 2), says="tarball")
def _(tmp: Path) -> list[str]:
    (tmp / "p.tgz").write_bytes(b"not a tarball")
    return ["validate", str(tmp / "p.tgz")]


@case("validate-tgz-bad-member", codes=(1, 2), says="more than once")
def _(tmp: Path) -> list[str]:
    (tmp / "p.tgz").write_bytes(
        _tgz({"package/Patient-p1.json": b'{"resourceType": "Patient", "id": "a", "id": "b"}'})
    )
    return ["validate", str(tmp / "p.tgz")]


@case(
    "validate-tgz-member-too-large",
    codes=(1, 2),
    says="accepted",
    patch={"procfhir.validator.inputs:MAX_FILE_BYTES": 100},
)
def _(tmp: Path) -> list[str]:
    (tmp / "p.tgz").write_bytes(
        _tgz({"package/Patient-p1.json": json.dumps({**PATIENT, "x": "a" * 200}).encode()})
    )
    return ["validate", str(tmp / "p.tgz")]


@case("validate-folder-bad-json", codes=(1, 2), says="NaN")
def _(tmp: Path) -> list[str]:
    (tmp / "in").mkdir()
    (tmp / "in" / "a.json").write_bytes(b'{"resourceType": "Patient", "x": NaN}')
    return ["validate", str(tmp / "in")]


@case("validate-missing", codes=(1, 2), says="no such file")
def _(tmp: Path) -> list[str]:
    return ["validate", str(tmp / "none.json")]


@case("validate-bundle-entry-int", codes=(1, 2), says="")
def _(tmp: Path) -> list[str]:
    (tmp / "b.json").write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [1]}))
    return ["validate", str(tmp / "b.json")]


@case("validate-bundle-entry-request-string", codes=(1, 2), says="")
def _(tmp: Path) -> list[str]:
    b = {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": "PUT", "resource": PATIENT}]}
    (tmp / "b.json").write_text(json.dumps(b))
    return ["validate", str(tmp / "b.json")]


@case("validate-resource-type-not-string", codes=(1, 2), says="")
def _(tmp: Path) -> list[str]:
    (tmp / "r.json").write_text(json.dumps({"resourceType": 7, "id": "x"}))
    return ["validate", str(tmp / "r.json")]


@case("validate-outcome-missing-folder", codes=(2,), says="")
def _(tmp: Path) -> list[str]:
    (tmp / "r.json").write_text(json.dumps(PATIENT))
    return ["validate", str(tmp / "r.json"), "--outcome", str(tmp / "no" / "o.json")]


@case("validate-outcome-is-folder", codes=(2,), says="")
def _(tmp: Path) -> list[str]:
    (tmp / "r.json").write_text(json.dumps(PATIENT))
    (tmp / "o").mkdir()
    return ["validate", str(tmp / "r.json"), "--outcome", str(tmp / "o")]


@case("validate-outcome-user-file", says="did not write")
def _(tmp: Path) -> list[str]:
    (tmp / "r.json").write_text(json.dumps(PATIENT))
    (tmp / "o.json").write_text("my notes, not JSON\n")
    return ["validate", str(tmp / "r.json"), "--outcome", str(tmp / "o.json")]


@case("validate-outcome-user-json", says="not an OperationOutcome")
def _(tmp: Path) -> list[str]:
    (tmp / "r.json").write_text(json.dumps(PATIENT))
    (tmp / "o.json").write_text(json.dumps(PATIENT))  # a resource of the user's: never overwritten
    return ["validate", str(tmp / "r.json"), "--outcome", str(tmp / "o.json")]


@case("validate-outcome-is-the-input", says="did not write")
def _(tmp: Path) -> list[str]:
    (tmp / "r.json").write_text(json.dumps(PATIENT))
    return ["validate", str(tmp / "r.json"), "--outcome", str(tmp / "r.json")]


# ---------------------------------------- apply

for _name, _data, _says in BAD_JSON:

    def _asetup(tmp: Path, data: bytes = _data) -> list[str]:
        (tmp / "ctx.json").write_bytes(data)
        return ["apply", str(tmp / "ctx.json"), "--out", str(tmp / "out.json")]

    CASES.append(Case(f"apply-context-{_name}", _asetup, (1, 2), _says if _name != "null" else "JSON object"))

CONTEXT = ROOT / "tests" / "fixtures" / "apply" / "context-kyphoplasty.json"


@case("apply-context-missing", codes=(1, 2), says="no such")
def _(tmp: Path) -> list[str]:
    return ["apply", str(tmp / "none.json")]


@case("apply-context-is-folder", codes=(1, 2), says="director")
def _(tmp: Path) -> list[str]:
    (tmp / "ctx").mkdir()
    return ["apply", str(tmp / "ctx")]


@case("apply-out-existing-user-file", codes=(2,), says="did not write")
def _(tmp: Path) -> list[str]:
    (tmp / "out.json").write_text("my notes")
    return ["apply", str(CONTEXT), "--out", str(tmp / "out.json")]


@case("apply-out-is-folder", codes=(2,), says="folder")
def _(tmp: Path) -> list[str]:
    (tmp / "out").mkdir()
    return ["apply", str(CONTEXT), "--out", str(tmp / "out")]


@case("apply-batch-out-user-folder-overwrite", codes=(2,), says="did not write")
def _(tmp: Path) -> list[str]:
    (tmp / "in.ndjson").write_text(CONTEXT.read_text().replace("\n", " ") + "\n")
    (tmp / "out").mkdir()
    (tmp / "out" / "mine.txt").write_text("precious")
    return ["apply", "--batch", str(tmp / "in.ndjson"), "--out", str(tmp / "out"), "--overwrite"]


@case("apply-batch-out-is-file", codes=(2,), says="not a folder")
def _(tmp: Path) -> list[str]:
    (tmp / "in.ndjson").write_text(CONTEXT.read_text().replace("\n", " ") + "\n")
    (tmp / "out").write_text("mine")
    return ["apply", "--batch", str(tmp / "in.ndjson"), "--out", str(tmp / "out")]


@case("apply-batch-input-missing", codes=(1, 2), says="no such file")
def _(tmp: Path) -> list[str]:
    return ["apply", "--batch", str(tmp / "none.ndjson"), "--out", str(tmp / "out")]


@case("apply-batch-workers-zero", codes=(2,), says="workers")
def _(tmp: Path) -> list[str]:
    (tmp / "in.ndjson").write_text(CONTEXT.read_text().replace("\n", " ") + "\n")
    return ["apply", "--batch", str(tmp / "in.ndjson"), "--out", str(tmp / "out"), "--workers", "0"]


@case("apply-batch-workers-negative", codes=(2,), says="workers")
def _(tmp: Path) -> list[str]:
    (tmp / "in.ndjson").write_text(CONTEXT.read_text().replace("\n", " ") + "\n")
    return ["apply", "--batch", str(tmp / "in.ndjson"), "--out", str(tmp / "out"), "--workers", "-3"]


@case("apply-package-bundle-nan", codes=(1, 2), says="")
def _(tmp: Path) -> list[str]:
    (tmp / "pkg.json").write_bytes(b'{"resourceType": "Bundle", "type": "collection", "total": NaN}')
    return ["apply", str(CONTEXT), "--package", str(tmp / "pkg.json")]


@case("apply-package-missing", codes=(1, 2), says="")
def _(tmp: Path) -> list[str]:
    return ["apply", str(CONTEXT), "--package", str(tmp / "none")]


@case("apply-package-tgz-garbage", codes=(1, 2), says="")
def _(tmp: Path) -> list[str]:
    (tmp / "p.tgz").write_bytes(b"\x1f\x8b not really")
    return ["apply", str(CONTEXT), "--package", str(tmp / "p.tgz")]


@case(
    "apply-package-tgz-member-too-large",
    codes=(2,),
    says="accepted",
    patch={"procfhir.apply.knowledge:MAX_FILE_BYTES": 100},
)
def _(tmp: Path) -> list[str]:
    plan = {"resourceType": "PlanDefinition", "id": "p", "title": "a" * 200}
    (tmp / "p.tgz").write_bytes(_tgz({"package/PlanDefinition-p.json": json.dumps(plan).encode()}))
    return ["apply", str(CONTEXT), "--package", str(tmp / "p.tgz")]


@case(
    "apply-package-tgz-gzip-bomb",
    codes=(2,),
    says="unpacks to more than",
    patch={"procfhir.apply.knowledge:MAX_PACKAGE_BYTES": 64 * 1024},
)
def _(tmp: Path) -> list[str]:
    (tmp / "p.tgz").write_bytes(_tgz({"package/x.json": b" " * (4 * 1024 * 1024)}))  # 4 MiB from ~4 KiB
    return ["apply", str(CONTEXT), "--package", str(tmp / "p.tgz")]


@case("apply-package-tgz-duplicate-key", codes=(2,), says="twice")
def _(tmp: Path) -> list[str]:
    data = b'{"resourceType": "PlanDefinition", "id": "p", "id": "q"}'
    (tmp / "p.tgz").write_bytes(_tgz({"package/PlanDefinition-p.json": data}))
    return ["apply", str(CONTEXT), "--package", str(tmp / "p.tgz")]


@case("apply-package-tgz-nan", codes=(2,), says="NaN")
def _(tmp: Path) -> list[str]:
    data = b'{"resourceType": "ValueSet", "id": "v", "version": NaN}'
    (tmp / "p.tgz").write_bytes(_tgz({"package/ValueSet-v.json": data}))
    return ["apply", str(CONTEXT), "--package", str(tmp / "p.tgz")]


def _package_folder(tmp: Path, data: bytes) -> list[str]:
    (tmp / "pkg").mkdir()
    (tmp / "pkg" / "PlanDefinition-p.json").write_bytes(data)
    return ["apply", str(CONTEXT), "--package", str(tmp / "pkg")]


for _name, _data, _says in BAD_JSON:
    if _name in ("array", "string", "null"):  # a folder's non-resource JSON (package.json...) is skipped
        continue

    def _pfsetup(tmp: Path, data: bytes = _data) -> list[str]:
        return _package_folder(tmp, data)

    CASES.append(Case(f"apply-package-folder-{_name}", _pfsetup, (2,), _says))


@case("apply-package-bundle-duplicate-key", codes=(2,), says="twice")
def _(tmp: Path) -> list[str]:
    (tmp / "b.json").write_bytes(b'{"resourceType": "Bundle", "type": "collection", "type": "batch"}')
    return ["apply", str(CONTEXT), "--package", str(tmp / "b.json")]


@case(
    "apply-package-bundle-too-large",
    codes=(2,),
    says="larger than",
    patch={"procfhir.apply.knowledge:MAX_FILE_BYTES": 10},
)
def _(tmp: Path) -> list[str]:
    (tmp / "b.json").write_text(json.dumps({"resourceType": "Bundle", "type": "collection"}))
    return ["apply", str(CONTEXT), "--package", str(tmp / "b.json")]


# ---------------------------------------- upload (inputs)


def _upload(tmp: Path, doc: object, *extra: str) -> list[str]:
    (tmp / "r.json").write_text(json.dumps(doc))
    return ["upload", str(tmp / "r.json"), "--server", REFUSED, *extra]


UPLOAD_DOCS: list[tuple[str, object, str]] = [
    ("id-path-traversal", {"resourceType": "Patient", "id": "../metadata"}, "FHIR's rules"),
    ("type-path-traversal", {"resourceType": "../$expunge", "id": "x"}, "not a FHIR resource type"),
    ("type-lower-case", {"resourceType": "patient", "id": "x"}, "not a FHIR resource type"),
    ("type-with-query", {"resourceType": "Patient?_id=x", "id": "x"}, "not a FHIR resource type"),
    ("id-too-long", {"resourceType": "Patient", "id": "a" * 65}, "FHIR's rules"),
    ("id-with-space", {"resourceType": "Patient", "id": "a b"}, "FHIR's rules"),
    ("id-with-slash", {"resourceType": "Patient", "id": "a/b"}, "FHIR's rules"),
    ("id-with-query", {"resourceType": "Patient", "id": "a?b=c"}, "FHIR's rules"),
    ("id-empty", {"resourceType": "Patient", "id": ""}, "FHIR's rules"),
    ("id-number", {"resourceType": "Patient", "id": 7}, "not a string"),
    ("no-resource-type", {"id": "x"}, "no resourceType"),
    ("url-control-char", {"resourceType": "CodeSystem", "id": "x", "url": "http://a/\n"}, "printable"),
    ("bundle-entry-int", {"resourceType": "Bundle", "type": "collection", "entry": [1]}, "holds no resource"),
    (
        "bundle-entry-request-string",
        {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": "DELETE"}]},
        "holds no resource",
    ),
    ("bundle-entry-not-list", {"resourceType": "Bundle", "type": "collection", "entry": 5}, "not a list"),
    (
        "bundle-entry-bad-id",
        {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"resource": {"resourceType": "Patient", "id": ".."}}],
        },
        "FHIR's rules",
    ),
    (
        "bundle-delete",
        {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "DELETE"}}]},
        "DELETE",
    ),
]

for _name, _doc, _says in UPLOAD_DOCS:

    def _usetup(tmp: Path, doc: object = _doc) -> list[str]:
        return _upload(tmp, doc)

    CASES.append(Case(f"upload-{_name}", _usetup, (2,), _says))

for _name, _data, _says in BAD_JSON:

    def _ujsetup(tmp: Path, data: bytes = _data) -> list[str]:
        (tmp / "r.json").write_bytes(data)
        return ["upload", str(tmp / "r.json"), "--server", REFUSED]

    CASES.append(
        Case(
            f"upload-json-{_name}", _ujsetup, (2,), _says if _name not in ("array", "string", "null") else ""
        )
    )


@case("upload-tgz-not-gzip", says="not a readable")
def _(tmp: Path) -> list[str]:
    (tmp / "p.tgz").write_bytes(b"\x1f\x8b garbage")
    return ["upload", str(tmp / "p.tgz"), "--server", REFUSED]


@case("upload-tgz-member-too-large", says="accepted", patch={"procfhir.upload.resources:MAX_FILE_BYTES": 100})
def _(tmp: Path) -> list[str]:
    (tmp / "p.tgz").write_bytes(
        _tgz({"package/Patient-p1.json": json.dumps({**PATIENT, "x": "a" * 200}).encode()})
    )
    return ["upload", str(tmp / "p.tgz"), "--server", REFUSED]


@case(
    "upload-tgz-unpacks-too-large", says="unpacks", patch={"procfhir.upload.resources:MAX_PACKAGE_BYTES": 100}
)
def _(tmp: Path) -> list[str]:
    members = {
        f"package/Patient-p{i}.json": json.dumps({**PATIENT, "id": f"p{i}"}).encode() for i in range(5)
    }
    (tmp / "p.tgz").write_bytes(_tgz(members))
    return ["upload", str(tmp / "p.tgz"), "--server", REFUSED]


@case("upload-file-too-large", says="larger than", patch={"procfhir.upload.resources:MAX_FILE_BYTES": 10})
def _(tmp: Path) -> list[str]:
    return _upload(tmp, PATIENT)


@case("upload-empty-folder", says="no .json files")
def _(tmp: Path) -> list[str]:
    (tmp / "in").mkdir()
    return ["upload", str(tmp / "in"), "--server", REFUSED]


@case("upload-missing", says="no such file")
def _(tmp: Path) -> list[str]:
    return ["upload", str(tmp / "none"), "--server", REFUSED]


SERVERS = [
    ("ipv6-unclosed", "http://[::1/fhir", "malformed"),
    ("bad-port", "http://127.0.0.1:port/fhir", "malformed"),
    ("ftp", "ftp://127.0.0.1/fhir", "not an http"),
    ("credentials-in-url", "https://user:pw@example.org/fhir", "must not carry credentials"),
    ("space", "http://127.0.0.1/fh ir", "spaces"),
    ("plain-http-remote", "http://fhir.example.org/fhir", "refusing plain http"),
    ("no-host", "http:///fhir", "not an http"),
]

for _name, _server, _says in SERVERS:

    def _ssetup(tmp: Path, server: str = _server) -> list[str]:
        (tmp / "r.json").write_text(json.dumps(PATIENT))
        return ["upload", str(tmp / "r.json"), "--server", server]

    CASES.append(Case(f"upload-server-{_name}", _ssetup, (2,), _says))

OPTIONS = [
    ("timeout-zero", ["--timeout", "0"], "timeout"),
    ("timeout-negative", ["--timeout", "-5"], "timeout"),
    ("request-timeout-zero", ["--request-timeout", "0"], "request-timeout"),
    ("batch-size-zero", ["--batch-size", "0"], "batch-size"),
    ("workers-zero", ["--workers", "0"], "workers"),
    ("max-attempts-zero", ["--max-attempts", "0"], "max-attempts"),
    ("repair-without-conditional", ["--repair"], "--repair"),
]

for _name, _opts, _says in OPTIONS:

    def _osetup(tmp: Path, opts: list[str] = _opts) -> list[str]:
        return _upload(tmp, PATIENT, *opts)

    CASES.append(Case(f"upload-option-{_name}", _osetup, (2,), _says))


# credentials: refused before use, never echoed
SECRET_VARIANTS = [
    ("newline", SECRET[:12] + "\n" + SECRET[12:]),
    ("carriage-return", SECRET[:12] + "\r" + SECRET[12:]),
    ("nul", SECRET[:12] + "\x00" + SECRET[12:]),
    ("escape", SECRET[:12] + "\x1b[31m" + SECRET[12:]),
    ("tab", SECRET[:12] + "\t" + SECRET[12:]),
    ("non-ascii", SECRET[:12] + "é" + SECRET[12:]),
]

for _name, _secret in SECRET_VARIANTS:
    if _name != "nul":  # the environment cannot hold a NUL

        def _env_setup(tmp: Path) -> list[str]:
            return _upload(tmp, PATIENT, "--auth", "bearer", "--token-env", "PROCFHIR_TEST_TOKEN")

        CASES.append(
            Case(
                f"upload-token-env-{_name}",
                _env_setup,
                (2,),
                "token",
                {"PROCFHIR_TEST_TOKEN": _secret},
                _secret,
            )
        )

    def _file_setup(tmp: Path, secret: str = _secret) -> list[str]:
        (tmp / "token").write_bytes(secret.encode("utf-8"))
        return _upload(tmp, PATIENT, "--auth", "bearer", "--token-file", str(tmp / "token"))

    CASES.append(Case(f"upload-token-file-{_name}", _file_setup, (2,), "token", secret=_secret))

    def _pw_setup(tmp: Path, secret: str = _secret) -> list[str]:
        (tmp / "pw").write_bytes(secret.encode("utf-8"))
        return _upload(tmp, PATIENT, "--auth", "basic", "--user", "u", "--password-file", str(tmp / "pw"))

    CASES.append(Case(f"upload-password-file-{_name}", _pw_setup, (2,), "password", secret=_secret))


@case("upload-token-file-two-lines", says="line break", secret=SECRET + "\n" + SECRET[::-1] + "\n")
def _(tmp: Path) -> list[str]:
    (tmp / "token").write_text(SECRET + "\n" + SECRET[::-1] + "\n")
    return _upload(tmp, PATIENT, "--auth", "bearer", "--token-file", str(tmp / "token"))


@case("upload-token-file-not-utf8", says="UTF-8", secret=SECRET)
def _(tmp: Path) -> list[str]:
    (tmp / "token").write_bytes(SECRET.encode() + b"\xff")
    return _upload(tmp, PATIENT, "--auth", "bearer", "--token-file", str(tmp / "token"))


@case("upload-token-file-is-folder", says="folder")
def _(tmp: Path) -> list[str]:
    (tmp / "token").mkdir()
    return _upload(tmp, PATIENT, "--auth", "bearer", "--token-file", str(tmp / "token"))


@case("upload-private-key-garbage", says="private key", secret=SECRET)
def _(tmp: Path) -> list[str]:
    (tmp / "key.pem").write_text(f"-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----\n")
    return _upload(
        tmp, PATIENT, "--auth", "smart", "--client-id", "c", "--private-key-file", str(tmp / "key.pem")
    )


# ---------------------------------------- the test


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = p.read_bytes() if p.is_file() else None
    return out


def _fragments(secret: str, n: int = 6) -> set[str]:
    parts = [p for p in secret.replace("\r", "\n").replace("\x00", "\n").replace("\x1b", "\n").split("\n")]
    pieces = {s for part in parts for s in (part[i : i + n] for i in range(max(0, len(part) - n + 1)))}
    return {s for s in pieces if len(s) == n}


RESULTS: dict[str, str] = {}


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input(c: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    for target, value in c.patch.items():
        module, name = target.split(":")
        monkeypatch.setattr(importlib.import_module(module), name, value)
    work = tmp_path / "work"
    work.mkdir()
    args = c.setup(work)
    before = _snapshot(work)
    monkeypatch.chdir(work)
    result = CliRunner().invoke(main, args, env=c.env or None, catch_exceptions=True)
    output = result.output
    problems = []
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        problems.append(f"exception {type(result.exception).__name__}: {result.exception}")
    if "Traceback" in output:
        problems.append("traceback printed")
    if result.exit_code not in c.codes:
        problems.append(f"exit status {result.exit_code}, expected {c.codes}")
    if c.says and c.says.lower() not in output.lower():
        problems.append(f"message does not say {c.says!r}")
    if _snapshot(work) != before:
        problems.append("the working folder changed (partial output or temporary files)")
    leaked = sorted(f for f in _fragments(c.secret) if f in output) if c.secret else []
    if leaked:
        problems.append(f"secret fragments printed: {leaked[:3]}")
    RESULTS[c.id] = "; ".join(problems) or "ok"
    assert not problems, f"{c.id}: {'; '.join(problems)}\n--- output:\n{output[-2000:]}"


def test_corpus_counts() -> None:
    """At least 100 inputs, over every command; prints the figures for the issue note."""
    commands = {c.id.split("-")[0] for c in CASES}
    assert len(CASES) >= 100, len(CASES)
    assert {"build", "validate", "apply", "upload", "review", "draft"} <= commands
    secrets = sum(1 for c in CASES if c.secret)
    print(
        f"\nbad-input corpus: {len(CASES)} inputs over {', '.join(sorted(commands))}; {secrets} with secrets"
    )
