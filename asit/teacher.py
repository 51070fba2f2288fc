"""The teacher: an exponential moving average (EMA) of the student, as in DINO and ASiT.

The teacher starts as a copy of the student, sees only clean views, is never trained by
gradients, and after every optimiser step moves a little towards the student:

    teacher <- m * teacher + (1 - m) * student,    m rising from 0.996 to 1 on a cosine schedule

Averaging over many student states gives steadier targets than the student itself (a form of
Polyak averaging); a momentum near 1 late in training freezes the targets as the student settles.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student``: no gradients, evaluation mode, no stochastic depth."""
    teacher = copy.deepcopy(student)
    for module in teacher.modules():  # drop path regularises the student only
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: ``teacher = momentum * teacher + (1 - momentum) * student``, parameter by parameter.

    One fused call per list (``torch._foreach_*``), so the update costs a few kernels rather than
    one per tensor; nothing here waits for the device.
    """
    teacher_params = list(teacher.parameters())
    student_params = list(student.parameters())
    if len(teacher_params) != len(student_params):
        raise ValueError(f"teacher has {len(teacher_params)} parameter tensors, student {len(student_params)}")
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, student_params, alpha=1 - momentum)
