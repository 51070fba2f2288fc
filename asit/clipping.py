"""Gradient clipping for pretraining: the released per-parameter rule, or one global norm.

Two rules share the threshold ``max_norm`` (3.0 in the released command):

- ``"per_parameter"`` (the released ``utils.clip_gradients``, as in DINO): every parameter
  tensor's gradient is scaled on its own so that *its* L2 norm is at most ``max_norm``. A
  large gradient in one tensor leaves the others untouched; the update's direction changes.
- ``"global_norm"`` (``torch.nn.utils.clip_grad_norm_``, as MAE and most of timm): all
  gradients are scaled by one factor so that the norm of their concatenation is at most
  ``max_norm``. The direction is kept; with many tensors the bound bites far more often.

On gradient norms (10, 1, 0.1) the first gives (3, 1, 0.1), the second about (2.99, 0.30, 0.03).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

CLIP_MODES = ("per_parameter", "global_norm")
_EPS = 1e-6  # as released: the scale is max_norm / (norm + 1e-6)


@torch.no_grad()
def clip_per_parameter_(parameters: Iterable[nn.Parameter], max_norm: float) -> None:
    """In place: scale each gradient whose own norm exceeds ``max_norm`` down to it.

    The norms are computed in one fused call and the scales applied on the device, so nothing
    waits for the host (the released loop reads each norm with ``.item()``; same values).
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads, 2)
    scales = [(max_norm / (norm + _EPS)).clamp(max=1.0) for norm in norms]
    torch._foreach_mul_(grads, scales)


def clip_gradients_(model: nn.Module, max_norm: float, mode: str = "per_parameter") -> None:
    """Clip ``model``'s gradients with rule ``mode`` (see the module docstring); ``max_norm <= 0``: no clipping."""
    if mode not in CLIP_MODES:
        raise ValueError(f"clip mode must be one of {', '.join(CLIP_MODES)}, got {mode!r}")
    if max_norm <= 0:
        return
    if mode == "per_parameter":
        clip_per_parameter_(model.parameters(), max_norm)
    else:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


__all__ = ["CLIP_MODES", "clip_gradients_", "clip_per_parameter_"]
