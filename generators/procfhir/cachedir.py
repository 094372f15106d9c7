"""Where procfhir keeps what it can make again (FHIRPath parse trees, compiled modules):
``$PROCFHIR_CACHE``, else ``$XDG_CACHE_HOME/procfhir``, else ``~/.cache/procfhir``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_base() -> Path:
    base = os.environ.get("PROCFHIR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "procfhir"
    )
    return Path(base)
