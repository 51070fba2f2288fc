"""The engines on a user's worst days: a learning rate that overflows the weights, a resume on
other data or from a damaged checkpoint, a stopped rank, list settings on the command line."""

from __future__ import annotations

import json
import math
import shutil
from datetime import timedelta

import pytest
import torch

from asit import pretrain as engine
from asit import training
from asit.checkpoint import CheckpointMismatch
from asit.config import PretrainConfig
from asit.models import load_encoder, nonfinite_tensors
from asit.training import LastGoodState, apply_settings, parameters_finite
from test_pretrain import smoke_config, write_clips


def test_last_good_state_undoes_a_step_that_overflows_the_weights():
    def make():
        torch.manual_seed(0)
        layer = torch.nn.Linear(3, 2)
        optimizer = torch.optim.SGD(layer.parameters(), lr=10.0, momentum=0.9)  # momentum: optimiser state
        return layer, optimizer, LastGoodState(layer, optimizer)

    def step(layer, optimizer, guard, scale: float) -> bool:
        guard.snapshot()
        optimizer.zero_grad()
        (scale * layer(torch.ones(1, 3)).sum()).backward()  # a finite loss whose update can overflow
        optimizer.step()
        ok = parameters_finite(list(layer.parameters()))
        guard.restore_unless(ok)
        return bool(ok)

    def values(layer, optimizer):
        return [t.clone() for t in layer.parameters()] + [v.clone() for s in optimizer.state.values() for v in s.values()]

    layer, optimizer, guard = make()
    assert step(layer, optimizer, guard, 1.0)  # a good step: new weights, the optimiser's state made
    kept = values(layer, optimizer)
    assert not step(layer, optimizer, guard, 1e38)  # an update that overflows float32 (finite loss)
    for now, before in zip(values(layer, optimizer), kept):
        assert torch.equal(now, before)  # weights, moments and step count as before the bad step
    # A bad first step: the state it made goes back to a fresh optimiser's zeros.
    layer, optimizer, guard = make()
    initial = [t.clone() for t in layer.parameters()]
    assert not step(layer, optimizer, guard, 1e38)
    assert all(torch.equal(a, b) for a, b in zip(layer.parameters(), initial))
    assert all(not v.any() for s in optimizer.state.values() for v in s.values())


def test_an_overflowing_lr_never_ends_successfully_with_broken_weights(tmp_path, capsys):
    """An lr far too high (the issue's base_lr=1e6 took 90 steps to overflow; 1e30 does it within the
    smoke preset's 4): skipped steps are undone, the encoder saved is finite, the skip count is
    printed even with --no-progress, and the run exits non-zero."""
    write_clips(tmp_path / "data")
    args = ["--preset", "smoke", "--output-dir", str(tmp_path / "out"), "--no-progress", "--resume", "never"]
    for key, value in {"datasets": '["folder"]', "data_root": str(tmp_path / "data"), "base_lr": "1e30",
                       "nan_policy": "skip", "epochs": 2}.items():
        args += ["--set", f"{key}={value}"]
    with pytest.raises(SystemExit) as exit_info:
        engine.main(args)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    summary = json.loads((tmp_path / "out" / "pretrain" / "smoke" / "summary.json").read_text())
    assert summary["skipped_steps"] / summary["steps"] > training.MAX_SKIPPED_SHARE
    assert f"steps: skipped {summary['skipped_steps']} of {summary['steps']}" in out
    assert "were skipped, more than the 25%" in err
    encoder = tmp_path / "out" / "pretrain" / "smoke" / "encoder"
    assert nonfinite_tensors(load_encoder(encoder)) == []  # bad steps were undone: the weights are finite
    for record in summary["final"], *[json.loads(line) for line in (encoder.parent / "log.jsonl").read_text().splitlines()]:
        assert record["loss"] is None or math.isfinite(record["loss"])  # never a made-up 0.0


def test_resume_refuses_other_data_and_falls_back_from_a_damaged_checkpoint(tmp_path, capsys):
    cfg = smoke_config(tmp_path, epochs=1)
    engine.pretrain(cfg, progress=False)
    same = tmp_path / "moved"
    shutil.copytree(tmp_path / "data", same)
    other = write_clips(tmp_path / "other", seconds=0.5)  # other clips: other normalisation statistics
    with pytest.raises(CheckpointMismatch, match="(?s)data_root: .*normalisation statistics: "):
        engine.pretrain(smoke_config(tmp_path, epochs=2, resume="auto", data_root=str(other)), progress=False)
    # The same data moved: said, and continued.
    latest = cfg.run_dir() / "checkpoint.pth"
    latest.write_bytes(latest.read_bytes()[:300])  # and checkpoint.pth damaged meanwhile
    with pytest.warns(UserWarning, match="Resuming from .*checkpoint-0001.pth"):
        result = engine.pretrain(smoke_config(tmp_path, epochs=2, resume="auto", data_root=str(same)), progress=False)
    assert "normalisation statistics are the same: continuing" in capsys.readouterr().out
    assert [h["epoch"] for h in result.history] == [1, 2]
    steps = [json.loads(line)["step"] for line in (cfg.run_dir() / "steps.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == result.summary["steps"]  # each step once, both epochs


def test_list_settings_take_a_literal_list():
    cfg = PretrainConfig()
    assert apply_settings(cfg, ['datasets=["folder"]']).datasets == ["folder"]
    assert apply_settings(cfg, ["datasets=['esc50', 'folder']"]).datasets == ["esc50", "folder"]
    assert apply_settings(cfg, ["datasets=esc50,folder"]).datasets == ["esc50", "folder"]
    assert apply_settings(cfg, ["datasets=[folder]"]).datasets == ["folder"]


def test_the_distributed_timeout_is_short_and_documented(monkeypatch):
    seen = {}
    monkeypatch.setattr(training.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(training.dist, "init_process_group", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("ASIT_DIST_TIMEOUT_S", raising=False)
    training.init_distributed("cpu")
    assert seen["timeout"] == timedelta(seconds=training.DIST_TIMEOUT_S) < timedelta(minutes=30)
    monkeypatch.setenv("ASIT_DIST_TIMEOUT_S", "20")
    training.init_distributed("cpu")
    assert seen["timeout"] == timedelta(seconds=20)
    monkeypatch.setenv("ASIT_DIST_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="ASIT_DIST_TIMEOUT_S must be a number of seconds"):
        training.init_distributed("cpu")


def test_predict_labels_every_good_file_and_names_each_bad_one(tmp_path, capsys):
    import warnings

    from asit.finetune import finetune
    from asit.predict import main as predict_main
    from asit.tasks import get_task
    from layouts import NON_UTF8_NAME, write_bad_inputs, write_speech_commands, write_wav, write_wav_any_name

    root = write_speech_commands(tmp_path / "sc", 2, words=("yes", "no"), speakers=3, seconds=0.3, noise_files=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a subset of the 35 words
        run = finetune(get_task("ks2", "smoke"), "fixture", root, checkpoint="none", output_dir=tmp_path / "out",
                       device="cpu", progress=False)
    bad = write_bad_inputs(tmp_path / "bad")
    files = [write_wav_any_name(tmp_path / NON_UTF8_NAME), bad["absurd samples"], bad["not audio"], write_wav(tmp_path / "good.wav")]
    assert predict_main([str(f) for f in files] + ["--checkpoint", run["classifier_paths"][0], "--top-k", "1"]) == 1
    out, err = capsys.readouterr()
    assert "caf\\xe9.wav" in out and "good.wav" in out and "nan" not in out  # both good files labelled
    assert f"{bad['absurd samples']}: has absurd sample values" in err and f"{bad['not audio']}: is not a readable" in err
    assert "2 of 4 file(s) could not be labelled" in err


def test_fine_tuning_on_the_bad_esc50_set_scores_each_good_clip_once_and_keeps_its_result_on_a_full_disk(
        tmp_path, monkeypatch, capsys):
    """The bad-inputs ESC-50 set (three bad fold-1 clips, a non-UTF-8 name): the test fold's good
    clips are each scored once, the bad files are totalled by split, and a full disk while the
    classifier is written still leaves the result JSON (and says so)."""
    import errno
    import warnings

    from asit import models
    from asit.atomic import DiskFullError
    from asit.finetune import finetune
    from asit.tasks import get_task
    from test_bad_inputs import write_esc50_with_bad_clips

    root, bad_names = write_esc50_with_bad_clips(tmp_path / "esc50")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(models, "save_safetensors", no_space)  # the classifier's weights (written by save_encoder)
    task = get_task("esc50", "smoke", max_train_items=None, max_eval_items=None)  # fold 1: 6 test clips, 3 bad
    with warnings.catch_warnings(), pytest.raises(DiskFullError, match="no space left in .*classifier"):
        warnings.simplefilter("ignore", UserWarning)  # 3 of the 50 classes
        finetune(task, "fixture", root, checkpoint="none", output_dir=tmp_path / "out", device="cpu", progress=False)
    record = json.loads((tmp_path / "out" / "esc50" / "fixture__smoke.json").read_text())
    bad = record["skipped_files_by_split"]
    assert bad["by_split"] == {"train": 0, "val": 0, "test": 3} and record["metrics"]["skipped_files"] == 3
    assert bad["kinds"]["test"] == {"empty": 1, "NaN/inf samples": 1, "absurd samples": 1}
    assert any("was not saved: no space left in" in note for note in record["notes"])
    assert "skipped 3 bad file(s) (0 train, 0 val, 3 test)" in capsys.readouterr().out
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = finetune(task, "fixture", root, checkpoint="none", output_dir=tmp_path / "out", device="cpu", progress=False)
    assert len(result["predictions"]["scores"]) == 3  # the three good test clips, once each
    assert nonfinite_tensors(result["model"]) == []


def test_pretraining_on_the_bad_folder_set_names_and_counts_every_bad_file(tmp_path, capsys):
    from layouts import NON_UTF8_NAME, write_bad_inputs, write_wav_any_name

    write_clips(tmp_path / "data")
    write_wav_any_name(tmp_path / "data" / "folder" / NON_UTF8_NAME, 1.0, seed=50)
    bad = write_bad_inputs(tmp_path / "data" / "folder" / "bad")
    result = engine.pretrain(smoke_config(tmp_path, max_clips=0), progress=False)
    # "too long" is a good 3 s clip here (no max_seconds); every other kind is skipped and named
    assert result.summary["skipped_files"] == len(bad) - 1
    assert {path for path, _ in result.summary["skipped"]} == {str(p) for kind, p in bad.items() if kind != "too long"}
    assert "data: skipped 8 files" in capsys.readouterr().out
    assert nonfinite_tensors(load_encoder(result.encoder_dir)) == []
