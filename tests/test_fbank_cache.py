"""The on-disk fbank cache serves the same spectrograms as the waveform path, rebuilds when the
data change, and keeps counting bad files."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader

from asit.datasets import collate_clips, get_dataset
from asit.fbank_cache import CachedFbankDataset, FbankCache, spectrograms
from asit.features import FbankFrontend
from layouts import write_esc50, write_wav


def _esc50(root, **options):
    return get_dataset("esc50", "train", data_root=root, fold=1, num_frames=40, **options)


def test_cached_spectrograms_equal_the_waveform_path(tmp_path):
    root = write_esc50(tmp_path / "esc", num_classes=2, seconds=0.6)
    dataset = _esc50(root)  # crops from the start: both paths cut the same frames
    cache = FbankCache.build(dataset, tmp_path / "cache", progress=False)
    frontend = FbankFrontend(40, dataset.stats)
    waves = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate_clips)))
    cached = next(iter(DataLoader(CachedFbankDataset(dataset, cache), batch_size=4, collate_fn=collate_clips)))
    assert cached["fbank"].shape == (4, 40, 128) and torch.equal(cached["index"], waves["index"])
    expected, got = spectrograms(waves, frontend), spectrograms(cached, frontend)
    assert got.shape == expected.shape == (4, 1, 40, 128)
    assert (got - expected).abs().max().item() < 2e-3  # float16 storage, in normalised units


def test_short_clips_are_zero_padded_like_the_waveform_path(tmp_path):
    root = write_esc50(tmp_path / "esc", num_classes=2, seconds=0.2)  # 18 frames < 40
    dataset = _esc50(root)
    cache = FbankCache.build(dataset, tmp_path / "cache", progress=False)
    item = CachedFbankDataset(dataset, cache)[0]
    assert item["frames"] == 18 and item["fbank"][18:].abs().sum() == 0
    frontend = FbankFrontend(40, dataset.stats)
    waves = collate_clips([dataset[0]])
    got = spectrograms(collate_clips([item]), frontend)
    assert (got - spectrograms(waves, frontend)).abs().max().item() < 2e-3


def test_cache_is_reused_until_a_file_changes(tmp_path):
    root = write_esc50(tmp_path / "esc", num_classes=2, seconds=0.3)
    dataset = _esc50(root)
    first = FbankCache.build(dataset, tmp_path / "cache", progress=False)
    written = os.stat(tmp_path / "cache" / "fbank.npy").st_mtime_ns
    again = FbankCache.build(_esc50(root), tmp_path / "cache", progress=False)
    assert again.fingerprint == first.fingerprint
    assert os.stat(tmp_path / "cache" / "fbank.npy").st_mtime_ns == written  # not recomputed
    changed = dataset.paths[0]
    write_wav(changed, seconds=0.5, sample_rate=44100, seed=7)  # a new recording under the same name
    rebuilt = FbankCache.build(_esc50(root), tmp_path / "cache", progress=False)
    assert rebuilt.fingerprint != first.fingerprint
    assert rebuilt.frames[0] != first.frames[0]


def test_random_crops_and_views_follow_the_data_set_options(tmp_path):
    root = write_esc50(tmp_path / "esc", num_classes=2, seconds=1.0)
    dataset = _esc50(root, random_crop=True, num_views=2, seed=3)
    cached = CachedFbankDataset(dataset, FbankCache.build(dataset, tmp_path / "cache", progress=False))
    batch = next(iter(DataLoader(cached, batch_size=3, num_workers=2, collate_fn=collate_clips)))
    assert batch["fbank"].shape == (3, 2, 40, 128) and batch["frames"].shape == (3, 2)
    assert not torch.equal(batch["fbank"][:, 0], batch["fbank"][:, 1])  # two different crops per clip
