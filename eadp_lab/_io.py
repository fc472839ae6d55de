"""Files the commands write: one atomic JSON writer (``PATH.tmp``, then ``os.replace``), so a run
killed while writing leaves the previous file whole."""

from __future__ import annotations

import json
import os

__all__ = ["write_json"]


def write_json(path, data, indent: int = 1, sort_keys: bool = False) -> None:
    """Write ``data`` as JSON (then a newline) to ``path`` atomically."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n")
    os.replace(tmp, path)
