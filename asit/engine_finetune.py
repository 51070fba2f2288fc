"""The fine-tuning engine: one epoch of training and the evaluation of a split (as MAE's ``engine_finetune.py``).

Per batch, on the device: background-noise mixing on the waveforms (keyword spotting), the batched
fbank (:class:`asit.features.FbankFrontend`, or cached fbanks, :mod:`asit.fbank_cache`),
SpecAugment and mixup (:mod:`asit.augment`), the model under the shared mixed-precision policy
(:mod:`asit.training`), cross-entropy on (mixed) soft targets or BCE for multi-label AudioSet,
AdamW with a per-step lr (each group's ``lr_scale`` for layer-wise decay). The running loss stays
on the device; the host reads it every :data:`LOG_EVERY` steps and at the epoch's end, and stops
the run on a non-finite value (:class:`asit.training.NonFiniteLossError`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from asit.augment import BackgroundNoise, SpecAugment, mixup
from asit.classifier import AudioClassifier
from asit.datasets.base import good_rows
from asit.fbank_cache import spectrograms, valid_frames
from asit.features import FbankFrontend, padding_value
from asit.metrics import classification_metrics
from asit.schedules import cosine_schedule
from asit.tasks import TaskConfig
from asit.training import NonFiniteLossError, autocast, set_schedules
from asit.windows import windowed_mean

# Steps between reads of the running loss: the only host-device synchronisation inside an epoch.
LOG_EVERY = 20


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


@dataclass
class FinetuneState:
    """What an epoch of fine-tuning needs; :func:`asit.finetune.train_one_run` builds it."""

    task: TaskConfig
    model: AudioClassifier
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    frontend: FbankFrontend
    spec_augment: SpecAugment
    noise: BackgroundNoise | None
    generator: torch.Generator  # mixup and noise draws
    lrs: np.ndarray  # per-step schedule
    steps_per_epoch: int
    num_classes: int
    multilabel: bool
    device: torch.device
    step: int = 0  # optimisation steps done


def soft_targets(target: torch.Tensor, num_classes: int, multilabel: bool) -> torch.Tensor:
    """``(B, C)`` float targets: the multi-hot rows, or one-hot class indices."""
    if multilabel:
        return target.float()
    return nn.functional.one_hot(target.long(), num_classes).float()


def finite_mean_loss(running: torch.Tensor, seen: int, epoch: int, step: int) -> float:
    """The epoch's mean training loss so far; stops the run on a NaN or infinite loss (``step``: steps done)."""
    total = running.item()
    if not math.isfinite(total):
        raise NonFiniteLossError(
            f"non-finite training loss in epoch {epoch + 1}, by step {step}: lower the lr or enable clip_grad"
        )
    return total / max(seen, 1)


def _batch_spectrograms(state: FinetuneState, batch: dict) -> torch.Tensor:
    """``(B, 1, T, F)`` training inputs: noise mixed into the waveforms, fbank, SpecAugment."""
    if state.noise is not None:
        waves = batch["wave"].to(state.device, non_blocking=True)  # (B, S)
        lengths = batch["length"].to(state.device)
        spec = state.frontend(state.noise(waves, lengths, generator=state.generator), lengths)
    else:
        spec = spectrograms(batch, state.frontend)  # (B, 1, T, F), from waveforms or cached fbanks
    return state.spec_augment(spec)


def train_one_epoch(state: FinetuneState, loader: DataLoader, epoch: int, skipped: list, label: str = "",
                    progress: bool = False, bar: Any = None) -> float:
    """One epoch (at most ``steps_per_epoch`` batches); returns the mean training loss. ``bar``: the
    run's progress bar (one per run, the caller's), advanced here; else ``progress`` draws one."""
    task, model = state.task, state.model
    model.train()
    state.spec_augment.train()
    if state.noise is not None:
        state.noise.train()
    running = torch.zeros((), device=state.device)  # sum of loss x clips, kept on the device
    seen = 0
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=state.steps_per_epoch, desc=f"{label}epoch {epoch + 1}/{task.epochs}", disable=not progress,
                   leave=False)
    else:
        bar.set_description(f"{label}epoch {epoch + 1}/{task.epochs}")
    for batch_index, batch in enumerate(loader):
        if batch_index >= state.steps_per_epoch:
            break
        skipped += list(batch.get("skipped", []))
        set_schedules(state.optimizer, float(state.lrs[state.step]))
        spec = _batch_spectrograms(state, batch)
        targets = soft_targets(batch["target"].to(state.device), state.num_classes, state.multilabel)  # (B, C)
        if task.mixup > 0:
            spec, targets = mixup(spec, targets, task.mixup, task.mixup_alpha, generator=state.generator)
        with autocast(state.device, state.amp_dtype):
            logits = model(spec)
        loss = state.criterion(logits.float(), targets)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.unscale_(state.optimizer)
        if task.clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), task.clip_grad)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        running += loss.detach() * len(targets)
        seen += len(targets)
        state.step += 1
        if (batch_index + 1) % LOG_EVERY == 0:
            mean_loss = finite_mean_loss(running, seen, epoch, state.step)
            bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{state.lrs[state.step - 1]:.2e}")
        bar.update()
    if own_bar:
        bar.close()
    return finite_mean_loss(running, seen, epoch, state.step)


def _probabilities(model: nn.Module, spec: torch.Tensor, amp_dtype: torch.dtype | None, multilabel: bool) -> torch.Tensor:
    """``(B, C)`` float32 class probabilities: sigmoid (multi-label) or softmax."""
    with autocast(spec.device, amp_dtype):
        logits = model(spec)
    return torch.sigmoid(logits.float()) if multilabel else torch.softmax(logits.float(), dim=-1)


def _metrics(scores: np.ndarray, targets: np.ndarray, multilabel: bool, description: str) -> dict[str, float]:
    try:
        return classification_metrics(scores, targets, multilabel)
    except ValueError as err:  # e.g. a tiny multi-label split where no class has a negative clip
        warnings.warn(f"{description}: metrics undefined on {len(scores)} clips ({err})", stacklevel=3)
        return {"mAP": math.nan, "mean_auc": math.nan, "d_prime": math.nan} if multilabel else {"accuracy": math.nan}


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
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Scores of every clip of ``loader``.

    ``window_frames=None`` scores each item as it comes (a crop of the model's input length).
    With ``window_frames``, the loader serves whole clips, each scored as the mean over its windows
    of that many frames (:func:`asit.windows.windowed_mean`), as :mod:`asit.predict` scores a file.
    ``amp_dtype``: the autocast dtype (:func:`asit.training.resolve_amp`; None: full precision).

    Each good clip is scored once: the placeholder of a bad clip (``valid`` False, a data set read
    with ``replace_bad=False``) is dropped, and its file is listed in ``skipped``.

    Returns:
        ``{"scores": (N, C) probabilities (softmax, or sigmoid if multilabel), "targets": (N,) class
        indices or (N, C) multi-hot, "indices": (N,) clip indices in the data set, "metrics": dict,
        "skipped": [(path, problem), ...]}``.
        ``scores.argmax(1)`` and ``targets`` feed :func:`asit.metrics.confusion_matrix`.
    """
    device = torch.device(device)
    model.eval()
    frontend = frontend.to(device)
    if window_frames is not None:  # the same front end, keeping every frame of the clips
        frontend = FbankFrontend(None, frontend.stats, frontend.sample_rate, frontend.num_mel_bins).to(device)

    def score(spec: torch.Tensor) -> torch.Tensor:
        return _probabilities(model, spec, amp_dtype, multilabel)

    scores, targets, indices, skipped = [], [], [], []
    for batch in tqdm(loader, desc=description, disable=not progress, leave=False):
        skipped += list(batch.get("skipped", []))
        batch = good_rows(batch)
        if len(batch["index"]) == 0:
            continue
        spec = spectrograms(batch, frontend)  # (B, 1, T, F), from waveforms or cached fbanks
        if window_frames is None:
            probs = score(spec)
        else:
            frames = valid_frames(batch, frontend.sample_rate).to(device)
            probs = windowed_mean(score, spec, frames, window_frames, padding_value(frontend.stats))
        scores.append(probs.cpu())
        targets.append(batch["target"])
        indices.append(batch["index"])
    if not scores:
        raise RuntimeError(f"{description}: every clip is a bad file, nothing to score (the first: {skipped[:1]})")
    scores_np = torch.cat(scores).numpy()
    targets_np = torch.cat(targets).numpy()
    return {
        "scores": scores_np,
        "targets": targets_np,
        "indices": torch.cat(indices).numpy(),
        "metrics": _metrics(scores_np, targets_np, multilabel, description),
        "skipped": skipped,
    }


__all__ = ["FinetuneState", "LOG_EVERY", "evaluate", "finite_mean_loss", "lr_schedule", "soft_targets", "train_one_epoch"]
