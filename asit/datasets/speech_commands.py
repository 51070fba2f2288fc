"""Speech Commands (Warden 2018): one-second spoken words, V1 (v0.01, 30 words) and V2 (v0.02, 35).

Layout, as the archives ``speech_commands_v0.0{1,2}.tar.gz`` unpack::

    <data_root>/<word>/<speaker>_nohash_<n>.wav   one folder per word
    <data_root>/validation_list.txt               "<word>/<file>.wav" per line
    <data_root>/testing_list.txt
    <data_root>/_background_noise_/*.wav          a few minutes of noise recordings

Splits follow the official lists: ``val`` = validation_list.txt, ``test`` = testing_list.txt,
``train`` = every other clip (the lists split by speaker, so no speaker crosses splits).

Protocols:
  * ``ks2``: every word is a class (35 for V2). The default of ``speech_commands_v2``.
  * ``ks1``: the 12-class protocol (SUPERB's KS1, the default of ``speech_commands_v1``): the 10
    command words, ``_unknown_`` for every other word, and ``_silence_``: 1 s clips cut from the
    background-noise files. Each noise file is divided in time (first 80 % train, next 10 % val,
    last 10 % test) so no noise is shared between splits, and a split gets
    ``silence_fraction`` x its word clips of silence at fixed (seeded per split) positions.
    ``_unknown_`` is not down-sampled (it is most of the data): balance it with
    ``sample_weights()`` and a ``WeightedRandomSampler`` if you need to.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from asit.audio import MIN_SECONDS, AudioError
from asit.datasets.base import (
    AudioDataset,
    DatasetLayoutError,
    MetadataError,
    SkipLog,
    check_audio_header,
    ensure_split,
    layout_hint,
    read_text_lines,
    require,
    require_listed_files,
    resolve_root,
)

SPLITS = ("train", "val", "test", "all")
COMMAND_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
WORDS_V1 = (
    "bed", "bird", "cat", "dog", "down", "eight", "five", "four", "go", "happy", "house", "left", "marvin", "nine",
    "no", "off", "on", "one", "right", "seven", "sheila", "six", "stop", "three", "tree", "two", "up", "wow", "yes",
    "zero",
)  # fmt: skip
WORDS_V2 = tuple(sorted(WORDS_V1 + ("backward", "follow", "forward", "learn", "visual")))
UNKNOWN, SILENCE = "_unknown_", "_silence_"
KS1_CLASSES = COMMAND_WORDS + (UNKNOWN, SILENCE)  # SUPERB's order
NOISE_FOLDER = "_background_noise_"
SILENCE_SECONDS = 1.0
# Part of each background-noise file (as fractions of its duration) that each split cuts silence from.
SILENCE_PORTIONS = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0), "all": (0.0, 1.0)}


def _read_list(path: Path, name: str) -> dict[str, int]:
    """``{"<word>/<file>.wav": line number}`` of validation_list.txt / testing_list.txt."""
    listed = {}
    for number, line in enumerate(read_text_lines(path), 1):
        rel = line.strip()
        if not rel:
            continue
        parts = rel.split("/")
        if len(parts) != 2 or not all(parts) or ".." in parts or not rel.endswith(".wav"):
            raise MetadataError(name, path, f"line {number}", f"{rel!r} is not like 'yes/0a7c2a8d_nohash_0.wav'")
        listed.setdefault(rel, number)
    return listed


def check_lists_disjoint(val_list: dict[str, int], test_list: dict[str, int], root: Path, name: str) -> None:
    """No clip in both official lists: checked on the whole lists, before any cap picks a subset."""
    both = sorted(set(val_list) & set(test_list), key=test_list.get)
    if both:
        rel = both[0]
        raise MetadataError(name, root / "testing_list.txt", f"line {test_list[rel]}",
                            f"{rel} is also in validation_list.txt (line {val_list[rel]}); "
                            f"{len(both)} clip(s) are in both lists")


def silence_segments(
    noise_files: list[Path], split: str, count: int, skipped: SkipLog
) -> list[tuple[Path, float, float]]:
    """``count`` (file, offset_s, duration_s) cuts of the split's part of the noise files.

    Deterministic: files in turn, positions from a generator seeded by the split's name.
    """
    low, high = SILENCE_PORTIONS[split]
    spans = []
    for path in noise_files:
        try:
            duration = check_audio_header(path, max_seconds=None)
        except AudioError as err:
            skipped.add(err.path, err.problem)
            continue
        start, end = low * duration, high * duration
        if end - start >= MIN_SECONDS:
            spans.append((path, start, end))
    if not spans:
        return []
    rng = np.random.default_rng(zlib.crc32(split.encode()))
    cuts = []
    for k in range(count):
        path, start, end = spans[k % len(spans)]
        length = min(SILENCE_SECONDS, end - start)
        offset = start + rng.uniform() * (end - start - length)
        cuts.append((path, round(offset, 3), round(length, 3)))
    return cuts


class SpeechCommands(AudioDataset):
    """Speech Commands split ``split`` under protocol ``protocol`` (see the module docstring).

    Args:
        split: train, val, test or all.
        data_root: the unpacked archive (None: the built-in copy, one folder with all 35 words).
        version: 1 or 2: which release (decides the default protocol and the statistics).
        protocol: "ks1" (12 classes) or "ks2" (every word); default ks1 for V1, ks2 for V2.
        silence_fraction: KS1 only: silence clips per word clip of the split.
        options: :class:`~asit.datasets.base.AudioDataset` options.
    """

    def __init__(self, split: str = "train", data_root: str | Path | None = None, *, version: int = 2,
                 protocol: str | None = None, silence_fraction: float = 0.1, **options):
        if version not in (1, 2):
            raise ValueError(f"Speech Commands version must be 1 or 2, got {version}")
        protocol = protocol or ("ks1" if version == 1 else "ks2")
        if protocol not in ("ks1", "ks2"):
            raise ValueError(f"protocol must be 'ks1' or 'ks2', got {protocol!r}")
        name = f"speech_commands_v{version}"
        ensure_split(name, split, SPLITS)
        root = resolve_root(name, data_root)
        self.version, self.protocol, self.silence_fraction = version, protocol, silence_fraction
        self._data_root, self._options = data_root, options
        # Published statistics exist for V2 only (AST); V1's are computed over its training split.
        self.stats_name = "speech_commands_v2" if version == 2 else None

        val_list = _read_list(require(root / "validation_list.txt", name, root, "the list validation_list.txt", marker="testing_list.txt"), name)
        test_list = _read_list(require(root / "testing_list.txt", name, root, "the list testing_list.txt", marker="testing_list.txt"), name)
        check_lists_disjoint(val_list, test_list, root, name)
        words = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
        if not words:
            raise DatasetLayoutError(name, f"one folder per word in {root}", f"no word folders in {root}", layout_hint(root, name))
        listed = [root / rel for rel in sorted(set(val_list) | set(test_list))]
        require_listed_files(listed, name, root, "validation_list.txt / testing_list.txt")

        clips = []  # (relative path, word)
        for word in words:
            for path in sorted((root / word).glob("*.wav")):
                rel = f"{word}/{path.name}"
                listed = rel in val_list or rel in test_list
                if {"train": not listed, "val": rel in val_list, "test": rel in test_list, "all": True}[split]:
                    clips.append((rel, word))

        skipped = SkipLog()
        segments = {}
        if protocol == "ks2":
            classes = words
            targets = [words.index(word) for _, word in clips]
        else:
            absent = [w for w in COMMAND_WORDS if w not in words]
            if absent:
                raise DatasetLayoutError(name, f"the command word folders {', '.join(COMMAND_WORDS)} in {root}",
                                         f"no folder for {', '.join(absent)}", layout_hint(root, name))
            classes = list(KS1_CLASSES)
            targets = [classes.index(word) if word in COMMAND_WORDS else classes.index(UNKNOWN) for _, word in clips]
            noise_dir = require(root / NOISE_FOLDER, name, root, f"the background-noise folder {NOISE_FOLDER}/ (KS1 cuts its silence from it)", folder=True)
            noise_files = sorted(noise_dir.glob("*.wav"))
            count = max(1, round(silence_fraction * len(clips))) if silence_fraction > 0 else 0
            cuts = silence_segments(noise_files, split, count, skipped)
            if count and not cuts:
                raise DatasetLayoutError(name, f"background-noise recordings in {noise_dir} (KS1's silence class)",
                                         f"no usable file ({skipped.summary()})", layout_hint(root, name))
            for path, offset, length in cuts:
                segments[len(clips)] = (offset, length)
                clips.append((str(path.relative_to(root)), SILENCE))
                targets.append(classes.index(SILENCE))
        super().__init__([root / rel for rel, _ in clips], targets, classes, name=name, split=split, root=root,
                         segments=segments, skipped=skipped, **options)

    def stats_key(self) -> str:
        return f"{self.name}:{self.protocol}"

    def training_split(self) -> AudioDataset:
        if self.split == "train":
            return self
        return SpeechCommands("train", self._data_root, version=self.version, protocol=self.protocol,
                              silence_fraction=self.silence_fraction, **self._options)
