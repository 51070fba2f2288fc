"""Per-step schedules for pretraining: learning rate, weight decay, teacher EMA momentum.

DINO's and the released ASiT code's ``utils.cosine_scheduler``: an optional linear warm-up from
``start_warmup`` to ``base`` over ``warmup_epochs``, then a half cosine from ``base`` to
``final`` over the remaining ``n`` steps. Values are per optimisation step, so a schedule
indexed with the global step ``it`` resumes exactly where it stopped.

Two end points (``end``):

- ``"released"``: step ``i`` of the cosine is at angle ``pi * i / n``, so the last step stops
  one step short of ``final`` (the released formula; the ``paper`` presets).
- ``"exact"``: angle ``pi * i / (n - 1)``, so the last step is exactly ``final`` (our option;
  the two differ by about 1/steps of the range: visible on a short run, not on AudioSet).

The teacher temperature is not here: :class:`asit.losses.DistillationLoss` owns it (as DINO's
``DINOLoss`` does), together with its center.
"""

from __future__ import annotations

import numpy as np

SCHEDULE_ENDS = ("released", "exact")


def cosine_schedule(
    base: float,
    final: float,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0,
    start_warmup: float = 0.0,
    end: str = "exact",
) -> np.ndarray:
    """Per-step values: linear warm-up ``start_warmup -> base``, then cosine ``base -> final``.

    Args:
        base: value at the end of the warm-up (the peak learning rate, the starting weight decay
            or teacher momentum).
        final: value at the last step.
        epochs: total epochs; the array has ``epochs * steps_per_epoch`` entries.
        steps_per_epoch: optimisation steps per epoch.
        warmup_epochs: epochs of linear warm-up (may be fractional; clipped to ``epochs``).
        start_warmup: value at step 0 of the warm-up.
        end: ``"released"`` or ``"exact"`` (the default; see the module docstring).

    Returns:
        float64 array of shape ``(epochs * steps_per_epoch,)``.
    """
    if epochs < 0 or steps_per_epoch <= 0:
        raise ValueError(f"need epochs >= 0 and steps_per_epoch > 0, got {epochs} and {steps_per_epoch}")
    if end not in SCHEDULE_ENDS:
        raise ValueError(f"end must be one of {', '.join(SCHEDULE_ENDS)}, got {end!r}")
    total = int(epochs * steps_per_epoch)
    warmup_steps = min(int(round(warmup_epochs * steps_per_epoch)), total)
    warmup = np.linspace(start_warmup, base, warmup_steps) if warmup_steps > 0 else np.array([])
    steps = np.arange(total - warmup_steps)
    if end == "exact" and len(steps) == 1:
        cosine = np.array([base], dtype=np.float64)
    else:
        # released: n intervals (the last step stops short of `final`); exact: n - 1 (ends on it)
        intervals = len(steps) if end == "released" else len(steps) - 1
        cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(intervals, 1)))
    schedule = np.concatenate((warmup, cosine)).astype(np.float64)
    assert len(schedule) == total
    return schedule


__all__ = ["SCHEDULE_ENDS", "cosine_schedule"]
