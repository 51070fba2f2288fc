"""Data sets in their publishers' layouts: point ``data_root`` at the unpacked download.

    >>> from asit.datasets import get_dataset
    >>> train = get_dataset("esc50", "train", fold=1, num_frames=512, random_crop=True)
    >>> item = train[0]          # {'wave': (S,), 'length', 'target', 'index', 'skipped'}

``data_root=None`` reads the built-in copy (``make data``), written in the same layouts.
``data/README.md`` says how to get each real data set; ``python -m asit.datasets.download``
fetches the public ones. The item contract is in ``asit/README.md``.

| name | loader | splits |
|---|---|---|
| ``esc50`` | :class:`ESC50` | train, val, trainval, test, all (``fold=k``) |
| ``speech_commands_v1`` | :class:`SpeechCommands` (KS1 by default) | train, val, test, all |
| ``speech_commands_v2`` | :class:`SpeechCommands` (KS2 by default) | train, val, test, all |
| ``voxceleb1`` | :class:`VoxCeleb1` | train, val, test, all |
| ``audioset`` | :class:`AudioSet` | train (AS-20K), train_full (AS-2M), eval |
| ``folder`` | :class:`AudioFolder` (unlabelled) | all |
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from asit.datasets.base import (
    AudioDataset,
    DatasetLayoutError,
    MetadataError,
    NoUsableAudioError,
    SkipLog,
    collate_clips,
    compute_dataset_stats,
    stack_datasets,
)
from asit.datasets.audioset import AudioSet
from asit.datasets.esc50 import ESC50
from asit.datasets.folder import AudioFolder
from asit.datasets.speech_commands import SpeechCommands
from asit.datasets.voxceleb1 import VoxCeleb1

DATASET_NAMES = ("esc50", "speech_commands_v1", "speech_commands_v2", "voxceleb1", "audioset", "folder")

# Folder of each data set under <data_dir>/builtin (both Speech Commands versions read one folder).
BUILTIN_FOLDERS = {
    "esc50": "esc50",
    "speech_commands_v1": "speech_commands",
    "speech_commands_v2": "speech_commands",
    "voxceleb1": "voxceleb1",
    "audioset": "audioset",
    "folder": "unlabelled",  # the built-in unlabelled pool (pretraining only)
}

PRETRAINING_NAMES = ("esc50", "speech_commands_v2", "voxceleb1", "audioset")


def builtin_root(name: str) -> Path:
    """Folder of the built-in copy of ``name``: ``asit.session.data_dir() / "builtin" / <folder>``."""
    from asit.session import data_dir

    if name not in BUILTIN_FOLDERS:
        raise KeyError(f"no built-in copy of {name!r}; built-in data sets: {', '.join(BUILTIN_FOLDERS)}")
    return data_dir() / "builtin" / BUILTIN_FOLDERS[name]


def get_dataset(name: str, split: str, data_root: str | Path | None = None, **options) -> AudioDataset:
    """The data set ``name``'s ``split``, read from ``data_root`` (None: the built-in copy).

    ``options`` go to the loader: every loader takes ``sample_rate``, ``num_frames``,
    ``random_crop``, ``roll_prob``, ``num_views``, ``max_seconds``, ``check_files``, ``seed``,
    ``stats``; some add their own (``fold=`` for ESC-50, ``protocol=`` for Speech Commands,
    ``manifest=`` for AudioSet).
    """
    if name == "esc50":
        return ESC50(split, data_root, **options)
    if name == "speech_commands_v1":
        return SpeechCommands(split, data_root, version=1, **options)
    if name == "speech_commands_v2":
        return SpeechCommands(split, data_root, version=2, **options)
    if name == "voxceleb1":
        return VoxCeleb1(split, data_root, **options)
    if name == "audioset":
        return AudioSet(split, data_root, **options)
    if name == "folder":
        return AudioFolder(split, data_root, **options)
    raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")


# Options that decide which files a part of the pool holds; the others shape the pool's items.
_FILE_OPTIONS = ("sample_rate", "max_seconds", "check_files")


def pretraining_pool(
    names: tuple[str, ...] = PRETRAINING_NAMES,
    data_root: str | Path | Mapping[str, str | Path] | None = None,
    *,
    esc50_fold: int = 1,
    audioset_split: str = "train",
    **options,
) -> AudioDataset:
    """Unlabelled pretraining data: the union of the named data sets' TRAINING splits.

    Labels are dropped (targets -1). Validation and test splits are left out so that the
    downstream evaluation stays clean: the encoder never hears a clip it is later tested on.
    ESC-50 is evaluated by 5-fold cross-validation, so its clips are clean only for the fold
    they are tested in: the pool takes the training folds of ``esc50_fold`` (the other folds'
    test clips are among them; pretrain without ``esc50`` for a fully clean 5-fold number).
    AudioSet contributes ``audioset_split`` ("train": AS-20K; "train_full": AS-2M, as ASiT).

    Args:
        names: data sets to pool (from ``DATASET_NAMES``; ``folder`` needs a ``data_root``).
        data_root: None for the built-in copies; a folder holding each data set in a subfolder
            named as the built-in ones (``esc50/``, ``speech_commands/``, ``voxceleb1/``,
            ``audioset/``); or a mapping ``{name: data_root}``.
        options: item options of the pool (``num_frames``, ``random_crop``, ``roll_prob``,
            ``num_views``, ``sample_rate``, ``max_seconds``, ``check_files``, ``seed``, ``stats``).
    """
    from asit.session import data_dir

    if isinstance(data_root, Mapping):
        roots, cache_root = dict(data_root), None
    elif data_root is None:
        roots = {n: builtin_root(n) for n in names if n in BUILTIN_FOLDERS}
        cache_root = data_dir() / "builtin"
    else:
        roots = {n: Path(data_root) / BUILTIN_FOLDERS.get(n, n) for n in names}
        cache_root = Path(data_root)
    file_options = {k: options[k] for k in _FILE_OPTIONS if k in options}
    parts = []
    for name in names:
        if name not in DATASET_NAMES:
            raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASET_NAMES)}")
        extra = {"fold": esc50_fold} if name == "esc50" else {}
        split = audioset_split if name == "audioset" else "all" if name == "folder" else "train"
        parts.append(get_dataset(name, split, roots.get(name), **extra, **file_options))
    return stack_datasets(parts, name="pool:" + "+".join(names), split="train", root=cache_root, **options)


__all__ = [
    "DATASET_NAMES",
    "AudioDataset",
    "DatasetLayoutError",
    "MetadataError",
    "NoUsableAudioError",
    "SkipLog",
    "builtin_root",
    "collate_clips",
    "compute_dataset_stats",
    "get_dataset",
    "pretraining_pool",
    "ESC50",
    "SpeechCommands",
    "VoxCeleb1",
    "AudioSet",
    "AudioFolder",
]
