"""Reading resources to upload (a folder, a Bundle file, an NPM package) and ordering them."""

from __future__ import annotations

import heapq
import re
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from procfhir.strictio import StrictInputError, loads_json
from procfhir.strictio import read_bytes as strict_read_bytes
from procfhir.upload.errors import UploadError

# Bundles of these types are containers: their entries are uploaded, not the Bundle itself.
CONTAINER_BUNDLES = frozenset(
    {"transaction", "batch", "collection", "searchset", "transaction-response", "batch-response"}
)
NOT_RESOURCES = frozenset({"package.json", ".index.json"})

# Upload order by type; lower first. Dependencies found in the resources take precedence.
TYPE_RANK: dict[str, int] = {
    "CodeSystem": 0,
    "ValueSet": 1,
    "StructureDefinition": 2,
    "ConceptMap": 3,
    "NamingSystem": 3,
    "SearchParameter": 3,
    "OperationDefinition": 3,
    "CapabilityStatement": 3,
    "Library": 4,
    "ActivityDefinition": 5,
    "PlanDefinition": 6,
}
OTHER_RANK = 7

# FHIR's rules (R4 "id" datatype; resource type names are letters, starting upper case): checked
# before anything is sent, so that no id or type can lead a request outside the server's base URL.
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
FHIR_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
# Limits on what we read: one file, one package member, a whole package (uncompressed).
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_PACKAGE_BYTES = 1024 * 1024 * 1024


def key_of(resource: dict[str, Any]) -> str:
    """``Type/id`` (or ``Type/?`` when the resource has no id)."""
    return f"{resource.get('resourceType')}/{resource.get('id', '?')}"


def check_resource(obj: Any, where: str) -> dict[str, Any]:
    """``obj`` if it is a resource whose type and id follow FHIR's rules, else :class:`UploadError`."""
    if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
        raise UploadError(f"{where}: not a FHIR resource (no resourceType)")
    rtype = obj["resourceType"]
    if not FHIR_TYPE.match(rtype):
        raise UploadError(
            f"{where}: {_shown(rtype)} is not a FHIR resource type (letters only, e.g. CodeSystem)"
        )
    rid = obj.get("id")
    if rid is not None and not isinstance(rid, str):
        raise UploadError(f"{where}: the id of {rtype} is not a string")
    if isinstance(rid, str) and (not FHIR_ID.match(rid) or not rid.strip(".")):
        raise UploadError(
            f"{where}: the id {_shown(rid)} of {rtype} breaks FHIR's rules "
            "(1-64 letters, digits, '-' and '.', not only dots)"
        )
    for key in ("url", "version"):
        value = obj.get(key)
        if value is not None and (not isinstance(value, str) or not value.isprintable() or not value.strip()):
            raise UploadError(f"{where}: the {key} of {rtype} is not a non-empty printable string")
    return obj


_check_resource = check_resource


def _shown(value: str) -> str:
    text = "".join(c if c.isprintable() else "?" for c in value)
    return repr(text[:80] + ("..." if len(text) > 80 else ""))


def _expand(obj: dict[str, Any], where: str) -> Iterator[tuple[dict[str, Any], str]]:
    if obj["resourceType"] == "Bundle" and obj.get("type") in CONTAINER_BUNDLES:
        entries = obj.get("entry") or []
        if not isinstance(entries, list):
            raise UploadError(f"{where}: Bundle.entry is not a list")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "resource" not in entry:
                request = entry.get("request") if isinstance(entry, dict) else None
                if isinstance(request, dict) and request.get("method") == "DELETE":
                    raise UploadError(f"{where}: entry {i} is a DELETE, which the uploader does not send")
                raise UploadError(f"{where}: entry {i} holds no resource")
            yield from _expand(_check_resource(entry["resource"], f"{where} entry {i}"), f"{where} entry {i}")
    else:
        yield obj, where


def _parse(data: bytes, where: str) -> Any:
    try:
        return loads_json(data, where)
    except StrictInputError as exc:
        raise UploadError(str(exc)) from None


def _from_tgz(path: Path) -> Iterator[tuple[bytes, str]]:
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
            found = False
            total = 0
            for m in members:
                name = m.name
                base = name.rsplit("/", 1)[-1]
                if not name.startswith("package/") or not base.endswith(".json") or base in NOT_RESOURCES:
                    continue
                if m.size > MAX_FILE_BYTES:
                    raise UploadError(
                        f"{path}:{name}: {m.size:,} bytes, more than {MAX_FILE_BYTES:,} accepted"
                    )
                total += m.size
                if total > MAX_PACKAGE_BYTES:
                    raise UploadError(f"{path}: the package unpacks to more than {MAX_PACKAGE_BYTES:,} bytes")
                fh = tar.extractfile(m)
                if fh is None:
                    continue
                found = True
                yield fh.read(MAX_FILE_BYTES + 1), f"{path}:{name}"
            if not found:
                raise UploadError(f"{path}: no resources under package/ in this NPM package")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UploadError(f"{path}: not a readable .tgz package ({exc})") from None


def _from_folder(path: Path) -> Iterator[tuple[bytes, str]]:
    files = sorted(p for p in path.rglob("*.json") if p.is_file() and p.name not in NOT_RESOURCES)
    if not files:
        raise UploadError(f"{path}: no .json files in this folder")
    for p in files:
        yield _read(p), str(p)


def _read(path: Path) -> bytes:
    try:
        return strict_read_bytes(path, max_bytes=MAX_FILE_BYTES)
    except StrictInputError as exc:
        raise UploadError(str(exc)) from None


def load_resources(path: str | Path, skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """Every resource in a folder of JSON files, a Bundle (or single resource) file, or a .tgz.

    Container Bundles (transaction, batch, collection, searchset) are unpacked. The same resource
    found twice (e.g. a folder holding both the files and a Bundle of them) is kept once; two
    different resources with the same type and id are an error. In a folder, JSON files that are
    not FHIR resources (reports, ``package.json``) are skipped and listed in ``skipped``.
    """
    path = Path(path)
    if not path.exists():
        raise UploadError(f"{path}: no such file or folder")
    if path.is_dir():
        sources: Iterable[tuple[bytes, str]] = _from_folder(path)
    elif path.name.endswith((".tgz", ".tar.gz")):
        sources = _from_tgz(path)
    else:
        sources = [(_read(path), str(path))]
    seen: dict[str, tuple[dict[str, Any], str]] = {}
    out: list[dict[str, Any]] = []
    for data, where in sources:
        parsed = _parse(data, where)
        if path.is_dir() and not (isinstance(parsed, dict) and "resourceType" in parsed):
            if skipped is not None:
                skipped.append(where)
            continue
        obj = _check_resource(parsed, where)
        for res, res_where in _expand(obj, where):
            if "id" not in res:
                out.append(res)
                continue
            k = key_of(res)
            if k in seen:
                if seen[k][0] != res:
                    raise UploadError(f"{res_where}: {k} also in {seen[k][1]} with different content")
                continue
            seen[k] = (res, res_where)
            out.append(res)
    if not out:
        raise UploadError(f"{path}: no resources found")
    return out


def _walk(obj: Any, refs: list[str], strings: list[str]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "reference" and isinstance(v, str):
                refs.append(v)
            elif isinstance(v, str):
                strings.append(v)
            else:
                _walk(v, refs, strings)
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, str):
                strings.append(v)
            else:
                _walk(v, refs, strings)


def _literal_target(ref: str, base_url: str | None) -> str | None:
    """``Type/id`` of a literal reference (relative, absolute on our server, or versioned)."""
    if base_url and ref.startswith(base_url.rstrip("/") + "/"):
        ref = ref[len(base_url.rstrip("/")) + 1 :]
    if ref.startswith(("#", "urn:", "http://", "https://")):
        return None
    parts = ref.split("/")
    if len(parts) >= 2 and parts[0][:1].isupper():
        return f"{parts[0]}/{parts[1]}"
    return None


def dependency_order(resources: list[dict[str, Any]], base_url: str | None = None) -> list[dict[str, Any]]:
    """The resources ordered so that each comes after the resources it refers to literally.

    Literal references (``Type/id``, relative or absolute on ``base_url``) are hard constraints.
    Among resources whose references are satisfied, the type order applies (CodeSystem, ValueSet,
    StructureDefinition, other conformance, ActivityDefinition, PlanDefinition, the rest), then,
    within one type rank, canonical references (a string equal to another resource's ``url``,
    with or without ``|version``: e.g. a ValueSet including another), then the input order.
    Literal cycles are broken by the same priority (a transaction resolves them; batches may not).
    """
    n = len(resources)
    by_key = {key_of(r): i for i, r in enumerate(resources) if "id" in r}
    by_url: dict[str, int] = {}
    for i, r in enumerate(resources):
        url = r.get("url")
        if isinstance(url, str):
            by_url.setdefault(url, i)
            if isinstance(r.get("version"), str):
                by_url.setdefault(f"{url}|{r['version']}", i)
    rank = [TYPE_RANK.get(r["resourceType"], OTHER_RANK) for r in resources]
    deps: list[set[int]] = [set() for _ in range(n)]
    soft: list[set[int]] = [set() for _ in range(n)]
    for i, r in enumerate(resources):
        refs: list[str] = []
        strings: list[str] = []
        _walk(r, refs, strings)
        for ref in refs:
            target = _literal_target(ref, base_url)
            j = by_key.get(target) if target else None
            if j is not None and j != i:
                deps[i].add(j)
            elif ref in by_url:
                strings.append(ref)
        for s in strings:
            j = by_url.get(s)
            if j is not None and j != i and rank[j] == rank[i]:
                soft[i].add(j)

    depth = [0] * n  # longest chain of canonical references within the same rank (cycles cut)

    def soft_depth(i: int, stack: set[int]) -> int:
        if depth[i] or not soft[i]:
            return depth[i]
        stack.add(i)
        depth[i] = 1 + max((soft_depth(j, stack) for j in soft[i] if j not in stack), default=-1)
        stack.discard(i)
        return depth[i]

    for i in range(n):
        soft_depth(i, set())

    def prio(i: int) -> tuple[int, int, int]:
        return (rank[i], depth[i], i)

    users: list[list[int]] = [[] for _ in range(n)]
    indegree = [len(d) for d in deps]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    ready = [prio(i) for i in range(n) if indegree[i] == 0]
    heapq.heapify(ready)
    done = [False] * n
    order: list[int] = []
    remaining = sorted(range(n), key=prio)
    while len(order) < n:
        if not ready:  # a cycle of literal references: take the highest-priority resource left
            i = next(k for k in remaining if not done[k])
            heapq.heappush(ready, prio(i))
            indegree[i] = 0
        _, _, i = heapq.heappop(ready)
        if done[i]:
            continue
        done[i] = True
        order.append(i)
        for u in users[i]:
            if not done[u]:
                indegree[u] -= 1
                if indegree[u] == 0:
                    heapq.heappush(ready, prio(u))
    return [resources[i] for i in order]
