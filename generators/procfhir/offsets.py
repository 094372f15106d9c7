"""Exact provenance, checked on the built package itself.

Each document's text is embedded, byte for byte as received, in its PlanDefinition's
``relatedArtifact`` (type ``derived-from``, ``label`` = the document key) with its size and SHA-1.
Every ``source-text`` extension's ``start``/``end`` must slice that embedded text (decoded as
UTF-8, Python string indices) to exactly its ``quote``. :func:`provenance_problems` checks both on
the resources as built, so that a consumer who checks offsets against the embedded text never
finds a mismatch; the build refuses on any.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterator
from typing import Any


def embedded_texts(resources: list[dict[str, Any]]) -> tuple[dict[str, bytes], list[str]]:
    """The embedded source texts by document key (bytes), and problems with their attachments."""
    texts: dict[str, bytes] = {}
    problems: list[str] = []
    for res in resources:
        if res.get("resourceType") != "PlanDefinition":
            continue
        for art in res.get("relatedArtifact", []) or []:
            doc = art.get("document") or {}
            if art.get("type") != "derived-from" or "data" not in doc or not art.get("label"):
                continue
            where = f"PlanDefinition/{res.get('id')} relatedArtifact {art['label']}"
            try:
                raw = base64.b64decode(doc["data"], validate=True)
            except (binascii.Error, ValueError):
                problems.append(f"{where}: document.data is not base64")
                continue
            digest = base64.b64encode(hashlib.sha1(raw).digest()).decode("ascii")  # noqa: S324 - R4 hash
            if doc.get("hash") != digest:
                problems.append(f"{where}: document.hash {doc.get('hash')} is not the SHA-1 of its data")
            if doc.get("size") != len(raw):
                problems.append(f"{where}: document.size {doc.get('size')} is not {len(raw)}")
            texts[str(art["label"])] = raw
    return texts, problems


def source_text_extensions(node: Any, url: str, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``source-text`` extension under ``node``, with its sub-extension values by name."""
    if isinstance(node, dict):
        if node.get("url") == url and isinstance(node.get("extension"), list):
            yield (
                path,
                {
                    e.get("url"): next((v for k, v in e.items() if k.startswith("value")), None)
                    for e in node["extension"]
                },
            )
            return
        for key, value in node.items():
            yield from source_text_extensions(value, url, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from source_text_extensions(item, url, f"{path}[{i}]")


def provenance_problems(resources: list[dict[str, Any]], url: str) -> list[str]:
    """Every embedded text whose hash or size is wrong, every quote its offsets do not slice."""
    raw_texts, problems = embedded_texts(resources)
    texts: dict[str, str] = {}
    for key, raw in raw_texts.items():
        try:
            texts[key] = raw.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"the embedded text of {key} is not UTF-8")
    for res in resources:
        ref = f"{res.get('resourceType')}/{res.get('id')}"
        for path, ext in source_text_extensions(res, url, ref):
            text = texts.get(str(ext.get("document")))
            if text is None:
                problems.append(f"{path}: source-text names document {ext.get('document')!r}, not embedded")
                continue
            start, end, quote = ext.get("start"), ext.get("end"), ext.get("quote")
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= len(text)):
                problems.append(f"{path}: offsets {start}..{end} are outside the embedded text")
            elif text[start:end] != quote:
                problems.append(
                    f"{path}: offsets {start}..{end} slice {text[start:end]!r} "
                    f"({end - start} characters), not the quote {quote!r}"
                )
    return problems
