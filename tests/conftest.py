import sys
from pathlib import Path

# tests/ holds importable helpers (layouts.py: fixtures in the official data-set layouts;
# nbclean.py: the notebook cleaner) next to the tests themselves.
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (the device-specific branches); skipped without one")


def pytest_collection_modifyitems(config, items):
    import pytest
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
