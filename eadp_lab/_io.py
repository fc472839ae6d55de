"""Files the commands write, and the checks they make before any work.

- :func:`write_json`: atomic (a temporary file of a unique name beside ``PATH``, then
  ``os.replace``), so a run killed while writing leaves the previous file whole and two runs
  writing one report never mix their bytes (the last one wins, whole).
- :func:`check_output`: a command checks each output path before it starts (its folder is
  created; a folder given where a file is meant, or a folder that cannot be written, is an
  :class:`OutputPathError` naming the path), so a long run never ends in a failed write.
- :func:`save_json`: the end-of-run write; if it still fails (the disk filled up, the folder
  went away), the results go to a file in the system's temporary folder and the message says
  where (:class:`OutputPathError`), so nothing computed is lost.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

__all__ = ["OutputPathError", "write_json", "check_output", "save_json", "save_report"]


class OutputPathError(ValueError):
    """An output path a command cannot write: the message names it and says why (one line)."""


def write_json(path, data, indent: int = 1, sort_keys: bool = False) -> None:
    """Write ``data`` as JSON (then a newline) to ``path`` atomically, through a uniquely named temporary file."""
    path = Path(path)
    text = json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output(path, what: str = "output") -> Path:
    """``path`` as a :class:`~pathlib.Path` once it is known to be writable: its folder created if
    missing and written to (a temporary file made and removed). :class:`OutputPathError` (one line
    naming ``what`` and the path) when it is a folder, its parent is a file, or the folder refuses."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a folder: give a file path")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise OutputPathError(f"{what} {path} cannot be written: {blocking} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".check", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(f"{what} {path} cannot be written ({exc.strerror or exc})") from None
    return path


def save_json(path, data, indent: int = 1, what: str = "results") -> Path:
    """:func:`write_json` to ``path``; if that fails, to a fallback file in the temporary folder,
    then :class:`OutputPathError` naming both (the data is safe in the fallback). Returns ``path``."""
    try:
        write_json(path, data, indent=indent)
        return Path(path)
    except OSError as exc:
        fd, fallback = tempfile.mkstemp(prefix=f"{Path(path).stem}-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(data, indent=indent) + "\n")
        raise OutputPathError(f"could not write {what} to {path} ({exc.strerror or exc}); they are saved in "
                              f"{fallback}") from None


def save_report(path, data, indent: int = 1, what: str = "results") -> int:
    """A command's last step: :func:`save_json`, and its exit code: 0, or 1 after printing the one-line error
    that names the fallback file holding ``data``."""
    import sys

    try:
        save_json(path, data, indent=indent, what=what)
        return 0
    except OutputPathError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
