"""Errors the pipeline reports to its users (never a traceback)."""

from __future__ import annotations


class BuildError(Exception):
    """A problem in the input (configuration, source text, mapping) or in the built output.

    ``problems`` holds every problem found, each a full sentence naming file, line and text.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = problems if problems is not None else [message]

    def __str__(self) -> str:
        if not self.problems or self.problems == [super().__str__()]:
            return super().__str__()
        return super().__str__() + "\n" + "\n".join(f"  - {p}" for p in self.problems)
