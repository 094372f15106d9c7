"""Walking parsed JSON (resources as dicts and lists)."""

from __future__ import annotations

from typing import Any


def strings(obj: Any, out: set[str] | None = None) -> set[str]:
    """Every string value anywhere in ``obj`` (keys excluded)."""
    out = set() if out is None else out
    if isinstance(obj, str):
        out.add(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            strings(v, out)
    elif isinstance(obj, list):
        for v in obj:
            strings(v, out)
    return out
