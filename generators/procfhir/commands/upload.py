"""``procfhir upload``: send a FHIR package (folder, Bundle or .tgz) to a server, safely."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

SECRETS: list[str] = []


def _say(text: str, err: bool = False) -> None:
    """Echo with every known secret masked (defence in depth: none should ever get here)."""
    for s in SECRETS:
        if s:
            text = text.replace(s, "***")
    click.echo(text, err=err)


def _make_auth(kind: str, o: dict[str, Any]) -> Any:
    from procfhir.upload import BasicAuth, BearerAuth, NoAuth, SmartBackendAuth, read_secret

    if kind == "none":
        return NoAuth()
    if kind == "basic":
        password = read_secret(env=o["password_env"], file=o["password_file"], what="password")
        SECRETS.append(password)
        if not o["user"]:
            raise click.UsageError("--auth basic needs --user")
        return BasicAuth(o["user"], password)
    if kind == "bearer":
        token = read_secret(env=o["token_env"], file=o["token_file"], what="token")
        SECRETS.append(token.strip())
        return BearerAuth(token)
    key = read_secret(env=o["private_key_env"], file=o["private_key_file"], what="private key")
    SECRETS.extend(line for line in key.splitlines() if len(line) > 20 and "-----" not in line)
    if not o["client_id"]:
        raise click.UsageError("--auth smart needs --client-id")
    return SmartBackendAuth(
        o["client_id"],
        key,
        algorithm=o["alg"],
        key_id=o["key_id"],
        token_url=o["token_url"],
        scope=o["scope"],
    )


@click.command("upload")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--server", required=True, help="FHIR base URL, e.g. https://fhir.example.org/fhir")
@click.option(
    "--mode",
    type=click.Choice(["transaction", "batch", "put"]),
    default="transaction",
    show_default=True,
    help="One atomic transaction, batches, or one PUT per resource.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Entries per transaction/batch (default: all in one transaction; 100 per batch).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Bundles sent at once (only clinical resources not referring to each other).",
)
@click.option(
    "--conditional",
    is_flag=True,
    help="Conditional update on url+version for resources with a url (servers that assign ids).",
)
@click.option("--dry-run", is_flag=True, help="Print per resource create/update/unchanged; write nothing.")
@click.option("--verify", is_flag=True, help="Read every resource back and compare it.")
@click.option("--validate", is_flag=True, help="Run the server's $validate on every resource (its profile).")
@click.option(
    "--auth",
    "auth_kind",
    type=click.Choice(["none", "basic", "bearer", "smart"]),
    default="none",
    show_default=True,
)
@click.option("--user", default=None, help="User name for --auth basic.")
@click.option(
    "--password-env",
    default="FHIR_PASSWORD",
    show_default=True,
    help="Environment variable holding the password.",
)
@click.option(
    "--password-file",
    type=click.Path(path_type=Path),
    default=None,
    help="File holding the password (instead of the environment).",
)
@click.option(
    "--token-env",
    default="FHIR_TOKEN",
    show_default=True,
    help="Environment variable holding the bearer token.",
)
@click.option("--token-file", type=click.Path(path_type=Path), default=None, help="File holding the token.")
@click.option("--client-id", default=None, help="SMART client id.")
@click.option(
    "--private-key-file",
    type=click.Path(path_type=Path),
    default=None,
    help="SMART: PEM private key file (RSA for RS384, P-384 for ES384).",
)
@click.option(
    "--private-key-env",
    default="FHIR_PRIVATE_KEY",
    show_default=True,
    help="SMART: environment variable holding the PEM key (when no file is given).",
)
@click.option("--key-id", default=None, help="SMART: kid of the key in the client's JWKS.")
@click.option("--alg", type=click.Choice(["RS384", "ES384"]), default="RS384", show_default=True)
@click.option(
    "--token-url",
    default=None,
    help="SMART token endpoint (default: from {server}/.well-known/smart-configuration).",
)
@click.option("--scope", default="system/*.read system/*.write", show_default=True)
@click.option("--ca-bundle", type=click.Path(path_type=Path), default=None, help="CA bundle for TLS.")
@click.option("--allow-insecure-http", is_flag=True, help="Allow plain http to a non-loopback server.")
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=6,
    show_default=True,
    help="Attempts per request on 429/502/503/504 and dropped connections.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=3600.0,
    show_default=True,
    help="Seconds the whole upload may take; a silent or slow server ends it with a message.",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    show_default=True,
    help="Seconds one request (connection, sending, the whole answer) may take.",
)
@click.option(
    "--repair",
    is_flag=True,
    help="With --conditional: where the server holds several copies of one canonical url|version, "
    "keep one (the one equal to ours, else the oldest) and delete the others.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(
    path: Path,
    server: str,
    mode: str,
    batch_size: int | None,
    conditional: bool,
    dry_run: bool,
    verify: bool,
    validate: bool,
    auth_kind: str,
    ca_bundle: Path | None,
    allow_insecure_http: bool,
    max_attempts: int,
    quiet: bool,
    workers: int,
    timeout: float,
    request_timeout: float,
    repair: bool,
    **auth_opts: Any,
) -> None:
    """Upload the resources in PATH (folder, Bundle file or .tgz package) to a FHIR server.

    Idempotent: resources the server already holds unchanged are skipped, so running it twice
    creates no new versions. Exit status 0 only when everything succeeded.
    """
    from procfhir.upload import RetryPolicy, Uploader, UploadError, load_resources

    try:
        auth = _make_auth(auth_kind, auth_opts)
        resources = load_resources(path)
        uploader = Uploader(
            server,
            auth=auth,
            verify_tls=str(ca_bundle) if ca_bundle else True,
            retry=RetryPolicy(max_attempts=max_attempts),
            allow_insecure_http=allow_insecure_http,
            timeout=(min(10.0, request_timeout), min(120.0, request_timeout)),
            request_deadline=request_timeout,
        )
    except UploadError as exc:
        _say(f"upload: {exc}", err=True)
        sys.exit(2)

    bar = None
    show_bar = not quiet and not dry_run and len(resources) >= 20

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if not show_bar:
            return
        if bar is None:
            bar = click.progressbar(length=total, label="uploading", file=sys.stderr, show_pos=True)
            bar.__enter__()
        bar.update(done - bar.pos)

    try:
        report = uploader.upload(
            resources,
            mode=mode,
            batch_size=batch_size,
            conditional=conditional,
            dry_run=dry_run,
            verify=verify,
            validate=validate,
            progress=progress,
            workers=workers,
            timeout=timeout,
            repair=repair,
        )
    except UploadError as exc:
        _say(f"upload: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - never a traceback; the type names the bug
        _say(f"upload: internal error ({type(exc).__name__}: {exc}); please report it", err=True)
        sys.exit(2)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)

    if dry_run:
        for r in report.results:
            detail = (
                f"  ({', '.join(r.changes[:5])}{', ...' if len(r.changes) > 5 else ''})" if r.changes else ""
            )
            _say(f"{r.action:9}  {r.key}{detail}")
    else:
        for r in report.results:
            if r.status in ("failed", "not sent"):
                why = f": {r.note}" if r.note else ""
                _say(f"FAILED     {r.key} ({r.action}, HTTP {r.http_status or '-'}){why}")
    for issue in report.issues:
        _say(issue.line())
    _say(report.summary_table())
    if report.fatal:  # the upload could not go on (server unreachable, time limit, redirect...)
        _say(f"upload: {report.fatal}", err=True)
        sys.exit(2)
    if not report.ok:  # the server refused resources, or --verify found differences
        sys.exit(1)
