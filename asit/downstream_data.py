"""Downstream data: the splits of a task, their caps and holdout, the fbank cache, coverage checks.

What :mod:`asit.finetune` trains and evaluates on, built from a :class:`asit.tasks.TaskConfig`:

- :func:`build_datasets` gives the train, val and test splits (an official validation split, or a
  seeded holdout of the training split), each capped by the task's ``max_*_items`` and checked to
  share no clip (:func:`check_disjoint`);
- :func:`build_loaders` wraps them in loaders whose workers only decode, resample and crop;
- :func:`cache_datasets` serves every clip's fbank from the on-disk cache (small data, many epochs);
- :func:`background_noise_for` and :func:`check_coverage` give keyword spotting its noise bank
  and warn when a real data set holds fewer classes or folds than the official one.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset, WeightedRandomSampler

from asit.augment import BackgroundNoise
from asit.datasets import collate_clips, get_dataset
from asit.datasets.base import AudioDataset, base_dataset, resolve_root
from asit.datasets.esc50 import read_esc50_meta
from asit.datasets.speech_commands import NOISE_FOLDER, SILENCE_PORTIONS
from asit.fbank_cache import CachedFbankDataset, FbankCache
from asit.session import data_dir
from asit.tasks import TaskConfig

# Size of each task's official data, to warn when a real data set holds less.
OFFICIAL_CLASSES = {"esc50": 50, "audioset_20k": 527, "audioset_2m": 527, "ks1": 12, "ks2": 35, "voxceleb1": 1251}
OFFICIAL_FOLDS = (1, 2, 3, 4, 5)


# --------------------------------------------------------------------------------------------
# Data


def _dataset_kwargs(task: TaskConfig, seed: int) -> dict[str, Any]:
    return dict(num_frames=task.num_frames, seed=seed, **task.dataset_options)


def esc50_folds_present(data_root: str | Path | None) -> list[int]:
    """The folds listed in ESC-50's ``meta/esc50.csv`` under ``data_root`` (None: built-in copy)."""
    return sorted({row["fold"] for row in read_esc50_meta(resolve_root("esc50", data_root))})


def _holdout(dataset, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices of ``dataset`` into (train, validation), stratified by first label, seeded."""
    rng = np.random.default_rng(seed)
    groups: dict[Any, list[int]] = {}
    for i, target in enumerate(dataset.targets):
        key = target if not isinstance(target, (list, tuple)) else (target[0] if target else -1)
        groups.setdefault(key, []).append(i)
    train, val = [], []
    for members in groups.values():
        members = list(rng.permutation(members))
        n_val = int(round(fraction * len(members)))
        if len(members) > 1:
            n_val = max(n_val, 1) if fraction > 0 else 0
            n_val = min(n_val, len(members) - 1)
        else:
            n_val = 0
        val += members[:n_val]
        train += members[n_val:]
    if not val:  # tiny data: take at least one clip
        val, train = train[:1], train[1:]
    return sorted(train), sorted(val)


def _cap(dataset, limit: int | None, seed: int):
    """At most ``limit`` items of ``dataset``, a seeded random choice (spread over the classes)."""
    if limit is None or len(dataset) <= limit:
        return dataset
    picks = np.sort(np.random.default_rng(seed).choice(len(dataset), size=limit, replace=False))
    return Subset(dataset, picks.tolist())


def subset_paths(dataset) -> list[str]:
    """File paths of the clips a (possibly ``Subset``-wrapped) data set serves."""
    indices = None
    while isinstance(dataset, Subset):
        indices = list(dataset.indices) if indices is None else [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    return [dataset.paths[i] for i in (indices if indices is not None else range(len(dataset)))]


def _manifest(task: TaskConfig, role: str) -> dict[str, str]:
    """``{"manifest": path}`` when the task names a manifest for ``role`` (train / eval), else ``{}``."""
    return {"manifest": task.manifests[role]} if task.manifests.get(role) else {}


def build_datasets(
    task: TaskConfig, data_root: str | Path | None = None, fold: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """The ``train`` / ``val`` / ``test`` data sets of one run (one ESC-50 fold), with the caps applied.

    The validation set is the task's ``val_split`` (ESC-50: a held-out training fold; Speech
    Commands: the official validation list; VoxCeleb1: iden_split 2), or, when ``val_split`` is
    None (AudioSet), a stratified, seeded ``val_fraction`` of the training split. Training crops
    are random; validation and test clips are whole (``task.eval_windows``, scored in windows by
    :func:`evaluate`) or one crop from the clip's start. A bad evaluation clip is not replaced by a
    neighbour (``replace_bad=False``): each good clip is scored once. No clip may be in two splits
    (checked on the whole splits, before the caps pick a subset).
    """
    extra = {"fold": fold} if fold is not None else {}
    kwargs = _dataset_kwargs(task, seed)
    eval_kwargs = {**kwargs, "num_frames": None} if task.eval_windows else dict(kwargs)  # whole clips
    eval_kwargs["replace_bad"] = False
    train_split, val_split = task.train_split, task.val_split
    if task.dataset == "esc50" and fold is not None and len(esc50_folds_present(data_root)) < 3:
        # Two folds: test on one, hold a validation part out of the other (no fold to spare).
        train_split, val_split = "trainval", None
    train_extra = {**extra, **_manifest(task, "train")}
    train = get_dataset(task.dataset, train_split, data_root, random_crop=task.random_crop, **train_extra, **kwargs)
    if val_split is not None:
        val = get_dataset(task.dataset, val_split, data_root, random_crop=False, **extra, **eval_kwargs)
    else:
        fixed = get_dataset(task.dataset, train_split, data_root, random_crop=False, **train_extra, **eval_kwargs)
        train_idx, val_idx = _holdout(train, task.val_fraction, seed)
        train, val = Subset(train, train_idx), Subset(fixed, val_idx)
    test_extra = {**extra, **_manifest(task, "eval")}
    test = get_dataset(task.dataset, task.test_split, data_root, random_crop=False, **test_extra, **eval_kwargs)
    check_disjoint({"train": train, "val": val, "test": test})
    return {
        "train": _cap(train, task.max_train_items, seed),
        "val": _cap(val, task.max_eval_items, seed + 1),
        "test": _cap(test, task.max_eval_items, seed + 2),
    }


def build_loaders(datasets: dict[str, Any], task: TaskConfig, seed: int = 0, device: torch.device | None = None) -> dict[str, DataLoader]:
    """DataLoaders for :func:`build_datasets`' output: shuffled (or weighted) training, ordered evaluation."""
    common = dict(
        collate_fn=collate_clips,
        num_workers=task.num_workers,
        pin_memory=device is not None and device.type == "cuda",
        persistent_workers=False,
    )
    generator = torch.Generator().manual_seed(seed)
    train = datasets["train"]
    if task.sampler == "weighted":
        weights = base_dataset(train).sample_weights()
        if isinstance(train, Subset):
            weights = weights[list(train.indices)]
        sampler = WeightedRandomSampler(weights, num_samples=len(train), replacement=True, generator=generator)
        train_loader = DataLoader(train, batch_size=task.batch_size, sampler=sampler, drop_last=len(train) > task.batch_size, **common)
    else:
        train_loader = DataLoader(
            train, batch_size=task.batch_size, shuffle=True, generator=generator, drop_last=len(train) > task.batch_size, **common
        )
    eval_batch = task.eval_batch_size or 2 * task.batch_size
    return {
        "train": train_loader,
        "val": DataLoader(datasets["val"], batch_size=eval_batch, shuffle=False, **common),
        "test": DataLoader(datasets["test"], batch_size=eval_batch, shuffle=False, **common),
    }


def _clip_key(dataset, index: int) -> tuple[str, tuple[float, float]]:
    """What identifies a clip across data sets: its file and, for a cut segment, (offset, duration)."""
    return dataset.paths[index], tuple(dataset.segments.get(index, (-1.0, -1.0)))


def _rewrap(data, base):
    """``data``'s ``Subset`` wrapping, around ``base`` instead of the data set it wrapped."""
    if isinstance(data, Subset):
        return Subset(_rewrap(data.dataset, base), data.indices)
    return base


def cache_datasets(datasets: dict[str, Any], progress: bool = False) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The same splits, served from one on-disk fbank cache of all their clips (``cache_fbanks``).

    The clips of every split are cached together, sorted by file, under
    ``<data_dir>/cache/finetune/<name>-<hash>/``: every fold of ESC-50 (each fold's three splits
    hold the same 2,000 clips) and every later run on the same files reuse one cache, which
    :class:`asit.fbank_cache.FbankCache` rebuilds when a file changes. Crops, padding and the
    random generator stay those of each split's data set (:class:`~asit.fbank_cache.CachedFbankDataset`).

    Returns:
        ``(datasets, skipped)``: the cached splits, and the ``(path, problem)`` of clips that failed
        to decode while the cache was built (served by a neighbour, as without the cache).
    """
    bases: list = []
    for data in datasets.values():
        base = base_dataset(data)
        if not any(base is seen for seen in bases):
            bases.append(base)
    rates = {b.sample_rate for b in bases}
    if len(rates) != 1:
        raise ValueError(f"the splits are read at different sample rates {sorted(rates)}: one cache cannot serve them")
    keys = sorted({_clip_key(b, i) for b in bases for i in range(len(b))})
    position = {key: i for i, key in enumerate(keys)}
    union = AudioDataset(
        [path for path, _ in keys], [-1] * len(keys), [], name=f"{bases[0].name} (all splits)", split="all",
        segments={i: seg for i, (_, seg) in enumerate(keys) if seg[0] >= 0}, sample_rate=rates.pop(),
        max_seconds=bases[0].max_seconds, check_files=False,
    )
    digest = hashlib.sha1("\n".join(f"{p}|{seg}" for p, seg in keys).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    directory = data_dir() / "cache" / "finetune" / f"{bases[0].name}-{union.sample_rate}-{digest}"
    cache = FbankCache.build(union, directory, progress=progress)
    cached = {}
    for split, data in datasets.items():
        base = base_dataset(data)
        rows = np.array([position[_clip_key(base, i)] for i in range(len(base))])
        problems = {i: cache.problem(row) for i, row in enumerate(rows) if cache.offsets[row] < 0}
        for i, problem in problems.items():  # each split counts its own bad clips
            base.skipped.add(base.paths[i], problem, warn=False)
        view = FbankCache(cache.directory, cache.offsets[rows], cache.frames[rows], cache.fingerprint, problems)
        cached[split] = _rewrap(data, CachedFbankDataset(base, view))
    return cached, list(union.skipped.records)


def background_noise_for(task: TaskConfig, dataset) -> BackgroundNoise | None:
    """Speech Commands' ``_background_noise_`` recordings as a :class:`BackgroundNoise`, or None."""
    if task.background_noise <= 0:
        return None
    root = base_dataset(dataset).root
    folder = Path(root) / NOISE_FOLDER if root is not None else None
    if folder is None or not folder.is_dir():
        warnings.warn(f"background-noise mixing is on but {folder} does not exist: training without it", stacklevel=2)
        return None
    low, high = task.noise_snr
    # Only the part of each recording that KS1's training silence is cut from: no test noise.
    return BackgroundNoise.from_folder(
        folder, base_dataset(dataset).sample_rate, portion=SILENCE_PORTIONS["train"],
        snr_low=low, snr_high=high, p=task.background_noise,
    )


def check_coverage(task: TaskConfig, datasets: dict[str, Any], folds_run: list[int] | None = None) -> list[str]:
    """Warnings for a data set smaller than the official one (fewer classes, folds or missing splits)."""
    notes = []
    expected = OFFICIAL_CLASSES.get(task.name)
    data = base_dataset(datasets["train"])
    if expected is not None:
        seen = set()
        for target in data.targets:
            seen.update(target if isinstance(target, (list, tuple)) else [target])
        seen.discard(-1)
        if len(seen) < expected:
            notes.append(
                f"{task.title}: the training data holds {len(seen)} of the {expected} official classes; "
                "numbers are not comparable with the paper's"
            )
    if folds_run is not None and tuple(folds_run) != OFFICIAL_FOLDS:
        missing = sorted(set(OFFICIAL_FOLDS) - set(folds_run))
        notes.append(f"{task.title}: cross-validation over folds {folds_run} only (missing {missing})")
    return notes


def _clip_keys(dataset) -> set[tuple[str, tuple[float, float]]]:
    """The clips (file, segment) a (possibly ``Subset``-wrapped) data set serves."""
    indices = None
    while isinstance(dataset, Subset):
        indices = list(dataset.indices) if indices is None else [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    return {_clip_key(dataset, i) for i in (indices if indices is not None else range(len(dataset)))}


def check_disjoint(datasets: dict[str, Any]) -> None:
    """No clip in two splits: a training clip tested on inflates the score, a validation clip tested
    on leaks the epoch choice. Checked on whole splits (a segment of a file, KS1's silence, is its
    own clip)."""
    keys = {split: _clip_keys(data) for split, data in datasets.items()}
    splits = list(keys)
    for i, first in enumerate(splits):
        for second in splits[i + 1:]:
            both = keys[first] & keys[second]
            if both:
                raise RuntimeError(f"{len(both)} {first} clip(s) are also {second} clips, e.g. {sorted(both)[0][0]}: "
                                   "check the data set's split metadata")
