"""Data set loaders on tiny fixtures in each publisher's layout (tests/layouts.py): splits, labels,
protocols, layout errors, crops that line up with the reference fbank, and bad files skipped,
named and counted (also from DataLoader workers)."""

from __future__ import annotations

import json
import logging
import os
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from asit import audio
from asit.audio import DATASET_STATS, hop_length, kaldi_fbank, load_audio, pad_or_crop, prepare_wave, samples_for_frames
from asit.datasets import (
    DATASET_NAMES,
    AudioDataset,
    DatasetLayoutError,
    NoUsableAudioError,
    SkipLog,
    builtin_root,
    collate_clips,
    compute_dataset_stats,
    get_dataset,
    pretraining_pool,
)
from asit.datasets.speech_commands import COMMAND_WORDS, KS1_CLASSES, NOISE_FOLDER, WORDS_V1, WORDS_V2
from asit.features import FbankFrontend
from layouts import (
    audioset_labels,
    write_audioset,
    write_bad_files,
    write_esc50,
    write_speech_commands,
    write_voxceleb1,
    write_wav,
)

SR = 16000
HOP = hop_length(SR)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Every layout once, under one parent named like the built-in copy (for the pool)."""
    parent = tmp_path_factory.mktemp("data")
    return {
        "parent": parent,
        "esc50": write_esc50(parent / "esc50"),
        "sc2": write_speech_commands(parent / "speech_commands", 2, seconds=0.3),
        "sc1": write_speech_commands(tmp_path_factory.mktemp("sc1"), 1, seconds=0.3),
        "vox": write_voxceleb1(parent / "voxceleb1"),
        "audioset": write_audioset(parent / "audioset"),
    }


def names_of(dataset: AudioDataset) -> list[str]:
    return [os.path.basename(p) for p in dataset.paths]


# ---- ESC-50 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fold", [1, 3, 5])
def test_esc50_folds_give_disjoint_splits_with_a_validation_fold(roots, fold):
    splits = {s: get_dataset("esc50", s, roots["esc50"], fold=fold) for s in ("train", "val", "trainval", "test", "all")}
    val_fold = fold % 5 + 1
    assert {n.split("-")[0] for n in names_of(splits["test"])} == {str(fold)}
    assert {n.split("-")[0] for n in names_of(splits["val"])} == {str(val_fold)}
    assert {int(n.split("-")[0]) for n in names_of(splits["train"])} == set(range(1, 6)) - {fold, val_fold}
    assert [len(splits[s]) for s in ("train", "val", "test", "trainval", "all")] == [9, 3, 3, 12, 15]
    assert sorted(splits["train"].paths + splits["val"].paths) == sorted(splits["trainval"].paths)
    assert sorted(splits["trainval"].paths + splits["test"].paths) == sorted(splits["all"].paths)
    everything = splits["all"]
    assert everything.classes == ["class_0", "class_1", "class_2"] and everything.num_classes == 3
    assert [int(n[:-4].split("-")[-1]) for n in names_of(everything)] == everything.targets
    assert everything.stats == DATASET_STATS["esc50"] and not everything.multilabel


def test_esc50_subset_of_categories_is_renumbered(tmp_path):
    root = write_esc50(tmp_path / "esc50", folds=2)
    meta = root / "meta" / "esc50.csv"
    official = {"0": ("5", "cat"), "1": ("17", "pouring_water"), "2": ("40", "helicopter")}
    lines = meta.read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    for row in rows:
        row[2], row[3] = official[row[2]]
    meta.write_text("\n".join([lines[0]] + [",".join(row) for row in rows]) + "\n")
    ds = get_dataset("esc50", "all", root, fold=1, val_fold=2)
    assert ds.classes == ["cat", "pouring_water", "helicopter"] and sorted(set(ds.targets)) == [0, 1, 2]


def test_esc50_rejects_unknown_folds(roots):
    with pytest.raises(ValueError, match="fold=6"):
        get_dataset("esc50", "test", roots["esc50"], fold=6)
    with pytest.raises(ValueError, match="val_fold"):
        get_dataset("esc50", "val", roots["esc50"], fold=2, val_fold=2)
    with pytest.raises(ValueError, match="no split 'dev'"):
        get_dataset("esc50", "dev", roots["esc50"])


# ---- Speech Commands ----------------------------------------------------------------------------


def test_speech_commands_v2_is_ks2_with_the_official_lists(roots):
    root = roots["sc2"]
    val_list = set((root / "validation_list.txt").read_text().split())
    test_list = set((root / "testing_list.txt").read_text().split())
    rel = lambda ds: {"/".join(p.split("/")[-2:]) for p in ds.paths}  # noqa: E731
    train, val, test = (get_dataset("speech_commands_v2", s, root) for s in ("train", "val", "test"))
    assert train.protocol == "ks2" and train.classes == sorted(WORDS_V2) and train.num_classes == 35
    assert rel(val) == val_list and rel(test) == test_list
    assert not rel(train) & (val_list | test_list) and len(train) == 35  # one training speaker x 35 words
    assert all(train.classes[t] == p.split("/")[-2] for p, t in zip(train.paths, train.targets))
    assert train.stats == DATASET_STATS["speech_commands_v2"]


def test_speech_commands_v1_is_ks1_with_unknown_and_silence(roots):
    root = roots["sc1"]
    train = get_dataset("speech_commands_v1", "train", root)
    assert train.protocol == "ks1" and tuple(train.classes) == KS1_CLASSES and train.num_classes == 12
    words = [p.split("/")[-2] for p in train.paths]
    for word, target in zip(words, train.targets):
        if word in COMMAND_WORDS:
            assert train.classes[target] == word
        elif word == NOISE_FOLDER:
            assert train.classes[target] == "_silence_"
        else:
            assert word in WORDS_V1 and train.classes[target] == "_unknown_"
    counts = np.bincount(train.targets, minlength=12)
    assert counts[:10].tolist() == [1] * 10 and counts[10] == 20 and counts[11] == 3  # 10 % of 30 word clips
    # Silence: 1 s cuts of the noise files, each split from its own part of every file.
    noise = {p: sf.info(p).duration for p in map(str, (root / NOISE_FOLDER).glob("*.wav"))}
    parts = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}
    for split, (low, high) in parts.items():
        ds = get_dataset("speech_commands_v1", split, root)
        assert ds.segments and set(ds.segments) == {i for i, t in enumerate(ds.targets) if t == 11}
        for i, (offset, length) in ds.segments.items():
            duration = noise[ds.paths[i]]
            assert low * duration - 1e-3 <= offset and offset + length <= high * duration + 1e-3
        assert get_dataset("speech_commands_v1", split, root).segments == ds.segments  # deterministic
    i, (offset, length) = next(iter(train.segments.items()))
    whole = load_audio(train.paths[i], SR)
    expected = prepare_wave(whole[round(offset * SR) : round(offset * SR) + round(length * SR)])
    item = train[i]
    assert item["target"].item() == 11 and item["length"] == round(length * SR) == 16000
    torch.testing.assert_close(item["wave"], expected)


def test_speech_commands_protocol_option_and_the_shared_builtin_folder(roots):
    assert get_dataset("speech_commands_v1", "test", roots["sc1"], protocol="ks2").num_classes == 30
    # The built-in copy is one 35-word folder that both names read: V1's KS1 counts the five
    # V2-only words as unknown.
    ks1 = get_dataset("speech_commands_v1", "test", roots["sc2"])
    assert ks1.num_classes == 12 and np.bincount(ks1.targets)[10] == 25
    assert get_dataset("speech_commands_v2", "test", roots["sc2"], protocol="ks1").num_classes == 12
    with pytest.raises(ValueError, match="protocol"):
        get_dataset("speech_commands_v2", "test", roots["sc2"], protocol="ks3")


def test_speech_commands_ks1_needs_the_background_noise(tmp_path):
    root = write_speech_commands(tmp_path / "sc", 2, words=COMMAND_WORDS + ("bed",), seconds=0.1, noise_files=0)
    assert get_dataset("speech_commands_v2", "train", root).num_classes == 11  # KS2 does not need it
    with pytest.raises(DatasetLayoutError, match=NOISE_FOLDER):
        get_dataset("speech_commands_v1", "train", root)


# ---- VoxCeleb1 ----------------------------------------------------------------------------------


def test_voxceleb1_identification_split(roots):
    splits = {s: get_dataset("voxceleb1", s, roots["vox"]) for s in ("train", "val", "test", "all")}
    assert [len(splits[s]) for s in ("train", "val", "test", "all")] == [3, 3, 3, 9]
    speakers = ["id10001", "id10002", "id10003"]
    for ds in splits.values():
        assert ds.classes == speakers
        assert all(speakers[t] == p.split("/")[-3] for p, t in zip(ds.paths, ds.targets))
    assert all(p.split("/")[-2].endswith("02xyzAB") for p in splits["test"].paths)  # the last video of each speaker


# ---- AudioSet -----------------------------------------------------------------------------------


def test_audioset_multi_hot_targets_and_splits(roots, tmp_path):
    root = roots["audioset"]
    train = get_dataset("audioset", "train", root)
    assert train.multilabel and train.num_classes == 4 and train.classes[2] == "Sound 2"
    assert [len(get_dataset("audioset", s, root)) for s in ("train", "train_full", "eval")] == [6, 9, 4]
    for i in range(len(train)):
        target = train[i]["target"]
        assert target.dtype == torch.float32 and target.shape == (4,)
        assert target.nonzero().flatten().tolist() == sorted(audioset_labels(i, 4))
    assert train.stats == DATASET_STATS["audioset"]
    # A manifest with absolute paths, named by manifest=
    other = write_audioset(tmp_path / "abs", train_clips=2, eval_clips=1, full_clips=0, absolute_paths=True)
    (root / "mine.json").write_text((other / "balanced_train.json").read_text())
    mine = get_dataset("audioset", "mine", root, manifest="mine.json")
    assert len(mine) == 2 and all(p.startswith(str(other)) for p in mine.paths)


def test_audioset_sample_weights_follow_ast(roots):
    full = get_dataset("audioset", "train_full", roots["audioset"])
    labels = [audioset_labels(i, 4) for i in range(9)]
    per_class = np.bincount(np.concatenate(labels), minlength=4)
    expected = [sum(1.0 / per_class[c] for c in clip) for clip in labels]
    np.testing.assert_allclose(full.sample_weights().numpy(), expected)
    # Single-label: inverse class frequency, so every class is drawn equally often.
    ks1 = get_dataset("speech_commands_v1", "train", roots["sc1"])
    totals = np.bincount(ks1.targets, weights=ks1.sample_weights().numpy())
    np.testing.assert_allclose(totals, 1.0)


def test_audioset_layout_problems(tmp_path):
    root = write_audioset(tmp_path / "as", full_clips=0)
    with pytest.raises(DatasetLayoutError, match="unbalanced_train.json"):
        get_dataset("audioset", "train_full", root)
    (root / "bad.json").write_text(json.dumps({"data": [{"wav": "audio/x.wav", "labels": "/m/nothere"}]}))
    with pytest.raises(DatasetLayoutError, match="/m/nothere"):
        get_dataset("audioset", "bad", root, manifest="bad.json")
    # A scraped copy always lacks a few clips: missing files are skipped and counted.
    (root / "audio" / "Ytr0001_0.000.wav").unlink()
    train = get_dataset("audioset", "train", root)
    assert len(train) == 5 and train.skipped.counts == {"missing": 1}


# ---- layouts and errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("esc50", "audio"),
        ("speech_commands_v2", "validation_list.txt"),
        ("voxceleb1", "iden_split.txt"),
        ("audioset", "class_labels_indices.csv"),
    ],
)
def test_wrong_layout_says_what_was_expected_where(tmp_path, name, expected):
    (tmp_path / "stray.txt").write_text("not a data set")
    with pytest.raises(DatasetLayoutError) as err:
        get_dataset(name, "train", tmp_path)
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert str(tmp_path / expected) in message and "stray.txt" in message and "data/README.md" in message
    if name in ("esc50", "speech_commands_v2"):
        assert f"python -m asit.datasets.download {name}" in message


def test_pointing_at_the_parent_folder_names_the_right_one(roots):
    with pytest.raises(DatasetLayoutError, match="did you mean data_root=.*esc50"):
        get_dataset("esc50", "train", roots["parent"])


def test_incomplete_download_is_a_layout_error(tmp_path):
    root = write_esc50(tmp_path / "esc50", num_classes=1)
    (root / "audio" / "3-103000-A-0.wav").unlink()
    with pytest.raises(DatasetLayoutError, match="1 of them missing.*3-103000-A-0.wav"):
        get_dataset("esc50", "all", root)


def test_missing_builtin_data_says_make_data(tmp_path, monkeypatch):
    monkeypatch.setenv("ASIT_DATA_DIR", str(tmp_path))
    assert builtin_root("speech_commands_v1") == builtin_root("speech_commands_v2") == tmp_path / "builtin" / "speech_commands"
    with pytest.raises(DatasetLayoutError, match="make data"):
        get_dataset("esc50", "train")
    with pytest.raises(ValueError, match="unknown data set"):
        get_dataset("esc-50", "train")
    assert set(DATASET_NAMES) == {"esc50", "speech_commands_v1", "speech_commands_v2", "voxceleb1", "audioset", "folder"}


# ---- crops, views, randomness -------------------------------------------------------------------


def find_offset(whole: torch.Tensor, crop: torch.Tensor) -> list[int]:
    """Every start at which ``crop`` occurs in ``whole`` (circularly)."""
    doubled = torch.cat([whole, whole])
    windows = doubled.unfold(0, crop.numel(), 1)[: whole.numel()]
    return (windows == crop).all(dim=1).nonzero().flatten().tolist()


def test_random_crops_line_up_with_the_reference_fbank(roots):
    num_frames = 20
    ds = get_dataset("esc50", "all", roots["esc50"], num_frames=num_frames, random_crop=True, seed=0)
    frontend = FbankFrontend(num_frames, stats=None)
    starts = set()
    for i in (0, 4, 7):
        whole = prepare_wave(load_audio(ds.paths[i], SR))  # the reference: whole clip, mean removed
        reference = kaldi_fbank(whole, SR)
        for _ in range(3):
            item = ds[i]
            assert item["wave"].shape == (samples_for_frames(num_frames, SR),) and item["length"] == item["wave"].numel()
            (start,) = find_offset(whole, item["wave"])
            assert start % HOP == 0
            starts.add(start)
            ours = frontend(item["wave"][None], torch.tensor([item["length"]]))[0, 0]
            torch.testing.assert_close(ours, reference[start // HOP : start // HOP + num_frames], atol=1e-3, rtol=1e-4)
    assert len(starts) > 1  # the crops do move
    evaluation = get_dataset("esc50", "all", roots["esc50"], num_frames=num_frames)
    assert find_offset(prepare_wave(load_audio(evaluation.paths[0], SR)), evaluation[0]["wave"])[0] == 0


def test_short_clips_are_zero_padded_like_the_reference(roots):
    num_frames = 64  # 0.5 s clips have 48 frames
    ds = get_dataset("esc50", "all", roots["esc50"], num_frames=num_frames, random_crop=True)
    item = ds[2]
    whole = prepare_wave(load_audio(ds.paths[2], SR))
    assert item["length"] == whole.numel() == 8000 and item["wave"][8000:].abs().sum() == 0
    ours = FbankFrontend(num_frames, stats=None)(item["wave"][None], torch.tensor([item["length"]]))[0, 0]
    torch.testing.assert_close(ours, pad_or_crop(kaldi_fbank(whole, SR), num_frames), atol=1e-3, rtol=1e-4)


def test_views_are_independent_rolled_crops_and_seeds_repeat(roots):
    options = dict(num_frames=20, random_crop=True, roll_prob=1.0, num_views=4)
    ds = get_dataset("voxceleb1", "train", roots["vox"], seed=7, **options)
    item = ds[1]
    assert item["wave"].shape == (4, samples_for_frames(20, SR)) and item["length"].tolist() == [item["wave"].shape[1]] * 4
    whole = prepare_wave(load_audio(ds.paths[1], SR))
    offsets = [find_offset(whole, view) for view in item["wave"]]
    assert all(len(o) == 1 and o[0] % HOP == 0 for o in offsets)  # a circular slice on the hop grid
    assert len({o[0] for o in offsets}) > 1
    again = get_dataset("voxceleb1", "train", roots["vox"], seed=7, **options)[1]
    other = get_dataset("voxceleb1", "train", roots["vox"], seed=8, **options)[1]
    assert torch.equal(item["wave"], again["wave"]) and not torch.equal(item["wave"], other["wave"])


def test_whole_clips_of_different_lengths_collate_padded(tmp_path):
    for k, seconds in enumerate((0.2, 0.5, 0.3)):
        write_wav(tmp_path / f"c{k}.wav", seconds, SR, seed=k)
    ds = get_dataset("folder", "all", tmp_path)
    batch = collate_clips([ds[i] for i in range(3)])
    assert batch["wave"].shape == (3, 8000) and batch["length"].tolist() == [3200, 8000, 4800]
    assert batch["wave"][0, 3200:].abs().sum() == 0 and batch["target"].tolist() == [-1, -1, -1]
    assert batch["index"].tolist() == [0, 1, 2] and batch["skipped"] == []
    views = get_dataset("folder", "all", tmp_path, num_frames=10, num_views=2)
    assert collate_clips([views[0], views[1]])["wave"].shape == (2, 2, samples_for_frames(10, SR))


# ---- bad files ----------------------------------------------------------------------------------


def good_and_bad(folder):
    for k in range(3):
        write_wav(folder / f"good_{k}.wav", 0.3, SR, seed=k)
    return write_bad_files(folder)


def test_bad_files_are_dropped_at_construction_named_and_counted(tmp_path, caplog):
    bad = good_and_bad(tmp_path)
    with caplog.at_level(logging.WARNING, logger="asit.data"):
        ds = get_dataset("folder", "all", tmp_path, max_seconds=2.0)
    header_kinds = {"empty", "truncated", "not audio", "too short", "too long"}
    assert ds.skipped.counts == {kind: 1 for kind in header_kinds}
    assert {p for p, _ in ds.skipped} == {str(bad[k]) for k in header_kinds}
    assert all(str(bad[k]) in caplog.text for k in header_kinds)
    assert len(ds) == 4  # 3 good + the NaN file, which only decoding reveals
    assert ds.skipped.summary().startswith("skipped 5 files:") and "1 truncated" in ds.skipped.summary()


def test_a_file_bad_only_when_decoded_is_replaced_by_the_next_good_one(tmp_path):
    bad = good_and_bad(tmp_path)
    ds = get_dataset("folder", "all", tmp_path, max_seconds=2.0)
    nan = ds.paths.index(str(bad["NaN/inf samples"]))
    item = ds[nan]
    assert item["index"] == (nan + 1) % len(ds) and torch.isfinite(item["wave"]).all()
    assert [p for p, _ in item["skipped"]] == [str(bad["NaN/inf samples"])] and "NaN" in item["skipped"][0][1]
    assert ds[nan]["skipped"] == [] and ds.skipped.counts["NaN/inf samples"] == 1  # found once, remembered


def test_without_the_header_check_every_kind_is_caught_when_decoding(tmp_path):
    bad = good_and_bad(tmp_path)
    ds = get_dataset("folder", "all", tmp_path, max_seconds=2.0, check_files=False)
    assert len(ds) == 9
    found = SkipLog()
    served = [ds[i] for i in range(len(ds))]
    for item in served:
        found.extend(item["skipped"])
    assert {os.path.basename(ds.paths[item["index"]]) for item in served} == {"good_0.wav", "good_1.wav", "good_2.wav"}
    assert {p for p, _ in found} == {str(p) for p in bad.values()} and len(found.counts) == 6


def test_unreadable_files_are_skipped(tmp_path, monkeypatch):
    write_wav(tmp_path / "good.wav", 0.3, SR)
    locked = write_wav(tmp_path / "locked.wav", 0.3, SR)
    if os.geteuid() == 0:
        # chmod 000 does not stop root: simulate the permission error the OS would raise.
        real_open = open

        def refusing_open(path, *args, **kwargs):
            if str(path) == str(locked):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(audio, "open", refusing_open, raising=False)
    else:
        locked.chmod(0)
    try:
        ds = get_dataset("folder", "all", tmp_path)
    finally:
        locked.chmod(0o644)
    assert len(ds) == 1 and ds.skipped.counts == {"unreadable": 1} and str(locked) in ds.skipped.records[0][0]


def test_all_bad_is_a_clear_error(tmp_path):
    bad = write_bad_files(tmp_path / "bad")
    nan_only = tmp_path / "nan_only"
    nan_only.mkdir()
    bad.pop("NaN/inf samples").rename(nan_only / "nan.wav")
    with pytest.raises(NoUsableAudioError, match="every one of its 5 clips"):
        get_dataset("folder", "all", tmp_path / "bad", max_seconds=2.0)
    ds = get_dataset("folder", "all", nan_only)  # passes the header check ...
    with pytest.raises(NoUsableAudioError, match="no clip could be decoded"):
        ds[0]  # ... but not decoding


def test_dataloader_workers_carry_their_skips(tmp_path):
    bad = good_and_bad(tmp_path)
    ds = get_dataset("folder", "all", tmp_path, max_seconds=2.0, num_frames=10)
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_clips)
    total = SkipLog()
    seen = 0
    for batch in loader:
        assert batch["wave"].shape[1:] == (samples_for_frames(10, SR),) and torch.isfinite(batch["wave"]).all()
        total.extend(batch["skipped"])
        seen += len(batch["index"])
    assert seen == len(ds) and str(bad["NaN/inf samples"]) not in ds.skipped  # found in a worker ...
    assert [p for p, _ in total] == [str(bad["NaN/inf samples"])]  # ... and carried back by the batch


def test_worker_crops_differ_per_epoch_and_repeat_with_the_loader_seed(roots):
    ds = get_dataset("voxceleb1", "all", roots["vox"], num_frames=5, random_crop=True)

    def epochs(seed, count=2):
        loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_clips,
                            generator=torch.Generator().manual_seed(seed))
        return [torch.cat([batch["wave"] for batch in loader]) for _ in range(count)]

    first, second = epochs(0)
    assert not torch.equal(first, second)  # new crops every epoch
    assert torch.equal(epochs(0, count=1)[0], first)  # the same again from the same seed


# ---- statistics ---------------------------------------------------------------------------------


def test_computed_stats_are_cached_next_to_the_data(roots, monkeypatch):
    root = roots["vox"]
    (root / ".asit_norm_stats.json").unlink(missing_ok=True)
    test = get_dataset("voxceleb1", "test", root)
    stats = test.stats
    expected = compute_dataset_stats(get_dataset("voxceleb1", "train", root))  # over the training split
    assert stats.mean == pytest.approx(expected.mean) and stats.std == pytest.approx(expected.std)
    cached = json.loads((root / ".asit_norm_stats.json").read_text())["voxceleb1@16000"]
    assert cached["mean"] == pytest.approx(stats.mean)
    monkeypatch.setattr("asit.datasets.base.compute_dataset_stats", lambda *a, **k: pytest.fail("not read from the cache"))
    assert get_dataset("voxceleb1", "val", root).stats == stats


def test_stats_work_when_the_cache_cannot_be_written(tmp_path):
    root = write_voxceleb1(tmp_path / "vox", speakers=1)
    (root / ".asit_norm_stats.json").mkdir()  # the cache path cannot be written as a file
    stats = get_dataset("voxceleb1", "train", root).stats
    assert np.isfinite(stats.mean) and stats.std > 0
    assert sorted(p.name for p in root.iterdir()) == [".asit_norm_stats.json", "iden_split.txt", "wav"]


# ---- unlabelled data ----------------------------------------------------------------------------


def test_folder_reads_any_audio_recursively(tmp_path):
    write_wav(tmp_path / "a.wav", 0.1, SR)
    (tmp_path / "deep" / "er").mkdir(parents=True)
    sf.write(tmp_path / "deep" / "er" / "b.flac", np.full(1600, 0.1, np.float32), SR)
    sf.write(tmp_path / "c.ogg", np.random.default_rng(0).standard_normal(4000).astype(np.float32) * 0.1, SR)
    write_wav(tmp_path / ".hidden" / "d.wav", 0.1, SR)
    (tmp_path / "notes.txt").write_text("not audio")
    ds = get_dataset("folder", "all", tmp_path)
    assert [os.path.relpath(p, tmp_path) for p in ds.paths] == ["a.wav", "c.ogg", "deep/er/b.flac"]
    assert ds.classes == [] and ds[2]["target"].item() == -1 and ds[2]["target"].dtype == torch.int64
    with pytest.raises(ValueError, match="data_root"):
        get_dataset("folder", "all")


def test_pretraining_pool_holds_training_splits_only(roots, monkeypatch, tmp_path):
    monkeypatch.setenv("ASIT_DATA_DIR", str(tmp_path))  # data_root=None: the built-in copies, here links
    (tmp_path / "builtin").mkdir()
    for folder in ("esc50", "speech_commands", "voxceleb1", "audioset"):
        (tmp_path / "builtin" / folder).symlink_to(roots["parent"] / folder)
    pool = pretraining_pool(num_frames=10, random_crop=True)
    train_sizes = [len(get_dataset(n, "train", roots["parent"] / f)) for n, f in
                   [("esc50", "esc50"), ("speech_commands_v2", "speech_commands"), ("voxceleb1", "voxceleb1"), ("audioset", "audioset")]]
    assert len(pool) == sum(train_sizes) == 9 + 35 + 3 + 6
    held_out = set(get_dataset("esc50", "test", roots["esc50"]).paths) | set(get_dataset("esc50", "val", roots["esc50"]).paths)
    for name in ("speech_commands_v2", "voxceleb1"):
        held_out |= set(get_dataset(name, "test", roots["parent"] / ("speech_commands" if "speech" in name else "voxceleb1")).paths)
    held_out |= set(get_dataset("audioset", "eval", roots["audioset"]).paths)
    assert not {os.path.realpath(p) for p in pool.paths} & {os.path.realpath(p) for p in held_out}
    assert set(pool.targets) == {-1} and pool[0]["wave"].shape == (samples_for_frames(10, SR),)
    same = pretraining_pool(("voxceleb1",), {"voxceleb1": roots["vox"]})
    assert len(same) == 3 and same.name == "pool:voxceleb1"


def test_importing_the_package_does_not_import_the_builtin_generator(monkeypatch):
    import importlib

    import asit

    # A fresh import in this process (a subprocess would spend seconds importing torch); the
    # modules as they were come back when the test ends.
    for name in [m for m in sys.modules if m.startswith("asit.datasets")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(asit, "datasets", None, raising=False)
    importlib.import_module("asit.datasets")
    assert "asit.datasets.builtin" not in sys.modules


@pytest.mark.parametrize("name", ["esc50", "audioset"])
def test_builtin_copies_compute_statistics_over_their_training_split(tmp_path, monkeypatch, name):
    """The published statistics describe the real recordings; the synthetic built-in copy gets its
    own, computed over training clips only, and cached beside it."""
    from asit.datasets import compute_dataset_stats

    monkeypatch.setenv("ASIT_DATA_DIR", str(tmp_path / "data"))
    builtin = tmp_path / "data" / "builtin" / name
    real = tmp_path / "real" / name
    for root in (builtin, real):
        if name == "esc50":
            write_esc50(root, num_classes=2, clips_per_fold=1, seconds=0.3)
        else:
            write_audioset(root, num_classes=3, train_clips=4, eval_clips=3, seconds=0.3)
    test_split, train_split = ("test", "trainval") if name == "esc50" else ("eval", "train")
    test = get_dataset(name, test_split)  # data_root=None: the built-in copy
    assert test.is_builtin and not get_dataset(name, test_split, real).is_builtin
    assert get_dataset(name, test_split, real).stats == DATASET_STATS[name]  # real data: published
    expected = compute_dataset_stats(get_dataset(name, train_split))
    assert test.stats != DATASET_STATS[name]
    assert test.stats.mean == pytest.approx(expected.mean) and test.stats.std == pytest.approx(expected.std)
    assert test.stats != compute_dataset_stats(test)  # not the test clips' own
    assert (builtin / ".asit_norm_stats.json").is_file()
