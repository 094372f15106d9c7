"""The ``procfhir`` command line: a thin layer over the Python API.

Sub-commands live in ``generators/procfhir/commands/<name>.py`` (each exposing a click object named
``command``) and are imported only when used, so that a cold ``procfhir build`` stays fast.
"""

from __future__ import annotations

import importlib

import click

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


@click.group(cls=LazyGroup)
@click.version_option(package_name="procedure-fhir")
def main() -> None:
    """Build, validate, upload and apply FHIR R4 clinical procedure content."""


if __name__ == "__main__":
    main()
