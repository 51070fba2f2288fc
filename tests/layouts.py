"""Tiny fixtures in each data set's official layout, for tests.

Each ``write_*`` function writes short synthetic WAVs (a tone per class plus a little noise, so
classes differ) in the publisher's layout under ``root`` and returns ``root``. Defaults are
small; the arguments scale them. ``write_bad_files`` writes one file of each kind of damage.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from asit.datasets.speech_commands import NOISE_FOLDER, WORDS_V1, WORDS_V2


def write_wav(path: str | Path, seconds: float = 0.5, sample_rate: int = 16000, *, seed: int = 0,
              freq: float = 440.0, subtype: str = "PCM_16") -> Path:
    """A tone at ``freq`` plus noise, deterministic in ``seed``; creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    wave = 0.3 * np.sin(2 * math.pi * freq * t) + 0.05 * rng.standard_normal(t.size) + 0.01  # a DC offset to remove
    sf.write(path, wave.astype(np.float32), sample_rate, subtype=subtype)
    return path


def write_esc50(root: str | Path, *, num_classes: int = 3, clips_per_fold: int = 1, folds: int = 5,
                seconds: float = 0.5, sample_rate: int = 44100) -> Path:
    """ESC-50: ``audio/<fold>-<src>-<take>-<target>.wav`` and ``meta/esc50.csv``.

    ``clips_per_fold`` clips per class and fold: ``num_classes * clips_per_fold * folds`` clips.
    """
    root = Path(root)
    rows = []
    for fold in range(1, folds + 1):
        for target in range(num_classes):
            for n in range(clips_per_fold):
                src = f"{100000 + 1000 * fold + 10 * target + n}"
                filename = f"{fold}-{src}-A-{target}.wav"
                write_wav(root / "audio" / filename, seconds, sample_rate, seed=len(rows), freq=300.0 + 200 * target)
                rows.append([filename, fold, target, f"class_{target}", str(target < 2), src, "A"])
    (root / "meta").mkdir(parents=True, exist_ok=True)
    with open(root / "meta" / "esc50.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        writer.writerows(rows)
    return root


def write_speech_commands(root: str | Path, version: int = 2, *, words: tuple[str, ...] | None = None,
                          speakers: int = 3, clips_per_speaker: int = 1, seconds: float = 0.5,
                          sample_rate: int = 16000, noise_files: int = 2, noise_seconds: float = 3.0) -> Path:
    """Speech Commands: ``<word>/<speaker>_nohash_<n>.wav``, the two lists, ``_background_noise_/``.

    Every word of ``version`` (30 or 35) unless ``words`` is given. Speaker 0 is listed in
    testing_list.txt, speaker 1 in validation_list.txt, the others are training speakers.
    """
    root = Path(root)
    words = words or (WORDS_V1 if version == 1 else WORDS_V2)
    val, test = [], []
    for w, word in enumerate(words):
        for s in range(speakers):
            speaker = f"{0xA0B0C0 + s:08x}"
            for n in range(clips_per_speaker):
                rel = f"{word}/{speaker}_nohash_{n}.wav"
                write_wav(root / rel, seconds, sample_rate, seed=1000 * w + 10 * s + n, freq=200.0 + 50 * w)
                (test if s == 0 else val if s == 1 else []).append(rel)
    (root / "validation_list.txt").write_text("".join(f"{rel}\n" for rel in val))
    (root / "testing_list.txt").write_text("".join(f"{rel}\n" for rel in test))
    for k in range(noise_files):
        write_wav(root / NOISE_FOLDER / f"noise_{k}.wav", noise_seconds, sample_rate, seed=99 + k, freq=60.0)
    if noise_files:
        (root / NOISE_FOLDER / "README.md").write_text("background noise\n")  # the real folder has one too
    return root


def write_voxceleb1(root: str | Path, *, speakers: int = 3, videos: int = 3, utterances: int = 1,
                    seconds: float = 0.5, sample_rate: int = 16000) -> Path:
    """VoxCeleb1: ``wav/id1000N/<video>/0000K.wav`` and ``iden_split.txt``.

    Per speaker, the last video's utterances are test (3), the one before validation (2), the
    rest train (1): needs ``videos >= 3`` for all three splits.
    """
    root = Path(root)
    lines = []
    for s in range(speakers):
        speaker = f"id{10001 + s}"
        for v in range(videos):
            video = f"vid{s:02d}{v:02d}xyzAB"  # 11 characters, like a YouTube id
            split_id = 3 if v == videos - 1 else 2 if v == videos - 2 else 1
            for u in range(utterances):
                rel = f"{speaker}/{video}/{u + 1:05d}.wav"
                write_wav(root / "wav" / rel, seconds, sample_rate, seed=100 * s + 10 * v + u, freq=150.0 + 40 * s)
                lines.append(f"{split_id} {rel}")
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    return root


def audioset_mid(index: int) -> str:
    return f"/m/fx{index:03d}"


def audioset_labels(clip: int, num_classes: int) -> list[int]:
    """Label indices of fixture clip ``clip``: one class, plus the next one for every third clip."""
    labels = [clip % num_classes]
    if clip % 3 == 0:
        labels.append((clip + 1) % num_classes)
    return labels


def write_audioset(root: str | Path, *, num_classes: int = 4, train_clips: int = 6, eval_clips: int = 4,
                   full_clips: int = 9, seconds: float = 0.5, sample_rate: int = 16000,
                   absolute_paths: bool = False) -> Path:
    """AudioSet, AST style: ``audio/*.wav``, ``class_labels_indices.csv`` and the json manifests.

    ``balanced_train.json`` (train_clips), ``eval.json`` (eval_clips) and, unless
    ``full_clips=0``, ``unbalanced_train.json`` (full_clips, a superset of the balanced ones).
    Labels follow :func:`audioset_labels`; ``wav`` paths are relative unless ``absolute_paths``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "class_labels_indices.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "mid", "display_name"])
        writer.writerows([i, audioset_mid(i), f"Sound {i}"] for i in range(num_classes))

    def manifest(name: str, prefix: str, count: int) -> None:
        data = []
        for clip in range(count):
            path = write_wav(root / "audio" / f"Y{prefix}{clip:04d}_0.000.wav", seconds, sample_rate,
                             seed=(0 if prefix == "tr" else 5000) + clip, freq=250.0 + 120 * (clip % num_classes))
            labels = ",".join(audioset_mid(i) for i in audioset_labels(clip, num_classes))
            data.append({"wav": str(path if absolute_paths else path.relative_to(root)), "labels": labels})
        (root / name).write_text(json.dumps({"data": data}))

    manifest("balanced_train.json", "tr", train_clips)
    manifest("eval.json", "ev", eval_clips)
    if full_clips:
        manifest("unbalanced_train.json", "tr", full_clips)  # same clip names: AS-20K lies inside AS-2M
    return root


def write_bad_files(folder: str | Path, sample_rate: int = 16000) -> dict[str, Path]:
    """One damaged ``.wav`` of each kind, ``{kind: path}`` (kinds as ``asit.datasets.base.problem_kind``).

    ``empty`` 0 bytes; ``truncated`` half a WAV; ``not audio`` text named .wav; ``NaN/inf samples``
    a float WAV with NaNs (found only when decoding); ``too short`` 10 ms; ``too long`` 3 s (bad
    with ``max_seconds=2``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bad = {}
    bad["empty"] = folder / "empty.wav"
    bad["empty"].write_bytes(b"")
    whole = write_wav(folder / "whole.tmp.wav", 0.5, sample_rate).read_bytes()
    (folder / "whole.tmp.wav").unlink()
    bad["truncated"] = folder / "truncated.wav"
    bad["truncated"].write_bytes(whole[: len(whole) // 2])
    bad["not audio"] = folder / "not_audio.wav"
    bad["not audio"].write_text("this is a text file, not a RIFF/WAVE file\n" * 20)
    nan = 0.1 * np.ones(sample_rate // 2, dtype=np.float32)
    nan[100:110] = np.nan
    bad["NaN/inf samples"] = folder / "nan.wav"
    sf.write(bad["NaN/inf samples"], nan, sample_rate, subtype="FLOAT")
    bad["too short"] = write_wav(folder / "short_10ms.wav", 0.010, sample_rate)
    bad["too long"] = write_wav(folder / "long_3s.wav", 3.0, sample_rate)
    return bad


# A good clip whose name is not UTF-8 (Latin-1 "café"): Python holds such a name with a lone
# surrogate, which soundfile cannot encode and strict UTF-8 output cannot print.
NON_UTF8_NAME = os.fsdecode(b"caf\xe9.wav")


def write_wav_any_name(path: str | Path, seconds: float = 0.5, sample_rate: int = 16000, *, seed: int = 0,
                       freq: float = 440.0) -> Path:
    """:func:`write_wav` for any file name (written under a plain name, then renamed)."""
    path = Path(path)
    os.replace(write_wav(path.parent / f".{seed}-any-name.tmp.wav", seconds, sample_rate, seed=seed, freq=freq), path)
    return path


def write_bad_inputs(folder: str | Path, sample_rate: int = 16000) -> dict[str, Path]:
    """Every class of bad input a data set can meet, ``{kind: path}`` (kinds as ``problem_kind``).

    :func:`write_bad_files` (empty, truncated, not audio, NaN samples, too short, too long with
    ``max_seconds=2``) plus ``absurd samples`` (a float WAV of 3e29), ``not a file`` (a folder
    named ``x.wav``) and ``broken link`` (a symbolic link to nothing). The first three of
    :func:`write_bad_files`' kinds, the last three and too short / too long are found from the
    header; NaN and absurd samples only when decoding.
    """
    folder = Path(folder)
    bad = write_bad_files(folder, sample_rate)
    bad["absurd samples"] = folder / "absurd.wav"
    tone = np.sin(2 * math.pi * 440.0 * np.arange(sample_rate // 2) / sample_rate)
    sf.write(bad["absurd samples"], (3e29 * tone).astype(np.float32), sample_rate, subtype="FLOAT")
    bad["not a file"] = folder / "folder.wav"
    bad["not a file"].mkdir()
    bad["broken link"] = folder / "dangling.wav"
    bad["broken link"].symlink_to(folder / "no_such_target.wav")
    return bad
