"""The built-in data generator: official layouts, splits, determinism, atomic writes, missing tools."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import soundfile as sf
import torch

from asit.audio import load_audio, samples_for_frames
from asit.datasets import builtin

SCALE = 0.1  # 10 classes x 5 ESC clips, 3 speakers x 35 words, 3 x 3 VoxCeleb, 10 + 10 AudioSet


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("builtin")
    return out, builtin.build_builtin(out, seed=0, scale=SCALE)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != builtin.COMPLETE_MARKER}


def _info(path: Path) -> sf._SoundFileInfo:
    return sf.info(str(path))


def test_summary_and_marker(built):
    out, summary = built
    assert builtin.is_complete(out)
    marker = json.loads((out / builtin.COMPLETE_MARKER).read_text())
    assert set(marker["layouts"]) == set(builtin.LAYOUTS) == set(summary["layouts"])
    assert summary["bytes"] == sum(info["bytes"] for info in summary["layouts"].values()) > 0
    assert not list(out.glob(".building-*")) and not list(out.glob(".old-*"))


def test_esc50_layout(built):
    root = built[0] / "esc50"
    with open(root / "meta" / "esc50.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
        rows = list(reader)
    categories = {e.category: e for e in builtin.EVENT_CLASSES}
    assert {r["category"] for r in rows} == set(categories)
    for row in rows:
        fold, src, take, target = re.fullmatch(r"(\d)-(\d+)-([A-Z])-(\d+)\.wav", row["filename"]).groups()
        assert (fold, src, take, target) == (row["fold"], row["src_file"], row["take"], row["target"])
        assert int(target) == categories[row["category"]].esc50_target  # the real ESC-50 index
        assert row["esc10"] == str(categories[row["category"]].esc10)
        info = _info(root / "audio" / row["filename"])
        assert (info.samplerate, info.channels, info.subtype, info.duration) == (16000, 1, "PCM_16", 5.0)
    # every class in every one of the 5 folds, equally often
    per_fold = {(r["fold"], r["category"]) for r in rows}
    assert len(per_fold) == 5 * len(categories) and len(rows) % (5 * len(categories)) == 0
    assert len({r["src_file"] for r in rows}) == len(rows)
    assert sorted(p.name for p in (root / "audio").iterdir()) == sorted(r["filename"] for r in rows)


def test_speech_commands_layout_and_speaker_split(built):
    root = built[0] / "speech_commands"
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    assert words == sorted(builtin.SPEECH_COMMANDS_WORDS) and len(words) == 35
    clips = sorted(str(p.relative_to(root)) for p in root.glob("*/*_nohash_*.wav") if not p.parent.name.startswith("_"))
    speaker_of = {}
    for rel in clips:
        match = re.fullmatch(r"([a-z]+)/([0-9a-f]{8})_nohash_(\d+)\.wav", rel)
        assert match, rel
        speaker_of[rel] = match.group(2)
        info = _info(root / rel)
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 16000)
    validation = (root / "validation_list.txt").read_text().split()
    testing = (root / "testing_list.txt").read_text().split()
    assert validation and testing and set(validation) | set(testing) <= set(clips)
    train = set(clips) - set(validation) - set(testing)
    groups = [{speaker_of[p] for p in split} for split in (train, validation, testing)]
    assert all(groups), "every split has speakers"
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2]), "a speaker in two splits"
    # a held-out speaker's clips are all in its list: all 35 words
    for split in (validation, testing):
        assert len(split) == 35 * len({speaker_of[p] for p in split})
    noises = sorted((root / "_background_noise_").glob("*.wav"))
    assert len(noises) >= 5
    assert all(_info(p).duration >= 3.0 and _info(p).samplerate == 16000 for p in noises)


def test_voxceleb1_layout_and_iden_split(built):
    root = built[0] / "voxceleb1"
    lines = (root / "iden_split.txt").read_text().splitlines()
    splits_of, videos_of = {}, {}
    for line in lines:
        split, rel = re.fullmatch(r"([123]) (id1\d{4}/[\w-]{11}/\d{5}\.wav)", line).groups()
        speaker, video, _ = rel.split("/")
        splits_of.setdefault(speaker, set()).add(split)
        videos_of.setdefault((speaker, split), set()).add(video)
        info = _info(root / "wav" / rel)
        assert info.samplerate == 16000 and info.channels == 1
        assert builtin.VOX_MIN_SECONDS <= info.duration <= builtin.VOX_MAX_SECONDS
    assert len(splits_of) >= 3 and all(s == {"1", "2", "3"} for s in splits_of.values())
    for speaker in splits_of:  # held-out videos: no video feeds two splits
        v1, v2, v3 = (videos_of[(speaker, s)] for s in "123")
        assert not (v1 & v2 or v1 & v3 or v2 & v3)
    on_disk = sorted(str(p.relative_to(root / "wav")) for p in (root / "wav").rglob("*.wav"))
    assert on_disk == sorted(line.split()[1] for line in lines)


def test_audioset_layout(built):
    root = built[0] / "audioset"
    with open(root / "class_labels_indices.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["index", "mid", "display_name"]
        rows = list(reader)
    assert [int(r["index"]) for r in rows] == list(range(len(rows)))
    mids = {r["mid"] for r in rows}
    assert all(re.fullmatch(r"/[mgt]/[\w]+", m) for m in mids)
    for name in ("balanced_train.json", "eval.json"):
        items = json.loads((root / name).read_text())["data"]
        assert items
        seen = set()
        for item in items:
            assert set(item) == {"wav", "labels"}
            labels = item["labels"].split(",")
            assert 1 <= len(labels) <= 3 and set(labels) <= mids and len(set(labels)) == len(labels)
            seen |= set(labels)
            info = _info(root / item["wav"])  # relative to the json's folder
            assert (info.samplerate, info.channels, info.duration) == (16000, 1, builtin.AUDIOSET_SECONDS)
        assert seen == mids, f"{name}: every class occurs"


def test_every_clip_decodes(built):
    wavs = sorted(built[0].rglob("*.wav"))
    assert len(wavs) > 150  # 50 + 105 + 6 + 9 + 20 at SCALE
    for path in wavs:
        wave = load_audio(path)
        assert wave.dim() == 1 and wave.numel() >= 16000 and wave.abs().max() > 0.001, path


def test_same_seed_same_bytes(built, tmp_path):
    out, _ = built
    again = builtin.build_builtin(tmp_path, seed=0, scale=SCALE, workers=1)  # other thread count too
    assert _files(tmp_path) == _files(out)
    assert again["bytes"] == built[1]["bytes"]
    other = builtin.build_builtin(tmp_path / "seed1", seed=1, scale=0.05, only="audioset")
    first = json.loads((out / "audioset" / "eval.json").read_text())
    assert json.loads((tmp_path / "seed1" / "audioset" / "eval.json").read_text()) != first
    assert other["layouts"]["audioset"]["eval_clips"] == len(builtin.EVENT_CLASSES)  # the minimum


def test_missing_espeak_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(builtin.MissingToolError, match="apt-get install espeak-ng") as err:
        builtin.build_builtin(tmp_path / "out", scale=0.05, only=["esc50", "voxceleb1"])
    assert "brew install espeak-ng" in str(err.value)
    assert not (tmp_path / "out").exists(), "checked before anything is written"
    assert builtin.main(["--out", str(tmp_path / "cli"), "--only", "speech_commands"]) == 2
    assert "apt-get install espeak-ng" in capsys.readouterr().err
    # the event data sets need no system tool
    summary = builtin.build_builtin(tmp_path / "events", scale=0.05, only="esc50,audioset")
    assert set(summary["layouts"]) == {"esc50", "audioset"}
    assert not builtin.is_complete(tmp_path / "events"), "only complete when every data set is there"


def test_interrupted_build_never_looks_complete(built, tmp_path, monkeypatch):
    out = tmp_path / "data"
    builtin.build_builtin(out, scale=0.05, only="esc50,audioset")
    for name in ("speech_commands", "voxceleb1", "unlabelled"):  # borrow the rest: a complete folder
        (out / name).symlink_to(built[0] / name, target_is_directory=True)
    builtin.build_builtin(out, scale=0.05, only="esc50")
    assert builtin.is_complete(out)
    before = _files(out / "audioset")

    def crash(root, *args):
        (root / "half-written.wav").write_bytes(b"RIFF")
        raise KeyboardInterrupt

    monkeypatch.setitem(builtin._BUILDERS, "audioset", crash)
    with pytest.raises(KeyboardInterrupt):
        builtin.build_builtin(out, scale=0.05, only="audioset")
    assert not builtin.is_complete(out)
    assert _files(out / "audioset") == before, "the previous copy is untouched"
    monkeypatch.undo()
    builtin.build_builtin(out, scale=0.05, only="audioset")
    assert builtin.is_complete(out) and not list(out.glob(".building-*"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown built-in data set"):
        builtin.build_builtin("/nonexistent", only="esc500")
    with pytest.raises(ValueError, match="scale"):
        builtin.build_builtin("/nonexistent", scale=0)


@pytest.mark.parametrize(
    "name, folder, splits, options",
    [
        ("esc50", "esc50", ("train", "val", "test"), {"fold": 1}),
        ("speech_commands_v2", "speech_commands", ("train", "val", "test"), {}),
        ("speech_commands_v1", "speech_commands", ("train", "val", "test"), {}),
        ("voxceleb1", "voxceleb1", ("train", "val", "test"), {}),
        ("audioset", "audioset", ("train", "eval"), {}),
    ],
)
def test_loaders_read_the_builtin_layout(built, name, folder, splits, options):
    """The loaders written for the real data sets read the built-in copies unchanged."""
    from asit.datasets import get_dataset

    for split in splits:
        data = get_dataset(name, split, built[0] / folder, num_frames=100, **options)
        assert len(data) > 0 and not data.skipped, (name, split)
        item = data[len(data) - 1]
        assert item["wave"].dtype == torch.float32 and item["wave"].shape == (samples_for_frames(100, 16000),)
        if data.multilabel:
            assert item["target"].shape == (data.num_classes,) and item["target"].sum() >= 1
        else:
            assert 0 <= int(item["target"]) < data.num_classes
    if name == "speech_commands_v2":
        assert data.num_classes == 35
    if name == "audioset":
        assert data.num_classes == len(builtin.EVENT_CLASSES)
    if name == "esc50":
        assert sorted(data.classes) == sorted(e.category for e in builtin.EVENT_CLASSES)


def test_voxceleb1_splits_have_the_sizes_the_constants_give(tmp_path):
    """Each speaker has VOX_UTTERANCES (train, val, test) utterances, scaled, with the training ones
    spread evenly over VOX_TRAIN_VIDEOS videos (channels), so that no channel stands for a speaker."""
    scale = 0.5
    builtin.build_builtin(tmp_path, seed=0, scale=scale, only="voxceleb1")
    counts: dict[str, list[int]] = {}
    train_videos: dict[str, dict[str, int]] = {}
    for line in (tmp_path / "voxceleb1" / "iden_split.txt").read_text().splitlines():
        split, rel = line.split()
        speaker, video, _ = rel.split("/")
        counts.setdefault(speaker, [0, 0, 0])[int(split) - 1] += 1
        if split == "1":
            videos = train_videos.setdefault(speaker, {})
            videos[video] = videos.get(video, 0) + 1
    expected = [max(1, round(n * scale)) for n in builtin.VOX_UTTERANCES]
    assert len(counts) == round(builtin.VOX_SPEAKERS * scale)
    assert all(c == expected for c in counts.values()), counts
    n_videos = min(builtin.VOX_TRAIN_VIDEOS, expected[0])
    assert n_videos > 1 and expected[2] > expected[1]  # several training channels; a test split larger than validation
    for speaker, videos in train_videos.items():
        assert len(videos) == n_videos, (speaker, videos)
        assert max(videos.values()) - min(videos.values()) <= 1, (speaker, videos)


def test_unlabelled_pool_layout_and_disjoint_from_the_labelled_sets(built):
    from asit.datasets import get_dataset

    out = built[0]
    root = out / "unlabelled"
    events, speech = sorted((root / "events").glob("*.wav")), sorted((root / "speech").glob("*.wav"))
    assert len(events) == builtin._scaled(builtin.UNLABELLED_EVENT_CLIPS, SCALE, 2)
    assert len(speech) == builtin._scaled(builtin.UNLABELLED_SPEECH_CLIPS, SCALE, 2)
    assert {_info(p).duration for p in events} == {builtin.AUDIOSET_SECONDS}
    assert {_info(p).duration for p in speech} == {builtin.SPEECH_SECONDS}
    labelled = {p.read_bytes() for name in builtin.LAYOUTS if name != "unlabelled" for p in (out / name).rglob("*.wav")}
    assert not labelled & {p.read_bytes() for p in events + speech}  # no labelled clip is in the pool
    pool = get_dataset("folder", "all", data_root=root)
    assert len(pool) == len(events) + len(speech) and set(pool.targets) == {-1}
