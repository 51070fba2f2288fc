"""Scoring a whole clip through a model of fixed input length: the mean over its windows.

A clip longer than the model's input is cut into windows of that length
(:func:`asit.features.clip_windows`: 50 % overlap, the last window ending at the clip's end, a
clip shorter than a window padded), each window is scored, and the clip's score is the mean of its
windows' scores. Fine-tuning's evaluation (:func:`asit.engine_finetune.evaluate`) scores
validation and test clips this way, as :mod:`asit.predict` scores a file, the k-NN monitor
(:func:`asit.knn.extract_features`) and the linear probes (:func:`asit.probe.encoder_features`)
pool features. Training on one window per clip (:func:`asit.label_efficiency.finetune_few`) draws
it from the same windows (:func:`random_window`).
"""

from __future__ import annotations

from typing import Callable

import torch

from asit.features import clip_windows


def windowed_mean(
    score: Callable[[torch.Tensor], torch.Tensor],
    spec: torch.Tensor,
    frames: torch.Tensor,
    window: int,
    pad_value: float = 0.0,
    chunk: int | None = None,
) -> torch.Tensor:
    """``(B, C)``: the mean of ``score`` over each clip's windows.

    Args:
        score: windows ``(W, 1, window, F)`` -> ``(W, C)`` (probabilities, features...).
        spec: whole-clip spectrograms ``(B, 1, T, F)``, padded past each clip's ``frames``.
        frames: ``(B,)`` valid frames per clip.
        window: the model's input length in frames.
        pad_value: the fbank value of silence (:func:`asit.features.padding_value`).
        chunk: windows per call of ``score`` (default: ``B``, the loader's batch size).
    """
    windows, owner = clip_windows(spec, frames, window, pad_value)
    per_window = torch.cat([score(part) for part in windows.split(chunk or max(len(frames), 1))])  # (W, C)
    total = torch.zeros(len(frames), per_window.shape[1], device=per_window.device, dtype=per_window.dtype)
    total.index_add_(0, owner.to(per_window.device), per_window)
    return total / torch.bincount(owner, minlength=len(frames)).clamp_min(1).to(per_window.device)[:, None]


def random_window(windows: torch.Tensor, owner: torch.Tensor, clips: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``(B, 1, window, F)``: one window of each clip in ``clips``, drawn uniformly from that clip's windows.

    ``windows`` and ``owner`` are :func:`asit.features.clip_windows`'s output for all the clips
    (each clip's windows are consecutive rows); ``clips`` ``(B,)`` indexes its clips.
    """
    counts = torch.bincount(owner, minlength=int(owner.max()) + 1)  # (M,) windows per clip, each >= 1
    first = torch.cumsum(counts, 0) - counts  # (M,) row of each clip's first window
    draw = (torch.rand(len(clips), generator=generator) * counts[clips]).long()  # (B,) in [0, count)
    return windows[first[clips] + draw]


__all__ = ["random_window", "windowed_mean"]
