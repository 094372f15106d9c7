"""Where each sentence of the source went: the generated elements that carry its ``source-text``
extension, found by walking the built resources (so the trace is of the output, not the intent)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from procfhir.config import Config
from procfhir.model import Document


def _summary(element: Any) -> str:
    if isinstance(element, dict):
        for key in ("title", "text", "description", "display", "valueString"):
            value = element.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, dict) and isinstance(value.get("text"), str):
                return value["text"]
        if "code" in element and isinstance(element["code"], str):
            return f"{element['code']} {element.get('display', '')}".strip()
    return ""


def _walk(
    node: Any, path: str, url: str, parent: dict[str, Any] | None
) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    if isinstance(node, dict):
        for ext in node.get("extension", []) if isinstance(node.get("extension"), list) else []:
            if ext.get("url") == url:
                yield (
                    path,
                    node,
                    {
                        e["url"]: next(v for k, v in e.items() if k.startswith("value"))
                        for e in ext["extension"]
                    },
                )
        for key, value in node.items():
            if key == "extension":
                # source-text inside other extensions (e.g. a disclosed risk's outcome)
                for i, ext in enumerate(value if isinstance(value, list) else []):
                    if ext.get("url") != url:
                        yield from _walk(ext, f"{path}.extension[{i}]", url, node)
                continue
            child = f"{path}.{key.lstrip('_')}"
            if isinstance(value, list):
                for i, item in enumerate(value):
                    yield from _walk(item, f"{child}[{i}]", url, node)
            else:
                yield from _walk(value, child, url, node)


def build_trace(cfg: Config, mappings: list[Document], resources: list[dict[str, Any]]) -> dict[str, Any]:
    url = cfg.url("StructureDefinition", "source-text")
    elements: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for res in resources:
        ref = f"{res['resourceType']}/{res['id']}"
        for path, element, src in _walk(res, res["resourceType"], url, None):
            value = _summary(element)
            if not value and path.endswith("usage"):
                value = res.get("usage", "")
            if not value and path.endswith("description"):
                value = res.get("description", "")
            elements.setdefault((src["document"], src["sentence"]), []).append(
                {"resource": ref, "path": path, "value": value, "quote": src["quote"]}
            )
    documents = []
    for m in mappings:
        non_clinical = {nc.quote.sentence for nc in m.non_clinical if nc.quote is not None}
        segs = []
        for s in m.source.segments:
            segs.append(
                {
                    "id": s.id,
                    "kind": s.kind,
                    "text": s.text,
                    "spans": [[sp.start, sp.end] for sp in s.spans],
                    "line": s.line,
                    "section": s.section,
                    "paragraph": s.paragraph,
                    "claimed_by": sorted(set(m.claims.get(s.id, []))),
                    "non_clinical": s.id in non_clinical,
                    "elements": elements.get((m.key, s.id), []),
                }
            )
        documents.append({"key": m.key, "title": m.title, "text": m.source.text, "segments": segs})
    return {"documents": documents}
