"""Every module's ``__all__`` names what it defines: a star import or the book's API pages never
meet a name that was renamed or removed, and the per-view pretraining augmentations are listed."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import asit

MODULES = [info.name for info in pkgutil.iter_modules(asit.__path__)]


@pytest.mark.parametrize("name", MODULES)
def test_every_name_in_all_exists(name):
    module = importlib.import_module(f"asit.{name}")
    listed = getattr(module, "__all__", [])
    assert [n for n in listed if not hasattr(module, n)] == []
    assert len(listed) == len(set(listed)), f"asit.{name}.__all__ lists a name twice"


def test_the_augment_module_exports_the_per_view_augmentations():
    namespace: dict = {}
    exec("from asit.augment import *", namespace)
    for name in ("random_equaliser", "random_noise_floor", "random_frequency_warp", "equaliser_curves"):
        assert callable(namespace[name])
