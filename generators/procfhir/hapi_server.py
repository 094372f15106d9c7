"""Control of the project's HAPI FHIR test server (the Maven project in ``hapi/``).

The server is HAPI FHIR 8.8.0's JPA server (R4, H2 in memory) in a small Spring Boot application
of our own; ``hapi/build.sh`` builds it into ``hapi/target/procfhir-hapi-server.jar``. This module
starts that jar on 127.0.0.1, waits for ``GET /fhir/metadata``, measures the startup, and stops it.

    server = HapiServer(8090)
    server.start(timeout=300)        # builds the jar first if it is missing or stale
    server.base_url                  # 'http://127.0.0.1:8090/fhir'
    server.startup_seconds, server.rss_kib()
    server.stop()

The database is one option: ``HapiServer(port, database="postgresql")`` starts a private
PostgreSQL (:class:`LocalPostgres`: Debian's package, a data folder in a temporary directory,
127.0.0.1 only, run as the ``postgres`` user when we are root) and the server on it, and stops
both; ``database="h2"`` (the default) keeps the in-memory H2 database; ``jdbc_url`` names any
other database (``jdbc:h2:file:...`` or ``jdbc:postgresql://...``).

What the server offers (see ``hapi/src``): transactions and batches, conditional update, search by
``url`` and ``version``, history, ``$validate`` (core definitions + the StructureDefinitions,
ValueSets and CodeSystems stored on the server), ``POST /fhir/$install-package`` (body: the
package .tgz, Content-Type ``application/gzip``), client-assigned ids containing a letter, no reuse
of cached search results, and expunge: :func:`expunge_all` empties the database between tests
(``POST /fhir/$expunge`` with ``expungeEverything``; ``DELETE ...?_expunge=true`` works too).

The pid and log files are ``hapi/run/hapi-PORT.pid`` and ``hapi/run/hapi-PORT.log``, the same as
``hapi/start.sh`` and ``hapi/stop.sh`` use, so either side can stop a server the other started.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

HAPI_DIR = Path(os.environ.get("PROCFHIR_HAPI_DIR", Path(__file__).resolve().parents[2] / "hapi"))
JAR_NAME = "procfhir-hapi-server.jar"
DEFAULT_PORT = 8090
DEFAULT_JAVA_OPTS = "-Xmx3g"
MIN_JAVA = 17
DATABASES = ("h2", "postgresql")


class HapiError(RuntimeError):
    """The server could not be built, started or stopped (the message says why)."""


class HapiUnavailable(HapiError):
    """Java (17+) or, when the jar must be built, Maven is missing on this machine."""


@dataclass(frozen=True)
class Toolchain:
    java: str
    java_version: int
    mvn: str | None


def _java_major(java: str) -> int:
    try:
        out = subprocess.run(
            [java, "-XshowSettings:properties", "-version"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise HapiUnavailable(f"cannot run {java}: {exc}") from exc
    match = re.search(r"java\.specification\.version = (\d+)(?:\.(\d+))?", out.stderr + out.stdout)
    if not match:
        raise HapiUnavailable(f"cannot tell the Java version of {java}")
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def find_java_and_maven(need_maven: bool = True) -> Toolchain:
    """Java 17+ (``JAVA_HOME`` first, then PATH) and Maven (PATH); :class:`HapiUnavailable` if not."""
    java = None
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        java = str(Path(java_home) / "bin" / "java")
    java = java or shutil.which("java")
    if not java:
        raise HapiUnavailable("Java 17+ not found (no JAVA_HOME, no 'java' on PATH)")
    version = _java_major(java)
    if version < MIN_JAVA:
        raise HapiUnavailable(f"Java {MIN_JAVA}+ needed, {java} is Java {version}")
    mvn = shutil.which("mvn")
    if need_maven and not mvn:
        raise HapiUnavailable("Maven ('mvn') not found on PATH; it is needed to build hapi/")
    return Toolchain(java=java, java_version=version, mvn=mvn)


def jar_path() -> Path:
    return HAPI_DIR / "target" / JAR_NAME


def jar_is_stale() -> bool:
    """True when the jar is missing or older than ``hapi/pom.xml`` or a file under ``hapi/src``."""
    jar = jar_path()
    if not jar.is_file() or jar.stat().st_size == 0:
        return True
    built = jar.stat().st_mtime
    sources = [HAPI_DIR / "pom.xml", *(p for p in (HAPI_DIR / "src").rglob("*") if p.is_file())]
    return any(p.stat().st_mtime > built for p in sources)


def build(quiet: bool = True) -> Path:
    """Runs ``hapi/build.sh`` (Maven) and returns the jar's path."""
    find_java_and_maven(need_maven=True)
    proc = subprocess.run(["bash", str(HAPI_DIR / "build.sh")], capture_output=quiet, text=True)
    if proc.returncode != 0:
        detail = ((proc.stdout or "") + (proc.stderr or ""))[-4000:] if quiet else ""
        raise HapiError(f"hapi/build.sh failed (exit {proc.returncode})\n{detail}".rstrip())
    return jar_path()


def ensure_jar() -> Path:
    """The jar, built first if it is missing or stale."""
    if jar_is_stale():
        return build()
    return jar_path()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _is_our_server(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return JAR_NAME.encode() in cmdline


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def rss_kib_of(pid: int) -> int | None:
    """Resident memory (VmRSS, KiB) of a process, from /proc; None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def metadata_ok(base_url: str, timeout: float = 10) -> bool:
    try:
        return requests.get(f"{base_url}/metadata", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def expunge_all(base_url: str, timeout: float = 300) -> int:
    """Empties the server: every resource, all history (``$expunge`` with ``expungeEverything``).

    Returns the number of expunged entities HAPI reports. The server is shared by a test session,
    so only call it from a test that owns the whole server (most tests should use distinct
    resource ids instead).
    """
    body = {"resourceType": "Parameters", "parameter": [{"name": "expungeEverything", "valueBoolean": True}]}
    resp = requests.post(
        f"{base_url}/$expunge", json=body, headers={"Content-Type": "application/fhir+json"}, timeout=timeout
    )
    if resp.status_code != 200:
        raise HapiError(f"$expunge failed: HTTP {resp.status_code}: {resp.text[:500]}")
    for param in resp.json().get("parameter", []):
        if param.get("name") == "count":
            return int(param.get("valueInteger", 0))
    return 0


class HapiServer:
    """One HAPI FHIR server process on 127.0.0.1:``port`` (a fresh in-memory database per start)."""

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        java_opts: str | None = None,
        jdbc_url: str | None = None,
        database: str = "h2",
    ) -> None:
        if database not in DATABASES:
            raise HapiError(f"unknown database {database!r}: choose {' or '.join(DATABASES)}")
        self.port = port
        self.java_opts = java_opts or os.environ.get("HAPI_JAVA_OPTS", DEFAULT_JAVA_OPTS)
        self.jdbc_url = jdbc_url
        self.database = database
        self.postgres: LocalPostgres | None = None
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    @property
    def run_dir(self) -> Path:
        return HAPI_DIR / "run"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"hapi-{self.port}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"hapi-{self.port}.log"

    @property
    def pid(self) -> int | None:
        """The server's pid (this object's process, else the pid file's if it is our server)."""
        if self._proc is not None:
            return self._proc.pid
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) and _is_our_server(pid) else None

    def is_running(self) -> bool:
        pid = self.pid
        return pid is not None and _alive(pid)

    def rss_kib(self) -> int | None:
        pid = self.pid
        return rss_kib_of(pid) if pid else None

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self, timeout: float = 300) -> HapiServer:
        """Starts the server (building the jar if needed) and waits for ``/metadata`` to answer 200.

        Sets :attr:`startup_seconds` (process launch to first 200). Raises :class:`HapiUnavailable`
        without Java/Maven, :class:`HapiError` (with the log's tail) if the server does not come up.
        """
        if self.is_running() and metadata_ok(self.base_url):
            return self
        toolchain = find_java_and_maven(need_maven=jar_is_stale())
        jar = ensure_jar()
        if _port_in_use(self.port):
            raise HapiError(f"port {self.port} on 127.0.0.1 is already in use by another program")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.database == "postgresql" and not self.jdbc_url:
            self.postgres = LocalPostgres().start()
            self.jdbc_url = self.postgres.jdbc_url
        cmd = [toolchain.java, *self.java_opts.split(), "-jar", str(jar)]
        cmd += [f"--server.port={self.port}", "--server.address=127.0.0.1"]
        if self.jdbc_url:
            cmd.append(f"--procfhir.jdbc-url={self.jdbc_url}")
        with open(self.log_file, "wb") as log:
            began = time.monotonic()
            self._proc = subprocess.Popen(
                cmd,
                cwd=HAPI_DIR,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        deadline = began + timeout
        while True:
            if metadata_ok(self.base_url, timeout=5):
                self.startup_seconds = time.monotonic() - began
                return self
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._forget()
                self._stop_postgres()
                raise HapiError(
                    f"HAPI FHIR exited during startup (exit {code}); last lines of {self.log_file}:\n"
                    + self.log_tail()
                )
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise HapiError(
                    f"HAPI FHIR gave no 200 on {self.base_url}/metadata within {timeout:.0f} s; "
                    f"last lines of {self.log_file}:\n{tail}"
                )
            time.sleep(0.5)

    def stop(self, timeout: float = 30) -> bool:
        """Stops the server (SIGTERM, then SIGKILL after ``timeout``); False if none was running."""
        pid = self.pid
        if pid is None:
            self._forget()
            self._stop_postgres()
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                break
            if self._proc is None and not _alive(pid):
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if self._proc is not None:
                self._proc.wait(timeout=10)
        self._forget()
        self._stop_postgres()
        return True

    def _stop_postgres(self) -> None:
        if self.postgres is not None:
            self.postgres.stop()
            self.jdbc_url = None
            self.postgres = None

    def _forget(self) -> None:
        self._proc = None
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def __enter__(self) -> HapiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def find_postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl): on PATH, or Debian's
    ``/usr/lib/postgresql/<version>/bin`` (newest). :class:`HapiUnavailable` when not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise HapiUnavailable(
            "PostgreSQL is not installed (no initdb): `.ci/setup --tests` installs Debian's postgresql"
        )
    return candidates[-1].parent


class LocalPostgres:
    """A private PostgreSQL for tests: a new cluster in a temporary folder, listening on
    127.0.0.1:``port`` only (its socket in that folder), database ``hapi`` of user ``hapi``
    (trust authentication, reachable from loopback only), removed entirely by :meth:`stop`.

    PostgreSQL refuses to run as root; as root the cluster belongs to, and runs as, the
    ``postgres`` user (``runuser``), whose account Debian's package creates."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bin = find_postgres_bin()
        self.folder: Path | None = None
        self.as_user: str | None = None

    @property
    def jdbc_url(self) -> str:
        return f"jdbc:postgresql://127.0.0.1:{self.port}/hapi?user=hapi"

    def _run(self, *args: str | Path, timeout: float = 120) -> None:
        cmd = [str(a) for a in args]
        what = " ".join(cmd[:2])
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise HapiError(f"PostgreSQL: {what} failed: {(proc.stderr or proc.stdout)[-2000:]}")

    def start(self) -> LocalPostgres:
        import tempfile

        self.folder = Path(tempfile.mkdtemp(prefix="procfhir-pg-"))
        if os.geteuid() == 0:
            import pwd

            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise HapiUnavailable(
                    "running as root and there is no 'postgres' user to run PostgreSQL"
                ) from None
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.as_user = "postgres"
        data, log = self.folder / "data", self.folder / "server.log"
        try:
            self._run(
                self.bin / "initdb",
                "-D",
                str(data),
                "-U",
                "hapi",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
            )
            self._run(self.bin / "pg_ctl", "-D", str(data), "-o", options, "-l", str(log), "-w", "start")
            self._run(
                self.bin / "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "hapi",
                "-d",
                "postgres",
                "-q",
                "-c",
                "CREATE DATABASE hapi",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.folder is None:
            return
        data = self.folder / "data"
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(HapiError, subprocess.TimeoutExpired):
                self._run(self.bin / "pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop", timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None
