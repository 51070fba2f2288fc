"""Scoring a whole clip through a model of fixed input length: the mean over its windows.

A clip longer than the model's input is cut into windows of that length
(:func:`asit.features.clip_windows`: 50 % overlap, the last window ending at the clip's end, a
clip shorter than a window padded), each window is scored, and the clip's score is the mean of its
windows' scores. Fine-tuning's evaluation (:func:`asit.engine_finetune.evaluate`) scores
validation and test clips this way, as :mod:`asit.predict` scores a file.
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


__all__ = ["windowed_mean"]
