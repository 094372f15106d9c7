"""Terminology content installed from the registries, and what the pipeline does with it.

Python API::

    from procfhir import terminology
    terminology.fill()                            # once, online: install and verify the content
    for c in terminology.lookup("needle biopsy"):  # offline afterwards
        print(c.system, c.code, c.display, c.cite())

``lookup`` returns :class:`Candidate` rows (system, code, display, source package, version,
exact entry, and whether the row is a definition or only a mapping that suggests the code).
A candidate is a suggestion for a mapping author: use it only after reading it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from procfhir.terminology.store import Concept, Store, TerminologyError, open_store, store_root

Candidate = Concept


def lookup(words: str | list[str], limit: int = 25, root: Path | None = None) -> list[Candidate]:
    """Candidate codes whose display (or mapping note) contains every word, best first.

    Raises :class:`TerminologyError` when the content is not installed.
    """
    parts = words.split() if isinstance(words, str) else [w for item in words for w in item.split()]
    return open_store(root).search(parts, limit=limit)


def fill(force: bool = False, log: Callable[[str], None] | None = None) -> bool:
    """Install the content (see :mod:`procfhir.terminology.install`)."""
    from procfhir.terminology.install import fill as _fill

    return _fill(force=force, log=log)


__all__ = ["Candidate", "Concept", "Store", "TerminologyError", "fill", "lookup", "open_store", "store_root"]
