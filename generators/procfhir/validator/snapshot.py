"""Snapshot generation: a differential StructureDefinition applied to its base's snapshot.

Covers what constraint profiles use: narrowing cardinality, types, bindings, fixed/pattern values,
added constraints, constraints on children of a data type (the type's elements are brought into
the snapshot under the constrained element), and slices (with their children). Output order is
the base's element order, each slice after its base element's children; deterministic.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from procfhir.validator.definitions import Definitions


def _copy(value: Any) -> Any:
    """A deep copy of JSON data (what definitions hold): through orjson, about ten times faster
    than ``copy.deepcopy``, and the same data back (its floats round-trip exactly, dict order is
    kept); anything orjson refuses (an integer beyond 64 bits, a lone surrogate) by deepcopy."""
    try:
        return orjson.loads(orjson.dumps(value))
    except TypeError:  # orjson.JSONEncodeError is one
        return copy.deepcopy(value)


class SnapshotError(Exception):
    """A differential that cannot be applied to its base."""


_BASE_ONLY_EXTENSIONS = {
    "http://hl7.org/fhir/StructureDefinition/structuredefinition-normative-version",
    "http://hl7.org/fhir/StructureDefinition/structuredefinition-standards-status",
}
# Differential keys that are not copied onto the snapshot element.
_SKIP = {"id", "path"}


def _path_of(eid: str) -> str:
    return ".".join(part.split(":", 1)[0] for part in eid.split("."))


def _merge(target: dict[str, Any], diff: dict[str, Any]) -> None:
    for key, value in diff.items():
        if key in _SKIP:
            continue
        if key == "constraint":
            have = {c.get("key") for c in target.get("constraint", [])}
            target["constraint"] = target.get("constraint", []) + [
                _copy(c) for c in value if c.get("key") not in have
            ]
        elif key.startswith(("fixed", "pattern")):
            for k in [k for k in target if k.startswith(("fixed", "pattern"))]:
                del target[k]
            target[key] = _copy(value)
        else:
            target[key] = _copy(value)


def _retarget(elements: list[dict[str, Any]], old_prefix: str, new_id: str, new_path: str) -> list[dict]:
    """Copy a type's snapshot elements (without root) under element new_id."""
    out = []
    for ed in elements[1:]:
        ed = _copy(ed)
        eid = ed.get("id") or ed["path"]
        rest = eid[len(old_prefix) :]
        ed["id"] = new_id + rest
        ed["path"] = new_path + _path_of(rest)
        out.append(ed)
    return out


def _choice_renamed(eid: str, diff: dict[str, Any], index: dict[str, int]) -> tuple[str, dict[str, Any]]:
    """A type-specific choice name (``Observation.valueQuantity``) as the base's choice element
    (``Observation.value[x]``) restricted to that type, as the HL7 snapshot generator reads it."""
    parts = eid.split(".")
    for i in range(1, len(parts)):
        name, sep, slice_part = parts[i].partition(":")
        prefix = ".".join(parts[:i])
        if f"{prefix}.{name}" in index:
            continue
        for j in range(1, len(name)):
            if not name[j].isupper() or f"{prefix}.{name[:j]}[x]" not in index:
                continue
            tcode = name[j:]
            tcode = tcode if tcode[1:2].isupper() or tcode in _COMPLEX_HINT else tcode[:1].lower() + tcode[1:]
            parts[i] = f"{name[:j]}[x]{sep}{slice_part}"
            if i == len(parts) - 1 and "type" not in diff:
                diff = {**diff, "type": [{"code": tcode}]}
            return ".".join(parts), diff
    return ".".join(parts), diff


# choice type names that stay capitalised (complex types); others are primitives (valueString -> string)
_COMPLEX_HINT = {
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "CodeableConcept",
    "Coding",
    "ContactPoint",
    "Count",
    "Distance",
    "Duration",
    "HumanName",
    "Identifier",
    "Money",
    "Period",
    "Quantity",
    "Range",
    "Ratio",
    "Reference",
    "SampledData",
    "Signature",
    "Timing",
    "ContactDetail",
    "Contributor",
    "DataRequirement",
    "Expression",
    "ParameterDefinition",
    "RelatedArtifact",
    "TriggerDefinition",
    "UsageContext",
    "Dosage",
    "Meta",
}


class _Work:
    """A snapshot being made: its elements (the base's, copied) and their index by id. Methods,
    not closures in :func:`generate_snapshot`: recursive closures are reference cycles, left to
    the cycle collector, which a run calls rarely (see :data:`procfhir.validator.run.COLLECT_GROWTH`)."""

    def __init__(self, url: str, base_url: str, defs: Definitions, elements: list[dict[str, Any]]) -> None:
        self.url = url
        self.base_url = base_url
        self.defs = defs
        self.elements = elements
        self.index: dict[str, int] = {}
        self.reindex()

    def reindex(self) -> None:
        self.index.clear()
        self.index.update({(e.get("id") or e["path"]): i for i, e in enumerate(self.elements)})

    def end_of(self, eid: str, with_slices: bool) -> int:
        """Index after the element eid, its descendants (and its slices when asked)."""
        elements = self.elements
        i = self.index[eid] + 1
        while i < len(elements):
            other = elements[i].get("id") or elements[i]["path"]
            if other.startswith(eid + ".") or (with_slices and other.startswith(eid + ":")):
                i += 1
            else:
                break
        return i

    def expand(self, eid: str) -> None:
        """Bring the children of element eid's (single) type into the snapshot."""
        url, defs = self.url, self.defs
        ed = self.elements[self.index[eid]]
        types = ed.get("type") or []
        if len(types) != 1:
            raise SnapshotError(f"{url}: cannot constrain children of {eid}: it has {len(types)} types")
        t = types[0]
        tsd = None
        for prof in t.get("profile") or []:
            tsd = defs.sd(prof)
        if tsd is None:
            tsd = defs.type_sd(t["code"])
        if tsd is None:
            raise SnapshotError(f"{url}: type {t['code']} of {eid} not found")
        telems = tsd.resource["snapshot"]["element"]
        root_id = telems[0].get("id") or telems[0]["path"]
        new = _retarget(telems, root_id, eid, ed["path"])
        pos = self.end_of(eid, with_slices=False)
        self.elements[pos:pos] = new
        self.reindex()

    def ensure(self, eid: str) -> None:
        elements, index = self.elements, self.index
        if eid in index:
            return
        parent_id, _, last = eid.rpartition(".")
        name, _, slice_name = last.partition(":")
        if slice_name and "." not in slice_name:
            base_id = f"{parent_id}.{name}" if parent_id else name
            if "/" in slice_name:  # re-slicing: based on the slice being re-sliced
                base_id = f"{base_id}:{slice_name.rsplit('/', 1)[0]}"
            self.ensure(base_id)
            new = _copy(elements[index[base_id]])
            new.pop("slicing", None)
            new["id"] = eid
            new["sliceName"] = slice_name
            # the slice's children: those of the sliced element (Bundle.entry:x.resource)
            kids = []
            for e in elements[index[base_id] + 1 : self.end_of(base_id, with_slices=False)]:
                kid = _copy(e)
                kid["id"] = eid + (e.get("id") or e["path"])[len(base_id) :]
                kids.append(kid)
            pos = self.end_of(base_id, with_slices=True)
            elements[pos:pos] = [new, *kids]
            self.reindex()
            return
        if not parent_id:
            raise SnapshotError(f"{self.url}: element {eid} is not in the base")
        self.ensure(parent_id)
        if not any((e.get("id") or "").startswith(parent_id + ".") for e in elements):
            self.expand(parent_id)
        if eid not in index:
            raise SnapshotError(f"{self.url}: element {eid} does not exist in {self.base_url}")


SNAPSHOT_INPUTS = ("url", "baseDefinition", "type", "differential")  # all generate_snapshot reads


def generate_snapshot(
    sd: dict[str, Any],
    defs: Definitions,
    order_problems: list[str] | None = None,
    check_only: bool = False,
) -> dict[str, Any]:
    """Return a copy of ``sd`` with ``snapshot`` computed from ``differential`` and the base.

    Differential elements out of the base's order are applied by id (as the HL7 snapshot
    generator accepts them); each is described in ``order_problems`` when a list is given.
    ``check_only``: the same checks, ``sd`` itself returned (no copy, no snapshot made). It
    reads of ``sd`` only what :data:`SNAPSHOT_INPUTS` names."""
    url = sd.get("url", "?")
    base_url = sd.get("baseDefinition")
    if not base_url:
        raise SnapshotError(f"{url}: no baseDefinition")
    base = defs.sd(base_url)
    if base is None:
        raise SnapshotError(f"{url}: base definition {base_url} not found")
    elements: list[dict[str, Any]] = _copy(base.resource["snapshot"]["element"])
    for ed in elements:  # the base's publication status and examples are not the profile's
        ed.pop("example", None)
        if "extension" in ed:
            ed["extension"] = [e for e in ed["extension"] if e.get("url") not in _BASE_ONLY_EXTENSIONS]
            if not ed["extension"]:
                del ed["extension"]
    work = _Work(str(url), str(base_url), defs, elements)
    index = work.index

    previous: str | None = None
    for diff in (sd.get("differential") or {}).get("element") or []:
        eid = diff.get("id") or diff.get("path")
        if not eid:
            raise SnapshotError(f"{url}: differential element without id/path")
        if "sliceName" in diff and ":" not in eid.rsplit(".", 1)[-1]:
            eid = f"{eid}:{diff['sliceName']}"
        eid, diff = _choice_renamed(eid, diff, index)
        work.ensure(eid)
        if previous is not None and index[eid] < index[previous] and order_problems is not None:
            order_problems.append(
                f"differential element {eid} comes before {previous} in the base (applied by id all the same)"
            )
        previous = eid
        _merge(elements[index[eid]], diff)
    root_id = elements[0].get("id") or elements[0]["path"]
    if sd.get("type") and root_id != sd["type"]:
        raise SnapshotError(f"{url}: type {sd['type']} does not match base {root_id}")
    if check_only:
        return sd
    out = _copy(sd)
    out["snapshot"] = {"element": _copy(elements)}
    return out
