"""The fine-tuning engine end to end on tiny fixtures in each official layout.

Every run uses the ``smoke`` preset: a tiny ViT, 64-128 frames, one epoch of two steps. These
tests check that the pipeline runs and reports what it should, not that it learns.
"""

import dataclasses
import json
import os
import warnings

import pytest
import torch

from asit import course, models
from asit.config import get_preset
from asit.classifier import (
    AudioClassifier,
    build_encoder,
    find_pretrained_encoder,
    load_classifier,
    resolve_checkpoint,
    same_architecture,
)
from asit.finetune import build_datasets, finetune, subset_paths
from asit.session import PRESETS
from asit.tasks import TASKS, get_task
from layouts import write_audioset, write_esc50, write_speech_commands, write_voxceleb1

RESULT_KEYS = {"task", "dataset", "preset", "metrics", "config", "checkpoint", "device", "seconds", "asit_version", "mode"}


def _read_result(result):
    record = json.loads(open(result["result_path"]).read())
    assert RESULT_KEYS <= set(record)
    assert all(isinstance(v, (int, float)) or v is None for v in record["metrics"].values())
    return record


@pytest.fixture(scope="module")
def esc50_root(tmp_path_factory):
    return write_esc50(tmp_path_factory.mktemp("esc50"), num_classes=3, clips_per_fold=2, folds=5, seconds=0.6)


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
    """A 'pretrained' tiny encoder saved at 96 frames, as asit.pretrain lays it out."""
    out = tmp_path_factory.mktemp("out")
    torch.manual_seed(0)
    directory = out / "pretrain" / "smoke" / "encoder"
    models.save_encoder(models.create_encoder("tiny", 96, depth=3), directory, {"preset": "smoke"})
    return directory


def test_every_task_has_every_preset_and_a_source():
    for name in TASKS:
        for preset in ("smoke", "cpu", "gpu", "paper"):
            task = get_task(name, preset)
            assert task.source and task.num_frames % 16 == 0
    assert get_task("ks2").lr == 2.5e-4 and get_task("audioset_20k").mixup == 0.5
    assert get_task("esc50", "smoke", epochs=3).epochs == 3
    with pytest.raises(TypeError):
        get_task("esc50", "smoke", no_such_field=1)


def test_esc50_validation_never_overlaps_the_test_fold(esc50_root):
    task = get_task("esc50", "smoke", max_train_items=None, max_eval_items=None)
    for fold in (1, 3, 5):
        parts = build_datasets(task, esc50_root, fold=fold)
        test = set(subset_paths(parts["test"]))
        val, train = set(subset_paths(parts["val"])), set(subset_paths(parts["train"]))
        assert test and val and train
        assert not (val & test) and not (train & test) and not (train & val)
        assert all(os.path.basename(p).startswith(f"{fold}-") for p in test)


def test_esc50_with_two_folds_holds_validation_out_of_the_training_fold(tmp_path):
    root = write_esc50(tmp_path, num_classes=2, clips_per_fold=3, folds=2)
    parts = build_datasets(get_task("esc50", "smoke", max_train_items=None, max_eval_items=None), root, fold=1)
    test, val = set(subset_paths(parts["test"])), set(subset_paths(parts["val"]))
    assert val and not (val & test) and not (set(subset_paths(parts["train"])) & val)
    assert all(os.path.basename(p).startswith("2-") for p in val)


def test_esc50_cross_validation_end_to_end(esc50_root, tmp_path):
    task = get_task("esc50", "smoke", folds=(1, 2))
    with pytest.warns(UserWarning) as caught:
        result = finetune(task, "fixture", esc50_root, checkpoint="none", output_dir=tmp_path, device="cpu", progress=False)
    messages = " | ".join(str(w.message) for w in caught)
    assert "3 of the 50 official classes" in messages and "folds [1, 2] only (missing [3, 4, 5])" in messages
    record = _read_result(result)
    metrics = record["metrics"]
    assert metrics["folds"] == 2
    assert {"accuracy", "accuracy_std", "fold1_accuracy", "fold2_accuracy"} <= set(metrics)
    assert metrics["accuracy"] == pytest.approx((metrics["fold1_accuracy"] + metrics["fold2_accuracy"]) / 2)
    assert record["checkpoint"] == "random" and record["config"]["name"] == "esc50"
    assert any("folds [1, 2] only" in note for note in record["notes"])
    # every test clip of both folds predicted once, with a score per class
    assert result["predictions"]["scores"].shape == (2 * 3 * 2, 3)
    assert len(result["classifier_paths"]) == 2
    assert (tmp_path / "esc50" / "fixture__smoke" / "log.jsonl").read_text().count("\n") == 2  # 1 epoch x 2 folds


def test_checkpoint_auto_picks_the_newest_encoder(tmp_path):
    for name, mtime in (("old", 1_000_000), ("new", 2_000_000), ("middle", 1_500_000)):
        directory = tmp_path / "pretrain" / name / "encoder"
        models.save_encoder(models.create_encoder("tiny", 64), directory, {})
        os.utime(directory / "model.safetensors", (mtime, mtime))
    assert find_pretrained_encoder(tmp_path) == tmp_path / "pretrain" / "new" / "encoder"
    assert resolve_checkpoint("auto", tmp_path) == ("pretrained", tmp_path / "pretrain" / "new" / "encoder")


def test_checkpoint_auto_prefers_the_task_presets_own_encoder(tmp_path, monkeypatch):
    monkeypatch.setattr(course, "committed_encoder", lambda: None)  # a copy without the course encoder
    for name, mtime in (("cpu", 1_000_000), ("smoke", 2_000_000)):  # a newer smoke run must not stand in for cpu
        directory = tmp_path / "pretrain" / name / "encoder"
        models.save_encoder(models.create_encoder("tiny", 64, depth=1), directory, {})
        os.utime(directory / "model.safetensors", (mtime, mtime))
    assert find_pretrained_encoder(tmp_path, "cpu") == tmp_path / "pretrain" / "cpu" / "encoder"
    assert find_pretrained_encoder(tmp_path, "gpu") == tmp_path / "pretrain" / "smoke" / "encoder"  # none of its own: newest
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its own run: nothing to say
        assert resolve_checkpoint("auto", tmp_path, "cpu") == ("pretrained", tmp_path / "pretrain" / "cpu" / "encoder")
    with pytest.warns(UserWarning, match=r"no 'gpu' pretraining .*\(preset 'smoke'\)"):
        assert resolve_checkpoint("auto", tmp_path, "gpu") == ("pretrained", tmp_path / "pretrain" / "smoke" / "encoder")


def test_checkpoint_auto_on_cpu_reads_the_committed_course_encoder_first(tmp_path, monkeypatch):
    course_encoder = tmp_path / "course_checkpoint" / "encoder"
    monkeypatch.setattr(course, "committed_encoder", lambda: course_encoder)
    own = tmp_path / "pretrain" / "cpu" / "encoder"
    models.save_encoder(models.create_encoder("tiny", 64, depth=1), own, {})
    assert find_pretrained_encoder(tmp_path, "cpu") == course_encoder  # the longer pretraining wins
    assert find_pretrained_encoder(tmp_path, "smoke") == own  # other presets: their run, else the newest
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the course encoder is the cpu preset's own: no warning
        assert resolve_checkpoint("auto", tmp_path, "cpu") == ("pretrained", course_encoder)


def test_checkpoint_auto_falls_back_to_random_with_one_warning(tmp_path, capsys):
    with pytest.warns(UserWarning, match="RANDOM initialisation") as caught:
        assert resolve_checkpoint("auto", tmp_path) == ("random", None)
    assert len(caught) == 1 and capsys.readouterr().out == ""  # said once (a notebook showed it twice)
    assert resolve_checkpoint("none", tmp_path) == ("random", None)
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(tmp_path / "missing", tmp_path)


@pytest.mark.parametrize("preset", PRESETS)
def test_random_init_has_the_shape_of_the_presets_pretrained_encoder(preset):
    """The "same budget" baseline is only fair if it is the same network: size and depth follow the
    pretraining preset of the same name, read when the task is made."""
    pretraining = get_preset(preset)
    for name in TASKS:
        task = get_task(name, preset)
        assert (task.model_size, task.depth) == (pretraining.model_size, pretraining.depth)
    if preset not in ("smoke", "cpu"):
        return  # ViT-S / ViT-B: the fields are compared; the networks are built for the small presets
    from asit.pretrain import build_student

    student = build_student(pretraining).encoder  # the network the pretraining preset trains and saves
    task = get_task("esc50", preset, num_frames=pretraining.num_frames)
    random_init, info = build_encoder(task, "none", output_dir="unused")
    assert info["depth"] == len(student.blocks) and info["model_size"] == pretraining.model_size
    assert {k: v.shape for k, v in random_init.state_dict().items()} == {k: v.shape for k, v in student.state_dict().items()}


def test_random_init_follows_a_retuned_pretraining_preset(monkeypatch, tmp_path):
    import asit.config

    original = asit.config.get_preset
    monkeypatch.setattr(asit.config, "get_preset", lambda name, **kw: original(name, **{**kw, "depth": 3}))
    monkeypatch.setattr(course, "committed_encoder", lambda: None)  # a copy without the course encoder
    task = get_task("ks2", "cpu")
    assert task.depth == 3
    with pytest.warns(UserWarning, match="RANDOM"):  # "auto" with nothing to find: the same shape
        encoder, info = build_encoder(task, "auto", output_dir=tmp_path)
    assert len(encoder.blocks) == 3 and info == {"kind": "random", "path": None, "model_size": "tiny", "depth": 3}


def test_baseline_takes_the_checkpoints_shape(tiny_encoder_dir):
    task = get_task("ks2", "smoke")
    assert task.depth == get_preset("smoke").depth != 3
    baseline = same_architecture(task, tiny_encoder_dir, "unused")
    assert (baseline.model_size, baseline.depth) == ("tiny", 3)
    assert same_architecture(task, "none", "unused") == task


def test_encoder_saved_at_96_frames_loads_into_a_128_frame_task(tiny_encoder_dir):
    task = get_task("ks2", "smoke", num_frames=128)
    encoder, info = build_encoder(task, tiny_encoder_dir, output_dir="unused")
    assert info["kind"] == "pretrained" and info["model_size"] == "tiny" and info["depth"] == 3
    assert encoder.pos_embed.shape[1] == 1 + (128 // 16) * (128 // 16)
    original = models.load_encoder(tiny_encoder_dir)  # at its own 96 frames
    assert original.pos_embed.shape[1] == 1 + (96 // 16) * 8
    torch.testing.assert_close(encoder.patch_embed.proj.weight, original.patch_embed.proj.weight)
    with torch.no_grad():
        assert encoder.forward_features(torch.randn(2, 1, 128, 128)).shape == (2, 65, 192)


def test_speech_commands_v2_from_a_pretrained_encoder(tmp_path, tiny_encoder_dir):
    words = ("yes", "no", "up", "down")  # 4 of the 35 words: a subset, which warns
    root = write_speech_commands(tmp_path / "sc", version=2, words=words, speakers=4)
    task = get_task("ks2", "smoke")
    with pytest.warns(UserWarning, match="4 of the 35 official classes"):
        result = finetune(task, "fixture", root, checkpoint=tiny_encoder_dir, output_dir=tmp_path / "out", device="cpu", progress=False)
    record = _read_result(result)
    assert record["checkpoint"] == str(tiny_encoder_dir)
    assert record["encoder"]["kind"] == "pretrained"
    assert 0 <= record["metrics"]["accuracy"] <= 100
    model, config = load_classifier(result["classifier_paths"][0])
    assert config["classes"] == sorted(words) and config["num_frames"] == task.num_frames
    assert isinstance(model, AudioClassifier) and config["depth"] == len(model.encoder.blocks) == 3


def test_speech_commands_v1_twelve_classes(tmp_path):
    root = write_speech_commands(tmp_path / "sc1", version=1, speakers=3)
    result = finetune(get_task("ks1", "smoke"), "fixture", root, checkpoint="none", output_dir=tmp_path, device="cpu", progress=False)
    assert len(result["classes"]) == 12 and result["predictions"]["scores"].shape[1] == 12
    assert _read_result(result)["metrics"]["top5_accuracy"] >= result["metrics"]["accuracy"]


def test_voxceleb1_identification(tmp_path):
    root = write_voxceleb1(tmp_path / "vox", speakers=3, videos=3, seconds=0.8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 3 of 1,251 speakers
        result = finetune(get_task("voxceleb1", "smoke"), "fixture", root, checkpoint="none", output_dir=tmp_path, device="cpu", progress=False)
    record = _read_result(result)
    assert record["task"] == "voxceleb1" and "accuracy" in record["metrics"]
    assert any("3 of the 1251 official classes" in note for note in record["notes"])


def test_audioset_multilabel(tmp_path):
    root = write_audioset(tmp_path / "as", num_classes=4, train_clips=12, eval_clips=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 4 of 527 classes
        result = finetune(get_task("audioset_20k", "smoke"), "fixture", root, checkpoint="none", output_dir=tmp_path, device="cpu", progress=False)
    metrics = _read_result(result)["metrics"]
    assert {"mAP", "mean_auc", "d_prime"} <= set(metrics)
    assert 0 <= metrics["mAP"] <= 100
    scores = result["predictions"]["scores"]
    assert scores.shape == (6, 4) and ((scores >= 0) & (scores <= 1)).all()  # sigmoid scores
    parts = build_datasets(get_task("audioset_20k", "smoke"), root)
    assert not (set(subset_paths(parts["train"])) & set(subset_paths(parts["val"])))  # held-out validation


def test_linear_probe_leaves_the_encoder_unchanged(tmp_path, esc50_root, tiny_encoder_dir):
    task = get_task("esc50", "smoke", num_frames=96, max_steps_per_epoch=3, linear_lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = finetune(task, "fixture", esc50_root, checkpoint=tiny_encoder_dir, mode="linear", output_dir=tmp_path, device="cpu", progress=False)
    assert result["dataset"] == "fixture-linear"
    assert (tmp_path / "esc50" / "fixture-linear__smoke.json").is_file()
    original = models.load_encoder(tiny_encoder_dir, num_frames=96)
    trained = result["model"]
    for name, value in original.state_dict().items():
        torch.testing.assert_close(trained.encoder.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert not any(p.requires_grad for p in trained.encoder.parameters())
    assert trained.head.weight.abs().sum() > 0


def test_fine_tuning_changes_the_encoder(tmp_path, esc50_root, tiny_encoder_dir):
    task = get_task("esc50", "smoke", num_frames=96)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = finetune(task, "fixture", esc50_root, checkpoint=tiny_encoder_dir, output_dir=tmp_path, device="cpu", progress=False, write_result=False)
    assert result["result_path"] is None and not (tmp_path / "esc50").exists()
    original = models.load_encoder(tiny_encoder_dir, num_frames=96)
    assert not torch.equal(result["model"].encoder.blocks[0].attn.qkv.weight, original.blocks[0].attn.qkv.weight)


def test_cached_fbanks_match_the_waveform_path(tmp_path, esc50_root, monkeypatch):
    monkeypatch.setenv("ASIT_DATA_DIR", str(tmp_path / "data"))
    task = get_task("esc50", "smoke", folds=(1, 2), max_train_items=None, max_eval_items=None, freq_mask=0, time_mask=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plain = finetune(task, "fixture", esc50_root, checkpoint="none", output_dir=tmp_path, device="cpu", progress=False, write_result=False)
        cached = finetune(dataclasses.replace(task, cache_fbanks=True), "fixture", esc50_root, checkpoint="none",
                          output_dir=tmp_path, device="cpu", progress=False, write_result=False)
    caches = list((tmp_path / "data" / "cache" / "finetune").iterdir())
    assert len(caches) == 1  # one cache of all clips, shared by both folds
    torch.testing.assert_close(torch.as_tensor(cached["predictions"]["scores"]), torch.as_tensor(plain["predictions"]["scores"]), atol=2e-2, rtol=0)
    with pytest.raises(ValueError, match="background"):
        finetune(dataclasses.replace(get_task("ks2", "smoke"), cache_fbanks=True, background_noise=0.5), "fixture",
                 write_speech_commands(tmp_path / "sc", version=2, words=("yes", "no"), speakers=4),
                 checkpoint="none", output_dir=tmp_path, device="cpu", progress=False, write_result=False)


def test_cli_runs(tmp_path, esc50_root):
    from asit.finetune import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = main(["--task", "esc50", "--preset", "smoke", "--dataset", "fixture", "--data-root", str(esc50_root),
                       "--checkpoint", "none", "--output-dir", str(tmp_path), "--device", "cpu", "--no-progress",
                       "--set", "max_steps_per_epoch=1"])
    assert result["metrics"]["folds"] == 1
    assert json.loads((tmp_path / "esc50" / "fixture__smoke.json").read_text())["config"]["max_steps_per_epoch"] == 1


def test_imagenet_initialisation(tmp_path):
    import timm
    from safetensors.torch import save_file

    imagenet = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000)
    path = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in imagenet.state_dict().items()}, str(path))
    task = get_task("ks2", "smoke")  # the smoke preset's shallow ViT-Ti: the first blocks of the ImageNet ViT
    encoder, info = build_encoder(task, f"imagenet:{path}", output_dir=tmp_path)
    assert info["kind"] == "imagenet" and info["depth"] == len(encoder.blocks) == (task.depth or 12)
    torch.testing.assert_close(encoder.patch_embed.proj.weight, imagenet.patch_embed.proj.weight.sum(dim=1, keepdim=True))
    last = len(encoder.blocks) - 1
    torch.testing.assert_close(encoder.blocks[last].mlp.fc1.weight, imagenet.blocks[last].mlp.fc1.weight)


def test_a_non_finite_loss_stops_fine_tuning_with_a_clear_message(tmp_path, monkeypatch):
    """The loss stays on the device between reads; a NaN is still caught, by the epoch's end at the latest."""
    import asit.engine_finetune as engine

    real = engine.spectrograms
    monkeypatch.setattr(engine, "spectrograms", lambda batch, frontend: real(batch, frontend) * float("nan"))
    root = write_esc50(tmp_path / "esc50", num_classes=2, clips_per_fold=2, seconds=0.4)
    with pytest.raises(FloatingPointError, match="non-finite training loss in epoch 1"):
        finetune(get_task("esc50", "smoke"), "fixture", root, checkpoint="none", output_dir=tmp_path, device="cpu", progress=False)


def test_layer_decay_scales_the_lr_from_the_head_down_to_the_patch_embedding():
    from asit.training import param_groups

    model = AudioClassifier(models.create_encoder("tiny", 96, depth=3), num_classes=4)
    flat = param_groups(model, weight_decay=0.05, decay_embeddings=False)  # layer_decay 1: every lr unscaled
    assert {g["lr_scale"] for g in flat} == {1.0} and len(flat) == 2
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5, decay_embeddings=False)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale_of[id(named["head.weight"])] == 1.0 and scale_of[id(named["encoder.norm.weight"])] == 1.0
    assert scale_of[id(named["encoder.blocks.2.mlp.fc1.weight"])] == 1.0  # the last block
    assert scale_of[id(named["encoder.blocks.1.mlp.fc1.weight"])] == 0.5
    assert scale_of[id(named["encoder.blocks.0.mlp.fc1.weight"])] == 0.25
    assert scale_of[id(named["encoder.patch_embed.proj.weight"])] == 0.125
    assert scale_of[id(named["encoder.pos_embed"])] == 0.125 and decay_of[id(named["encoder.pos_embed"])] == 0.0
    assert decay_of[id(named["encoder.blocks.0.mlp.fc1.weight"])] == 0.05
    assert sum(len(g["params"]) for g in groups) == len(named)  # every parameter in exactly one group


def test_task_follows_the_data_set_and_a_mismatch_names_the_right_one():
    from asit.tasks import task_for

    assert task_for("speech_commands_v1", ("ks2", "ks1")) == "ks1"
    assert task_for("speech_commands_v2", ("ks2", "ks1")) == "ks2"
    assert task_for("builtin", ("ks2", "ks1")) == "ks2" and task_for("builtin", ("ks2", "ks1"), "ks1") == "ks1"
    assert task_for("audioset", ("audioset_20k", "audioset_2m"), "audioset_2m") == "audioset_2m"
    with pytest.raises(ValueError, match=r"task 'ks2' reads 'speech_commands_v2', not 'speech_commands_v1': set task='ks1'"):
        task_for("speech_commands_v1", ("ks2", "ks1"), "ks2")
    with pytest.raises(ValueError, match="none of this notebook's"):
        task_for("esc50", ("ks2", "ks1"))


def test_audioset_manifests_with_other_names_are_read_when_named(tmp_path):
    from asit.datasets.base import base_dataset
    from asit.session import data_dir

    builtin = data_dir() / "builtin" / "audioset"
    for name in builtin.iterdir():  # the built-in copy, its manifests renamed as AST-style files in the wild
        target = tmp_path / {"balanced_train.json": "as20k_train.json", "eval.json": "as_eval.json"}.get(name.name, name.name)
        target.symlink_to(name)
    task = get_task("audioset_20k", "smoke", manifests={"train": "as20k_train.json", "eval": "as_eval.json"})
    parts = build_datasets(task, tmp_path)
    assert base_dataset(parts["test"]).manifest == tmp_path / "as_eval.json" and len(parts["train"]) > 0
    with pytest.raises(Exception, match="balanced_train.json"):  # the documented name, when none is given
        build_datasets(get_task("audioset_20k", "smoke"), tmp_path)


def test_a_long_run_prints_about_ten_epoch_lines_the_first_and_the_last_among_them():
    from asit.finetune import shown_epoch

    assert [e for e in range(1, 31) if shown_epoch(e, 30)] == [1, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    assert [e for e in range(1, 4) if shown_epoch(e, 3)] == [1, 2, 3]  # short runs: every epoch
    for epochs in (1, 7, 10, 11, 25, 100, 101):
        shown = [e for e in range(1, epochs + 1) if shown_epoch(e, epochs)]
        assert shown[0] == 1 and shown[-1] == epochs and len(shown) <= 12
