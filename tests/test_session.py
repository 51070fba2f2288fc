"""asit.session helpers the notebooks and engines share: thread scoping and portable paths."""

from __future__ import annotations

import torch

from asit.session import portable_path, torch_threads


def test_torch_threads_is_scoped():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_paths_inside_the_output_folder_are_stored_relative_to_it(tmp_path, monkeypatch):
    results = tmp_path / "results"
    assert portable_path(results / "pretrain" / "cpu" / "encoder", results) == "pretrain/cpu/encoder"
    monkeypatch.chdir(tmp_path)
    assert portable_path("results/esc50/run", "results") == "esc50/run"  # relative inputs, same answer
    assert portable_path("/elsewhere/encoder", results) == "/elsewhere/encoder"  # outside: as given
    assert portable_path(None, results) is None
