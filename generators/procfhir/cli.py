"""The ``procfhir`` command line: a thin layer over the Python API.

Sub-commands live in ``generators/procfhir/commands/<name>.py`` (each exposing a click object named
``command``) and are imported only when used, so that a cold ``procfhir build`` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

# Exit status of every command: 0 success, 1 "found problems" (the input was read and is wrong,
# or the work ran and reports failures), 2 "could not run" (bad arguments, an unreadable or
# malformed file, an output place we must not write, a server we cannot reach).
FOUND_PROBLEMS = 1
COULD_NOT_RUN = 2

# command name -> module under generators.commands
COMMANDS: dict[str, str] = {
    "build": "build",
    "validate": "validate",
    "fhir-cache": "fhir_cache",
    "upload": "upload",
    "hapi": "hapi",
    "apply": "apply",
    "review": "review",
    "draft": "draft",
    "terminology": "terminology",
    "native": "native",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMANDS.get(cmd_name)
        if module_name is None:
            return None
        try:
            module = importlib.import_module(f"procfhir.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"procfhir.commands.{module_name}":
                return None
            raise
        return module.command

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # noqa: BLE001 - the one place that turns errors into messages
            if os.environ.get("PROCFHIR_DEBUG"):
                raise
            code, message = describe_error(exc)
            name = ctx.invoked_subcommand or "procfhir"
            click.echo(f"{name}: {message}", err=True)
            ctx.exit(code)
        return None


def describe_error(exc: BaseException) -> tuple[int, str]:
    """(exit status, one clear message) for an error that reached the command line."""
    from procfhir.errors import BuildError
    from procfhir.safeout import OutputRefused
    from procfhir.strictio import StrictInputError

    if isinstance(exc, OutputRefused):
        return COULD_NOT_RUN, f"refusing to write the output: {exc}"
    if isinstance(exc, StrictInputError):
        return COULD_NOT_RUN, str(exc)
    if isinstance(exc, BuildError):
        from procfhir.config import ConfigError

        return (COULD_NOT_RUN if isinstance(exc, ConfigError) else FOUND_PROBLEMS), f"failed: {exc}"
    if isinstance(exc, RecursionError):
        return COULD_NOT_RUN, "the input is nested too deeply to be read"
    if isinstance(exc, MemoryError):
        return COULD_NOT_RUN, "out of memory: the input is too large"
    if isinstance(exc, UnicodeError):
        return COULD_NOT_RUN, f"an input is not UTF-8 text ({exc})"
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return COULD_NOT_RUN, f"{where}{exc.strerror or exc}"
    # A bug of ours: say so, without a traceback (PROCFHIR_DEBUG=1 shows it).
    return COULD_NOT_RUN, (
        f"internal error ({type(exc).__name__}: {exc}); please report it "
        "(PROCFHIR_DEBUG=1 shows where it happened)"
    )


@click.group(cls=LazyGroup)
@click.version_option(package_name="procedure-fhir")
def main() -> None:
    """Build, validate, upload and apply FHIR R4 clinical procedure content."""


if __name__ == "__main__":
    sys.exit(main())
