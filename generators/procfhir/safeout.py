"""Writing output without ever destroying a user's files.

Every output folder we write gets a marker file (:data:`MARKER`). A folder is replaced only when it
does not exist, is empty, or holds our marker (so we made it before); anything else - a folder with
the project's ``source/``, a home directory, a file - is refused with :class:`OutputRefused`, and
nothing is written. The swap is atomic: the new content is written into a temporary sibling
folder and renamed into place only when complete. Single files are written to a temporary sibling
and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

MARKER = ".procfhir-output"
MARKER_TEXT = b"This folder was written by procfhir; procfhir replaces it as a whole when asked to.\n"


class OutputRefused(Exception):
    """The output place cannot be written safely; the message says why and what to do."""


def check_folder(out_dir: str | Path, *, replace: bool = True, hint: str = "allow replacing it") -> Path:
    """Refuse ``out_dir`` unless it is missing, empty, or a folder of ours (if ``replace``).

    Returns the absolute path. Raises :class:`OutputRefused`."""
    out = Path(out_dir)
    if out.is_symlink() and not out.exists():
        raise OutputRefused(f"{out}: is a broken symbolic link; choose another output folder")
    if out.exists():
        if not out.is_dir():
            raise OutputRefused(f"{out}: exists and is not a folder; choose another output folder")
        entries = _entries(out)
        if entries and not (replace and (out / MARKER).is_file() and not (out / MARKER).is_symlink()):
            if (out / MARKER).is_file() and not replace:
                raise OutputRefused(f"{out}: holds earlier output; {hint} or choose another folder")
            shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
            raise OutputRefused(
                f"{out}: is a folder with files procfhir did not write ({shown}); procfhir only replaces "
                f"an empty folder or one it made (with a {MARKER} file). Choose a new or empty folder."
            )
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputRefused(f"{out}: {_first_non_dir(parent)} is not a folder") from None
    except PermissionError:
        raise OutputRefused(f"{out}: cannot create {parent}: permission denied") from None
    except OSError as exc:
        raise OutputRefused(f"{out}: cannot create {parent}: {exc.strerror or exc}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputRefused(f"{out}: cannot write in {parent}: permission denied")
    return out.absolute()


def _first_non_dir(path: Path) -> Path:
    for p in [*reversed(path.parents), path]:
        if p.exists() and not p.is_dir():
            return p
    return path


def _entries(folder: Path) -> list[str]:
    try:
        return [p.name for p in folder.iterdir()]
    except PermissionError:
        raise OutputRefused(f"{folder}: cannot list the folder: permission denied") from None


@contextlib.contextmanager
def staged_folder(
    out_dir: str | Path, *, replace: bool = True, hint: str = "allow replacing it"
) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out_dir``; on normal exit it (with our marker)
    replaces ``out_dir``; on any exception it is removed and ``out_dir`` is left untouched."""
    out = check_folder(out_dir, replace=replace, hint=hint)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise OutputRefused(f"{out}: cannot write in {out.parent}: {exc.strerror or exc}") from None
    try:
        yield tmp
        (tmp / MARKER).write_bytes(MARKER_TEXT)
        check_folder(out, replace=replace, hint=hint)  # again: it may have changed meanwhile
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        old.rmdir()
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def replace_folder(out_dir: str | Path, files: dict[str, bytes], *, replace: bool = True) -> Path:
    """Make ``out_dir`` hold exactly ``files`` (and our marker), atomically and safely."""
    for name in files:
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts or name in ("", MARKER):
            raise ValueError(f"not a plain relative output name: {name!r}")
    with staged_folder(out_dir, replace=replace) as tmp:
        for name, data in sorted(files.items()):
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return Path(out_dir).absolute()


def write_file(
    path: str | Path,
    data: bytes | list[bytes],
    *,
    may_replace: Callable[[Path], bool] | None = None,
    what: str = "",
    parents: bool = True,
) -> None:
    """Write one file atomically (temporary sibling, then rename); ``data``: its bytes, or the
    pieces to write one after the other.

    An existing file is replaced only when ``may_replace(path)`` says it is ours (default: never);
    ``what`` names what we write (said in the refusal). Missing parent folders are made only when
    ``parents``."""
    p = check_file(path, may_replace=may_replace, what=what, parents=parents)
    parent = p.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=parent)
    except FileExistsError:
        raise OutputRefused(f"{p}: {_first_non_dir(parent)} is not a folder") from None
    except OSError as exc:
        raise OutputRefused(f"{p}: cannot write in {parent}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; the file is meant to be read like any other
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, list):
                f.writelines(data)
            else:
                f.write(data)
        os.replace(tmp, p)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputRefused(f"{p}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_file(
    path: str | Path,
    *,
    may_replace: Callable[[Path], bool] | None = None,
    what: str = "",
    parents: bool = True,
) -> Path:
    """Refuse ``path`` (:class:`OutputRefused`) unless it is missing or a file ``may_replace`` says
    is ours; :func:`write_file` checks this again when it writes (call it early to fail fast)."""
    p = Path(path)
    if p.is_dir():
        raise OutputRefused(f"{p}: is a folder; give a file name")
    if (p.exists() or p.is_symlink()) and (not p.is_file() or may_replace is None or not may_replace(p)):
        ours = f" ({what})" if what else ""
        raise OutputRefused(
            f"{p}: exists and procfhir did not write it{ours}; procfhir replaces only a file it wrote "
            "before. Choose another name, or move the file away."
        )
    parent = p.absolute().parent
    if not parents and not parent.is_dir():
        raise OutputRefused(f"{p}: the folder {parent} does not exist; create it or choose another place")
    return p


# ---------------------------------------------------------------------------------------------
# is an existing file one we wrote? (the ``may_replace`` tests of the commands' single files)

MAX_OURS_BYTES = 256 * 1024 * 1024


def is_json_resource(path: Path, resource_type: str) -> bool:
    """The file is JSON holding one FHIR resource of ``resource_type`` (what we write)."""
    import orjson

    from procfhir.strictio import StrictInputError, read_json

    try:  # orjson first: the strict reader takes seconds on a large OperationOutcome
        if path.stat().st_size <= MAX_OURS_BYTES:
            got = orjson.loads(path.read_bytes())
            if isinstance(got, dict) and got.get("resourceType") == resource_type:
                return True
    except (OSError, orjson.JSONDecodeError):
        pass
    try:
        obj = read_json(path, max_bytes=MAX_OURS_BYTES)
    except StrictInputError:
        return False
    return isinstance(obj, dict) and obj.get("resourceType") == resource_type


def starts_with(path: Path, marker: bytes, within: int = 4096) -> bool:
    """``marker`` occurs in the first ``within`` bytes of the file (our header or meta tag)."""
    try:
        with open(path, "rb") as f:
            return marker in f.read(max(within, len(marker)))
    except OSError:
        return False
