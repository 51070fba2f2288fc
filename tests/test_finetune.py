"""The fine-tuning engine end to end on tiny fixtures in each official layout.

Every run uses the ``smoke`` preset: a tiny ViT, 64-128 frames, one epoch of two steps. These
tests check that the pipeline runs and reports what it should, not that it learns.
"""

import json
import os
import warnings

import pytest
import torch

from asit import models
from asit.finetune import (
    AudioClassifier,
    build_datasets,
    build_encoder,
    find_pretrained_encoder,
    finetune,
    load_classifier,
    resolve_checkpoint,
    subset_paths,
)
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
    models.save_encoder(models.create_encoder("tiny", 96), directory, {"preset": "smoke"})
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


def test_checkpoint_auto_falls_back_to_random_with_a_warning(tmp_path, capsys):
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        assert resolve_checkpoint("auto", tmp_path) == ("random", None)
    assert "warning" in capsys.readouterr().out
    assert resolve_checkpoint("none", tmp_path) == ("random", None)
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(tmp_path / "missing", tmp_path)


def test_encoder_saved_at_96_frames_loads_into_a_128_frame_task(tiny_encoder_dir):
    task = get_task("ks2", "smoke", num_frames=128)
    encoder, info = build_encoder(task, tiny_encoder_dir, output_dir="unused")
    assert info["kind"] == "pretrained" and info["model_size"] == "tiny"
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
    assert isinstance(model, AudioClassifier)


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
    encoder, info = build_encoder(get_task("ks2", "smoke"), f"imagenet:{path}", output_dir=tmp_path)
    assert info["kind"] == "imagenet"
    torch.testing.assert_close(encoder.patch_embed.proj.weight, imagenet.patch_embed.proj.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(encoder.blocks[3].mlp.fc1.weight, imagenet.blocks[3].mlp.fc1.weight)
