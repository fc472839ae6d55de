import os

import pytest
import torch

# Deterministic, quiet, and sized for a 2-core CPU.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def gen():
    """A seeded torch generator (CPU)."""
    return torch.Generator().manual_seed(1234)


def pytest_addoption(parser):
    parser.addoption("--run-book", action="store_true", help="run the checks of the built book (make book)")


def pytest_collection_modifyitems(config, items):
    """Book checks need the built book: `make book` runs them; the unit suite deselects them."""
    run_book = config.getoption("--run-book")
    chosen = [i for i in items if ("book" in i.keywords) == run_book]
    if len(chosen) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in chosen])
        items[:] = chosen


@pytest.fixture(scope="session")
def lab():
    """The shipped lab LLaVA and lab CLIP through the notebooks' facade (loaded once per run)."""
    from eadp_lab.lab import Lab

    return Lab.load("lab", device="cpu")
