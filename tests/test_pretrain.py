"""The pretraining engine end to end on tiny fixture data (the smoke preset)."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from asit import engine_pretrain
from asit import pretrain as engine
from asit.checkpoint import load_checkpoint
from asit.config import PretrainConfig, get_preset, override
from asit.features import FbankFrontend
from layouts import write_bad_files, write_wav


def write_clips(root, count=8, seconds=1.0):
    """``count`` distinct tones under ``root/folder/`` (the ``folder`` data set's layout)."""
    for i in range(count):
        write_wav(root / "folder" / f"clip{i:02d}.wav", seconds, seed=i, freq=200.0 + 150.0 * i)
    return root


def smoke_config(tmp_path, **changes) -> PretrainConfig:
    """The smoke preset on fixture clips in ``tmp_path/data``, writing under ``tmp_path/out``."""
    data = tmp_path / "data"
    if not (data / "folder").exists():
        write_clips(data)
    base = dict(datasets=["folder"], data_root=str(data), output_dir=str(tmp_path / "out"), resume="never")
    return get_preset("smoke", **{**base, **changes})


def test_config_round_trip_and_override(tmp_path):
    cfg = get_preset("paper")
    assert (cfg.model_size, cfg.num_frames, cfg.global_dim, cfg.local_dim) == ("base", 592, 8192, 1024)
    assert (cfg.weight_global, cfg.weight_local, cfg.weight_reconstruction) == (1.0, 1.0, 2.0)
    again = PretrainConfig.from_json(cfg.to_json(tmp_path / "config.json"))
    assert again == cfg
    changed = override(cfg, "epochs=3", "base_lr=1e-4", "use_local=false", "datasets=esc50,folder", "masking.align=patch")
    assert (changed.epochs, changed.base_lr, changed.use_local, changed.datasets) == (3, 1e-4, False, ["esc50", "folder"])
    assert changed.masking.align == "patch" and cfg.masking.align == "pixel"  # the original is untouched
    with pytest.raises(ValueError, match="no_such_field"):
        override(cfg, "no_such_field=1")
    assert get_preset("smoke", epochs=5).epochs == 5


def test_smoke_run_end_to_end(tmp_path, capsys):
    from asit.models import load_encoder

    cfg = smoke_config(tmp_path)
    result = engine.pretrain(cfg, progress=False)
    assert "skipped" not in capsys.readouterr().out  # a quiet, clean run says nothing of skips
    assert len(result.history) == cfg.epochs
    lines = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    for line in lines:
        for key in ("loss", "loss_global", "loss_local", "loss_reconstruction", "lr", "wd", "momentum", "teacher_temp", "time_s"):
            assert math.isfinite(line[key]), key
        assert line["skipped_files"] == 0 and line["skipped_steps"] == 0
        assert 0.0 < line["teacher_entropy"] <= 1.0 and 0.0 < line["teacher_batch_entropy"] <= 1.0
    assert lines[-1]["momentum"] == pytest.approx(1.0)  # the cosine ends at 1
    assert json.loads((result.run_dir / "config.json").read_text())["preset"] == "smoke"
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert "global_head_collapse" in summary and "collapsed" not in capsys.readouterr().out
    # relative to the output folder, so a committed summary names no machine's folders
    assert summary["encoder_dir"] == result.encoder_dir.relative_to(cfg.output_dir).as_posix()
    assert (Path(cfg.output_dir) / summary["encoder_dir"]).resolve() == result.encoder_dir.resolve()
    encoder = load_encoder(result.encoder_dir)
    # the saved encoder is the teacher's
    state = load_checkpoint(result.run_dir / "checkpoint.pth", cfg)
    teacher_encoder = {k[len("encoder."):]: v for k, v in state["teacher"].items() if k.startswith("encoder.")}
    for name, value in encoder.state_dict().items():
        if name in teacher_encoder:
            torch.testing.assert_close(value, teacher_encoder[name])
    x = torch.randn(2, 1, cfg.num_frames, 128)
    assert encoder.forward_features(x).shape[0] == 2


def test_a_collapsed_global_head_is_reported_even_by_a_quiet_run(tmp_path, capsys):
    # a teacher temperature of 100 flattens every teacher distribution: DINO's uniform collapse
    cfg = smoke_config(tmp_path, warmup_teacher_temp=100.0, teacher_temp=100.0)
    result = engine.pretrain(cfg, progress=False)
    assert result.history[-1]["teacher_entropy"] > 0.999
    assert result.summary["global_head_collapse"] == "uniform"
    assert "warning: the global head collapsed (uniform" in capsys.readouterr().out
    quiet = engine.pretrain(smoke_config(tmp_path, use_global=False), progress=False)  # nothing to measure
    assert quiet.history[-1]["teacher_entropy"] is None and quiet.summary["global_head_collapse"] is None


def test_a_checkpoint_from_before_the_entropy_log_resumes_with_unknown_entropies():
    old = torch.tensor([6.0, 3.0, 2.0, 0.5, 2.0])  # total, global, local, reconstruction, steps
    sums = engine._epoch_sums(old)
    assert sums.numel() == engine_pretrain.EPOCH_SUMS
    assert sums[:4].tolist() == old[:4].tolist() and sums[-1] == 2.0 and torch.isnan(sums[4:6]).all()
    with pytest.raises(ValueError, match="3 entries"):
        engine._epoch_sums(torch.zeros(3))


def _fixed_batch(cfg, clips=4, views=2):
    torch.manual_seed(0)
    frontend = FbankFrontend(cfg.num_frames, None)
    t = torch.arange(frontend.num_samples) / 16000
    freqs = torch.tensor([300.0, 700.0, 1500.0, 3000.0])[:clips, None]
    waves = torch.sin(2 * math.pi * freqs * t) * (1 + 0.5 * torch.sin(2 * math.pi * 3 * t))  # (clips, S)
    waves = waves[:, None].repeat(1, views, 1)
    lengths = torch.full((clips, views), frontend.num_samples)
    return waves, lengths


def test_reconstruction_loss_falls_on_a_fixed_batch():
    # constant lr 3e-4 (base_lr is scaled by batch / 256); step index 0 every time: same masks
    cfg = get_preset("smoke", use_global=False, use_local=False, epochs=1, base_lr=3e-4 * 256 / 4, warmup_epochs=0,
                     min_lr=3e-4, weight_decay=0.0, weight_decay_end=0.0, drop_path_rate=0.0)
    state = engine.build_training(cfg, "cpu", stats=None, steps_per_epoch=20)
    waves, lengths = _fixed_batch(cfg)
    stats_frontend = FbankFrontend(cfg.num_frames, None)
    raw = stats_frontend(waves[:, 0], lengths[:, 0])
    from asit.audio import NormStats

    state.frontend.stats = NormStats(float(raw.mean()), float(raw.std()))
    losses = [engine.train_step(state, waves, lengths, 0)["reconstruction"].item() for _ in range(20)]
    assert all(math.isfinite(v) for v in losses)
    first, last = losses[0], sum(losses[-3:]) / 3
    assert last < 0.85 * first, losses


def test_local_crops_join_the_global_loss_as_extra_student_views():
    """With num_local_crops (DINO multi-crop, the cpu preset's) the global loss also matches the student's
    class tokens of short crops of the clean views to the teacher's: replayed by hand, it is the engine's."""
    import copy

    cfg = get_preset("smoke", num_local_crops=2, local_crop_frames=32, drop_path_rate=0.0)
    state = engine.build_training(cfg, "cpu", stats=None, steps_per_epoch=4)
    waves, lengths = _fixed_batch(cfg)
    it, (batch, views, samples) = 1, waves.shape
    spec = state.frontend(waves.transpose(0, 1).reshape(views * batch, samples), lengths.T.reshape(-1))
    corrupted, _ = engine_pretrain.mask_views(state, spec, views, it)
    local = engine_pretrain.local_crops(spec, cfg, state.mask_generator)  # the generator continues from the masks
    assert local.shape == (2 * batch, 1, 32, spec.shape[-1])
    with torch.no_grad():
        teacher = state.teacher(spec, return_reconstruction=False).global_out
        full = state.student(corrupted).global_out
        student = torch.cat([full, state.student(local, return_reconstruction=False).global_out])
        expected = copy.deepcopy(state.criterion).global_loss(student, teacher, it // 4)
        full_views_only = copy.deepcopy(state.criterion).global_loss(full, teacher, it // 4)
    out = engine.train_step(state, waves, lengths, it)
    torch.testing.assert_close(out["global"], expected, rtol=1e-4, atol=1e-4)
    assert abs(out["global"].item() - full_views_only.item()) > 1e-3


@pytest.mark.parametrize("switch", ["use_global", "use_local", "use_reconstruction"])
def test_each_objective_switch_removes_its_loss(switch):
    cfg = get_preset("smoke", **{switch: False})
    state = engine.build_training(cfg, "cpu", stats=None, steps_per_epoch=4)
    waves, lengths = _fixed_batch(cfg)
    out = engine.train_step(state, waves, lengths, 0)
    removed = {"use_global": "global", "use_local": "local", "use_reconstruction": "reconstruction"}[switch]
    assert out[removed].item() == 0.0
    for name in engine.LOSS_NAMES:
        if name != removed:
            assert out[name].item() > 0.0, name
    expected = cfg.weight_global * out["global"] + cfg.weight_local * out["local"] + cfg.weight_reconstruction * out["reconstruction"]
    torch.testing.assert_close(out["loss"], expected)
    if switch == "use_reconstruction":  # no reconstruction head at all: nothing to train for it
        assert state.student(torch.zeros(1, 1, cfg.num_frames, 128)).reconstruction is None


def _nan_frontend(monkeypatch, bad_calls):
    """Make the front end return NaN spectrograms on the given (0-based) calls."""
    real = FbankFrontend.forward
    calls = {"n": 0}

    def forward(self, waves, lengths=None):
        spec = real(self, waves, lengths)
        calls["n"] += 1
        return spec * float("nan") if calls["n"] - 1 in bad_calls else spec

    monkeypatch.setattr(FbankFrontend, "forward", forward)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = smoke_config(tmp_path, epochs=3)  # 2 steps per epoch: calls 0-1 epoch 1, 2-3 epoch 2
    _nan_frontend(monkeypatch, bad_calls={2, 3, 4, 5})
    with pytest.raises(engine.NonFiniteLossError) as info:
        engine.pretrain(cfg, progress=False)
    message = str(info.value)
    assert "NaN" in message and "step 2" in message and "checkpoint.pth" in message
    run_dir = cfg.run_dir()
    state = load_checkpoint(run_dir / "checkpoint.pth", cfg)
    assert (state["epoch"], state["step_in_epoch"]) == (0, 2)  # the end of epoch 1, the last good state
    assert all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())
    assert len((run_dir / "log.jsonl").read_text().splitlines()) == 1


def test_skip_policy_drops_and_counts_bad_steps(tmp_path, monkeypatch, capsys):
    cfg = smoke_config(tmp_path, nan_policy="skip")
    _nan_frontend(monkeypatch, bad_calls={1})
    result = engine.pretrain(cfg, progress=False)
    assert result.summary["skipped_steps"] == 1
    # said also without progress, since something was left out; no files were, so no data line
    out = capsys.readouterr().out
    assert f"steps: skipped 1 of {result.summary['steps']}" in out and "data: skipped" not in out
    assert [h["skipped_steps"] for h in result.history] == [1, 1]
    assert all(math.isfinite(h["loss"]) for h in result.history)
    state = load_checkpoint(result.run_dir / "checkpoint.pth", cfg)
    for key in ("student", "teacher", "losses"):
        assert all(torch.isfinite(v).all() for v in state[key].values() if v.is_floating_point()), key


def test_bad_files_are_skipped_and_reported(tmp_path, capsys):
    data = tmp_path / "data"
    write_clips(data)
    bad = write_bad_files(data / "folder" / "bad")
    cfg = smoke_config(tmp_path, max_clips=0)
    result = engine.pretrain(cfg, progress=False)
    # "too long" is a good 3 s clip here (no max_seconds); every other kind is skipped
    expected = len(bad) - 1
    assert result.summary["skipped_files"] == expected
    assert result.history[-1]["skipped_files"] == expected
    assert "NaN/inf samples" in result.summary["skipped_kinds"]
    assert f"skipped {expected} files" in capsys.readouterr().out
    assert all(math.isfinite(h["loss"]) for h in result.history)


def test_knn_accuracy_on_separable_and_random_features():
    from asit.knn import knn_accuracy

    generator = torch.Generator().manual_seed(0)
    centers = torch.nn.functional.normalize(torch.randn(3, 16, generator=generator), dim=1)
    labels = torch.arange(60) % 3
    feats = torch.nn.functional.normalize(centers[labels] + 0.05 * torch.randn(60, 16, generator=generator), dim=1)
    assert knn_accuracy(feats[:45], labels[:45], feats[45:], labels[45:], k=5, num_classes=3) == 1.0
    noise = torch.nn.functional.normalize(torch.randn(60, 16, generator=generator), dim=1)
    assert knn_accuracy(noise[:45], labels[:45], noise[45:], labels[45:], k=5, num_classes=3) < 0.8


def test_knn_monitor_compares_with_the_same_encoder_at_init(tmp_path):
    from layouts import write_esc50

    write_esc50(tmp_path / "esc", num_classes=3, clips_per_fold=2)
    cfg = smoke_config(tmp_path, knn_every=2, knn_dataset="esc50", knn_data_root=str(tmp_path / "esc"), knn_k=3, knn_max_clips=0)
    result = engine.pretrain(cfg, progress=False)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    for key in ("knn_accuracy", "knn_accuracy_random_init"):
        assert 0.0 <= summary[key] <= 100.0, key  # percent
    assert summary["knn_clips"] == [24, 6]  # ESC-50 fold 1: the four training folds vs fold 1
    assert summary["knn_accuracy"] == result.history[-1]["knn_accuracy"]
    assert summary["epochs"] == cfg.epochs and math.isfinite(summary["final_loss"])
    # the random-init baseline is the run's own starting point
    initial = engine.initial_encoder(cfg).state_dict()
    fresh = engine.build_training(cfg, "cpu", None, 1).teacher.encoder.state_dict()
    for name, value in fresh.items():
        torch.testing.assert_close(initial[name], value)
    assert (result.run_dir / "steps.jsonl").read_text().count("\n") == cfg.epochs * 2  # log_every 1, 2 steps per epoch


def test_knn_features_average_the_clips_windows():
    from asit.knn import extract_features

    class MeanOverTime(torch.nn.Module):
        def forward(self, spec):  # (B, 1, T, F) -> (B, F)
            return spec.mean(dim=(1, 2))

    frontend = FbankFrontend(64, None)  # windows of 32 frames at 50 % overlap: starting at 0, 16 and 32
    generator = torch.Generator().manual_seed(0)
    waves = torch.randn(2, frontend.num_samples, generator=generator)
    lengths = torch.tensor([frontend.num_samples, 4000])  # the second clip ends inside the first window
    batch = {"wave": waves, "length": lengths, "target": torch.tensor([0, 1])}
    feats, labels = extract_features(MeanOverTime(), frontend, [batch], window=32)
    spec = frontend(waves, lengths)
    windows = torch.stack([spec[0, 0, start : start + 32].mean(0) for start in (0, 16, 32)])
    whole = torch.nn.functional.normalize(windows.mean(0), dim=0)  # the mean of the three windows
    first = torch.nn.functional.normalize(spec[1, 0, :32].mean(0), dim=0)  # a clip shorter than a window: one
    torch.testing.assert_close(feats[0], whole)
    torch.testing.assert_close(feats[1], first)
    assert labels.tolist() == [0, 1]


def test_knn_probe_measures_each_set_of_weights_once_per_process(tmp_path, monkeypatch):
    from layouts import write_esc50

    from asit.knn import KnnProbe

    write_esc50(tmp_path / "esc", num_classes=3, clips_per_fold=2)
    cfg = smoke_config(tmp_path)
    probe = lambda: KnnProbe("esc50", FbankFrontend(cfg.num_frames, None), data_root=tmp_path / "esc", k=3)
    measured = []
    real_features = KnnProbe.features
    monkeypatch.setattr(KnnProbe, "features", lambda self, enc: measured.append(1) or real_features(self, enc))
    first = probe().accuracy(engine.initial_encoder(cfg))
    again = probe().accuracy(engine.initial_encoder(cfg))  # a new probe, a new copy of the same init
    assert again == first and len(measured) == 1
    changed = engine.initial_encoder(cfg)
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    probe().accuracy(changed)
    other_k = KnnProbe("esc50", FbankFrontend(cfg.num_frames, None), data_root=tmp_path / "esc", k=1)
    other_k.accuracy(engine.initial_encoder(cfg))
    assert len(measured) == 3  # other weights, other probe settings: measured again


def test_the_student_builds_its_configured_head_once_and_the_encoder_does_not_depend_on_it(monkeypatch):
    from asit.heads import ProjectionHead

    built, real_init = [], ProjectionHead.__init__

    def counted_init(self, *args, **kwargs):
        built.append(kwargs)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(ProjectionHead, "__init__", counted_init)  # every head, whoever imports the class
    cfg = get_preset("smoke")
    assert (cfg.head_hidden_dim, cfg.head_bottleneck_dim) != (2048, 256)  # smaller than the paper's head
    student = engine_pretrain.build_student(cfg)
    assert len(built) == 1
    linears = [m for m in student.projection.mlp if isinstance(m, torch.nn.Linear)]
    assert linears[0].out_features == cfg.head_hidden_dim and linears[-1].out_features == cfg.head_bottleneck_dim
    paper_head = engine_pretrain.build_student(dataclasses.replace(cfg, head_hidden_dim=2048, head_bottleneck_dim=256))
    for (name, ours), theirs in zip(student.encoder.state_dict().items(), paper_head.encoder.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=name)  # the encoder is drawn first


def test_view_equaliser_colours_every_view_on_its_own_and_repeats_with_the_step(monkeypatch):
    """``view_eq_db`` passes each of the V*B views through its own curve before teacher and student see
    them; the curves are a function of the step, so a rerun of the step repeats the losses exactly."""
    from asit import augment
    from asit.audio import NormStats

    seen = []

    def recording(spec, max_db, std, generator=None):
        out = augment.random_equaliser(spec, max_db, std, generator)
        seen.append((spec.shape, max_db, std, (out - spec)[:, 0, 0].clone()))
        return out

    monkeypatch.setattr(engine_pretrain, "random_equaliser", recording)
    cfg = get_preset("smoke", view_eq_db=6.0, drop_path_rate=0.0)
    waves, lengths = _fixed_batch(cfg)
    runs = []
    for _ in range(2):
        state = engine.build_training(cfg, "cpu", stats=NormStats(-6.0, 4.0), steps_per_epoch=4)
        runs.append({k: v.item() for k, v in engine.train_step(state, waves, lengths, 3).items() if v.dim() == 0})
    assert runs[0] == runs[1]
    (shape, max_db, std, shift), _ = seen
    assert shape[0] == 8 and max_db == 6.0 and std == 4.0  # 2 views x 4 clips
    assert len({tuple(row.tolist()) for row in shift}) == 8  # the two views of a clip differ in colour
    plain = engine.build_training(get_preset("smoke", drop_path_rate=0.0), "cpu", stats=NormStats(-6.0, 4.0), steps_per_epoch=4)
    assert engine.train_step(plain, waves, lengths, 3)["loss"].item() != runs[0]["loss"]
    assert len(seen) == 2  # view_eq_db = 0 never calls it


def test_view_augmentations_run_voice_then_colour_then_noise_floor_and_repeat_with_the_step(monkeypatch):
    """``view_warp`` scales each view's frequency axis by its own factor, ``view_eq_db`` colours it,
    ``view_noise_snr`` lays its floor under it; all are drawn after the step's seed, so a rerun of
    the step repeats the losses exactly."""
    from asit import augment
    from asit.audio import NormStats

    calls = []
    scale = augment.frequency_warp

    def warp(spec, max_warp, sample_rate, generator=None):
        calls.append(("warp", max_warp, sample_rate))
        return augment.random_frequency_warp(spec, max_warp, sample_rate, generator)

    def recording_scale(spec, factors, sample_rate):
        calls.append(("factors", len(set(factors.tolist()))))
        return scale(spec, factors, sample_rate)

    def equalise(spec, max_db, std, generator=None):
        calls.append(("equaliser", max_db))
        return augment.random_equaliser(spec, max_db, std, generator)

    def floor(spec, min_snr_db, stats, generator=None):
        calls.append(("noise floor", min_snr_db, stats))
        return augment.random_noise_floor(spec, min_snr_db, stats, generator)

    monkeypatch.setattr(engine_pretrain, "random_noise_floor", floor)
    monkeypatch.setattr(engine_pretrain, "random_frequency_warp", warp)
    monkeypatch.setattr(augment, "frequency_warp", recording_scale)
    monkeypatch.setattr(engine_pretrain, "random_equaliser", equalise)
    cfg = get_preset("smoke", view_warp=0.2, view_eq_db=6.0, view_noise_snr=15.0, drop_path_rate=0.0)
    waves, lengths = _fixed_batch(cfg)
    losses = []
    for _ in range(2):
        state = engine.build_training(cfg, "cpu", stats=NormStats(-6.0, 4.0), steps_per_epoch=4)
        losses.append(engine.train_step(state, waves, lengths, 3)["loss"].item())
    assert losses[0] == losses[1]
    stats = NormStats(-6.0, 4.0)
    assert calls[:4] == [("warp", 0.2, 16_000), ("factors", 8), ("equaliser", 6.0), ("noise floor", 15.0, stats)]
    for option in ("view_warp", "view_noise_snr"):  # each changes the step; off, it is never called
        without = engine.build_training(dataclasses.replace(cfg, **{option: 0.0}), "cpu", stats=stats, steps_per_epoch=4)
        assert engine.train_step(without, waves, lengths, 3)["loss"].item() != losses[0]
    assert [c[0] for c in calls].count("warp") == 3 and [c[0] for c in calls].count("noise floor") == 3
