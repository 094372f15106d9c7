"""``procfhir hapi start|stop|status|build``: the HAPI FHIR test server of ``hapi/``."""

from __future__ import annotations

import sys

import click

PORT = click.option(
    "--port", type=click.IntRange(1, 65535), default=8090, show_default=True, help="Port on 127.0.0.1."
)


@click.group("hapi")
def command() -> None:
    """Build, start, stop the local HAPI FHIR R4 test server (http://127.0.0.1:PORT/fhir)."""


@command.command("start")
@PORT
@click.option(
    "--timeout",
    type=float,
    default=300,
    show_default=True,
    help="Seconds to wait for GET /fhir/metadata to answer 200.",
)
@click.option("--java-opts", default=None, help="JVM options (default: $HAPI_JAVA_OPTS or -Xmx3g).")
@click.option(
    "--jdbc-url",
    default=None,
    help="The database: default a fresh in-memory H2; e.g. jdbc:postgresql://127.0.0.1:5432/hapi?user=hapi "
    "runs the server on PostgreSQL, jdbc:h2:file:/path/db keeps H2 data across restarts.",
)
def start(port: int, timeout: float, java_opts: str | None, jdbc_url: str | None) -> None:
    """Start the server in the background (building it first if needed) and wait until it answers."""
    from procfhir.hapi_server import HapiError, HapiServer

    if jdbc_url is not None and not jdbc_url.startswith(("jdbc:h2:", "jdbc:postgresql:")):
        raise click.BadParameter("a jdbc:h2: or jdbc:postgresql: URL", param_hint="--jdbc-url")
    server = HapiServer(port, java_opts=java_opts, jdbc_url=jdbc_url)
    if server.is_running():
        click.echo(f"HAPI FHIR already running: {server.base_url} (pid {server.pid})")
        return
    try:
        server.start(timeout=timeout)
    except HapiError as exc:
        click.echo(f"hapi start failed: {exc}", err=True)
        sys.exit(1)
    # Leave it running: forget the process handle, the pid file stays.
    click.echo(
        f"HAPI FHIR up: {server.base_url} (pid {server.pid}, {server.startup_seconds:.1f} s, "
        f"log {server.log_file})"
    )


@command.command("stop")
@PORT
def stop(port: int) -> None:
    """Stop the server started on PORT."""
    from procfhir.hapi_server import HapiServer

    server = HapiServer(port)
    if server.stop():
        click.echo(f"HAPI FHIR on port {port} stopped")
    else:
        click.echo(f"HAPI FHIR not running on port {port}")


@command.command("status")
@PORT
def status(port: int) -> None:
    """Say whether the server on PORT runs and answers; exit 1 if not."""
    from procfhir.hapi_server import HapiServer, metadata_ok

    server = HapiServer(port)
    pid = server.pid
    if pid is None:
        click.echo(f"HAPI FHIR not running on port {port}")
        sys.exit(1)
    answers = metadata_ok(server.base_url)
    rss = server.rss_kib()
    click.echo(
        f"HAPI FHIR pid {pid} on {server.base_url}: "
        f"{'answering' if answers else 'NOT answering'}" + (f", RSS {rss / 1024:.0f} MiB" if rss else "")
    )
    if not answers:
        sys.exit(1)


@command.command("build")
def build_cmd() -> None:
    """Build hapi/target/procfhir-hapi-server.jar with Maven."""
    from procfhir.hapi_server import HapiError, build

    try:
        jar = build()
    except HapiError as exc:
        click.echo(f"hapi build failed: {exc}", err=True)
        sys.exit(1)
    click.echo(f"built {jar}")
