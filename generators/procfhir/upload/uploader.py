"""Plan and upload: compare with the server, send only what changed, in dependency order."""

from __future__ import annotations

import dataclasses
import queue
import re
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests

from procfhir.jsonwalk import strings
from procfhir.upload.auth import Auth
from procfhir.upload.client import REQUEST_DEADLINE, FhirClient, describe_body
from procfhir.upload.compare import differences
from procfhir.upload.errors import OutcomeUnknown, TransportError, UploadError
from procfhir.upload.report import Issue, ResourceResult, UploadReport, issues_from_outcome
from procfhir.upload.resources import (
    OTHER_RANK,
    TYPE_RANK,
    _literal_target,
    _walk,
    check_resource,
    dependency_order,
    key_of,
)
from procfhir.upload.retry import RetryPolicy

MODES = ("transaction", "batch", "put")
READ_CHUNK = 1000
_ENTRY_INDEX = re.compile(r"Bundle\.entry\[(\d+)\]")
_STATUS = re.compile(r"^\s*(\d{3})")
_TYPE_ID = re.compile(r"\b([A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})\b")
_QUOTED = re.compile(r"[\"'“]([^\"'”\s][^\"'”]{1,199})[\"'”]")
_ELEMENT = re.compile(r"element=[\"']([^\"']+)[\"']")


@dataclass
class PlannedAction:
    """What uploading one resource would do, compared with what the server holds now."""

    resource: dict[str, Any]
    key: str  # Type/id as in the input
    action: str  # create | update | unchanged
    conditional: bool = False  # sent as a conditional update on url (+ version)
    server_id: str | None = None
    server_version: str | None = None
    changes: list[str] = field(default_factory=list)

    @property
    def resource_type(self) -> str:
        return str(self.resource["resourceType"])

    def request_url(self) -> str:
        if self.conditional:
            url = f"{self.resource_type}?url={quote(self.resource['url'], safe='')}"
            if isinstance(self.resource.get("version"), str):
                url += f"&version={quote(self.resource['version'], safe='')}"
            return url
        return f"{self.resource_type}/{self.resource['id']}"

    def body(self) -> dict[str, Any]:
        if not self.conditional:
            return self.resource
        res = dict(self.resource)
        if self.server_id:
            res["id"] = self.server_id
        else:
            res.pop("id", None)
        return res


def _status_code(status: Any) -> int:
    m = _STATUS.match(str(status or ""))
    return int(m.group(1)) if m else 0


def _version_from(response: dict[str, Any]) -> str | None:
    etag = response.get("etag")
    if isinstance(etag, str):
        return etag.removeprefix("W/").strip('"')
    loc = response.get("location")
    if isinstance(loc, str) and "/_history/" in loc:
        return loc.rsplit("/_history/", 1)[1]
    return None


def _chunks(items: list[Any], size: int | None) -> Iterable[list[Any]]:
    if not size or size >= len(items):
        if items:
            yield items
        return
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Uploader:
    """Uploads FHIR resources to ``base_url`` safely: idempotent, atomic by default, resumable.

    ``plan`` compares every resource with the server's copy; ``upload`` sends the resources that
    differ, in dependency order, as one transaction (default), transactions or batches of
    ``batch_size`` entries, or one PUT each (``mode="put"``), to the resources' own ids or as
    conditional updates on ``url``+``version`` (``conditional=True``, for resources with a url).
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth: Auth | None = None,
        session: requests.Session | None = None,
        verify_tls: bool | str = True,
        retry: RetryPolicy | None = None,
        timeout: tuple[float, float] = (10.0, 120.0),
        allow_insecure_http: bool = False,
        client: FhirClient | None = None,
        request_deadline: float = REQUEST_DEADLINE,
    ) -> None:
        self.client = client or FhirClient(
            base_url,
            auth=auth,
            session=session,
            verify=verify_tls,
            retry=retry,
            timeout=timeout,
            allow_insecure_http=allow_insecure_http,
            request_deadline=request_deadline,
        )
        self.base_url = self.client.base_url
        self.repair = False
        self.repaired: list[str] = []
        # Conditional mode: "Type/our id" -> the id the server holds that resource under.
        self._server_ids: dict[str, str] = {}

    # ---------------------------------------------------------------- reading the server's state
    def _read_by_id(self, keys: list[str]) -> dict[str, dict[str, Any] | None]:
        """Current server copies of ``Type/id`` keys (None when absent or deleted).

        One ``_id`` search per type and chunk of ids (a single query on the server), following
        ``next`` links; a server refusing the search gets a batch of reads instead.
        """
        out: dict[str, dict[str, Any] | None] = {}
        by_type: dict[str, list[str]] = {}
        for k in keys:
            by_type.setdefault(k.split("/", 1)[0], []).append(k)
        for rtype, tkeys in by_type.items():
            for chunk in _chunks(tkeys, READ_CHUNK):
                found = self._search_ids(rtype, [k.split("/", 1)[1] for k in chunk])
                if found is None:
                    out.update(self._read_batch(chunk))
                    continue
                for k in chunk:
                    out[k] = found.get(k.split("/", 1)[1])
        return out

    def _search_ids(self, rtype: str, ids: list[str]) -> dict[str, dict[str, Any]] | None:
        """``{id: resource}`` for those of ``ids`` the server holds, or None if it refuses the search."""
        found: dict[str, dict[str, Any]] = {}
        resp = self.client.request(
            "POST",
            f"{rtype}/_search",
            form={"_id": ",".join(ids), "_count": str(len(ids))},
            idempotent=True,
            headers={"Cache-Control": "no-cache"},
        )
        pages = 0
        while True:
            body = _json(resp)
            if resp.status_code != 200 or not isinstance(body, dict) or body.get("resourceType") != "Bundle":
                return None if pages == 0 else _raise_read(rtype, resp)
            for e in body.get("entry") or []:
                r = e.get("resource")
                if (
                    isinstance(r, dict)
                    and r.get("resourceType") == rtype
                    and (e.get("search") or {}).get("mode", "match") == "match"
                ):
                    found[str(r.get("id"))] = r
            nxt = next((ln.get("url") for ln in body.get("link") or [] if ln.get("relation") == "next"), None)
            pages += 1
            if not nxt or pages > 1000:
                return found
            resp = self.client.request("GET", nxt, headers={"Cache-Control": "no-cache"})

    def _read_batch(self, keys: list[str]) -> dict[str, dict[str, Any] | None]:
        """Server copies by a batch of reads (one read each if batches are refused)."""
        out: dict[str, dict[str, Any] | None] = {}
        for chunk in _chunks(keys, READ_CHUNK):
            bundle = {
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [{"request": {"method": "GET", "url": k}} for k in chunk],
            }
            resp = self.client.request(
                "POST", "", body=bundle, idempotent=True, headers={"Cache-Control": "no-cache"}
            )
            if resp.status_code != 200:
                for k in chunk:  # a server without batch support: one read each
                    out[k] = self._read_one(k)
                continue
            body = self.client.json(resp, "reading resources by a batch")
            entries = body.get("entry") if isinstance(body, dict) else None
            if not isinstance(entries, list):
                raise UploadError("the server answered a batch of reads without entries")
            if len(entries) != len(chunk):
                raise UploadError(
                    f"the server answered a batch of {len(chunk)} reads with {len(entries)} entries"
                )
            for k, e in zip(chunk, entries, strict=True):
                if not isinstance(e, dict):
                    raise UploadError(f"the server answered the read of {k} with an entry that is no object")
                status = _status_code((e.get("response") or {}).get("status"))
                if status == 200 and isinstance(e.get("resource"), dict):
                    out[k] = e["resource"]
                elif status in (404, 410):
                    out[k] = None
                else:
                    msg = "; ".join(
                        i.message for i in issues_from_outcome((e.get("response") or {}).get("outcome"))
                    )
                    raise UploadError(
                        f"cannot read {k} from the server (HTTP {status}){': ' + msg if msg else ''}"
                    )
        return out

    def _read_one(self, key: str) -> dict[str, Any] | None:
        resp = self.client.request("GET", key, headers={"Cache-Control": "no-cache"})
        if resp.status_code in (404, 410):
            return None
        if resp.status_code != 200:
            raise UploadError(f"cannot read {key} from the server (HTTP {resp.status_code})")
        body = self.client.json(resp, f"reading {key}")
        if not isinstance(body, dict):
            raise UploadError(f"reading {key}: the server's answer is not a resource")
        return body

    def _search_canonical(self, resource: dict[str, Any]) -> list[dict[str, Any]]:
        params = {"url": resource["url"], "_count": "50" if self.repair else "2"}
        if isinstance(resource.get("version"), str):
            params["version"] = resource["version"]
        rtype = resource["resourceType"]
        resp = self.client.request("GET", rtype, params=params, headers={"Cache-Control": "no-cache"})
        if resp.status_code != 200:
            msg = "; ".join(i.message for i in issues_from_outcome(_json(resp)))
            raise UploadError(
                f"cannot search {rtype} by url on the server (HTTP {resp.status_code})"
                f"{': ' + msg if msg else ''}"
            )
        body = self.client.json(resp, f"searching {rtype} by url")
        entries = body.get("entry") if isinstance(body, dict) else None
        return [
            e["resource"]
            for e in (entries if isinstance(entries, list) else [])
            if isinstance(e, dict)
            and isinstance(e.get("resource"), dict)
            and (e.get("search") or {}).get("mode", "match") == "match"
        ]

    # ---------------------------------------------------------------- planning
    def plan(self, resources: list[dict[str, Any]], *, conditional: bool = False) -> list[PlannedAction]:
        """Per resource, in upload order: create, update or unchanged compared with the server."""
        return self._plan_ordered(dependency_order(resources, self.base_url), conditional)

    def _repair(self, p: PlannedAction, found: list[dict[str, Any]]) -> dict[str, Any]:
        """Keep one of several server copies of one canonical (the one equal to ours, else the
        oldest id) and delete the others; what was deleted goes to ``self.repaired``."""

        def order(r: dict[str, Any]) -> tuple[int, int, str]:
            rid = str(r.get("id"))
            same = not differences(self._rewrite(p.resource, {}), r, ignore_id=True)
            return (0 if same else 1, int(rid) if rid.isdigit() else 1 << 62, rid)

        keep, *others = sorted(found, key=order)
        for r in others:
            rid = str(r.get("id"))
            check_resource({"resourceType": p.resource_type, "id": rid}, "the server's duplicate")
            resp = self.client.request("DELETE", f"{p.resource_type}/{rid}")
            if resp.status_code >= 300:
                msg = "; ".join(i.message for i in issues_from_outcome(_json(resp)))
                raise UploadError(
                    f"--repair: cannot delete the duplicate {p.resource_type}/{rid} of {p.key} "
                    f"(HTTP {resp.status_code}){': ' + msg if msg else ''}"
                )
            self.repaired.append(f"{p.resource_type}/{rid} (duplicate of {p.resource_type}/{keep.get('id')})")
        return keep

    def _rewrite(self, resource: dict[str, Any], in_bundle: dict[str, str]) -> dict[str, Any]:
        """``resource`` with literal references to our conditional resources pointing where the
        server has them: the entry's ``fullUrl`` when written in the same bundle (``in_bundle``),
        else the id the server gave it. Other references are left alone."""
        targets = {**self._server_ids, **in_bundle}
        if not targets:
            return resource

        def walk(obj: Any) -> Any:
            if isinstance(obj, dict):
                out = {}
                for k, v in obj.items():
                    if k == "reference" and isinstance(v, str):
                        t = _literal_target(v, self.base_url)
                        if t is not None and t in targets and v in (t, f"{self.base_url}/{t}"):
                            v = (
                                targets[t]
                                if targets[t].startswith("urn:")
                                else f"{t.split('/')[0]}/{targets[t]}"
                            )
                        out[k] = v
                    else:
                        out[k] = walk(v)
                return out
            if isinstance(obj, list):
                return [walk(v) for v in obj]
            return obj

        result = walk(resource)
        assert isinstance(result, dict)
        return result

    def _plan_ordered(self, ordered: list[dict[str, Any]], conditional: bool) -> list[PlannedAction]:
        by_id: list[PlannedAction] = []
        planned: list[PlannedAction] = []
        for res in ordered:
            cond = conditional and isinstance(res.get("url"), str)
            if not cond and not isinstance(res.get("id"), str):
                raise UploadError(
                    f"a {res['resourceType']} without an id cannot be PUT to its id"
                    + ("" if conditional else " (conditional mode uses url instead)")
                )
            key = key_of(res)
            if not isinstance(res.get("id"), str):  # conditional, no id of its own: name it by url
                key = f"{res['resourceType']}?url={res['url']}"
                if isinstance(res.get("version"), str):
                    key += f"&version={res['version']}"
            p = PlannedAction(resource=res, key=key, action="create", conditional=cond)
            planned.append(p)
            if not cond:
                by_id.append(p)
        state = self._read_by_id([p.key for p in by_id]) if by_id else {}
        for p in planned:
            if p.conditional:
                found = self._search_canonical(p.resource)
                if len(found) > 1:
                    if not self.repair:
                        raise UploadError(
                            f"{p.key}: the server holds {len(found)}{'+' if len(found) == 2 else ''} "
                            f"{p.resource_type} with url {p.resource['url']} version "
                            f"{p.resource.get('version')}; a conditional update cannot choose. "
                            "Run the upload again with --repair to keep one and delete the others"
                        )
                    found = [self._repair(p, found)]
                server = found[0] if found else None
            else:
                server = state[p.key]
            if server is None:
                continue
            p.server_id = server.get("id")
            p.server_version = (server.get("meta") or {}).get("versionId")
            if p.conditional and isinstance(p.resource.get("id"), str) and isinstance(p.server_id, str):
                self._server_ids[f"{p.resource_type}/{p.resource['id']}"] = p.server_id
            ours = self._rewrite(p.resource, {}) if conditional else p.resource
            p.changes = differences(ours, server, ignore_id=p.conditional)
            p.action = "update" if p.changes else "unchanged"
        return planned

    # ---------------------------------------------------------------- sending
    def _entry(self, p: PlannedAction, method: str = "PUT") -> dict[str, Any]:
        full_url = (
            f"{self.base_url}/{p.key}"
            if not p.conditional
            else f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, p.request_url())}"
        )
        return {
            "fullUrl": full_url,
            "resource": p.body(),
            "request": {"method": method, "url": p.request_url()},
        }

    def _attribute(self, issues: list[Issue], chunk: list[PlannedAction]) -> list[Issue]:
        """Tie request-level issues of a failed transaction to the entry they concern.

        In order: an entry index in the location (``Bundle.entry[3]``); an entry's ``Type/id``
        named in the message (not as a missing target); a value the message quotes or a
        ``Type/id`` it names as missing, held by exactly one entry (HAPI's parse errors quote the
        invalid value; its referential-integrity errors name the missing target); when up to ten
        entries hold it, each gets the issue.
        """
        keys = {p.key: p for p in chunk}
        extra: list[Issue] = []
        for iss in issues:
            if iss.resource:
                continue
            m = _ENTRY_INDEX.search(iss.location) or _ENTRY_INDEX.search(iss.message)
            if m and int(m.group(1)) < len(chunk):
                iss.resource = chunk[int(m.group(1))].key
                continue
            named = [t for t in _TYPE_ID.findall(iss.message) if t in keys]
            if named and "not found" not in iss.message.lower():
                iss.resource = named[0]
                continue
            elements = set(_ELEMENT.findall(iss.message))
            tokens = {t for t in _QUOTED.findall(iss.message) if t not in elements}
            tokens |= set(_TYPE_ID.findall(iss.message))
            if not tokens:
                continue
            holders = [p for p in chunk if tokens & strings(p.resource)]
            if 1 <= len(holders) <= 10:  # e.g. several resources referring to the same missing one
                iss.resource = holders[0].key
                extra += [dataclasses.replace(iss, resource=h.key) for h in holders[1:]]
        return issues + extra

    def _send_bundle(
        self,
        chunk: list[PlannedAction],
        mode: str,
        results: dict[str, ResourceResult],
        report: UploadReport,
        max_replans: int,
    ) -> None:
        pending = chunk
        for _ in range(max_replans + 1):
            entries_out = [self._entry(p) for p in pending]
            if any(p.conditional for p in pending):
                in_bundle = {
                    f"{p.resource_type}/{p.resource['id']}": e["fullUrl"]
                    for p, e in zip(pending, entries_out, strict=True)
                    if p.conditional and not p.server_id and isinstance(p.resource.get("id"), str)
                }
                for e in entries_out:
                    e["resource"] = self._rewrite(e["resource"], in_bundle if mode == "transaction" else {})
            bundle = {"resourceType": "Bundle", "type": mode, "entry": entries_out}
            try:
                resp = self.client.request("POST", "", body=bundle, idempotent=False)
                body = _json(resp)
                if 200 <= resp.status_code < 300 and not (
                    isinstance(body, dict) and body.get("resourceType") == "Bundle"
                ):
                    raise OutcomeUnknown(f"the {mode} was answered with {describe_body(resp)}, not a Bundle")
            except OutcomeUnknown:
                # The server may have applied it: look before sending anything again.
                fresh = self.plan(
                    [p.resource for p in pending], conditional=any(p.conditional for p in pending)
                )
                still = [f for f in fresh if f.action != "unchanged"]
                for f in fresh:
                    if f.action == "unchanged":
                        r = results[f.key]
                        r.status, r.version = "written", f.server_version
                        r.note = "response lost; server state checked: applied"
                if not still:
                    return
                pending = still
                continue
            if resp.status_code >= 400 or not isinstance(body, dict) or body.get("resourceType") != "Bundle":
                issues = self._attribute(issues_from_outcome(body), pending)
                if not issues:
                    issues = [
                        Issue("error", f"HTTP {resp.status_code} {resp.reason or ''}: {describe_body(resp)}")
                    ]
                report.issues.extend(issues)
                named = {i.resource for i in issues}
                for p in pending:
                    r = results[p.key]
                    r.status, r.http_status = "failed", resp.status_code
                    if mode == "transaction" and p.key not in named:
                        r.note = "rolled back with the transaction"
                return
            entries = body.get("entry") or []
            if not isinstance(entries, list) or len(entries) != len(pending):
                n = len(entries) if isinstance(entries, list) else "no list of"
                raise UploadError(f"the server answered a {mode} of {len(pending)} entries with {n} entries")
            for p, e in zip(pending, entries, strict=True):
                rsp = (e.get("response") if isinstance(e, dict) else None) or {}
                if not isinstance(rsp, dict):
                    rsp = {}
                status = _status_code(rsp.get("status"))
                r = results[p.key]
                r.http_status = status
                if 200 <= status < 300:
                    r.status, r.version = "written", _version_from(rsp)
                    self._remember_id(p, rsp.get("location"))
                else:
                    r.status = "failed"
                    issues = issues_from_outcome(rsp.get("outcome"), p.key)
                    report.issues.extend(issues or [Issue("error", f"HTTP {status}", p.key)])
            return
        for p in pending:
            results[p.key].status = "failed"
        report.issues.append(
            Issue(
                "error",
                f"the {mode} kept losing its response; server state still differs",
                source="transport",
            )
        )

    def _remember_id(self, p: PlannedAction, location: Any) -> None:
        """The id the server gave a conditional resource (from the Location of its answer)."""
        if not (p.conditional and isinstance(p.resource.get("id"), str) and isinstance(location, str)):
            return
        parts = location.split("/_history/")[0].rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == p.resource_type and parts[-1]:
            self._server_ids[f"{p.resource_type}/{p.resource['id']}"] = parts[-1]

    def _send_put(self, p: PlannedAction, results: dict[str, ResourceResult], report: UploadReport) -> None:
        body = self._rewrite(p.body(), {}) if p.conditional or self._server_ids else p.body()
        resp = self.client.request("PUT", p.request_url(), body=body)
        r = results[p.key]
        r.http_status = resp.status_code
        if 200 <= resp.status_code < 300:
            r.status = "written"
            r.version = _version_from(
                {"etag": resp.headers.get("ETag"), "location": resp.headers.get("Location")}
            )
            self._remember_id(p, resp.headers.get("Location") or resp.headers.get("Content-Location"))
        else:
            r.status = "failed"
            issues = issues_from_outcome(_json(resp), p.key)
            report.issues.extend(
                issues or [Issue("error", f"HTTP {resp.status_code}: {describe_body(resp)}", p.key)]
            )

    def upload(
        self,
        resources: list[dict[str, Any]],
        *,
        mode: str = "transaction",
        batch_size: int | None = None,
        conditional: bool = False,
        dry_run: bool = False,
        verify: bool = False,
        validate: bool = False,
        progress: Callable[[int, int], None] | None = None,
        max_replans: int = 3,
        workers: int = 1,
        timeout: float | None = None,
        repair: bool = False,
    ) -> UploadReport:
        """Upload ``resources``; never raises for server-side failures, which land in the report.

        ``workers`` > 1 sends up to that many bundles at once, but only bundles of clinical
        resources that do not refer to a resource of a bundle still being sent (conformance and
        knowledge resources, and conditional updates, always go one bundle at a time).
        """
        if mode not in MODES:
            raise UploadError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
        if workers < 1:
            raise UploadError("workers must be at least 1")
        if batch_size is not None and batch_size < 1:
            raise UploadError("the batch size must be at least 1")
        if mode == "batch" and batch_size is None:
            batch_size = 100
        if timeout is not None and timeout <= 0:
            raise UploadError("the time limit must be positive")
        for res in resources:
            check_resource(res, key_of(res) if isinstance(res, dict) else "a resource")
        if repair and (dry_run or not conditional):
            raise UploadError("--repair works with --conditional and without --dry-run")
        self.client.set_run_timeout(timeout)
        self.repair = repair
        start = time.perf_counter()
        report = UploadReport(mode=mode, dry_run=dry_run)
        lock = _ServerLock(self.base_url) if conditional and not dry_run else None
        stats0 = (self.client.stats.requests, self.client.stats.retries, self.client.stats.lost_responses)
        try:
            if lock is not None:
                lock.acquire(self.client)
            ordered = dependency_order(resources, self.base_url)
            plan: list[PlannedAction] = []
            results: dict[str, ResourceResult] = {}
            total = len(ordered)

            def register(chunk_plan: list[PlannedAction]) -> list[PlannedAction]:
                for p in chunk_plan:
                    r = ResourceResult(
                        p.key, p.action, changes=p.changes, status="planned" if dry_run else "not sent"
                    )
                    if p.action == "unchanged":
                        r.status, r.version = "unchanged", p.server_version
                    results[p.key] = r
                    report.results.append(r)
                plan.extend(chunk_plan)
                return [p for p in chunk_plan if p.action != "unchanged"]

            if dry_run or mode == "put" or batch_size is None or total <= batch_size:
                todo = register(self._plan_ordered(ordered, conditional))
                if not dry_run:
                    done = total - len(todo)
                    if progress:
                        progress(done, total)
                    if mode == "put":
                        for p in todo:
                            self._send_put(p, results, report)
                            done += 1
                            if progress:
                                progress(done, total)
                    else:
                        for chunk in _chunks(todo, batch_size):
                            self._send_bundle(chunk, mode, results, report, max_replans)
                            done += len(chunk)
                            if progress:
                                progress(done, total)
            else:
                self._pipelined(
                    ordered,
                    register,
                    results,
                    report,
                    mode,
                    batch_size,
                    conditional,
                    workers,
                    max_replans,
                    progress,
                )
            if verify:
                report.verified = True
                self._verify(resources, conditional, report)
            if validate:
                report.validated = True
                self._validate(plan, report)
        except TransportError as exc:
            report.fatal = str(exc)
        except UploadError as exc:
            report.fatal = str(exc)
        finally:
            if lock is not None:
                lock.release()
            for what in self.repaired:
                report.issues.append(Issue("information", f"--repair deleted {what}", source="repair"))
            self.repaired.clear()
            s = self.client.stats
            report.requests, report.retries, report.lost_responses = (
                s.requests - stats0[0],
                s.retries - stats0[1],
                s.lost_responses - stats0[2],
            )
            report.elapsed = time.perf_counter() - start
        return report

    def _child(self) -> Uploader:
        """An uploader on a connection of its own, sharing this one's state (ids, repairs)."""
        other = Uploader(self.base_url, client=self.client.fork())
        other.repair, other.repaired, other._server_ids = self.repair, self.repaired, self._server_ids
        return other

    def _pipelined(
        self,
        ordered: list[dict[str, Any]],
        register: Callable[[list[PlannedAction]], list[PlannedAction]],
        results: dict[str, ResourceResult],
        report: UploadReport,
        mode: str,
        batch_size: int,
        conditional: bool,
        workers: int,
        max_replans: int,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        """Several bundles: the next slice is compared with the server (on a connection of its
        own) while the current bundles are written, by up to ``workers`` senders."""
        total = len(ordered)
        # Slices grow geometrically (batch_size, 2x, 4x, ... up to READ_CHUNK): reading a slice
        # costs much less than writing one, so each read finishes while the previous slice is written.
        slices: list[list[dict[str, Any]]] = []
        pos, size = 0, batch_size
        while pos < total:
            slices.append(ordered[pos : pos + size])
            pos += size
            size = max(batch_size, min(READ_CHUNK, size * 2))
        planner = self._child()
        senders: queue.SimpleQueue[Uploader] = queue.SimpleQueue()
        for i in range(workers):
            senders.put(self if i == 0 else self._child())
        in_flight: list[tuple[Future[None], set[str], int]] = []
        done = 0

        def send(chunk: list[PlannedAction]) -> None:
            sender = senders.get()
            try:
                sender._send_bundle(chunk, mode, results, report, max_replans)
            finally:
                senders.put(sender)

        def settle(all_of_them: bool) -> None:
            nonlocal done, in_flight
            if not in_flight:
                return
            futures = [f for f, _, _ in in_flight]
            wait(futures, return_when=ALL_COMPLETED if all_of_them else FIRST_COMPLETED)
            still = []
            for f, keys, n in in_flight:
                if f.done():
                    f.result()  # re-raises a transport failure of that bundle
                    done += n
                else:
                    still.append((f, keys, n))
            in_flight = still
            if progress:
                progress(done, total)

        with ThreadPoolExecutor(max_workers=1) as plan_pool, ThreadPoolExecutor(max_workers=workers) as pool:
            future = plan_pool.submit(planner._plan_ordered, slices[0], conditional)
            for i in range(len(slices)):
                chunk_plan = future.result()
                if i + 1 < len(slices):
                    future = plan_pool.submit(planner._plan_ordered, slices[i + 1], conditional)
                todo = register(chunk_plan)
                done += len(chunk_plan) - len(todo)
                for chunk in _chunks(todo, batch_size):
                    needs = _targets(chunk, self.base_url)
                    alone = (
                        workers == 1
                        or conditional
                        or any(TYPE_RANK.get(p.resource_type, OTHER_RANK) < OTHER_RANK for p in chunk)
                    )
                    while in_flight and (
                        alone or len(in_flight) >= workers or any(needs & keys for _, keys, _ in in_flight)
                    ):
                        settle(all_of_them=alone)
                    in_flight.append((pool.submit(send, chunk), {p.key for p in chunk}, len(chunk)))
                    if alone:
                        settle(all_of_them=True)
            settle(all_of_them=True)

    # ---------------------------------------------------------------- checks after the upload
    def _verify(self, resources: list[dict[str, Any]], conditional: bool, report: UploadReport) -> None:
        for p in self.plan(resources, conditional=conditional):
            if p.action == "create":
                report.issues.append(
                    Issue("error", "not on the server after the upload", p.key, source="verify")
                )
            elif p.action == "update":
                report.issues.append(
                    Issue(
                        "error", "the server's copy differs: " + ", ".join(p.changes), p.key, source="verify"
                    )
                )

    def validate(self, resource: dict[str, Any]) -> list[Issue]:
        """The server's ``$validate`` of one resource against its first declared profile."""
        key = key_of(resource)
        params = {}
        profiles = (resource.get("meta") or {}).get("profile") or []
        if profiles:
            params["profile"] = profiles[0]
        resp = self.client.request(
            "POST", f"{resource['resourceType']}/$validate", body=resource, params=params, idempotent=True
        )
        issues = issues_from_outcome(_json(resp), key, source="validate")
        if not issues and resp.status_code >= 400:
            issues = [Issue("error", f"$validate answered HTTP {resp.status_code}", key, source="validate")]
        return issues

    def _validate(self, plan: list[PlannedAction], report: UploadReport) -> None:
        for p in plan:
            for iss in self.validate(p.resource):
                if iss.severity in ("error", "fatal", "warning"):
                    report.issues.append(iss)


def _targets(chunk: list[PlannedAction], base_url: str) -> set[str]:
    """``Type/id`` of every literal reference made by the resources of ``chunk``."""
    out: set[str] = set()
    for p in chunk:
        refs: list[str] = []
        _walk(p.resource, refs, [])
        out.update(t for t in (_literal_target(r, base_url) for r in refs) if t)
    return out


def _raise_read(rtype: str, resp: requests.Response) -> Any:
    raise UploadError(f"reading {rtype} from the server failed midway (HTTP {resp.status_code})")


def _json(resp: requests.Response) -> Any:
    """The JSON body, or None when the answer is not (strict) JSON."""
    from procfhir.strictio import StrictInputError, loads_json

    try:
        return loads_json(resp.content or b"", "")
    except StrictInputError:
        return None


class _ServerLock:
    """Conditional uploads to one server from this machine, one at a time (an exclusive file lock).

    A conditional update searches by url and creates when nothing is found; two uploaders doing
    that at once can both create (HAPI's known race). Holding this lock around the whole upload
    serialises them, so concurrent runs through procfhir never create duplicates."""

    def __init__(self, base_url: str) -> None:
        import hashlib
        import tempfile
        from pathlib import Path

        folder = Path(tempfile.gettempdir()) / "procfhir-locks"
        self.path = folder / (hashlib.sha256(base_url.encode("utf-8")).hexdigest()[:32] + ".lock")
        self._fd: int | None = None

    def acquire(self, client: FhirClient) -> None:
        import fcntl
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = client._run_time_left()
                if left is not None and left <= 0:
                    os.close(fd)
                    raise TransportError(
                        "another conditional upload to this server is running; the time limit "
                        "(--timeout) passed while waiting for it"
                    ) from None
                time.sleep(0.2)
        self._fd = fd

    def release(self) -> None:
        import fcntl
        import os

        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
