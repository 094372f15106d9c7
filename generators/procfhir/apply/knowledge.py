"""What ``$apply`` knows, read from FHIR resources only: a package folder, an NPM package
(``.tgz``), a Bundle (JSON file), or a FHIR server searched by canonical url.

Nothing here reads the mapping or calls the build: a package built elsewhere, by another tool or
another hospital, is applied the same way. The knowledge of one plan is its PlanDefinition, the
ActivityDefinitions it points to, the ValueSets and CodeSystems of the package, the profiles
(StructureDefinitions) and the Consent templates; :mod:`procfhir.apply.plan` reads from them what
the plan needs (its body sites, complications, consent form...).
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procfhir.apply.errors import KnowledgeError
from procfhir.strictio import StrictInputError, loads_canonical_json, read_bytes

TYPES = ("PlanDefinition", "ActivityDefinition", "ValueSet", "CodeSystem", "Consent", "StructureDefinition")
PROJECT_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_PACKAGE = PROJECT_ROOT / "fhir"


@dataclass
class Resources:
    """The knowledge resources of a package, indexed (canonical ones by url and url|version)."""

    where: str
    plans: list[dict[str, Any]] = field(default_factory=list)
    by_url: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_id: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    consents: list[dict[str, Any]] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)

    def add(self, res: dict[str, Any], origin: str) -> None:
        rtype, rid = res.get("resourceType"), res.get("id")
        if rtype not in TYPES:
            return
        if not isinstance(rid, str):
            raise KnowledgeError(f"{origin}: a {rtype} without an id")
        old = self.by_id.get((rtype, rid))
        if old is not None:
            if old != res:
                raise KnowledgeError(f"{origin}: two different {rtype} resources with the id {rid}")
            return
        self.by_id[(rtype, rid)] = res
        url = res.get("url")
        if isinstance(url, str) and rtype != "Consent":
            keys = [url, f"{url}|{res['version']}"] if res.get("version") else [url]
            for key in keys:
                other = self.by_url.get(key)
                if other is not None and other.get("version") == res.get("version"):
                    raise KnowledgeError(f"{origin}: two resources with the canonical url {key}")
                if other is None or key != url:
                    self.by_url[key] = res
        if rtype == "PlanDefinition":
            self.plans.append(res)
        elif rtype == "Consent":
            self.consents.append(res)
        elif rtype == "StructureDefinition":
            self.profiles.append(res)

    def get(self, canonical: str, rtype: str | None = None) -> dict[str, Any] | None:
        res = self.by_url.get(canonical)
        if res is None and "|" in canonical:
            res = self.by_url.get(canonical.split("|", 1)[0])
        if res is not None and rtype is not None and res.get("resourceType") != rtype:
            return None
        return res


# Limits on what a package may hold: one resource file (or .tgz member), and everything read from
# one package (after gzip inflation), checked while reading, so a huge member or a gzip bomb is
# refused without being held in memory.
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_PACKAGE_BYTES = 1024 * 1024 * 1024


def _json(data: bytes, origin: str) -> Any:
    """Strict JSON (:mod:`procfhir.strictio`): duplicate keys, NaN, deep nesting... are errors
    (checked fast in what orjson or ``json.dumps(indent=2)`` wrote, e.g. a built package)."""
    try:
        return loads_canonical_json(data, origin)
    except StrictInputError as exc:
        raise KnowledgeError(str(exc)) from None


def _read(path: Path) -> bytes:
    try:
        return read_bytes(path, max_bytes=MAX_FILE_BYTES, what="FHIR resource file")
    except StrictInputError as exc:
        raise KnowledgeError(str(exc)) from None


def _from_folder(folder: Path, out: Resources) -> None:
    paths = sorted(p for p in folder.glob("*.json") if not p.is_dir())
    if not paths:
        raise KnowledgeError(f"{folder}: no FHIR resource (*.json) in the folder")
    total = 0
    for path in paths:
        data = _read(path)
        total += len(data)
        if total > MAX_PACKAGE_BYTES:
            raise KnowledgeError(
                f"{folder}: the package holds more than {MAX_PACKAGE_BYTES:,} bytes: refused"
            )
        res = _json(data, str(path))
        if isinstance(res, dict):  # a Bundle beside the files repeats them: only the files count
            out.add(res, str(path))


class _Inflated(io.RawIOBase):
    """The inflated bytes of a gzip file, refused (:class:`KnowledgeError`) beyond ``limit``."""

    def __init__(self, gz: gzip.GzipFile, limit: int, where: str) -> None:
        self.gz, self.limit, self.where, self.count = gz, limit, where, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.gz.read(min(len(b), self.limit + 1 - self.count))
        self.count += len(data)
        if self.count > self.limit:
            raise KnowledgeError(
                f"{self.where}: the package unpacks to more than {self.limit:,} bytes: refused"
            )
        b[: len(data)] = data
        return len(data)


def _from_tgz(path: Path, out: Resources) -> None:
    found: list[tuple[str, bytes]] = []
    try:
        with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            stream = io.BufferedReader(_Inflated(gz, MAX_PACKAGE_BYTES, str(path)), 1024 * 1024)
            with tarfile.open(fileobj=stream, mode="r|") as tar:  # one pass, nothing held but members
                for member in tar:
                    name = member.name
                    if (
                        not member.isfile()
                        or not name.endswith(".json")
                        or name.rsplit("/", 1)[-1][:1] == "."
                    ):
                        continue
                    if not name.startswith("package/") or name.startswith("package/example/"):
                        continue  # the package's own resources; examples are not knowledge
                    if member.size > MAX_FILE_BYTES:
                        raise KnowledgeError(
                            f"{path}:{name}: {member.size:,} bytes, more than {MAX_FILE_BYTES:,} accepted"
                        )
                    f = tar.extractfile(member)
                    if f is not None:
                        found.append((name, f.read(MAX_FILE_BYTES + 1)))
    except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
        raise KnowledgeError(f"{path}: not a readable .tgz package: {exc}") from None
    for name, data in sorted(found):
        res = _json(data, f"{path}:{name}")
        if isinstance(res, dict):
            out.add(res, f"{path}:{name}")


def _from_bundle(bundle: Any, origin: str, out: Resources) -> None:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise KnowledgeError(f"{origin}: expected a FHIR Bundle (or a folder, a .tgz package, a server URL)")
    for i, entry in enumerate(bundle.get("entry") or []):
        res = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(res, dict):
            out.add(res, f"{origin}: entry[{i}]")


def read_resources(source: str | Path | None = None, plan: str | None = None) -> Resources:
    """The knowledge resources of ``source`` (default: the project's ``fhir/`` folder)."""
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        from procfhir.apply.server import read_server

        return read_server(source, plan)
    path = Path(source) if source is not None else DEFAULT_PACKAGE
    out = Resources(str(path))
    if path.is_dir():
        _from_folder(path, out)
    elif not path.exists():
        raise KnowledgeError(f"{path}: no such package (a folder, a .tgz package, a Bundle, or a server URL)")
    elif path.name.endswith((".tgz", ".tar.gz")):
        _from_tgz(path, out)
    else:
        _from_bundle(_json(_read(path), str(path)), str(path), out)
    return out


def resources_from(items: Iterable[dict[str, Any]], where: str = "resources") -> Resources:
    """Resources given in memory (e.g. by a test or a caller that already holds them)."""
    out = Resources(where)
    for i, res in enumerate(items):
        out.add(res, f"{where}[{i}]")
    return out


def _label(plan: dict[str, Any]) -> str:
    url = plan.get("url") or f"PlanDefinition/{plan.get('id')}"
    version = f"|{plan['version']}" if plan.get("version") else ""
    return f"{url}{version} ({plan.get('title') or plan.get('name') or plan.get('id')})"


def select_plan(res: Resources, plan: str | None = None) -> dict[str, Any]:
    """The PlanDefinition chosen by canonical url (``url`` or ``url|version``) or id."""
    available = "; ".join(_label(p) for p in sorted(res.plans, key=_label)) or "none"
    if plan is None:
        if len(res.plans) == 1:
            return res.plans[0]
        if not res.plans:
            raise KnowledgeError(f"{res.where}: the package has no PlanDefinition")
        raise KnowledgeError(
            f"{res.where}: the package has {len(res.plans)} PlanDefinitions; choose one with --plan URL "
            f"(available: {available})"
        )
    url, _, version = plan.partition("|")
    found = [
        p
        for p in res.plans
        if (p.get("url") == url or p.get("id") == plan) and (not version or p.get("version") == version)
    ]
    if len(found) > 1:  # several versions of one url
        raise KnowledgeError(
            f"{res.where}: several versions of the plan {plan}; give url|version "
            f"(available: {'; '.join(_label(p) for p in found)})"
        )
    if not found:
        raise KnowledgeError(f"{res.where}: no PlanDefinition {plan} (available: {available})")
    return found[0]


# -- the knowledge of one plan -------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """One body site the plan may treat: its coding and the short label a context may use."""

    coding: dict[str, str]
    label: str
    names: frozenset[str]  # lower-case forms a context may give: code, display, label


@dataclass(frozen=True)
class SiteSet:
    value_set: str  # canonical url
    name: str  # the value set's id, for messages
    sites: tuple[Site, ...]
    label: str | None  # how the text names the sites, when the plan says (forms: "{label} to be treated")
    required: bool
    _by_name: dict[str, Site] = field(init=False, repr=False, compare=False, default_factory=dict)
    _by_coding: dict[tuple[Any, Any], Site] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        by_name: dict[str, Site] = {}
        for site in self.sites:
            for name in site.names:
                by_name.setdefault(name, site)
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(
            self, "_by_coding", {(s.coding["system"], s.coding["code"]): s for s in self.sites}
        )

    def find(self, value: Any) -> Site | None:
        """The site a context names: by label, code or display (any case), or by Coding."""
        if isinstance(value, dict):
            return self._by_coding.get((value.get("system"), value.get("code")))
        if isinstance(value, str):
            return self._by_name.get(value.strip().lower())
        return None


def value_set_codings(vs: dict[str, Any], res: Resources) -> list[dict[str, str]]:
    """The codings of a value set, in order: enumerated concepts, or every concept of an included
    CodeSystem of the package; a filter or an external system it cannot expand is an error."""
    out: list[dict[str, str]] = []
    expansion = (vs.get("expansion") or {}).get("contains")
    if expansion:
        return [
            {"system": c["system"], "code": c["code"], "display": c.get("display", c["code"])}
            for c in expansion
            if c.get("system") and c.get("code")
        ]
    for inc in (vs.get("compose") or {}).get("include", []):
        system = inc.get("system")
        if inc.get("filter") or inc.get("valueSet") or not system:
            raise KnowledgeError(f"ValueSet {vs.get('url')}: only enumerated value sets are applied")
        concepts = inc.get("concept")
        if concepts is None:
            cs = res.get(system, "CodeSystem")
            if cs is None:
                raise KnowledgeError(f"ValueSet {vs.get('url')}: the package has no CodeSystem {system}")
            concepts = _flat(cs.get("concept") or [])
        for c in concepts:
            out.append({"system": system, "code": c["code"], "display": c.get("display", c["code"])})
    return out


def _flat(concepts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for c in concepts for x in (c, *_flat(c.get("concept") or []))]


def _site_set(vs: dict[str, Any], res: Resources, label: str | None, required: bool) -> SiteSet:
    codings = value_set_codings(vs, res)
    firsts = [c["display"].split(" ", 1)[0] for c in codings]
    unique = len({f.lower() for f in firsts}) == len(firsts)
    sites = []
    for c, first in zip(codings, firsts, strict=True):
        short = first if unique else c["display"]  # the first word of the display when it names one site
        names = frozenset(n.lower() for n in (c["code"], c["display"], short))
        sites.append(Site(c, short, names))
    return SiteSet(vs["url"], vs.get("id", vs["url"]), tuple(sites), label, required)


def _element(sd: dict[str, Any], path: str) -> dict[str, Any] | None:
    for e in (sd.get("differential") or {}).get("element", []) or (sd.get("snapshot") or {}).get(
        "element", []
    ):
        if e.get("id") == path or e.get("path") == path:
            return e  # type: ignore[no-any-return]
    return None


def _binding(sd: dict[str, Any] | None, path: str) -> str | None:
    e = _element(sd, path) if sd else None
    vs = ((e or {}).get("binding") or {}).get("valueSet")
    return vs if isinstance(vs, str) else None


def _walk_actions(actions: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for a in actions:
        yield a
        yield from _walk_actions(a.get("action") or [])


def _codings(concepts: Any) -> set[tuple[str, str]]:
    if isinstance(concepts, dict):
        concepts = [concepts]
    return {
        (c.get("system", ""), c.get("code", ""))
        for cc in concepts or []
        if isinstance(cc, dict)
        for c in cc.get("coding") or []
        if isinstance(c, dict)
    }


@dataclass
class Knowledge:
    """One plan and what ``$apply`` reads about it from the package's resources."""

    resources: Resources
    plan: dict[str, Any]
    activities: dict[str, dict[str, Any]]  # by canonical (as the actions give it)
    procedure_profile: dict[str, Any] | None
    sites: SiteSet | None
    complications: str | None  # canonical url of the plan's complications value set
    procedures: str | None  # canonical url of the value set of the plan's procedure codes
    consent_template: dict[str, Any] | None
    action_codings: set[tuple[str, str]]
    base: str  # the canonical base of the plan's package (its extensions' urls start with it)

    def extension_url(self, name: str) -> str:
        return f"{self.base}/StructureDefinition/{name}"

    def extensions(self, element: dict[str, Any], name: str) -> list[dict[str, Any]]:
        url = self.extension_url(name)
        return [e for e in element.get("extension") or [] if isinstance(e, dict) and e.get("url") == url]

    def value_set(self, canonical: str) -> dict[str, Any]:
        vs = self.resources.get(canonical, "ValueSet")
        if vs is None:
            raise KnowledgeError(f"{self.resources.where}: the package has no ValueSet {canonical}")
        return vs

    def value_set_codings(self, canonical: str) -> list[dict[str, str]]:
        return value_set_codings(self.value_set(canonical), self.resources)

    def code_system(self, system: str) -> dict[str, Any] | None:
        return self.resources.get(system, "CodeSystem")


def _procedure_profile(res: Resources, codes: set[tuple[str, str]]) -> dict[str, Any] | None:
    """The Procedure profile of the plan: the one of the package, or the one whose Procedure.code
    binding holds a code of the plan's actions."""
    candidates = [
        sd
        for sd in res.profiles
        if sd.get("type") == "Procedure"
        and sd.get("derivation") == "constraint"
        and sd.get("kind") == "resource"
    ]
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    fitting = []
    for sd in candidates:
        vs_url = _binding(sd, "Procedure.code")
        vs = res.get(vs_url, "ValueSet") if vs_url else None
        if vs is not None and codes & {(c["system"], c["code"]) for c in value_set_codings(vs, res)}:
            fitting.append(sd)
    if len(fitting) > 1:
        urls = ", ".join(sorted(sd.get("url", "") for sd in fitting))
        raise KnowledgeError(f"{res.where}: several Procedure profiles fit the plan ({urls})")
    return fitting[0] if fitting else None


def _consent_template(res: Resources, codes: set[tuple[str, str]], titles: set[str]) -> dict[str, Any] | None:
    """The Consent template whose provision names a procedure of the plan: by code, else by the
    procedure's name (a provision with text only), else the package's only Consent."""

    def provisions(c: dict[str, Any]) -> list[dict[str, Any]]:
        return [p for p in (c.get("provision") or {}).get("code") or [] if isinstance(p, dict)]

    fitting = [c for c in res.consents if _codings(provisions(c)) & codes]
    if not fitting:
        fitting = [c for c in res.consents if {p.get("text") for p in provisions(c)} & titles]
    if not fitting and len(res.consents) == 1:
        fitting = res.consents
    if len(fitting) > 1:
        ids = ", ".join(sorted(c["id"] for c in fitting))
        raise KnowledgeError(f"{res.where}: several Consent templates name the plan's procedures ({ids})")
    return fitting[0] if fitting else None


def load_knowledge(source: str | Path | None = None, plan: str | None = None) -> Knowledge:
    """Read the package and the chosen plan; raise :class:`KnowledgeError` naming what is missing."""
    res = read_resources(source, plan)
    return knowledge_of(res, select_plan(res, plan))


def _plan_value_sets(plan: dict[str, Any], base: str) -> dict[str, dict[str, Any]]:
    """The plan's ``plan-value-set`` extensions by role: valueSet, label, each, required."""
    out: dict[str, dict[str, Any]] = {}
    for ext in plan.get("extension") or []:
        if not isinstance(ext, dict) or ext.get("url") != f"{base}/StructureDefinition/plan-value-set":
            continue
        parts: dict[str, Any] = {}
        for sub in ext.get("extension") or []:
            value = next((v for k, v in sub.items() if k.startswith("value")), None)
            parts[sub.get("url")] = value
        role = parts.get("role")
        if not isinstance(role, str) or not isinstance(parts.get("valueSet"), str):
            raise KnowledgeError(
                f"PlanDefinition/{plan.get('id')}: a plan-value-set without role or valueSet"
            )
        if role in out:
            raise KnowledgeError(f"PlanDefinition/{plan.get('id')}: two plan value sets of role {role}")
        out[role] = parts
    return out


def knowledge_of(res: Resources, plan: dict[str, Any]) -> Knowledge:
    where = f"PlanDefinition/{plan.get('id')}"
    base = str(plan.get("url") or "").rsplit("/PlanDefinition/", 1)[0]
    roles = _plan_value_sets(plan, base)
    activities: dict[str, dict[str, Any]] = {}
    codes: set[tuple[str, str]] = set()
    titles: set[str] = set()
    for a in _walk_actions(plan.get("action") or []):
        codes |= _codings(a.get("code"))
        titles |= {t for t in (a.get("title"), *(c.get("text") for c in a.get("code") or [])) if t}
        canonical = a.get("definitionCanonical")
        if canonical:
            ad = res.get(canonical)
            if ad is None:
                raise KnowledgeError(
                    f"PlanDefinition/{plan.get('id')}: action {a.get('id')}: definitionCanonical {canonical} "
                    f"is not in {res.where}"
                )
            activities[canonical] = ad
            codes |= _codings(ad.get("code"))
            titles |= {t for t in (ad.get("title"), (ad.get("code") or {}).get("text")) if t}
    profile_url = next(
        (
            e.get("valueCanonical")
            for e in plan.get("extension") or []
            if isinstance(e, dict) and e.get("url") == f"{base}/StructureDefinition/procedure-profile"
        ),
        None,
    )
    if profile_url:
        profile = res.get(profile_url, "StructureDefinition")
        if profile is None:
            raise KnowledgeError(f"{where}: its Procedure profile {profile_url} is not in {res.where}")
    else:  # a package without the plan's declarations: the Procedure profile that fits
        profile = _procedure_profile(res, codes)
    sites = None
    if roles:  # the plan declares its value sets: no body-site entry, no body sites
        site_role = roles.get("body-site")
        sites_url = site_role["valueSet"] if site_role else None
        label = site_role.get("label") if site_role else None
        required = bool(site_role.get("required", True)) if site_role else False
    else:
        sites_url = _binding(profile, "Procedure.bodySite")
        element = _element(profile, "Procedure.bodySite") if profile else None
        label, required = None, bool(element and element.get("min", 0) >= 1)
    if sites_url:
        vs = res.get(sites_url, "ValueSet")
        if vs is None:
            raise KnowledgeError(
                f"{res.where}: the package has no ValueSet {sites_url} (the plan's body sites)"
            )
        sites = _site_set(vs, res, label, required)

    def role(name: str, path: str) -> str | None:
        if name in roles:
            return str(roles[name]["valueSet"])
        return None if roles else _binding(profile, path)

    return Knowledge(
        resources=res,
        plan=plan,
        activities=activities,
        procedure_profile=profile,
        sites=sites,
        complications=role("complication", "Procedure.complication"),
        procedures=role("procedure", "Procedure.code"),
        consent_template=_consent_template(res, codes, titles),
        action_codings=codes,
        base=base,
    )
