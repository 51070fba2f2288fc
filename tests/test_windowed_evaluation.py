"""Evaluation hears each whole clip: scores averaged over windows of the model's input length,
the same windows asit.predict uses, from waveforms and from the fbank cache alike."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from asit.audio import window_starts
from asit.datasets import collate_clips, get_dataset
from asit.fbank_cache import CachedFbankDataset, FbankCache, spectrograms, valid_frames
from asit.features import FbankFrontend, clip_windows, padding_value
from asit.datasets.base import base_dataset
from asit.engine_finetune import evaluate
from asit.finetune import build_datasets, finetune
from asit.tasks import get_task
from asit.windows import random_window
from layouts import write_esc50


def test_random_window_draws_each_clips_own_windows_and_all_of_them():
    spec = torch.arange(3 * 30, dtype=torch.float32).reshape(3, 1, 30, 1)  # frame t of clip b holds 30 b + t
    windows, owner = clip_windows(spec, torch.tensor([30, 8, 20]), window=10)  # 5, 1 and 3 windows
    clips = torch.tensor([0, 1, 2] * 200)
    drawn = random_window(windows, owner, clips, torch.Generator().manual_seed(0))  # (600, 1, 10, 1)
    first_frames = drawn[:, 0, 0, 0]
    assert torch.equal((first_frames // 30).long(), clips)  # every window is its clip's
    for clip in range(3):
        starts = {int(w[0, 0, 0]) for w in windows[owner == clip]}
        assert {int(f) for f in first_frames[clips == clip]} == starts  # and every one of them is drawn


def test_clip_windows_follow_window_starts_and_name_their_clip():
    spec = torch.arange(2 * 30, dtype=torch.float32).reshape(2, 1, 30, 1)  # frame t of clip b holds 30 b + t
    windows, owner = clip_windows(spec, torch.tensor([30, 12]), window=10)
    starts = window_starts(30, 10, hop=1) + window_starts(12, 10, hop=1)
    assert owner.tolist() == [0] * len(window_starts(30, 10, hop=1)) + [1, 1]
    assert windows.shape == (len(starts), 1, 10, 1)
    for w, (clip, start) in enumerate(zip(owner.tolist(), starts)):
        assert windows[w, 0, 0, 0].item() == 30 * clip + start  # the window begins where window_starts says
    assert windows[-1, 0, -1, 0].item() == 30 + 11  # the last window of clip 1 ends at its last valid frame


def test_clips_shorter_than_the_window_are_padded_with_the_padding_value():
    spec = torch.ones(1, 1, 4, 3)
    windows, owner = clip_windows(spec, torch.tensor([4]), window=6, pad_value=-0.5)
    assert windows.shape == (1, 1, 6, 3) and owner.tolist() == [0]
    assert torch.all(windows[0, 0, :4] == 1) and torch.all(windows[0, 0, 4:] == -0.5)


def test_padding_value_is_a_zero_log_mel_normalised(tmp_path):
    root = write_esc50(tmp_path / "esc", num_classes=2, seconds=0.2)  # 18 frames
    dataset = get_dataset("esc50", "train", data_root=root, fold=1, num_frames=40)
    spec = FbankFrontend(40, dataset.stats)(*[collate_clips([dataset[0]])[k] for k in ("wave", "length")])
    assert torch.allclose(spec[0, 0, 30:], torch.full_like(spec[0, 0, 30:], padding_value(dataset.stats)))


def test_a_front_end_without_num_frames_keeps_every_frame(tmp_path):
    root = write_esc50(tmp_path / "esc", num_classes=2, seconds=0.6)
    whole = get_dataset("esc50", "train", data_root=root, fold=1, num_frames=None)
    batch = collate_clips([whole[0], whole[1]])
    frames = valid_frames(batch, whole.sample_rate)
    spec = FbankFrontend(None, whole.stats)(batch["wave"], batch["length"])
    assert spec.shape[2] == int(frames.max())
    fixed = FbankFrontend(int(frames.max()), whole.stats)(batch["wave"], batch["length"])
    assert torch.equal(spec, fixed)


class _FrameMeanClassifier(nn.Module):
    """Logits from the mean over time of two mel bands: its score differs from window to window."""

    def forward(self, spec):
        x = spec.mean(dim=(1, 2))  # (B, F)
        return torch.stack([x[:, :64].mean(1), x[:, 64:].mean(1), -x.mean(1)], dim=1) * 5


def test_evaluation_averages_the_scores_of_each_clips_windows(tmp_path):
    root = write_esc50(tmp_path / "esc", num_classes=3, clips_per_fold=2, seconds=0.6)  # 58 frames
    whole = get_dataset("esc50", "test", data_root=root, fold=1, num_frames=None)
    frontend = FbankFrontend(20, whole.stats)
    model = _FrameMeanClassifier()
    result = evaluate(model, DataLoader(whole, batch_size=4, collate_fn=collate_clips), frontend, window_frames=20)
    for row, index in enumerate(result["indices"]):
        wave = whole[int(index)]["wave"]
        spec = FbankFrontend(None, whole.stats)(wave[None], torch.tensor([wave.numel()]))
        starts = window_starts(spec.shape[2], 20, hop=1)
        assert len(starts) > 2  # the clip is heard in several windows
        expected = torch.stack([torch.softmax(model(spec[:, :, s : s + 20]), -1)[0] for s in starts]).mean(0)
        torch.testing.assert_close(torch.as_tensor(result["scores"][row]), expected, atol=1e-5, rtol=0)
    single = evaluate(model, DataLoader(get_dataset("esc50", "test", data_root=root, fold=1, num_frames=20), batch_size=4,
                                        collate_fn=collate_clips), frontend)
    assert not torch.allclose(torch.as_tensor(single["scores"]), torch.as_tensor(result["scores"]))  # not just the first crop


def test_cached_whole_clips_give_the_waveform_paths_windows(tmp_path):
    root = write_esc50(tmp_path / "esc", num_classes=2, clips_per_fold=2, seconds=0.6)
    whole = get_dataset("esc50", "test", data_root=root, fold=1, num_frames=None)
    cache = FbankCache.build(whole, tmp_path / "cache", progress=False)
    frontend = FbankFrontend(20, whole.stats)
    model = _FrameMeanClassifier()
    plain = evaluate(model, DataLoader(whole, batch_size=3, collate_fn=collate_clips), frontend, window_frames=20)
    cached = evaluate(model, DataLoader(CachedFbankDataset(whole, cache), batch_size=3, collate_fn=collate_clips),
                      frontend, window_frames=20)
    torch.testing.assert_close(torch.as_tensor(cached["scores"]), torch.as_tensor(plain["scores"]), atol=1e-2, rtol=0)


@pytest.mark.parametrize("eval_windows", [True, False])
def test_fine_tuning_evaluates_whole_clips_only_when_asked(tmp_path, eval_windows):
    root = write_esc50(tmp_path / "esc", num_classes=2, clips_per_fold=2, seconds=0.6)
    task = get_task("esc50", "smoke", folds=(1,), num_frames=32, eval_windows=eval_windows)
    parts = build_datasets(task, root, fold=1)
    assert base_dataset(parts["train"]).num_frames == 32  # training always crops
    for split in ("val", "test"):
        assert base_dataset(parts[split]).num_frames == (None if eval_windows else 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        run = finetune(dataclasses.replace(task, cache_fbanks=True), "fixture", root, checkpoint="none", output_dir=tmp_path,
                       device="cpu", progress=False, write_result=False)
    assert run["predictions"]["scores"].shape == (4, 2)
