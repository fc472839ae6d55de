"""Where the package's data is: the lab models, the real models' configs and the shipped results.

One place decides. In a clone of the repository the data is its ``data/`` folder (``data/models``,
``data/configs``, ``data/results``); an installed wheel carries the same folder as package data,
``eadp_lab/data`` (found with :mod:`importlib.resources`). The checkout's folder wins when both
exist, so an editable install reads (and retraining writes) the repository's files.

- :data:`DATA`: that folder; :data:`MODELS`, :data:`CONFIGS`, :data:`RESULTS` its parts;
- :func:`lab_model`: a shipped lab model's folder; missing or damaged shipped data is a
  :class:`DataError` naming the file and how to repair the install (:func:`repair_hint`), never a
  path into a source tree the user does not have.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["CHECKOUT", "ROOT", "DATA", "MODELS", "CONFIGS", "RESULTS", "NOTEBOOKS", "LAB_MODELS", "DataError",
           "data_dir", "lab_model", "repair_hint", "is_shipped"]

LAB_MODELS = ("lab-clip", "lab-clip-global", "lab-llava")  # the folders of data/models the package ships


class DataError(FileNotFoundError):
    """Data the package ships is missing or damaged: the message names the file and how to repair it."""


def _checkout() -> Path | None:
    """The repository root when the package runs from a clone (it holds ``pyproject.toml`` and ``data/models``)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "data" / "models").is_dir() else None


def data_dir() -> Path:
    """The data folder: the clone's ``data/``, else the installed package's ``eadp_lab/data``."""
    root = _checkout()
    if root is not None:
        return root / "data"
    return Path(str(importlib.resources.files("eadp_lab") / "data"))


CHECKOUT = _checkout()  # the repository root, or None when installed from a wheel
DATA = data_dir()
MODELS = DATA / "models"
CONFIGS = DATA / "configs"
RESULTS = DATA / "results"
NOTEBOOKS = None if CHECKOUT is None else CHECKOUT / "notebooks"
ROOT = DATA.parent if CHECKOUT is None else CHECKOUT  # what the shipped files' paths are shown relative to


def repair_hint() -> str:
    """How to get the shipped data back: from git in a clone, by reinstalling the package otherwise."""
    if CHECKOUT is not None:
        return f"restore it with git (git checkout -- {DATA.relative_to(CHECKOUT)}) or retrain it (README)"
    return "reinstall the package (pip install --force-reinstall --no-deps eadp-lab, or the wheel you installed)"


def is_shipped(path) -> bool:
    """Whether ``path`` lies inside the shipped data folder (:data:`DATA`)."""
    try:
        Path(path).resolve().relative_to(DATA.resolve())
        return True
    except (ValueError, OSError):
        return False


def lab_model(name: str) -> Path:
    """The folder of the shipped lab model ``name`` (one of :data:`LAB_MODELS`).

    Raises:
        DataError: the folder or its ``config.json`` is missing, naming it and how to repair the install
            (damaged weights are named when they are loaded: :func:`eadp_lab.evaluation.loading.load_checked`).
    """
    if name not in LAB_MODELS:
        raise ValueError(f"no shipped lab model {name!r}; known: {', '.join(LAB_MODELS)}")
    folder = MODELS / name
    if not (folder / "config.json").is_file():
        raise DataError(f"the lab model {name} is missing ({folder / 'config.json'} not found): {repair_hint()}")
    return folder
