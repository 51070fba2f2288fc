"""Bad inputs, one test per class of fault: every kind of bad file in a folder set and in an
ESC-50-layout set (skipped, named and counted; evaluation scores each good clip once), malformed
metadata (a one-line error naming the file and line), non-UTF-8 names, absurd samples.

The fixtures are written here at run time (tests/layouts.py), a few half-second clips each."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from asit import audio
from asit.audio import AudioError, check_fbank, display_path, load_audio
from asit.datasets import MetadataError, collate_clips, compute_dataset_stats, get_dataset
from asit.datasets.base import good_rows
from asit.fbank_cache import CachedFbankDataset, FbankCache
from layouts import (
    NON_UTF8_NAME,
    write_audioset,
    write_bad_inputs,
    write_esc50,
    write_speech_commands,
    write_voxceleb1,
    write_wav,
    write_wav_any_name,
)

HEADER_KINDS = {"empty", "truncated", "not audio", "too short", "too long", "not a file", "broken link"}
DECODE_KINDS = {"NaN/inf samples", "absurd samples"}


def printable(text: str) -> bool:
    """Would strict UTF-8 output (a log file, a pipe) take this text?"""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---- the folder set ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    """Three good clips (one with a non-UTF-8 name) and one file of every bad kind."""
    root = tmp_path_factory.mktemp("folder")
    for k in range(2):
        write_wav(root / f"good_{k}.wav", seed=k)
    write_wav_any_name(root / "sub" / NON_UTF8_NAME, seed=7)
    return root, write_bad_inputs(root / "bad")


def test_a_folder_set_names_and_counts_every_bad_file_and_scores_each_good_one_once(bad_folder):
    root, bad = bad_folder
    data = get_dataset("folder", "all", root, max_seconds=2.0, replace_bad=False)
    assert dict(data.skipped.counts) == {kind: 1 for kind in HEADER_KINDS}  # found from the headers
    assert {path for path, _ in data.skipped} == {str(bad[kind]) for kind in HEADER_KINDS}
    loader = DataLoader(data, batch_size=4, collate_fn=collate_clips)
    valid, indices, found = [], [], []
    for batch in loader:
        kept = good_rows(batch)
        assert kept["valid"].all() and len(kept["wave"]) == len(kept["index"]) == int(batch["valid"].sum())
        valid += batch["valid"].tolist()
        indices += batch["index"].tolist()
        found += batch["skipped"]
    assert sorted(indices) == list(range(len(data)))  # every clip served once, none in another's place
    good = {os.path.basename(data.paths[i]) for i, ok in zip(indices, valid) if ok}
    assert good == {"good_0.wav", "good_1.wav", NON_UTF8_NAME}
    assert {path for path, _ in found} == {str(bad[kind]) for kind in DECODE_KINDS}
    assert dict(data.skipped.counts) == {kind: 1 for kind in HEADER_KINDS | DECODE_KINDS}
    assert printable(data.skipped.summary())


def test_training_replaces_a_bad_clip_by_the_next_good_one_and_reports_it(bad_folder):
    root, bad = bad_folder
    data = get_dataset("folder", "all", root / "bad", max_seconds=2.0)  # only the two decode-time bad files
    assert len(data) == 2
    with pytest.raises(Exception, match="no clip could be decoded"):
        data[0]
    assert {path for path, _ in data.skipped} >= {str(bad[kind]) for kind in DECODE_KINDS}


# ---- the ESC-50 layout with bad clips and bad rows ---------------------------------------------


def write_esc50_with_bad_clips(root):
    """A 3-class, 5-fold ESC-50 (two clips per class and fold) with three bad fold-1 clips (NaN, absurd, empty) and one fold-2 clip
    has a non-UTF-8 name (its csv row in Latin-1)."""
    write_esc50(root, clips_per_fold=2)
    bad = write_bad_inputs(root / "bad")
    names = sorted(p.name for p in (root / "audio").glob("1-*.wav"))
    for name, kind in zip(names, ("NaN/inf samples", "absurd samples", "empty")):
        (root / "audio" / name).write_bytes(bad[kind].read_bytes())
    renamed = sorted(p.name for p in (root / "audio").glob("2-*.wav"))[0]
    os.replace(root / "audio" / renamed, root / "audio" / NON_UTF8_NAME)
    meta = (root / "meta" / "esc50.csv").read_bytes().replace(renamed.encode(), os.fsencode(NON_UTF8_NAME))
    (root / "meta" / "esc50.csv").write_bytes(meta)
    return root, names


@pytest.fixture(scope="module")
def bad_esc50(tmp_path_factory):
    return write_esc50_with_bad_clips(tmp_path_factory.mktemp("esc50"))


def test_evaluation_on_esc50_scores_each_good_clip_once_and_marks_the_bad(bad_esc50):
    root, bad_names = bad_esc50
    test = get_dataset("esc50", "test", root, fold=1, replace_bad=False)  # fold 1: the three bad clips
    assert dict(test.skipped.counts) == {"empty": 1}
    items = [test[i] for i in range(len(test))]
    assert [item["index"] for item in items] == list(range(len(test)))
    bad = {os.path.basename(test.paths[it["index"]]) for it in items if not it["valid"]}
    assert bad == set(bad_names[:2])  # the NaN and the absurd clip; the empty one was dropped up front
    assert dict(test.skipped.counts) == {"empty": 1, "NaN/inf samples": 1, "absurd samples": 1}
    # Fold 2 holds the non-UTF-8 name: it is read like any other clip.
    val = get_dataset("esc50", "val", root, fold=1, replace_bad=False)
    assert NON_UTF8_NAME in {os.path.basename(p) for p in val.paths}
    assert all(val[i]["valid"] for i in range(len(val))) and len(val.skipped) == 0


def test_the_fbank_cache_marks_bad_clips_in_evaluation_and_reports_them_when_reused(bad_esc50, tmp_path):
    root, bad_names = bad_esc50
    for attempt in ("built", "reused"):
        test = get_dataset("esc50", "test", root, fold=1, replace_bad=False)
        cache = FbankCache.build(test, tmp_path / "cache", progress=False)
        assert len(test.skipped) == 3, attempt  # the reused cache counts its bad clips again
        cached = CachedFbankDataset(test, cache)
        batch = collate_clips([cached[i] for i in range(len(cached))])
        assert batch["index"].tolist() == list(range(len(test)))
        assert (~batch["valid"]).sum() == 2 and len(batch["skipped"]) == 2
    test.replace_bad = True  # training: a neighbour stands in, and the bad clip is still reported
    item = cached[int(np.flatnonzero(cache.offsets < 0)[0])]
    assert item["valid"] and item["skipped"]


ESC50_ROW_FAULTS = {
    # fault -> (edit of the rows, message fragment); rows are lists of the csv's 7 fields
    "fold 7": (lambda rows: rows[3].__setitem__(1, "7"), "fold 7 is not one of ESC-50's folds 1..5"),
    "fold 0": (lambda rows: rows[3].__setitem__(1, "0"), "fold 0 is not one of"),
    "fold x": (lambda rows: rows[3].__setitem__(1, "x"), "fold 'x' is not a whole number"),
    "unknown class": (lambda rows: rows[3].__setitem__(2, "77"), "target 77 is not one of"),
    "extra class": (lambda rows: rows[3].__setitem__(2, "9") or rows[3].__setitem__(3, "new"), "class 9 .* only"),
    "category": (lambda rows: rows[3].__setitem__(3, "other"), "target 1 is 'other' here but 'class_1' at line 4"),
    "duplicate": (lambda rows: rows.append(list(rows[0])), "listed again \\(first at line 2\\)"),
    "short row": (lambda rows: rows.__setitem__(3, rows[3][:4]), "4 fields, expected 7"),
    "long row": (lambda rows: rows[3].append("surplus"), "8 fields, expected 7"),
    "path": (lambda rows: rows[3].__setitem__(0, "../meta/esc50.csv"), "is not a file name in audio/"),
}


@pytest.mark.parametrize("fault", sorted(ESC50_ROW_FAULTS))
def test_a_bad_esc50_row_is_a_one_line_error_naming_file_and_line(tmp_path, fault):
    root = write_esc50(tmp_path / "esc50", clips_per_fold=2, seconds=0.05)  # rows 2-7 fold 1, 8-13 fold 2
    meta = root / "meta" / "esc50.csv"
    header, *rows = list(csv.reader(meta.open()))
    edit, message = ESC50_ROW_FAULTS[fault]
    edit(rows)
    with open(meta, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    with pytest.raises(MetadataError, match=message) as err:
        get_dataset("esc50", "train", root, fold=1)
    line = len(rows) + 1 if fault == "duplicate" else 5
    assert str(err.value).startswith(f"esc50: {meta}, line {line}: ") and "\n" not in str(err.value)


def test_repeated_or_malformed_voxceleb1_lines_name_the_line(tmp_path):
    root = write_voxceleb1(tmp_path / "vox", seconds=0.05)
    split = root / "iden_split.txt"
    lines = split.read_text().splitlines()
    split.write_text("\n".join(lines + ["3 " + lines[0].split()[1]]) + "\n")  # a train utterance again, as test
    with pytest.raises(MetadataError, match=f"{split}, line {len(lines) + 1}: .* listed again \\(first at line 1\\)"):
        get_dataset("voxceleb1", "test", root)
    split.write_text("\n".join(lines + ["4 id10001/x/00001.wav"]) + "\n")
    with pytest.raises(MetadataError, match=f"line {len(lines) + 1}: '4 id10001"):
        get_dataset("voxceleb1", "train", root)


def test_speech_commands_lists_that_overlap_are_refused_whatever_the_caps(tmp_path):
    root = write_speech_commands(tmp_path / "sc", 2, words=("yes", "no"), seconds=0.05, noise_files=0)
    val = (root / "validation_list.txt").read_text().splitlines()
    (root / "testing_list.txt").write_text("\n".join(["no/zzz_nohash_0.wav"] * 0 + [val[1]]) + "\n")
    with pytest.raises(MetadataError, match=f"testing_list.txt, line 1: {val[1]} is also in validation_list.txt \\(line 2\\)"):
        get_dataset("speech_commands_v2", "train", root)
    (root / "testing_list.txt").write_text("yes\n")
    with pytest.raises(MetadataError, match="testing_list.txt, line 1: 'yes' is not like"):
        get_dataset("speech_commands_v2", "train", root)


AUDIOSET_ENTRY_FAULTS = {
    "a string": ("audio/x.wav", "entry 1: 'audio/x.wav' is not an object"),
    "wav null": ({"wav": None, "labels": "/m/fx000"}, "entry 1: 'wav' is None"),
    "labels list": ({"wav": "audio/x.wav", "labels": ["/m/fx000"]}, "entry 1: 'labels' is \\['/m/fx000'\\]"),
    "no labels": ({"wav": "audio/x.wav", "labels": ""}, "entry 1: no labels"),
    "repeated": (None, "entry 1: .* is listed again \\(first at entry 0\\)"),
}


@pytest.mark.parametrize("fault", sorted(AUDIOSET_ENTRY_FAULTS))
def test_a_bad_audioset_entry_names_the_manifest_and_entry(tmp_path, fault):
    root = write_audioset(tmp_path / "as", train_clips=2, eval_clips=1, full_clips=0, seconds=0.05)
    manifest = root / "balanced_train.json"
    data = json.loads(manifest.read_text())["data"]
    entry, message = AUDIOSET_ENTRY_FAULTS[fault]
    data[1] = dict(data[0]) if entry is None else entry
    manifest.write_text(json.dumps({"data": data}))
    with pytest.raises(MetadataError, match=f"{manifest}, {message}"):
        get_dataset("audioset", "train", root)


@pytest.mark.parametrize("row, message", [
    ("x,/m/fx009,Sound x", "line 6: index 'x' is not a whole number"),
    ("4", "line 6: a short row"),
    ("4,/m/fx000,Sound again", "line 6: mid /m/fx000 is listed again \\(first at line 2\\)"),
])
def test_a_bad_class_labels_row_names_the_line(tmp_path, row, message):
    root = write_audioset(tmp_path / "as", train_clips=2, eval_clips=1, full_clips=0, seconds=0.05)
    labels = root / "class_labels_indices.csv"
    labels.write_text(labels.read_text() + row + "\n")
    with pytest.raises(MetadataError, match=f"{labels}, {message}"):
        get_dataset("audioset", "train", root)


# ---- samples and filterbanks --------------------------------------------------------------------


def test_absurd_samples_are_refused_naming_the_file(bad_folder):
    _, bad = bad_folder
    with pytest.raises(AudioError, match=f"^{bad['absurd samples']}: has absurd sample values \\(peak 3e\\+29"):
        load_audio(bad["absurd samples"])


def test_statistics_skip_a_file_whose_fbank_is_not_finite(bad_folder, monkeypatch):
    """The second line of defence: with the sample check off, the fbank check still names the file."""
    root, bad = bad_folder
    monkeypatch.setattr(audio, "MAX_ABS_SAMPLE", float("inf"))
    data = get_dataset("folder", "all", root, max_seconds=2.0)
    stats = compute_dataset_stats(data)
    assert np.isfinite([stats.mean, stats.std]).all()
    assert dict(data.skipped.counts)["NaN/inf fbank"] == 1
    assert str(bad["absurd samples"]) in {path for path, _ in data.skipped}
    with pytest.raises(AudioError, match="^x.wav: gives a filterbank with 1 NaN"):
        check_fbank(torch.tensor([0.0, float("nan")]), "x.wav")


def test_a_non_utf8_name_is_read_and_printed_escaped(bad_folder):
    root, _ = bad_folder
    path = root / "sub" / NON_UTF8_NAME
    assert load_audio(path).numel() == 8000
    assert display_path(path).endswith("caf\\xe9.wav") and printable(display_path(path))
    err = AudioError(path, "is too short")
    assert printable(str(err)) and err.path == str(path)


def test_bad_files_are_totalled_by_split_once_each(bad_esc50):
    from asit.datasets.base import skipped_by_split

    root, _ = bad_esc50
    splits = {split: get_dataset("esc50", split, root, fold=1, replace_bad=False) for split in ("train", "val", "test")}
    for data in splits.values():
        for i in range(len(data)):
            data[i]
    totals = skipped_by_split({split: data.skipped for split, data in splits.items()})
    assert totals["by_split"] == {"train": 0, "val": 0, "test": 3} and totals["total"] == 3
    assert totals["kinds"]["test"] == {"empty": 1, "NaN/inf samples": 1, "absurd samples": 1}
    assert json.loads(json.dumps(totals)) == totals
