"""VoxCeleb1 speaker identification (Nagrani et al. 2017): 1,251 speakers, 16 kHz interview speech.

Layout, as the official dev and test archives unpack (both into one ``wav/`` folder) plus the
identification split file from the VoxCeleb site::

    <data_root>/wav/<speaker>/<video>/<utterance>.wav     e.g. wav/id10001/1zcIwhmdeo4/00001.wav
    <data_root>/iden_split.txt                            "1 id10001/1zcIwhmdeo4/00001.wav" per line

``iden_split.txt``: 1 train, 2 validation, 3 test (138,361 / 6,904 / 8,251 utterances). Classes
are the speakers, sorted by id, the same list for every split.
"""

from __future__ import annotations

from pathlib import Path

from asit.datasets.base import (
    AudioDataset,
    MetadataError,
    ensure_split,
    first_duplicate,
    read_text_lines,
    require,
    require_listed_files,
    resolve_root,
)

SPLITS = ("train", "val", "test", "all")
SPLIT_IDS = {"train": {"1"}, "val": {"2"}, "test": {"3"}, "all": {"1", "2", "3"}}


def read_iden_split(path: Path, root: Path) -> list[tuple[str, str]]:
    """``(split id, relative wav path)`` per line of ``iden_split.txt``; each utterance listed once
    (a repeated one would sit in two splits: :class:`~asit.datasets.base.MetadataError`)."""
    entries, lines = [], []
    for number, line in enumerate(read_text_lines(path), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ("1", "2", "3") or parts[1].count("/") != 2 or ".." in parts[1].split("/"):
            raise MetadataError("voxceleb1", path, f"line {number}",
                                f"{line.strip()!r} is not like '1 id10001/1zcIwhmdeo4/00001.wav'")
        entries.append((parts[0], parts[1]))
        lines.append(number)
    repeat = first_duplicate((rel, number) for (_, rel), number in zip(entries, lines))
    if repeat:
        rel, first, again = repeat
        raise MetadataError("voxceleb1", path, f"line {again}", f"{rel} is listed again (first at line {first}): "
                            "one utterance would be in two splits")
    return entries


class VoxCeleb1(AudioDataset):
    """VoxCeleb1 identification split ``split`` (train, val, test or all).

    Args:
        data_root: folder with ``wav/`` and ``iden_split.txt`` (None: the built-in copy).
        options: :class:`~asit.datasets.base.AudioDataset` options.
    """

    def __init__(self, split: str = "train", data_root: str | Path | None = None, **options):
        ensure_split("voxceleb1", split, SPLITS)
        root = resolve_root("voxceleb1", data_root)
        self._data_root, self._options = data_root, options
        split_file = require(root / "iden_split.txt", "voxceleb1", root, "the identification split iden_split.txt", marker="iden_split.txt")
        require(root / "wav", "voxceleb1", root, "the audio folder wav/ (vox1_dev_wav and vox1_test_wav unpacked together)", folder=True, marker="iden_split.txt")
        entries = read_iden_split(split_file, root)
        speakers = sorted({rel.split("/")[0] for _, rel in entries})
        index = {speaker: i for i, speaker in enumerate(speakers)}
        chosen = [rel for split_id, rel in entries if split_id in SPLIT_IDS[split]]
        paths = [root / "wav" / rel for rel in chosen]
        require_listed_files(paths, "voxceleb1", root, "iden_split.txt")
        targets = [index[rel.split("/")[0]] for rel in chosen]
        super().__init__(paths, targets, speakers, name="voxceleb1", split=split, root=root, **options)

    def training_split(self) -> AudioDataset:
        return self if self.split == "train" else VoxCeleb1("train", self._data_root, **self._options)
