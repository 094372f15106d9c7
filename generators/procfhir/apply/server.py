"""The knowledge of one plan read from a FHIR server, by search on canonical urls.

``GET [base]/PlanDefinition?url=...`` (or every PlanDefinition when no plan is named, to list
them), then the ActivityDefinitions its actions point to, the Procedure profiles with the
ValueSets and CodeSystems they bind, and the Consent templates (``Consent?status=draft``).
"""

from __future__ import annotations

from typing import Any

from procfhir.apply.errors import KnowledgeError
from procfhir.apply.knowledge import Resources
from procfhir.strictio import StrictInputError, loads_json

_HEADERS = {"Accept": "application/fhir+json"}
_MAX_PAGES = 50
MAX_ANSWER_BYTES = 256 * 1024 * 1024  # one search page, after gzip inflation


def _search(base: str, rtype: str, params: dict[str, str]) -> list[dict[str, Any]]:
    import requests

    url: str | None = f"{base}/{rtype}"
    query: dict[str, str] | None = {**params, "_count": "200"}
    out: list[dict[str, Any]] = []
    for _ in range(_MAX_PAGES):
        if url is None:
            break
        try:
            with requests.get(url, params=query, headers=_HEADERS, timeout=60, stream=True) as resp:
                body = _body(resp)
        except requests.RequestException as exc:
            raise KnowledgeError(f"{base}: the server cannot be reached: {exc}") from None
        if resp.status_code != 200:
            shown = body[:300].decode("utf-8", "replace")
            raise KnowledgeError(f"{resp.url}: the server answered {resp.status_code}: {shown}")
        try:
            bundle = loads_json(body, resp.url)
        except StrictInputError as exc:
            raise KnowledgeError(f"the answer is not valid JSON: {exc}") from None
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise KnowledgeError(f"{resp.url}: the answer is not a searchset Bundle")
        for e in bundle.get("entry") or []:
            res = e.get("resource") if isinstance(e, dict) else None
            if isinstance(res, dict) and res.get("resourceType") == rtype:
                out.append(res)
        url = next(
            (link.get("url") for link in bundle.get("link") or [] if link.get("relation") == "next"), None
        )
        query = None
    return out


def _body(resp: Any) -> bytes:
    """The answer's bytes (after gzip inflation), refused beyond :data:`MAX_ANSWER_BYTES`."""
    chunks: list[bytes] = []
    size = 0
    for chunk in resp.iter_content(1024 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise KnowledgeError(f"{resp.url}: the answer is larger than {MAX_ANSWER_BYTES:,} bytes: refused")
        chunks.append(chunk)
    return b"".join(chunks)


def _canonicals(node: Any, key: str, out: set[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, str):
                out.add(v)
            else:
                _canonicals(v, key, out)
    elif isinstance(node, list):
        for v in node:
            _canonicals(v, key, out)


def read_server(base: str, plan: str | None) -> Resources:
    base = base.rstrip("/")
    out = Resources(base)
    if plan is None or not plan.startswith(("http://", "https://")):
        plans = _search(base, "PlanDefinition", {"_id": plan} if plan else {})
    else:
        url, _, version = plan.partition("|")
        plans = _search(base, "PlanDefinition", {"url": url, **({"version": version} if version else {})})
    for p in plans:
        out.add(p, f"{base}/PlanDefinition/{p.get('id')}")
    if len(plans) != 1:
        return out  # the plan's selection reports what is missing or ambiguous
    seen: set[str] = set()
    todo: set[str] = set()
    _canonicals(plans[0], "definitionCanonical", todo)
    while todo:  # ActivityDefinitions (and nested PlanDefinitions) the actions point to
        canonical = todo.pop()
        seen.add(canonical)
        url, _, version = canonical.partition("|")
        for rtype in ("ActivityDefinition", "PlanDefinition"):
            for res in _search(base, rtype, {"url": url, **({"version": version} if version else {})}):
                out.add(res, f"{base}/{rtype}/{res.get('id')}")
                more: set[str] = set()
                _canonicals(res, "definitionCanonical", more)
                todo |= more - seen
    for sd in _search(base, "StructureDefinition", {"type": "Procedure", "derivation": "constraint"}):
        out.add(sd, f"{base}/StructureDefinition/{sd.get('id')}")
    value_sets: set[str] = set()
    _canonicals([*out.profiles, plans[0]], "valueSet", value_sets)
    _canonicals(plans[0], "valueCanonical", value_sets)
    for vs_url in sorted(value_sets):
        for vs in _search(base, "ValueSet", {"url": vs_url.partition("|")[0]}):
            out.add(vs, f"{base}/ValueSet/{vs.get('id')}")
    systems: set[str] = set()
    _canonicals([r for (t, _), r in out.by_id.items() if t == "ValueSet"], "system", systems)
    for system in sorted(systems):
        for cs in _search(base, "CodeSystem", {"url": system}):
            out.add(cs, f"{base}/CodeSystem/{cs.get('id')}")
    for consent in _search(base, "Consent", {"status": "draft"}):
        out.add(consent, f"{base}/Consent/{consent.get('id')}")
    return out
