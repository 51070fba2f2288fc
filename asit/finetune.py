"""Fine-tuning and linear probing of an (ASiT-pretrained) encoder on a downstream task.

    python -m asit.finetune --task esc50 --preset cpu --dataset builtin --checkpoint auto
    python -m asit.finetune --task ks2 --preset paper --dataset official --data-root /data/speech_commands_v0.02

One run, step by step:

1. **Starting point** (:func:`resolve_checkpoint`): a pretrained encoder directory or safetensors
   file, ``"auto"`` (``<output_dir>/pretrain/<preset>/encoder`` of the task's preset, else the
   newest ``<output_dir>/pretrain/*/encoder``; a random init with a warning when there is none),
   ``"none"`` (random init) or ``"imagenet:<path>"`` (ImageNet ViT weights). A random or ImageNet
   init has the task config's ``model_size`` and ``depth``, which :func:`asit.tasks.get_task` copies
   from the pretraining preset of the same name; :func:`same_architecture` gives the random-init
   baseline the shape of whatever encoder a checkpoint holds.
   The encoder's positional embedding is interpolated to the task's input length
   (``asit.models.load_encoder``), so an encoder pretrained on 592-frame crops fine-tunes on 128
   (Speech Commands), 512 (ESC-50) or 1024 frames (AudioSet).
2. **Data** (:func:`build_loaders`): data workers decode, resample and crop waveforms
   (``asit.datasets``); nothing else runs there. With ``cache_fbanks`` (small data, many epochs),
   every clip's fbank is computed once into an on-disk cache (:mod:`asit.fbank_cache`, under
   ``<data_dir>/cache/finetune``) and the workers crop from it instead.
3. **On the device**, per batch: background-noise mixing on the waveforms (keyword spotting),
   the batched fbank (:class:`asit.features.FbankFrontend`), SpecAugment and mixup
   (:mod:`asit.augment`), then the model, in bf16 autocast on CUDA.
4. **Optimisation**: AdamW (no weight decay on biases, norms, positional embedding and class
   token), a linear warm-up then a cosine decay to ``min_lr`` per step (``schedule="cosine"``,
   our default), or AST's step decay (``schedule="step"``: x ``lr_decay_rate`` every epoch from
   ``lr_decay_start``); optionally layer-wise lr decay (``layer_decay``). Cross-entropy on
   (mixed) soft targets, or BCE for multi-label AudioSet.
5. **Model choice and numbers**: evaluation on the validation split after every epoch; the best
   epoch's weights (by the task's metric on validation only) are restored and evaluated once on
   the test split. ESC-50 repeats this for every fold present and reports the mean accuracy and
   its standard deviation over folds. Evaluation hears each whole clip (``eval_windows``, the
   default): a clip longer than the model's input is scored in windows of that length with 50 %
   overlap, and its scores are the mean over its windows, as :mod:`asit.predict` scores a file.

``mode="linear"`` is a linear probe: the encoder is frozen (eval mode, no gradient, dropout and
stochastic depth off) and only a linear layer on its **class token** (after the encoder's final
LayerNorm; no BatchNorm) is trained. ``pool="mean"`` in the task config uses the mean of the
patch tokens instead, for both modes.

Outputs (``output_dir``, see ``asit/README.md``):

- ``<output_dir>/<task>/<dataset>__<preset>.json``: metrics (percent), config, checkpoint used,
  time, device, versions (``asit.results.write_run_result``). A linear probe writes
  ``<dataset>-linear__<preset>.json``.
- ``<output_dir>/<task>/<dataset>__<preset>/``: ``log.jsonl`` (one JSON line per epoch) and the
  fine-tuned classifier(s), ``classifier/`` (``classifier-fold<k>/`` for ESC-50): ``model.safetensors``
  (encoder + head) and ``config.json`` (classes, task, front-end settings), which
  :mod:`asit.predict` reads.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Subset, WeightedRandomSampler

from asit import __version__
from asit.audio import DEFAULT_SAMPLE_RATE, NUM_MEL_BINS, NormStats
from asit.augment import BackgroundNoise, SpecAugment, mixup
from asit.fbank_cache import spectrograms, valid_frames
from asit.features import FbankFrontend, clip_windows, padding_value
from asit.metrics import classification_metrics
from asit.schedules import cosine_schedule
from asit.session import describe_environment, pick_device, seed_everything
from asit.tasks import TaskConfig, get_task

CLASSIFIER_FORMAT = "asit-classifier"
CLASSIFIER_FORMAT_VERSION = 1

# Size of each task's official data, to warn when a real data set holds less.
OFFICIAL_CLASSES = {"esc50": 50, "audioset_20k": 527, "audioset_2m": 527, "ks1": 12, "ks2": 35, "voxceleb1": 1251}
OFFICIAL_FOLDS = (1, 2, 3, 4, 5)

# Width of a ViT per size name (the models module's sizes).
_SIZE_BY_WIDTH = {192: "tiny", 384: "small", 768: "base"}
# Steps between reads of the running loss: the only host-device synchronisation inside an epoch.
LOG_EVERY = 20


# --------------------------------------------------------------------------------------------
# Starting point


def find_pretrained_encoder(output_dir: str | Path, preset: str | None = None) -> Path | None:
    """The pretraining output ``"auto"`` means, or None.

    ``<output_dir>/pretrain/<preset>/encoder`` when ``preset`` is given and that run exists (so a
    smoke test run never stands in for the cpu preset's encoder); else the newest
    ``<output_dir>/pretrain/*/encoder`` (by its weights' mtime).
    """
    if preset:
        own = Path(output_dir) / "pretrain" / preset / "encoder"
        if (own / "model.safetensors").is_file():
            return own
    candidates = [
        d for d in Path(output_dir).glob("pretrain/*/encoder") if (d / "model.safetensors").is_file()
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda d: (d / "model.safetensors").stat().st_mtime)


def resolve_checkpoint(
    checkpoint: str | Path | None, output_dir: str | Path = "results", preset: str | None = None, *, quiet: bool = False
) -> tuple[str, Path | None]:
    """Turn the ``checkpoint`` argument into ``(kind, path)``.

    ``kind`` is ``"pretrained"`` (path: encoder dir or safetensors file), ``"imagenet"`` (path: an
    ImageNet ViT checkpoint) or ``"random"`` (path None). ``"auto"`` looks for
    :func:`find_pretrained_encoder` ``(output_dir, preset)`` and falls back to ``"random"`` with one
    warning (none with ``quiet``) when ``output_dir`` holds no pretraining output.
    """
    text = "none" if checkpoint is None else str(checkpoint)
    if text.lower() in ("none", "random", ""):
        return "random", None
    if text == "auto":
        found = find_pretrained_encoder(output_dir, preset)
        if found is None:
            if not quiet:
                warnings.warn(
                    f"checkpoint='auto' found no pretrained encoder under {Path(output_dir) / 'pretrain'}/*/encoder: "
                    "fine-tuning from a RANDOM initialisation (run the pretraining notebook or `python -m asit.pretrain` first)",
                    stacklevel=2,
                )
            return "random", None
        return "pretrained", found
    if text.startswith("imagenet:"):
        path = Path(text.split(":", 1)[1]).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"ImageNet ViT weights not found: {path}")
        return "imagenet", path
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; give an encoder folder (with model.safetensors + config.json), "
            "a .safetensors file, 'auto', 'none' or 'imagenet:<path>'"
        )
    return "pretrained", path


# --------------------------------------------------------------------------------------------
# Model


def model_size_of(encoder: nn.Module) -> str:
    """``tiny`` / ``small`` / ``base`` from the encoder's width."""
    width = int(encoder.embed_dim)
    if width not in _SIZE_BY_WIDTH:
        raise ValueError(f"no ViT size has width {width}; known: {_SIZE_BY_WIDTH}")
    return _SIZE_BY_WIDTH[width]


class AudioClassifier(nn.Module):
    """Encoder + linear head on spectrograms ``(B, 1, T, F)`` -> logits ``(B, C)``.

    The head sees the class token (``pool="token"``) or the mean of the patch tokens
    (``pool="mean"``), both taken after the encoder's final LayerNorm. ``freeze_encoder=True``
    makes a linear probe: the encoder stays in eval mode, gets no gradient and is never updated.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, pool: str = "token", freeze_encoder: bool = False):
        super().__init__()
        if pool not in ("token", "mean"):
            raise ValueError(f"pool must be 'token' or 'mean', got {pool!r}")
        self.encoder = encoder
        self.pool = pool
        self.freeze_encoder = freeze_encoder
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02 if not freeze_encoder else 0.01)
        nn.init.zeros_(self.head.bias)
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> "AudioClassifier":
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # a frozen encoder never switches dropout / drop path on
        return self

    def features(self, spec: torch.Tensor) -> torch.Tensor:
        """``(B, 1, T, F)`` -> pooled features ``(B, D)``."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            tokens = self.encoder.forward_features(spec)  # (B, prefix + N, D), final norm applied
        prefix = getattr(self.encoder, "num_prefix_tokens", 1)
        if self.pool == "token":
            return tokens[:, 0]  # (B, D) class token
        return tokens[:, prefix:].mean(dim=1)  # (B, D) mean of patch tokens

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(spec))  # (B, C)


def _depth_kwargs(depth: int) -> dict[str, int]:
    """``create_encoder`` keyword for a depth (0: the size's standard 12, nothing to pass)."""
    return {"depth": int(depth)} if depth else {}


def encoder_architecture(checkpoint: str | Path | None, output_dir: str | Path, task: TaskConfig) -> dict[str, Any]:
    """``{"model_size", "depth"}`` of the encoder ``checkpoint`` gives ``task``, without loading weights.

    A pretrained encoder's ``config.json`` decides; a random or ImageNet init uses the task's
    ``model_size`` and ``depth`` (0 read as the standard 12).
    """
    kind, path = resolve_checkpoint(checkpoint, output_dir, task.preset, quiet=True)
    if kind == "pretrained":
        config_file = (path if path.is_dir() else path.parent) / "config.json"
        config = json.loads(config_file.read_text())
        size = _SIZE_BY_WIDTH.get(int(config["embed_dim"])) if "embed_dim" in config else None
        if size is None:
            size = str(config.get("architecture", "")).removeprefix("asit_vit_").removesuffix("_patch16")
        return {"model_size": size, "depth": int(config.get("depth", 12))}
    from asit.models import SIZES

    return {"model_size": task.model_size, "depth": int(task.depth or SIZES[task.model_size][1])}


def same_architecture(task: TaskConfig, checkpoint: str | Path | None, output_dir: str | Path) -> TaskConfig:
    """``task`` with the ``model_size`` and ``depth`` of the encoder ``checkpoint`` holds.

    The random-init baseline of a "same budget" comparison must have the pretrained encoder's
    shape; ``get_task`` already gives each preset its pretraining preset's shape, this also covers
    a checkpoint from elsewhere (another preset, a released model).
    """
    arch = encoder_architecture(checkpoint, output_dir, task)
    if arch != encoder_architecture("none", output_dir, task):
        print(f"note: the random-init baseline takes the checkpoint's shape: ViT-{arch['model_size']}, {arch['depth']} blocks")
    return dataclasses.replace(task, **arch)


def build_encoder(task: TaskConfig, checkpoint: str | Path | None, output_dir: str | Path, mode: str = "finetune"):
    """The encoder for ``task`` at the task's input length, and a description of where it came from.

    A pretrained encoder brings its own size and depth; a random or ImageNet init is built with
    the task's ``model_size`` and ``depth`` (the pretraining preset's, see :func:`asit.tasks.get_task`).

    Returns:
        ``(encoder, info)`` with ``info = {"kind", "path", "model_size", "depth"}``.
    """
    from asit import models

    kind, path = resolve_checkpoint(checkpoint, output_dir, task.preset)
    drop_path = 0.0 if mode == "linear" else task.drop_path
    if kind == "pretrained":
        encoder = models.load_encoder(path, num_frames=task.num_frames, num_classes=0, drop_path_rate=drop_path)
    else:
        encoder = models.create_encoder(
            task.model_size, task.num_frames, num_classes=0, drop_path_rate=drop_path, **_depth_kwargs(task.depth)
        )
        if kind == "imagenet":
            missing, unexpected = models.init_from_imagenet_vit(encoder, _read_state_dict(path))
            if missing:
                warnings.warn(f"ImageNet weights {path} left {len(missing)} encoder tensors at random init: {missing[:4]}", stacklevel=2)
            extra_blocks = sorted({k.split(".")[1] for k in unexpected if k.startswith("blocks.")}, key=int)
            if extra_blocks:
                print(f"note: the encoder has {len(encoder.blocks)} blocks: ImageNet blocks {extra_blocks[0]}-{extra_blocks[-1]} are not used")
    info = {"kind": kind, "path": str(path) if path else None, "model_size": model_size_of(encoder), "depth": len(encoder.blocks)}
    return encoder, info


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a ``.safetensors`` file or a torch checkpoint (``.pth``, tensors only)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------------------------
# Classifier checkpoint (read by asit.predict)


def save_classifier(
    model: AudioClassifier,
    directory: str | Path,
    *,
    classes: list[str],
    task: TaskConfig,
    stats: NormStats,
    multilabel: bool,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    extra: dict | None = None,
) -> Path:
    """Write a fine-tuned classifier: ``model.safetensors`` (encoder + head) and ``config.json``.

    ``config.json`` holds everything needed to rebuild and run it without the training code's
    state: the format tag, the encoder size and input length, the pooling, the class names, and
    the front-end settings (sample rate, frames, mel bins, normalisation statistics).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    config = {
        "format": CLASSIFIER_FORMAT,
        "format_version": CLASSIFIER_FORMAT_VERSION,
        "task": task.name,
        "model_size": model_size_of(model.encoder),
        "depth": len(model.encoder.blocks),
        "num_frames": task.num_frames,
        "num_mel_bins": NUM_MEL_BINS,
        "sample_rate": sample_rate,
        "stats": {"mean": stats.mean, "std": stats.std},
        "pool": model.pool,
        "multilabel": multilabel,
        "classes": list(classes),
        "task_config": task.to_dict(),
        "asit_version": __version__,
        **(extra or {}),
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    return directory


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[AudioClassifier, dict]:
    """Read a classifier written by :func:`save_classifier` (its folder or its safetensors file)."""
    from asit import models

    path = Path(path)
    directory = path if path.is_dir() else path.parent
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} is missing: {path} is not a classifier written by asit.finetune")
    config = json.loads(config_file.read_text())
    if config.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(
            f"{directory} holds a {config.get('format', 'different')!r} checkpoint, not a fine-tuned classifier "
            f"({CLASSIFIER_FORMAT!r}); a pretrained encoder must be fine-tuned first (asit.finetune)"
        )
    encoder = models.create_encoder(
        config["model_size"], config["num_frames"], config["num_mel_bins"], num_classes=0, drop_path_rate=0.0,
        **_depth_kwargs(config.get("depth", 0)),  # classifiers written before depth was recorded have 12 blocks
    )
    model = AudioClassifier(encoder, len(config["classes"]), pool=config["pool"])
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    return model.to(device).eval(), config


# --------------------------------------------------------------------------------------------
# Data


def _dataset_kwargs(task: TaskConfig, seed: int) -> dict[str, Any]:
    return dict(num_frames=task.num_frames, seed=seed, **task.dataset_options)


def esc50_folds_present(data_root: str | Path | None) -> list[int]:
    """The folds listed in ESC-50's ``meta/esc50.csv`` under ``data_root`` (None: built-in copy)."""
    from asit.datasets.base import resolve_root
    from asit.datasets.esc50 import read_esc50_meta

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


def base_dataset(dataset):
    """The :class:`~asit.datasets.AudioDataset` under any ``Subset`` wrapping."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def subset_paths(dataset) -> list[str]:
    """File paths of the clips a (possibly ``Subset``-wrapped) data set serves."""
    indices = None
    while isinstance(dataset, Subset):
        indices = list(dataset.indices) if indices is None else [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    return [dataset.paths[i] for i in (indices if indices is not None else range(len(dataset)))]


def build_datasets(
    task: TaskConfig, data_root: str | Path | None = None, fold: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """The ``train`` / ``val`` / ``test`` data sets of one run (one ESC-50 fold), with the caps applied.

    The validation set is the task's ``val_split`` (ESC-50: a held-out training fold; Speech
    Commands: the official validation list; VoxCeleb1: iden_split 2), or, when ``val_split`` is
    None (AudioSet), a stratified, seeded ``val_fraction`` of the training split. Training crops
    are random; validation and test clips are whole (``task.eval_windows``, scored in windows by
    :func:`evaluate`) or one crop from the clip's start.
    """
    from asit.datasets import get_dataset

    extra = {"fold": fold} if fold is not None else {}
    kwargs = _dataset_kwargs(task, seed)
    eval_kwargs = {**kwargs, "num_frames": None} if task.eval_windows else kwargs  # whole clips
    train_split, val_split = task.train_split, task.val_split
    if task.dataset == "esc50" and fold is not None and len(esc50_folds_present(data_root)) < 3:
        # Two folds: test on one, hold a validation part out of the other (no fold to spare).
        train_split, val_split = "trainval", None
    train = get_dataset(task.dataset, train_split, data_root, random_crop=task.random_crop, **extra, **kwargs)
    if val_split is not None:
        val = get_dataset(task.dataset, val_split, data_root, random_crop=False, **extra, **eval_kwargs)
    else:
        fixed = get_dataset(task.dataset, train_split, data_root, random_crop=False, **extra, **eval_kwargs)
        train_idx, val_idx = _holdout(train, task.val_fraction, seed)
        train, val = Subset(train, train_idx), Subset(fixed, val_idx)
    test = get_dataset(task.dataset, task.test_split, data_root, random_crop=False, **extra, **eval_kwargs)
    return {
        "train": _cap(train, task.max_train_items, seed),
        "val": _cap(val, task.max_eval_items, seed + 1),
        "test": _cap(test, task.max_eval_items, seed + 2),
    }


def build_loaders(datasets: dict[str, Any], task: TaskConfig, seed: int = 0, device: torch.device | None = None) -> dict[str, DataLoader]:
    """DataLoaders for :func:`build_datasets`' output: shuffled (or weighted) training, ordered evaluation."""
    from asit.datasets import collate_clips

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
    import hashlib

    from asit.datasets.base import AudioDataset
    from asit.fbank_cache import CachedFbankDataset, FbankCache
    from asit.session import data_dir

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
    digest = hashlib.sha1("\n".join(f"{p}|{seg}" for p, seg in keys).encode()).hexdigest()[:12]
    directory = data_dir() / "cache" / "finetune" / f"{bases[0].name}-{union.sample_rate}-{digest}"
    cache = FbankCache.build(union, directory, progress=progress)
    cached = {}
    for split, data in datasets.items():
        base = base_dataset(data)
        rows = np.array([position[_clip_key(base, i)] for i in range(len(base))])
        view = FbankCache(cache.directory, cache.offsets[rows], cache.frames[rows], cache.fingerprint)
        cached[split] = _rewrap(data, CachedFbankDataset(base, view))
    return cached, list(union.skipped.records)


def background_noise_for(task: TaskConfig, dataset) -> BackgroundNoise | None:
    """Speech Commands' ``_background_noise_`` recordings as a :class:`BackgroundNoise`, or None."""
    if task.background_noise <= 0:
        return None
    from asit.datasets.speech_commands import NOISE_FOLDER, SILENCE_PORTIONS

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


# --------------------------------------------------------------------------------------------
# Training and evaluation


def _parameter_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """AdamW parameter groups: no weight decay on biases, norms, positional embedding and class token.

    With ``layer_decay < 1`` (layer-wise lr decay, as BEiT, MAE and Audio-MAE fine-tune), encoder
    layer ``l`` of ``L`` (patch embedding = 0, blocks 1..L, the final norm with the last block)
    trains at ``layer_decay ** (L - l)`` of the lr, and the head at the full lr: the early layers a
    pretrained encoder learnt move least. Each group's ``lr_scale`` multiplies the scheduled lr.
    """
    scales: dict[str, float] = {}
    encoder = getattr(model, "encoder", None)
    if layer_decay < 1.0 and encoder is not None and hasattr(encoder, "group_matcher"):
        from timm.models import group_parameters

        layers = group_parameters(encoder, encoder.group_matcher(coarse=False), reverse=True)
        top = max(layers.values())
        scales = {f"encoder.{name}": layer_decay ** (top - layer) for name, layer in layers.items()}
    groups: dict[tuple[bool, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(".bias") or "pos_embed" in name or "cls_token" in name
        scale = scales.get(name, 1.0)
        group = groups.setdefault(
            (no_decay, scale), {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale}
        )
        group["params"].append(param)
    return list(groups.values())


def lr_schedule(task: TaskConfig, steps_per_epoch: int, peak_lr: float) -> np.ndarray:
    """Per-step learning rates: warm-up then cosine (default) or AST-style step decay."""
    if task.schedule == "cosine":
        return cosine_schedule(peak_lr, min(task.min_lr, peak_lr), task.epochs, steps_per_epoch, task.warmup_epochs)
    if task.schedule == "step":
        steps = np.arange(task.epochs * steps_per_epoch)
        epoch = steps // steps_per_epoch
        lrs = peak_lr * task.lr_decay_rate ** np.maximum(0, epoch - task.lr_decay_start + 1)
        warmup = int(round(task.warmup_epochs * steps_per_epoch))
        if warmup > 0:
            lrs[:warmup] *= (steps[:warmup] + 1) / warmup
        return lrs.astype(np.float64)
    raise ValueError(f"schedule must be 'cosine' or 'step', got {task.schedule!r}")


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _soft_targets(target: torch.Tensor, num_classes: int, multilabel: bool) -> torch.Tensor:
    if multilabel:
        return target.float()
    return nn.functional.one_hot(target.long(), num_classes).float()


def _skip_count(batch: dict) -> list:
    return list(batch.get("skipped", []))


@torch.no_grad()
def evaluate(
    model: AudioClassifier,
    loader: DataLoader,
    frontend: FbankFrontend,
    device: torch.device | str = "cpu",
    multilabel: bool = False,
    progress: bool = False,
    description: str = "eval",
    window_frames: int | None = None,
) -> dict[str, np.ndarray]:
    """Scores of every clip of ``loader``.

    ``window_frames=None`` scores each item as it comes (a crop of the model's input length).
    With ``window_frames``, the loader serves whole clips: each is cut into windows of that many
    frames (:func:`asit.features.clip_windows`: 50 % overlap, the last ending at the clip's end)
    and its scores are the mean of its windows' scores, as :mod:`asit.predict` scores a file.

    Returns:
        ``{"scores": (N, C) probabilities (softmax, or sigmoid if multilabel), "targets": (N,) class
        indices or (N, C) multi-hot, "indices": (N,) clip indices in the data set, "metrics": dict}``.
        ``scores.argmax(1)`` and ``targets`` feed :func:`asit.metrics.confusion_matrix`.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    model.eval()
    frontend = frontend.to(device)
    if window_frames is not None:  # the same front end, keeping every frame of the clips
        frontend = FbankFrontend(None, frontend.stats, frontend.sample_rate, frontend.num_mel_bins).to(device)
    scores, targets, indices = [], [], []
    for batch in tqdm(loader, desc=description, disable=not progress, leave=False):
        spec = spectrograms(batch, frontend)  # (B, 1, T, F), from waveforms or cached fbanks
        if window_frames is None:
            probs = _probabilities(model, spec, device, multilabel)
        else:
            frames = valid_frames(batch, frontend.sample_rate).to(device)
            windows, owner = clip_windows(spec, frames, window_frames, padding_value(frontend.stats))
            window_probs = torch.cat(
                [_probabilities(model, chunk, device, multilabel) for chunk in windows.split(max(len(frames), 1))]
            )  # (W, C), in chunks of the loader's batch size
            total = torch.zeros(len(frames), window_probs.shape[1], device=device).index_add_(0, owner, window_probs)
            probs = total / torch.bincount(owner, minlength=len(frames)).clamp_min(1)[:, None]
        scores.append(probs.cpu())
        targets.append(batch["target"])
        indices.append(batch["index"])
    scores_np = torch.cat(scores).numpy()
    targets_np = torch.cat(targets).numpy()
    try:
        metrics = classification_metrics(scores_np, targets_np, multilabel)
    except ValueError as err:  # e.g. a tiny multi-label split where no class has a negative clip
        warnings.warn(f"{description}: metrics undefined on {len(scores_np)} clips ({err})", stacklevel=2)
        metrics = {"mAP": math.nan, "mean_auc": math.nan, "d_prime": math.nan} if multilabel else {"accuracy": math.nan}
    return {
        "scores": scores_np,
        "targets": targets_np,
        "indices": torch.cat(indices).numpy(),
        "metrics": metrics,
    }


def _probabilities(model: nn.Module, spec: torch.Tensor, device: torch.device, multilabel: bool) -> torch.Tensor:
    """``(B, C)`` float32 class probabilities: sigmoid (multi-label) or softmax."""
    with _autocast(device):
        logits = model(spec)
    return torch.sigmoid(logits.float()) if multilabel else torch.softmax(logits.float(), dim=-1)


def _finite_mean_loss(running: torch.Tensor, seen: int, epoch: int, step: int) -> float:
    """The epoch's mean training loss so far; stops the run on a NaN or infinite loss (``step``: steps done)."""
    total = running.item()
    if not math.isfinite(total):
        raise FloatingPointError(
            f"non-finite training loss in epoch {epoch + 1}, by step {step}: lower the lr or enable grad_clip"
        )
    return total / max(seen, 1)


def train_one_run(
    task: TaskConfig,
    datasets: dict[str, Any],
    checkpoint: str | Path | None = "auto",
    mode: str = "finetune",
    output_dir: str | Path = "results",
    device: torch.device | None = None,
    progress: bool = True,
    seed: int = 0,
    log_file: Path | None = None,
    label: str = "",
    cache_fbanks: bool | None = None,
) -> dict[str, Any]:
    """Train on ``datasets["train"]``, keep the best epoch on ``datasets["val"]``, test once.

    ``cache_fbanks`` serves the splits from the on-disk fbank cache (:func:`cache_datasets`);
    ``None``: ``task.cache_fbanks is True``.

    Returns a dict with ``model`` (best weights loaded, on the device), ``test`` (the
    :func:`evaluate` output on the test split), ``val_metrics``, ``best_epoch``, ``history``,
    ``encoder_info``, ``frontend``, ``classes``, ``skipped``.
    """
    from tqdm.auto import tqdm

    if mode not in ("finetune", "linear"):
        raise ValueError(f"mode must be 'finetune' or 'linear', got {mode!r}")
    device = device or pick_device()
    seed_everything(seed)
    data = base_dataset(datasets["train"])
    multilabel = bool(data.multilabel)
    if multilabel != task.multilabel:
        raise ValueError(f"task {task.name} expects multilabel={task.multilabel}, the data set says {multilabel}")
    num_classes, classes = data.num_classes, list(data.classes)
    stats = data.stats

    encoder, encoder_info = build_encoder(task, checkpoint, output_dir, mode)
    pretrained_rate = (getattr(encoder, "asit_config", None) or {}).get("fbank", {}).get("sample_rate")
    if pretrained_rate and pretrained_rate != data.sample_rate:
        warnings.warn(
            f"the encoder was pretrained on {pretrained_rate} Hz audio, the data set is read at {data.sample_rate} Hz: "
            "the mel bins mean different frequencies (pass sample_rate in the task's dataset_options)", stacklevel=2
        )
    model = AudioClassifier(encoder, num_classes, pool=task.pool, freeze_encoder=(mode == "linear")).to(device)
    frontend = FbankFrontend(task.num_frames, stats, data.sample_rate).to(device)
    windows = task.num_frames if task.eval_windows else None  # evaluation: whole clips, in windows
    spec_augment = SpecAugment(task.freq_mask, task.time_mask).to(device)
    noise = background_noise_for(task, datasets["train"])
    noise = noise.to(device) if noise is not None else None
    skipped: list = []
    if cache_fbanks is None:
        cache_fbanks = task.cache_fbanks is True
    if cache_fbanks:
        if noise is not None:
            raise ValueError(
                f"task {task.name}: cache_fbanks=True cannot mix background noise into waveforms (background_noise="
                f"{task.background_noise}); set one of them off"
            )
        datasets, skipped = cache_datasets(datasets, progress=progress)
    loaders = build_loaders(datasets, task, seed, device)

    steps_per_epoch = len(loaders["train"])
    if task.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, task.max_steps_per_epoch)
    peak_lr = task.linear_lr if mode == "linear" else task.lr
    lrs = lr_schedule(task, steps_per_epoch, peak_lr)
    trainable = model.head if mode == "linear" else model
    layer_decay = task.layer_decay if mode == "finetune" else 1.0
    optimizer = torch.optim.AdamW(_parameter_groups(trainable, task.weight_decay, layer_decay), lr=peak_lr, betas=(0.9, 0.999))
    criterion = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss(label_smoothing=task.label_smoothing)
    generator = torch.Generator().manual_seed(seed)

    best = {"value": -math.inf, "epoch": -1, "state": None, "metrics": None}
    history = []
    step = 0
    for epoch in range(task.epochs):
        model.train()
        spec_augment.train()
        if noise is not None:
            noise.train()
        running = torch.zeros((), device=device)  # sum of loss x clips, kept on the device
        seen = 0
        started = time.time()
        bar = tqdm(total=steps_per_epoch, desc=f"{label}epoch {epoch + 1}/{task.epochs}", disable=not progress, leave=False)
        for batch_index, batch in enumerate(loaders["train"]):
            if batch_index >= steps_per_epoch:
                break
            skipped += _skip_count(batch)
            for group in optimizer.param_groups:
                group["lr"] = float(lrs[step]) * group["lr_scale"]
            if noise is not None:
                waves = batch["wave"].to(device, non_blocking=True)  # (B, S)
                lengths = batch["length"].to(device)
                spec = frontend(noise(waves, lengths, generator=generator), lengths)
            else:
                spec = spectrograms(batch, frontend)  # (B, 1, T, F), from waveforms or cached fbanks
            spec = spec_augment(spec)
            targets = _soft_targets(batch["target"].to(device), num_classes, multilabel)  # (B, C)
            if task.mixup > 0:
                spec, targets = mixup(spec, targets, task.mixup, task.mixup_alpha, generator=generator)
            with _autocast(device):
                logits = model(spec)
            loss = criterion(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if task.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), task.grad_clip)
            optimizer.step()
            running += loss.detach() * len(targets)
            seen += len(targets)
            step += 1
            if (batch_index + 1) % LOG_EVERY == 0:
                mean_loss = _finite_mean_loss(running, seen, epoch, step)
                bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lrs[step - 1]:.2e}")
            bar.update()
        bar.close()
        train_loss = _finite_mean_loss(running, seen, epoch, step)
        val = evaluate(model, loaders["val"], frontend, device, multilabel, description="validation", window_frames=windows)
        value = val["metrics"][task.metric]
        value = -math.inf if math.isnan(value) else value
        record = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            **{f"val_{k}": v for k, v in val["metrics"].items()},
            "lr": float(lrs[step - 1]) if step else peak_lr,
            "seconds": round(time.time() - started, 2),
        }
        history.append(record)
        if log_file is not None:
            with open(log_file, "a") as f:
                f.write(json.dumps({"run": label.strip(": ") or None, **record}) + "\n")
        if progress:
            print(f"{label}epoch {epoch + 1}: loss {record['train_loss']:.4f}, val {task.metric} {value:.2f}")
        if best["state"] is None or value > best["value"]:  # NaN (undefined) never beats a number
            best = {"value": value, "epoch": epoch + 1, "metrics": val["metrics"],
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}

    model.load_state_dict(best["state"])
    test = evaluate(model, loaders["test"], frontend, device, multilabel, description="test", window_frames=windows)
    return {
        "model": model,
        "test": test,
        "val_metrics": best["metrics"],
        "best_epoch": best["epoch"],
        "history": history,
        "encoder_info": encoder_info,
        "frontend": frontend,
        "classes": classes,
        "stats": stats,
        "multilabel": multilabel,
        "skipped": skipped,
    }


def finetune(
    task_cfg: TaskConfig | str,
    dataset: str = "builtin",
    data_root: str | Path | None = None,
    checkpoint: str | Path | None = "auto",
    mode: str = "finetune",
    output_dir: str | Path = "results",
    device: str | torch.device | None = None,
    progress: bool = True,
    *,
    seed: int = 0,
    write_result: bool = True,
    baseline_metrics: dict[str, float] | None = None,
    baseline_encoder: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune (or linearly probe) an encoder on a task and report its test metrics.

    Args:
        task_cfg: a :class:`~asit.tasks.TaskConfig` (``get_task(name, preset)``) or a task name
            (its ``paper`` preset).
        dataset: label of the data in the result file: ``"builtin"`` (the built-in copy, needs no
            ``data_root``) or any name for real data (e.g. ``"official"``), which needs ``data_root``.
        data_root: the unpacked data set in its publisher's layout (None: the built-in copy).
        checkpoint: encoder dir / safetensors, ``"auto"``, ``"none"`` or ``"imagenet:<path>"``
            (see :func:`resolve_checkpoint`).
        mode: ``"finetune"`` (every weight trains) or ``"linear"`` (frozen encoder, linear head).
        output_dir: where results go and where ``"auto"`` looks for pretraining output.
        device: ``None``/``"auto"``: CUDA, else MPS, else CPU.
        progress: tqdm progress bars and one line per epoch.
        seed: seeds Python, NumPy, torch, the data order, crops and augmentations.
        write_result: write the result JSON, the epoch log and the classifier (off for a
            throw-away comparison run).
        baseline_metrics: the random-init run's metrics under the same budget, stored beside ours.
        baseline_encoder: that run's ``encoder`` description (kind, size, depth), stored too; a
            warning says so when its shape differs from ours (the comparison is then not fair).

    Returns:
        ``{"metrics", "per_fold", "predictions": {"scores", "targets"}, "classes", "history",
        "checkpoint", "encoder", "best_epoch", "seconds", "device", "notes", "result_path",
        "classifier_paths", "model"}``. ``predictions`` covers the test split (every fold's test
        clips for ESC-50, each clip tested once); ``model`` is the last run's best model.
    """
    started = time.time()
    task = get_task(task_cfg) if isinstance(task_cfg, str) else task_cfg
    if dataset != "builtin" and data_root is None:
        raise ValueError(f"dataset={dataset!r} needs data_root (the unpacked data set); use dataset='builtin' for the built-in copy")
    if dataset == "builtin" and data_root not in (None, ""):
        print(f"note: data_root={str(data_root)!r} is not the built-in copy: results are labelled dataset='custom'")
        dataset = "custom"  # so the results table never calls real data "builtin"
    data_root = data_root or None
    device = pick_device("auto" if device is None else str(device))
    label_dataset = dataset if mode == "finetune" else f"{dataset}-linear"
    run_dir = Path(output_dir) / task.name / f"{label_dataset}__{task.preset}"
    log_file = None
    if write_result:
        run_dir.mkdir(parents=True, exist_ok=True)
        log_file = run_dir / "log.jsonl"
        log_file.write_text("")

    folds: list[int | None] = [None]
    notes: list[str] = []
    if task.folds:
        present = esc50_folds_present(data_root)
        folds = [f for f in task.folds if f in present]
        if not folds:
            raise ValueError(f"none of the task's folds {list(task.folds)} is in the data (folds present: {present})")
        if len(present) < 2:
            raise ValueError(f"ESC-50 cross-validation needs at least 2 folds; the data holds {present}")

    if task.cache_fbanks not in (True, False, "builtin"):
        raise ValueError(f"cache_fbanks must be True, False or 'builtin', got {task.cache_fbanks!r}")
    use_cache = task.cache_fbanks is True or (task.cache_fbanks == "builtin" and data_root is None)
    runs, per_fold, classifier_paths = [], [], []
    for fold in folds:
        label = f"fold {fold}: " if fold is not None else ""
        datasets = build_datasets(task, data_root, fold, seed)
        if fold == folds[0]:
            notes += check_coverage(task, datasets, folds if fold is not None else None)
            _check_disjoint(datasets)
            for note in notes:
                if data_root is not None:
                    warnings.warn(note, stacklevel=2)
                print(("warning: " if data_root is not None else "note: ") + note)
        run = train_one_run(task, datasets, checkpoint, mode, output_dir, device, progress, seed, log_file, label, use_cache)
        runs.append(run)
        fold_metrics = {"fold": fold, "best_epoch": run["best_epoch"], **run["test"]["metrics"],
                        **{f"val_{k}": v for k, v in run["val_metrics"].items()}}
        per_fold.append(fold_metrics)
        if write_result:
            name = "classifier" if fold is None else f"classifier-fold{fold}"
            classifier_paths.append(str(save_classifier(
                run["model"], run_dir / name, classes=run["classes"], task=task, stats=run["stats"],
                multilabel=run["multilabel"], sample_rate=run["frontend"].sample_rate,
                extra={"fold": fold, "mode": mode, "test_metrics": run["test"]["metrics"], "encoder": run["encoder_info"]},
            )))

    metrics = _combine(task, per_fold)
    scores = np.concatenate([r["test"]["scores"] for r in runs])
    targets = np.concatenate([r["test"]["targets"] for r in runs])
    skipped = sorted({tuple(s) for r in runs for s in r["skipped"]})
    metrics["skipped_files"] = len(skipped)
    seconds = time.time() - started
    encoder_info = runs[0]["encoder_info"]
    result = {
        "task": task.name,
        "dataset": label_dataset,
        "preset": task.preset,
        "mode": mode,
        "metrics": metrics,
        "per_fold": per_fold,
        "predictions": {"scores": scores, "targets": targets},
        "classes": runs[0]["classes"],
        "history": [r["history"] for r in runs] if task.folds else runs[0]["history"],
        "checkpoint": encoder_info["path"] or encoder_info["kind"],
        "encoder": encoder_info,
        "best_epoch": [r["best_epoch"] for r in runs] if task.folds else runs[0]["best_epoch"],
        "seconds": seconds,
        "device": str(device),
        "notes": notes,
        "result_path": None,
        "classifier_paths": classifier_paths,
        "model": runs[-1]["model"],
    }
    if baseline_encoder is not None:
        shape = (baseline_encoder.get("model_size"), baseline_encoder.get("depth"))
        if shape != (encoder_info["model_size"], encoder_info["depth"]):
            message = (f"the random-init baseline (ViT-{shape[0]}, {shape[1]} blocks) does not have this encoder's shape "
                       f"(ViT-{encoder_info['model_size']}, {encoder_info['depth']} blocks): the comparison is not like for like")
            warnings.warn(message, stacklevel=2)
            notes.append(message)
    if write_result:
        from asit.results import write_run_result

        path = write_run_result(
            output_dir, task.name, label_dataset, task.preset, metrics,
            baseline_metrics=baseline_metrics, config=task, checkpoint=result["checkpoint"],
            device=describe_environment(device), seconds=round(seconds, 1), notes=notes,
            mode=mode, encoder=encoder_info, per_fold=per_fold, classifier_paths=classifier_paths,
            data_root=str(data_root) if data_root else None, seed=seed,
            baseline_encoder=baseline_encoder,
        )
        result["result_path"] = str(path)
    if progress:
        shown = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, float))
        print(f"{task.title} [{task.preset}, {mode}, {encoder_info['kind']} init]: {shown} ({seconds:.0f} s)")
    return result


def _combine(task: TaskConfig, per_fold: list[dict]) -> dict[str, float]:
    """One metrics dict: a fixed-split run's test metrics, or the mean and spread over folds."""
    keys = [k for k, v in per_fold[0].items() if isinstance(v, (int, float)) and k not in ("fold", "best_epoch")]
    if len(per_fold) == 1 and per_fold[0]["fold"] is None:
        return {k: float(per_fold[0][k]) for k in keys}
    metrics = {k: float(np.mean([f[k] for f in per_fold])) for k in keys}
    metrics[f"{task.metric}_std"] = float(np.std([f[task.metric] for f in per_fold]))
    metrics["folds"] = len(per_fold)
    for f in per_fold:
        metrics[f"fold{f['fold']}_{task.metric}"] = float(f[task.metric])
    return metrics


def _check_disjoint(datasets: dict[str, Any]) -> None:
    """No clip of the validation split may be in the test split (or the epoch choice would leak)."""
    overlap = set(subset_paths(datasets["val"])) & set(subset_paths(datasets["test"]))
    if overlap:
        raise RuntimeError(f"{len(overlap)} validation clips are also test clips, e.g. {sorted(overlap)[0]}")


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> dict:
    from asit.session import PRESETS
    from asit.tasks import TASKS

    parser = argparse.ArgumentParser(
        prog="python -m asit.finetune",
        description="Fine-tune (or linearly probe) an ASiT encoder on a downstream task; writes "
        "<output-dir>/<task>/<dataset>__<preset>.json.",
    )
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--preset", default="cpu", choices=PRESETS, help="smoke: seconds; cpu: minutes on a laptop; gpu; paper: the recipe")
    parser.add_argument("--dataset", default="builtin", help="'builtin' (no --data-root needed) or a label for real data, e.g. 'official'")
    parser.add_argument("--data-root", default=None, help="the unpacked data set in its publisher's layout")
    parser.add_argument("--checkpoint", default="auto", help="encoder folder / .safetensors, 'auto' (newest pretraining output), 'none', or 'imagenet:<path>'")
    parser.add_argument("--mode", default="finetune", choices=("finetune", "linear"), help="linear: frozen encoder, only a linear head trains")
    parser.add_argument("--output-dir", default="results")
    parser.add_argument("--device", default=None, help="cuda, cpu, mps (default: the best available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override TaskConfig fields, e.g. --set epochs=5 lr=1e-4 (values read as Python literals)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            import ast

            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    task = get_task(args.task, args.preset, **overrides)
    result = finetune(task, args.dataset, args.data_root, args.checkpoint, args.mode, args.output_dir, args.device,
                      progress=not args.no_progress, seed=args.seed)
    print(json.dumps({"result": result["result_path"], "metrics": result["metrics"]}, indent=2))
    return result


if __name__ == "__main__":
    main()


__all__ = [
    "AudioClassifier",
    "build_datasets",
    "build_encoder",
    "build_loaders",
    "cache_datasets",
    "encoder_architecture",
    "same_architecture",
    "evaluate",
    "finetune",
    "find_pretrained_encoder",
    "load_classifier",
    "resolve_checkpoint",
    "save_classifier",
    "train_one_run",
]
