"""asit.label_efficiency: drawing k labels per class, few-label fine-tuning, the seed-range verdict."""

import dataclasses

import numpy as np
import pytest
import torch

from asit import label_efficiency as le
from asit import probe
from asit.models import create_encoder


def _tiny_encoder(seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_encoder("tiny", num_frames=32, depth=1, drop_path_rate=0.0)


def test_draw_shots_takes_k_per_class_nested_and_seeded():
    targets = np.array([0] * 5 + [1] * 3 + [2] * 7)
    two = le.draw_shots(targets, 2, seed=0)
    assert np.bincount(targets[two]).tolist() == [2, 2, 2]
    four = le.draw_shots(targets, 4, seed=0)
    assert np.bincount(targets[four]).tolist() == [4, 3, 4]  # class 1 has only 3
    assert set(two) <= set(four)  # more labels extend the same draw
    assert np.array_equal(le.draw_shots(targets, 2, seed=0), two)
    assert any(not np.array_equal(le.draw_shots(targets, 2, seed=s), two) for s in range(1, 6))
    assert np.array_equal(le.draw_shots(targets, 0, seed=3), np.arange(15))
    with pytest.raises(ValueError):
        le.draw_shots(targets, -1, seed=0)


def _separable_split(clips_per_class: int, seed: int) -> probe.ProbeSplit:
    """Two classes: energy in the low or the high mel bins, 64 frames (two 32-frame windows)."""
    g = torch.Generator().manual_seed(seed)
    targets = np.repeat([0, 1], clips_per_class)
    spec = 0.3 * torch.randn(len(targets), 1, 64, 128, generator=g)
    spec[targets == 0, :, :, :40] += 2.0
    spec[targets == 1, :, :, 88:] += 2.0
    return probe.ProbeSplit(spec, torch.full((len(targets),), 64), targets)


def test_finetune_few_learns_a_separable_task_deterministically_and_leaves_the_encoder_alone():
    torch.set_num_threads(1)
    encoder = _tiny_encoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    train, test = _separable_split(4, seed=0), _separable_split(10, seed=1)
    quick = le.FinetuneRecipe(steps=25, batch_size=8, lr=1e-3)
    first = le.finetune_few(encoder, train, test, seed=0, recipe=quick)
    again = le.finetune_few(encoder, train, test, seed=0, recipe=quick)
    assert first["losses"] == again["losses"]  # same seed, same losses, bit for bit
    assert first["score"] == again["score"] >= 90.0  # chance is 50
    assert np.mean(first["losses"][-5:]) < np.mean(first["losses"][:5])
    other = le.finetune_few(encoder, train, test, seed=1, recipe=quick)
    assert other["losses"] != first["losses"]
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_summarise_and_gap_read_the_seed_ranges():
    rows = []
    for seed, (ours, theirs) in enumerate([(50.0, 30.0), (60.0, 45.0), (55.0, 40.0)]):
        common = {"task": "esc50", "protocol": "probe", "pool": le.PROBE_POOL, "shots": 4, "seed": seed}
        rows += [{**common, "features": le.PRETRAINED, "score": ours}, {**common, "features": le.RANDOM, "score": theirs}]
    # another read-out's probe rows, and fine-tuning rows, which carry the head's pool
    other = [{**r, "pool": "token", "score": 100.0 - r["score"]} for r in rows]
    tuned = [{**r, "protocol": "finetune", "pool": le.POOL, "score": r["score"] + 1.0} for r in rows]
    summary = le.summarise(rows + other + tuned)
    pretrained = next(r for r in summary if r["features"] == le.PRETRAINED)
    assert (pretrained["mean"], pretrained["min"], pretrained["max"], pretrained["seeds"]) == (55.0, 50.0, 60.0, 3)
    verdict = le.gap(summary, "esc50", "probe", shots=4)
    assert verdict["lead"] == pytest.approx(55.0 - 115.0 / 3)
    assert verdict["margin"] == 5.0  # worst pretrained 50 over best random 45: no overlap
    assert le.gap(summary, "esc50", "probe", pool="token")["lead"] == pytest.approx(-verdict["lead"])
    assert le.gap(summary, "esc50", "finetune")["lead"] == pytest.approx(verdict["lead"])  # any pool named
    assert le.gap(summary, "esc50", "finetune", pool="token") == le.gap(summary, "esc50", "finetune")
    rows[-1]["score"] = 52.0  # one random init above the worst pretrained seed: ranges overlap
    assert le.gap(le.summarise(rows), "esc50", "probe")["margin"] == -2.0
    with pytest.raises(KeyError):
        le.gap(summary, "ks2", "probe")
    table = le.markdown({"encoder": "enc", "seeds": [0, 1, 2], "finetune_steps": 5, "summary": summary,
                         "pool_shown": le.PROBE_POOL})
    assert "| esc50 | probe | pretrained | 55.0 [50.0, 60.0] |" in table
    assert "| esc50 | finetune | pretrained | 56.0 [51.0, 61.0] |" in table and f"`{le.PROBE_POOL}`" in table
    older = le.markdown({"encoder": "enc", "seeds": [0, 1, 2], "summary": summary})  # no pool_shown: mean
    assert "| esc50 | probe |" not in older and "| esc50 | finetune | pretrained |" in older


def test_patch_statistics_see_the_spectrogram_at_the_patch_grid():
    spec = torch.zeros(1, 1, 48, 32)  # 3 rows x 2 bands of 16 x 16 patches
    spec[0, 0, :, 16:] = 2.0  # the upper band is loud
    spec[0, 0, 32:] = 100.0  # the third row is past the clip's end: left out
    stats = le.patch_statistics(probe.ProbeSplit(spec, torch.tensor([32]), np.array([0])))
    np.testing.assert_allclose(stats["band mean+std"][0], [0.0, 2.0, 0.0, 0.0])  # band means, then band stds
    np.testing.assert_allclose(stats["patch mean"][0], np.full(256, 1.0))  # bands added: the loud band is gone
    per_band = stats["patch mean per band"][0].reshape(2, 256)
    np.testing.assert_allclose(per_band, [[0.0] * 256, [2.0] * 256])  # kept apart: still there


def test_pretraining_then_finetuning_twice_with_one_seed_gives_identical_losses(tmp_path):
    """The reproducibility the course's curves rest on: same seed, same bytes, same losses, end to end."""
    from asit import pretrain as engine
    from asit.models import load_encoder
    from test_pretrain import smoke_config

    tiny = le.FinetuneRecipe(steps=4, batch_size=4)
    runs = []
    for name in ("first", "second"):
        result = engine.pretrain(smoke_config(tmp_path, output_dir=str(tmp_path / name), num_workers=1), progress=False)
        steps = (result.run_dir / "steps.jsonl").read_text()
        encoder = load_encoder(result.encoder_dir)
        split = _separable_split(3, seed=0)
        short = probe.ProbeSplit(split.spec[:, :, : encoder.patch_embed.img_size[0]], torch.full((6,), 64), split.targets)
        runs.append((steps, le.finetune_few(encoder, short, short, seed=0, recipe=tiny)["losses"]))
    assert runs[0][0] == runs[1][0] and runs[0][0].count("\n") >= 2  # every logged pretraining loss
    assert runs[0][1] == runs[1][1]  # every fine-tuning loss


def test_chance_level_reads_the_class_count_off_the_one_shot_draw():
    rows = [{"task": "ks2", "shots": 1, "train_clips": 35}, {"task": "ks2", "shots": 4, "train_clips": 140},
            {"task": "esc50", "shots": 4, "train_clips": 40}]
    assert le.chance_level(rows, "ks2") == pytest.approx(100 / 35)
    assert le.chance_level(rows, "esc50") is None  # no 1-shot draw: the class count is not known


def test_sweep_over_esc50_folds_averages_each_fold_scored_on_its_own(tmp_path, monkeypatch):
    from layouts import write_esc50

    torch.set_num_threads(1)
    esc = write_esc50(tmp_path / "esc50", num_classes=2, clips_per_fold=2, folds=5, seconds=0.6)
    monkeypatch.setattr(probe, "PROBE_TASKS", {"esc50": probe.ProbeTask("esc50", "trainval", "test", 64, {"fold": 1})})
    encoder = _tiny_encoder()
    kwargs = dict(shots=(1, 0), seeds=(0, 1), protocols=("probe",), data_root=esc, progress=False)
    merged = le.sweep_task("esc50", encoder, folds=[1, 2, 3], **kwargs)
    one_fold = {f: le.sweep_task("esc50", encoder, folds=[f], **kwargs) for f in (1, 2, 3)}
    default = le.sweep_task("esc50", encoder, **kwargs)  # no folds: the probe task's own fold 1
    assert [r["score"] for r in default] == [r["fold_scores"][0] for r in one_fold[1]]
    assert len(merged) == len(default)
    for i, row in enumerate(merged):
        assert row["test_folds"] == [1, 2, 3]
        assert row["fold_scores"] == [one_fold[f][i]["score"] for f in (1, 2, 3)]
        assert row["score"] == pytest.approx(np.mean(row["fold_scores"]))
        assert row["train_clips"] == (2 if row["shots"] == 1 else 16)  # drawn from the four other folds
    fbank = [r for r in merged if r["features"] == probe.FBANK and r["shots"] == 0]
    assert fbank and all(r["score"] == 100.0 for r in fbank)  # distinct tones per class: read on every fold


def test_parse_folds_reads_ranges_and_lists():
    assert le.parse_folds("1") is None
    assert le.parse_folds("1-5") == [1, 2, 3, 4, 5]
    assert le.parse_folds("2,4") == [2, 4]
    assert le.scored_folds("esc50", [2, 4]) == [2, 4]
    assert le.scored_folds("ks2", [1, 2]) == [None]  # a task with one fixed test split ignores folds
    with pytest.raises(ValueError, match="fold numbers from 1"):
        le.parse_folds("0-2")


def test_parse_protocols_reads_both_and_refuses_the_unknown():
    assert le.parse_protocols("both") == ["probe", "finetune"]
    assert le.parse_protocols("finetune,probe") == ["probe", "finetune"]
    assert le.parse_protocols("finetune") == ["finetune"]
    for text in ("", "fine-tune", "both,probe"):
        with pytest.raises(ValueError, match="expected probe, finetune, both"):
            le.parse_protocols(text)


def test_the_command_refuses_unknown_protocols_tasks_and_shots_before_any_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        le.main([str(tmp_path / "no_encoder"), "--protocols", "linear", "--output-dir", str(tmp_path)])
    assert stopped.value.code == 2
    assert "protocols 'linear'" in capsys.readouterr().err
    for flag, value in (("--tasks", "esc50,birds"), ("--shots", "1,four")):
        with pytest.raises(SystemExit):
            le.main([str(tmp_path / "no_encoder"), flag, value, "--output-dir", str(tmp_path)])
        assert f"{flag} '{value}'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="protocols 'linear'"):
        le.run(tmp_path / "no_encoder", "x", protocols=["linear"], output_dir=tmp_path, progress=False)
    assert not (tmp_path / "label_efficiency").exists()


def test_merging_folds_refuses_rows_out_of_step():
    row = {"task": "esc50", "protocol": "probe", "features": "pretrained", "pool": "mean", "shots": 4, "seed": 0,
           "train_clips": 40}
    merged = le._merge_folds([[{**row, "score": 40.0}], [{**row, "score": 50.0}]], [1, 2])
    assert merged == [{**row, "score": 45.0, "fold_scores": [40.0, 50.0], "test_folds": [1, 2]}]
    with pytest.raises(RuntimeError, match="out of step"):
        le._merge_folds([[{**row, "score": 40.0}], [{**row, "seed": 1, "score": 50.0}]], [1, 2])
    with pytest.raises(ValueError):  # a fold with fewer rows than the others
        le._merge_folds([[{**row, "score": 40.0}], []], [1, 2])


def test_folds_words_name_ranges_and_lists():
    assert [le.folds_words(f) for f in ([1], [1, 2, 3, 4, 5], [4, 2])] == ["fold 1", "folds 1-5", "folds 2, 4"]


def test_plot_titles_name_the_esc50_folds_scored():
    summary = [{"task": task, "protocol": "probe", "features": le.PRETRAINED, "pool": le.PROBE_POOL, "shots": 4,
                "mean": 50.0, "min": 45.0, "max": 55.0, "seeds": 3} for task in ("esc50", "ks2")]
    figure = le.plot(summary, esc50_folds=[1, 2, 3, 4, 5])
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["esc50 (folds 1-5): probe (dino)", "ks2: probe (dino)"]
    # one label count: the seed range is a bar, from the worst seed to the best
    from matplotlib.collections import LineCollection

    bars = [c for c in figure.axes[0].collections if isinstance(c, LineCollection)]
    assert [segment[:, 1].tolist() for c in bars for segment in c.get_segments()] == [[45.0, 55.0]]
    le.plt.close(figure)
    unnamed = le.plot(summary)  # folds not given: no fold claimed
    assert [ax.get_title() for ax in unnamed.axes] == ["esc50: probe (dino)", "ks2: probe (dino)"]
    le.plt.close(unnamed)


def test_plot_puts_a_protocol_a_row_and_names_a_task_s_own_recipe():
    def point(task, protocol):
        return {"task": task, "protocol": protocol, "features": le.PRETRAINED, "pool": le.PROBE_POOL, "shots": 4,
                "mean": 50.0, "min": 45.0, "max": 55.0, "seeds": 3}

    summary = [point("esc50", "probe"), point("ks2_cmn", "probe"), point("esc50", "finetune"),
               point("ks2_cmn", "finetune"), point("voxceleb1", "finetune")]
    figure = le.plot(summary, recipes={"esc50": "short", "ks2_cmn": "lpft", "voxceleb1": "short"})
    titles = [ax.get_title() for ax in figure.axes]  # voxceleb1 has no probe: its probe panel is gone
    assert titles == ["esc50: probe (dino)", "ks2_cmn: probe (dino)", "esc50: finetune", "ks2_cmn: finetune (lpft)",
                      "voxceleb1: finetune"]
    rows = sorted({round(ax.get_position().y0, 2) for ax in figure.axes}, reverse=True)
    assert len(rows) == 2  # probe above, fine-tuning below
    le.plt.close(figure)


def test_lpft_recipe_fits_the_head_first_and_is_named_in_the_table():
    torch.set_num_threads(1)
    encoder = _tiny_encoder()
    train, test = _separable_split(4, seed=0), _separable_split(10, seed=1)
    recipe = le.recipe_named("lpft", steps=5)
    assert (recipe.head_steps, recipe.steps) == (300, 5)
    recipe = dataclasses.replace(recipe, batch_size=8)
    fitted = le.finetune_few(encoder, train, test, seed=0, recipe=recipe)
    cold = le.finetune_few(encoder, train, test, seed=0, recipe=dataclasses.replace(recipe, head_steps=0))
    assert fitted["losses"] == le.finetune_few(encoder, train, test, seed=0, recipe=recipe)["losses"]
    assert fitted["losses"][0] < cold["losses"][0]  # the head already reads the features before step one
    assert fitted["score"] >= 90.0
    with pytest.raises(ValueError, match="unknown fine-tuning recipe"):
        le.recipe_named("longer")
    assert le.recipe_words({"tasks": ["esc50"], "finetune_steps": 60}) == "`short`, 60 steps at lr 3e-04"
    assert "300 head-only steps, then 300 steps at lr 1e-04" in le.recipe_words(
        {"tasks": ["ks2_cmn"], "finetune_steps": 300, "finetune_recipe": "lpft", "finetune": vars(le.FINETUNE_RECIPES["lpft"])})


def test_rerun_words_say_identical_or_whether_each_score_lands_inside_its_features_stored_range():
    stored = {("pretrained", 0): 40.0, ("pretrained", 1): 50.0, ("random init", 0): 30.0, ("random init", 1): 35.0}

    def rows(*scores):  # recomputed rows in the stored keys' order
        return [{"features": f, "seed": s, "score": v} for (f, s), v in zip(stored, scores)]

    assert le.rerun_words(stored, rows(40.0, 50.0, 30.0, 35.0)) == "4 scores recomputed, all identical to the stored ones"
    inside = le.rerun_words(stored, rows(45.0, 50.0, 30.0, 35.0))
    assert inside.endswith("differences [5.0, 0.0, 0.0, 0.0]; every one inside the stored seeds' range for its features")
    outside = le.rerun_words(stored, rows(40.0, 50.0, 37.5, 35.0))  # above the random inits' 30-35
    assert outside.endswith("; outside the stored seeds' range: random init seed 0 37.5")
    unknown = le.rerun_words(stored, [{"features": "fbank", "seed": 0, "score": 60.0}])  # nothing stored for it
    assert unknown.endswith("differences [None]; outside the stored seeds' range: fbank seed 0 60.0")


def test_a_fine_tuning_only_sweep_keeps_the_pooled_fbank_reference_and_draws_it_dashed(tmp_path, monkeypatch):
    from layouts import write_esc50

    torch.set_num_threads(1)
    esc = write_esc50(tmp_path / "esc50", num_classes=2, clips_per_fold=2, folds=5, seconds=0.6)
    monkeypatch.setattr(probe, "PROBE_TASKS", {"esc50": probe.ProbeTask("esc50", "trainval", "test", 64, {"fold": 1})})
    rows = le.sweep_task("esc50", _tiny_encoder(), shots=(1,), seeds=(0,), protocols=("finetune",), data_root=esc,
                         progress=False, finetune=le.FinetuneRecipe(steps=2, batch_size=2))
    assert sorted((r["protocol"], r["features"]) for r in rows) == [
        ("finetune", le.PRETRAINED), ("finetune", le.RANDOM), ("probe", probe.FBANK)]
    figure = le.plot(le.summarise(rows))
    (panel,) = figure.axes  # one panel: the fine-tuning; the reference has no panel of its own
    assert panel.get_title() == "esc50: finetune"
    lines = {line.get_label(): line.get_linestyle() for line in panel.get_lines()}
    assert lines == {le.PRETRAINED: "-", le.RANDOM: "-", f"{probe.FBANK} (probe)": "--"}
    le.plt.close(figure)


def test_recipes_by_task_reads_one_recipe_for_all_then_exceptions_per_task():
    tasks = ["esc50", "ks2_cmn", "voxceleb1"]
    assert le.recipes_by_task("short", tasks) == {"esc50": "short", "ks2_cmn": "short", "voxceleb1": "short"}
    assert le.recipes_by_task("lpft", tasks[:1]) == {"esc50": "lpft"}
    assert le.recipes_by_task("short,ks2_cmn:lpft", tasks) == {"esc50": "short", "ks2_cmn": "lpft", "voxceleb1": "short"}
    assert le.recipes_by_task("ks2_cmn:lpft", tasks)["esc50"] == "short"  # no name for all: short
    assert le.recipes_by_task("short,ks2_cmn:lpft", ["esc50"]) == {"esc50": "short"}  # a smaller preset's tasks
    with pytest.raises(ValueError, match="unknown task.*ks2cmn"):
        le.recipes_by_task("short,ks2cmn:lpft", tasks)
    with pytest.raises(ValueError, match="unknown fine-tuning recipe 'longer'"):
        le.recipes_by_task("short,ks2_cmn:longer", ["esc50"])  # even when that task is not swept
    fields = le.recipe_fields("short,ks2_cmn:lpft", tasks, steps=7)
    assert fields["ks2_cmn"] == {**vars(le.FINETUNE_RECIPES["lpft"]), "steps": 7}
    assert fields["esc50"] == fields["voxceleb1"] == {**vars(le.FINETUNE_RECIPES["short"]), "steps": 7}


def test_recipes_run_and_recipe_words_read_per_task_and_older_single_recipe_files():
    short, lpft = vars(le.FINETUNE_RECIPES["short"]), vars(le.FINETUNE_RECIPES["lpft"])
    per_task = {"tasks": ["esc50", "ks2_cmn", "voxceleb1"], "finetune_recipes": {"esc50": "short", "ks2_cmn": "lpft",
                "voxceleb1": "short"}, "recipes": {"esc50": short, "ks2_cmn": lpft, "voxceleb1": short}}
    assert le.recipes_run(per_task)["ks2_cmn"] == lpft
    assert le.recipe_of(per_task, "ks2_cmn") == "lpft" and le.recipe_of(per_task, "esc50") == "short"
    assert le.recipe_words(per_task) == ("`short` (esc50, voxceleb1), 60 steps at lr 3e-04; "
                                         "`lpft` (ks2_cmn), 300 head-only steps, then 300 steps at lr 1e-04")
    one_for_all = {"tasks": ["ks2_cmn"], "finetune_recipe": "lpft", "finetune_steps": 300, "finetune": lpft}
    assert le.recipes_run(one_for_all) == {"ks2_cmn": lpft} and le.recipe_of(one_for_all, "ks2_cmn") == "lpft"
    steps_only = {"tasks": ["esc50"], "finetune_steps": 40}  # before the recipes were named: short
    assert le.recipes_run(steps_only) == {"esc50": {**short, "steps": 40}}
    assert le.recipe_of(steps_only, "esc50") == "short"


def test_a_sweep_in_two_processes_scores_as_one_after_the_other(tmp_path):
    """``jobs=2``: each task in its own process; the built-in data, a tiny encoder, the probe only."""
    torch.set_num_threads(1)  # the workers' thread count: the same sums, so the same bits
    kwargs = dict(tasks=["esc50", "voxceleb1"], shots=[1], seeds=[0], protocols=["probe"], output_dir=tmp_path,
                  progress=False)
    encoder = _tiny_encoder()
    together = le.run(encoder, "one_process", jobs=1, **kwargs)
    apart = le.run(encoder, "two_processes", jobs=2, **kwargs)
    assert [r["task"] for r in apart["rows"]] == [r["task"] for r in together["rows"]]
    assert {r["task"] for r in apart["rows"]} == {"esc50", "voxceleb1"}
    assert apart["rows"] == together["rows"] and apart["jobs"] == 2
    assert (tmp_path / "label_efficiency" / "two_processes.png").is_file()


def test_notebook_06_defaults_describe_the_committed_headline_sweep():
    """Otherwise `make reproduce` reruns the whole sweep (about 25 min) instead of reading cpu.json."""
    import ast
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cells = json.loads((root / "notebooks" / "06_label_efficiency.ipynb").read_text())["cells"]
    (parameters,) = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    tree = ast.parse("".join(parameters["source"]))
    p = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)}
    stored = json.loads((root / "results" / "label_efficiency" / f"{p['preset']}.json").read_text())
    tasks = p["tasks"].split(",")
    assert stored["tasks"] == tasks
    assert stored["shots"] == [0 if s == "all" else int(s) for s in p["shots"].split(",")]
    assert stored["seeds"] == list(range(p["seed"], p["seed"] + p["seeds"]))
    assert stored["protocols"] == p["protocols"].split(",")
    assert stored["esc50_test_folds"] == (le.parse_folds(p["esc50_folds"]) or [1])
    assert le.recipes_run(stored) == le.recipe_fields(p["finetune_recipe"], tasks, p["finetune_steps"])
