"""Result files and the table that puts our numbers beside the paper's."""

from __future__ import annotations

import json

import numpy as np

from asit.results import (
    PAPER_RESULTS,
    collect_results,
    comparison_table,
    paper_number,
    render_results_markdown,
    write_run_result,
)


def test_paper_numbers_are_the_reference_table():
    assert paper_number("esc50") == 95.3 and paper_number("audioset_2m") == 48.0
    assert paper_number("audioset_20k") == 38.6 and paper_number("ks1") == 98.2 and paper_number("ks2") == 98.9
    assert paper_number("voxceleb1") is None  # not recorded in the reference: never invented
    assert PAPER_RESULTS["AST"]["esc50"] == 88.7


def test_written_result_round_trips_with_numpy_values(tmp_path):
    path = write_run_result(
        tmp_path, "ks2", "builtin", "cpu", {"accuracy": np.float32(71.25), "loss": float("nan")},
        baseline_metrics={"accuracy": 40.0}, config={"lr": 2.5e-4}, device="cpu", seconds=12.5,
    )
    assert path == tmp_path / "ks2" / "builtin__cpu.json"
    record = json.loads(path.read_text())
    assert record["metrics"] == {"accuracy": 71.25, "loss": None}
    assert record["paper"] == {"model": "ASiT", "metric": "accuracy", "value": 98.9}
    assert not list(tmp_path.rglob("*.tmp"))


def test_comparison_table_marks_what_cannot_be_compared(tmp_path):
    write_run_result(tmp_path, "esc50", "builtin", "cpu", {"accuracy": 80.0}, baseline_metrics={"accuracy": 60.0})
    write_run_result(tmp_path, "esc50", "esc50", "paper", {"accuracy": 94.3})
    write_run_result(tmp_path, "voxceleb1", "builtin", "cpu", {"accuracy": 55.0})
    table = comparison_table(collect_results(tmp_path)).set_index(["task", "dataset"])
    builtin = table.loc[("esc50", "builtin")]
    assert builtin["pretraining_gain"] == 20.0 and builtin["note"].startswith("not comparable")
    real = table.loc[("esc50", "esc50")]
    assert real["difference"] == -1.0 or abs(real["difference"] + 1.0) < 1e-9
    assert real["note"] == "comparable"
    assert table.loc[("voxceleb1", "builtin")]["note"] == "no paper number recorded"
    markdown = render_results_markdown(tmp_path)
    assert "| ESC-50 | accuracy | builtin | cpu | 80.0 | 60.0 | +20.0 | 95.3 |" in markdown


def test_smoke_runs_stay_out_of_the_results_readme(tmp_path):
    write_run_result(tmp_path, "ks1", "builtin", "smoke", {"accuracy": 12.0})
    assert "12.0" not in render_results_markdown(tmp_path)


def test_empty_results_say_how_to_get_some(tmp_path):
    assert "make reproduce" in render_results_markdown(tmp_path)
