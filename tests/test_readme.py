"""The README's generated blocks: they match the committed results, and say what the numbers say."""

from __future__ import annotations

import json

import pytest

from asit import label_efficiency as le
from asit.readme import BLOCKS, MARKER, label_efficiency_block, render_readme, significant
from asit.session import repo_root


def test_readme_blocks_are_what_the_committed_results_render():
    readme = repo_root() / "README.md"
    text = readme.read_text()
    for name in BLOCKS:  # every block is there, once
        assert text.count(MARKER.format(edge="begin", name=name)) == 1, name
    assert render_readme(text, repo_root() / "results") == text, "README.md is stale: run python -m asit.readme"


def _summary_row(protocol, features, pool, scores):
    return {"task": "esc50", "protocol": protocol, "features": features, "pool": pool, "shots": 4,
            "seeds": len(scores), "mean": sum(scores) / len(scores), "min": min(scores), "max": max(scores)}


def _write_sweep(results_dir, pool):
    summary = [
        _summary_row("probe", "fbank", "mel mean+std", [60.0, 70.0]),
        _summary_row("probe", "pretrained", pool, [50.0, 55.0]),  # every seed above every random init
        _summary_row("probe", "random init", pool, [30.0, 40.0]),
        _summary_row("finetune", "pretrained", "mean", [30.0, 45.0]),  # the head's pool; the ranges overlap
        _summary_row("finetune", "random init", "mean", [35.0, 50.0]),
        _summary_row("probe", "pretrained", "some other read-out", [1.0, 2.0]),  # not the one shown
    ]
    sweep = {"tasks": ["esc50"], "protocols": ["probe", "finetune"], "seeds": [0, 1], "pool_shown": pool, "summary": summary}
    (results_dir / "label_efficiency").mkdir(parents=True)
    (results_dir / "label_efficiency" / "cpu.json").write_text(json.dumps(sweep))


def test_label_efficiency_block_says_whether_the_seed_ranges_overlap(tmp_path):
    _write_sweep(tmp_path / "results", pool="bands")
    block = label_efficiency_block(tmp_path / "results")
    rows = {line.split(" | ")[1]: line for line in block.splitlines() if line.startswith("| esc50 |")}
    assert rows["probe"] == ("| esc50 | probe | 52.5 [50.0, 55.0] | 35.0 [30.0, 40.0] | 65.0 [60.0, 70.0] | +17.5 | +10.0 | "
                             "apart: every pretrained seed above every random init |")
    assert rows["finetune"].endswith("| 37.5 [30.0, 45.0] | 42.5 [35.0, 50.0] | 65.0 [60.0, 70.0] | -5.0 | -20.0 | overlap |")
    assert "over 2 seeds" in block and "`bands` (per-mel-band means" in block
    assert "(results/label_efficiency/cpu.png)" in block


def test_label_efficiency_block_takes_any_read_out_name(tmp_path):
    _write_sweep(tmp_path / "results", pool="cls+mean")
    block = label_efficiency_block(tmp_path / "results")
    assert "the frozen encoders by `cls+mean` (cls+mean)" in block.replace("\n", " ")
    assert "| esc50 | probe | 52.5 [50.0, 55.0] |" in block


def test_a_readme_without_a_block_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"notes\.md: needs exactly one block .*begin results"):
        render_readme("# no blocks here\n", repo_root() / "results", source="notes.md")


def test_figures_keep_three_significant_digits_without_exponents():
    assert [significant(v) for v in (11750.0, 3482.0, 21.59, 2.605, 0.7584)] == ["11750", "3482", "21.6", "2.6", "0.758"]


def test_long_sweep_block_names_the_folds_scored_and_the_files_not_run(tmp_path):
    from asit.readme import long_sweep_block

    results = tmp_path / "results"
    _write_sweep(results, pool="mean")
    sweep_file = results / "label_efficiency" / "cpu.json"
    sweep = json.loads(sweep_file.read_text())
    sweep["esc50_test_folds"] = [1, 2, 3, 4, 5]
    sweep_file.rename(results / "label_efficiency" / "five_folds.json")
    (results / "label_efficiency" / "five_folds.json").write_text(json.dumps(sweep))
    block = long_sweep_block(results, names=("five_folds", "never_run"))
    assert ("| esc50 | folds 1-5 | 2 | probe (`mean`) | 52.5 [50.0, 55.0] | 35.0 [30.0, 40.0] | 65.0 [60.0, 70.0] | +17.5 | +10.0 | "
            "apart: every pretrained seed above every random init |") in block.splitlines()
    assert "(results/label_efficiency/five_folds.md)" in block
    assert block.splitlines()[-1] == "Not run yet: results/label_efficiency/never_run.json."
    del sweep["esc50_test_folds"]  # a sweep from before --folds: fold 1
    (results / "label_efficiency" / "five_folds.json").write_text(json.dumps(sweep))
    assert "| esc50 | fold 1 | 2 | probe (`mean`) |" in long_sweep_block(results, names=("five_folds",))
    sweep["seeds"] = [5, 6]  # seeds other than 0..N-1 are named
    (results / "label_efficiency" / "five_folds.json").write_text(json.dumps(sweep))
    assert "| esc50 | fold 1 | 2 (5-6) | probe (`mean`) |" in long_sweep_block(results, names=("five_folds",))


def test_long_sweep_block_lists_the_files_make_label_efficiency_writes():
    import re
    import subprocess

    from asit.readme import LONG_SWEEPS

    dry_run = subprocess.run(["make", "-n", "label-efficiency"], cwd=repo_root(), capture_output=True, text=True, check=True).stdout
    sweeps = re.findall(r"asit\.label_efficiency \S+ --seeds 5 .*--name (\S+)", dry_run)
    assert sorted(sweeps) == sorted(LONG_SWEEPS)
    assert "--folds 1-5 --name course_5seeds_5folds_esc50" in dry_run  # ESC-50 on every fold


def test_a_sweep_fine_tuned_with_another_recipe_names_it_in_the_protocol(tmp_path):
    _write_sweep(tmp_path / "results", pool="mean")
    sweep_file = tmp_path / "results" / "label_efficiency" / "cpu.json"
    sweep = json.loads(sweep_file.read_text())

    def protocols():
        block = label_efficiency_block(tmp_path / "results")
        return [line.split(" | ")[1] for line in block.splitlines() if line.startswith("| esc50 |")]

    assert protocols() == ["probe", "finetune"]  # a file without a recipe: the short one, unnamed
    sweep["finetune_recipe"] = "lpft"
    sweep_file.write_text(json.dumps(sweep))
    assert protocols() == ["probe", "finetune (lpft)"]
    sweep["finetune_recipe"], sweep["finetune_recipes"] = "lpft,esc50:short", {"esc50": "short"}
    sweep["recipes"] = {"esc50": dict(vars(le.FINETUNE_RECIPES["short"]))}
    sweep_file.write_text(json.dumps(sweep))
    assert protocols() == ["probe", "finetune"]  # the task's own recipe, not the spec's first name
    assert "Fine-tuning: `short`, 60 steps at lr 3e-04." in label_efficiency_block(tmp_path / "results").replace("\n", " ")
