"""Comparing a resource with the server's copy.

A server that stores a resource keeps what was sent and manages a few elements itself. The FHIR
specification gives the server ``meta.versionId``, ``meta.lastUpdated`` and ``meta.source``
(which HAPI fills with its request id); these are ignored on both sides, as is a ``meta`` left
empty afterwards. A server re-serialises the XHTML narrative, so ``text.div`` is compared as
canonical XML (C14N, whitespace between tags ignored). Every other difference, including an
element the server holds that we do not send, means the PUT would change the resource.
When the server assigns ids (conditional update), ``id`` is ignored as well.
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import ParseError, canonicalize

SERVER_MANAGED_META = ("versionId", "lastUpdated", "source")


def _canonical_xhtml(div: str) -> str:
    try:
        return canonicalize(div, strip_text=True)
    except ParseError:
        return div


def _normalise_narratives(obj: Any) -> Any:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "div" and isinstance(v, str):
                out[k] = _canonical_xhtml(v)
            else:
                out[k] = _normalise_narratives(v)
        return out
    if isinstance(obj, list):
        return [_normalise_narratives(v) for v in obj]
    return obj


def comparable(resource: dict[str, Any], *, ignore_id: bool = False) -> dict[str, Any]:
    """The resource without the elements the server manages."""
    res = dict(resource)
    if ignore_id:
        res.pop("id", None)
    meta = res.get("meta")
    if isinstance(meta, dict):
        meta = {k: v for k, v in meta.items() if k not in SERVER_MANAGED_META}
        if meta:
            res["meta"] = meta
        else:
            del res["meta"]
    return _normalise_narratives(res)


def differences(
    ours: dict[str, Any], theirs: dict[str, Any], *, ignore_id: bool = False, limit: int = 20
) -> list[str]:
    """FHIRPath-like paths where the server's copy differs from ours (empty when equal)."""
    out: list[str] = []
    _diff(
        comparable(ours, ignore_id=ignore_id),
        comparable(theirs, ignore_id=ignore_id),
        str(ours.get("resourceType", "")),
        out,
        limit,
    )
    return out


def _diff(a: Any, b: Any, path: str, out: list[str], limit: int) -> None:
    if len(out) >= limit:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a:
                out.append(f"{path}.{k} (only on the server)")
            elif k not in b:
                out.append(f"{path}.{k} (missing on the server)")
            else:
                _diff(a[k], b[k], f"{path}.{k}", out, limit)
            if len(out) >= limit:
                return
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path} ({len(a)} items here, {len(b)} on the server)")
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(x, y, f"{path}[{i}]", out, limit)
    elif a != b or type(a) is not type(b) and not (isinstance(a, int | float) and isinstance(b, int | float)):
        out.append(path)
