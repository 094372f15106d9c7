"""Conformance resources: the R4 core package from the FHIR package cache (read lazily, file by
file, through its ``.index.json``) plus extra definitions (a package's own profiles, ValueSets,
CodeSystems, knowledge resources), and StructureDefinitions compiled into element trees."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

CORE_BASE = "http://hl7.org/fhir/StructureDefinition/"
FHIRPATH_STRING = "http://hl7.org/fhirpath/System.String"
_FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
_REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"


_PROSE = ("definition", "comment", "requirements", "mapping", "alias", "example", "meaningWhenMissing")


def _strip_prose(res: dict[str, Any]) -> None:
    """Drop what validation never reads from a core conformance resource (in place)."""
    res.pop("text", None)
    res.pop("mapping", None)
    for part in ("snapshot", "differential"):
        for ed in (res.get(part) or {}).get("element") or []:
            for k in _PROSE:
                ed.pop(k, None)
            for c in ed.get("constraint") or []:
                c.pop("xpath", None)
    todo = list(res.get("concept") or [])
    while todo:
        c = todo.pop()
        if isinstance(c, dict):
            c.pop("definition", None)
            c.pop("designation", None)
            todo.extend(c.get("concept") or [])


class DefinitionsError(Exception):
    """The core definitions are not available (cache not filled) or unreadable."""


def _cap(code: str) -> str:
    return code[:1].upper() + code[1:]


class Node:
    """One element of a StructureDefinition snapshot, with its children and slices."""

    __slots__ = (
        "ed",
        "id",
        "path",
        "name",
        "choice",
        "min",
        "max",
        "types",
        "children",
        "slices",
        "slicing",
        "fixed",
        "pattern",
        "binding",
        "constraints",
        "content_ref",
        "slice_name",
        "repeats",
        "max_length",
        "min_value",
        "max_value",
        "_keymap",
        "sd",
        "plans",
        "table",
    )

    def __init__(self, ed: dict[str, Any], sd: CompiledSD) -> None:
        self.ed = ed
        self.sd = sd
        self.id: str = ed.get("id") or ed["path"]
        self.path: str = ed["path"]
        last = self.path.rsplit(".", 1)[-1]
        self.choice = last.endswith("[x]")
        self.name = last[:-3] if self.choice else last
        self.slice_name: str | None = ed.get("sliceName")
        self.min: int = int(ed.get("min", 0))
        mx = ed.get("max", "*")
        self.max: int | None = None if mx == "*" else int(mx)
        base_max = (ed.get("base") or {}).get("max", mx)
        self.repeats: bool = base_max != "1" and mx != "1"
        self.types: list[dict[str, Any]] = ed.get("type") or []
        self.children: dict[str, Node] = {}
        self.slices: list[Node] = []
        self.slicing: dict[str, Any] | None = ed.get("slicing")
        self.fixed: tuple[str, Any] | None = None
        self.pattern: tuple[str, Any] | None = None
        self.min_value: tuple[str, Any] | None = None
        self.max_value: tuple[str, Any] | None = None
        ml = ed.get("maxLength")
        self.max_length: int | None = ml if isinstance(ml, int) and not isinstance(ml, bool) else None
        for k, v in ed.items():
            if k.startswith("fixed"):
                self.fixed = (k, v)
            elif k.startswith("pattern"):
                self.pattern = (k, v)
            elif k.startswith("minValue"):
                self.min_value = (k, v)
            elif k.startswith("maxValue"):
                self.max_value = (k, v)
        self.binding: dict[str, Any] | None = ed.get("binding")
        self.constraints: list[dict[str, Any]] = [
            c for c in ed.get("constraint") or [] if c.get("expression")
        ]
        self.content_ref: str | None = ed.get("contentReference")
        self._keymap: dict[str, tuple[str, str]] | None = None
        # the validator's compiled checks at this element, per type code, and of its children
        # (procfhir.validator.plan); cleared when definitions are added
        self.plans: dict[str, Any] = {}
        self.table: Any = None

    def type_codes(self) -> list[str]:
        out = []
        for t in self.types:
            code = t.get("code", "")
            if code == FHIRPATH_STRING or code.startswith("http://hl7.org/fhirpath/System."):
                fhir_type = next(
                    (e.get("valueUrl") for e in t.get("extension", []) if e.get("url") == _FHIR_TYPE_EXT),
                    None,
                )
                code = fhir_type or "string"
            out.append(code)
        return out

    def keymap(self) -> dict[str, tuple[str, str]]:
        """JSON property name -> (child name, type code or '') for this node's children."""
        if self._keymap is None:
            km: dict[str, tuple[str, str]] = {}
            for name, child in self.children.items():
                if child.choice:
                    for code in child.type_codes():
                        km[name + _cap(code)] = (name, code)
                else:
                    codes = child.type_codes()
                    km[name] = (name, codes[0] if len(codes) == 1 else "")
            self._keymap = km
        return self._keymap


class CompiledSD:
    """A StructureDefinition with its snapshot as a tree of :class:`Node`."""

    def __init__(self, sd: dict[str, Any]) -> None:
        self.resource = sd
        self.url: str = sd.get("url", "")
        self.type: str = sd.get("type", "")
        self.kind: str = sd.get("kind", "")
        self.derivation: str = sd.get("derivation", "")
        elements = (sd.get("snapshot") or {}).get("element") or []
        if not elements:
            raise DefinitionsError(f"StructureDefinition {self.url} has no snapshot")
        self.by_id: dict[str, Node] = {}
        self.root = Node(elements[0], self)
        self.by_id[self.root.id] = self.root
        for ed in elements[1:]:
            node = Node(ed, self)
            self.by_id[node.id] = node
            parent_id, _, last = node.id.rpartition(".")
            name, _, slice_part = last.partition(":")
            if slice_part:
                base_id = f"{parent_id}.{name}" if parent_id else name
                if "/" in slice_part:  # re-slicing: a slice of the slice
                    base_id = f"{base_id}:{slice_part.rsplit('/', 1)[0]}"
                base = self.by_id.get(base_id)
                if base is not None:
                    base.slices.append(node)
                continue
            parent = self.by_id.get(parent_id)
            if parent is not None:
                parent.children[node.name] = node
        self.regex: str | None = None
        if self.kind == "primitive-type":
            value = self.by_id.get(f"{self.type}.value")
            if value is not None:
                for t in value.types:
                    for ext in t.get("extension", []):
                        if ext.get("url") == _REGEX_EXT:
                            self.regex = ext.get("valueString")

    def node_for_ref(self, ref: str) -> Node | None:
        """A ``contentReference`` (``#Questionnaire.item``) inside this definition."""
        target = ref.split("#", 1)[-1]
        return self.by_id.get(target)


class Definitions:
    """Conformance resources by canonical URL: extras first, then the core package (lazy)."""

    def __init__(
        self, extra: list[dict[str, Any]] | None = None, core_dir: Path | None = None, lean: bool = False
    ) -> None:
        """``lean``: core resources are kept without the prose validation never reads
        (definitions, comments, mappings, narratives): about half the memory."""
        self.lean = lean
        if core_dir is None:
            from procfhir.fhircache import core_dir as default_core

            core_dir = default_core()
        self.core_dir = core_dir
        index_path = core_dir / ".index.json"
        try:
            index = load_json_file(index_path)
        except FileNotFoundError:
            raise DefinitionsError(
                f"the R4 core package is not in the FHIR package cache ({core_dir}); "
                "run `procfhir fhir-cache fill`"
            ) from None
        except ValueError as exc:
            raise DefinitionsError(f"{index_path}: unreadable index: {exc}") from None
        self._core_files: dict[str, str] = {}
        self.resource_types: set[str] = set()
        self.core_types: set[str] = set()
        for entry in index.get("files", []):
            url = entry.get("url")
            if url and url not in self._core_files:
                self._core_files[url] = entry["filename"]
            if entry.get("resourceType") == "StructureDefinition" and url == CORE_BASE + str(
                entry.get("type")
            ):
                self.core_types.add(entry["type"])
                if entry.get("kind") == "resource":
                    self.resource_types.add(entry["type"])
        self._loaded: dict[str, dict[str, Any] | None] = {}
        self._compiled: dict[str, CompiledSD | None] = {}
        self.sd_errors: dict[str, str] = {}  # url -> why its snapshot cannot be used
        self.extra: dict[str, dict[str, Any]] = {}
        self.package_bases: set[str] = set()
        self.package_types: set[tuple[str, str]] = set()  # (base, resourceType) of extra definitions
        self.generation = 0  # counts additions: what was compiled from the definitions may be stale
        for res in extra or []:
            self.add(res)

    def add(self, res: dict[str, Any], strip: bool = False) -> None:
        """Make a resource with a ``url`` resolvable (a later one with the same url wins);
        ``strip``: the prose validation never reads is dropped from it, in place (for a
        resource nothing else holds: a large package's definitions then take far less memory)."""
        url = res.get("url") if isinstance(res, dict) else None
        if not isinstance(url, str):
            return
        if strip:
            _strip_prose(res)
        self.generation += 1
        self.extra[url] = res
        self._compiled.pop(url, None)
        self.sd_errors.pop(url, None)
        rtype = res.get("resourceType", "")
        marker = f"/{rtype}/"
        if marker in url:
            base = url.split(marker, 1)[0] + "/"
            self.package_bases.add(base)
            self.package_types.add((base, rtype))

    def resource(self, url: str) -> dict[str, Any] | None:
        url = url.split("|", 1)[0]
        if url in self.extra:
            return self.extra[url]
        if url in self._loaded:
            return self._loaded[url]
        fname = self._core_files.get(url)
        res = None
        if fname:
            try:
                res = load_json_file(self.core_dir / fname)
                if self.lean and isinstance(res, dict):
                    _strip_prose(res)
            except (OSError, ValueError) as exc:
                raise DefinitionsError(f"{self.core_dir / fname}: unreadable: {exc}") from None
        self._loaded[url] = res
        return res

    def is_core(self, url: str) -> bool:
        return url.split("|", 1)[0] in self._core_files

    def sd(self, url: str) -> CompiledSD | None:
        """The compiled StructureDefinition for a canonical URL (snapshot generated if needed)."""
        url = url.split("|", 1)[0]
        if url in self._compiled:
            return self._compiled[url]
        self._compiled[url] = None  # guards against a profile based (indirectly) on itself
        res = self.resource(url)
        compiled = None
        if res is not None and res.get("resourceType") == "StructureDefinition":
            try:
                if not (res.get("snapshot") or {}).get("element"):
                    from procfhir.validator.snapshot import generate_snapshot

                    res = generate_snapshot(res, self)
                compiled = CompiledSD(res)
            except DefinitionsError:
                if self.is_core(url):
                    raise
                self.sd_errors[url] = "it has no usable snapshot"
            except Exception as exc:  # noqa: BLE001 - any defect of a profile becomes an issue
                self.sd_errors[url] = f"its snapshot cannot be generated: {exc}"
        self._compiled[url] = compiled
        return compiled

    def type_sd(self, code: str) -> CompiledSD | None:
        return self.sd(code if "/" in code else CORE_BASE + code)


def load_json_file(path: Path) -> Any:
    """``json.loads`` of a definition file's UTF-8 text (package files: R4 core, terminology),
    through orjson, several times faster on the large ones; whatever orjson refuses (an integer
    beyond 64 bits, NaN, a lone surrogate, a byte order mark...) is decided by the standard
    parser, so the result, or the error, is the same."""
    data = path.read_bytes()
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data.decode("utf-8"))
