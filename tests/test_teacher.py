"""The EMA teacher: a frozen copy that follows the student."""

from __future__ import annotations

import torch
from torch import nn

from asit.models import build_asit
from asit.teacher import ema_update_, make_teacher


def test_teacher_is_a_frozen_copy_without_drop_path():
    student = build_asit("tiny", num_frames=32, global_dim=16, local_dim=8, drop_path_rate=0.1, depth=2)
    teacher = make_teacher(student)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(getattr(m, "drop_prob", 0.0) == 0.0 for m in teacher.modules())
    assert any(getattr(m, "drop_prob", 0.0) > 0 for m in student.modules())  # the student keeps its own
    for a, b in zip(student.parameters(), teacher.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


def test_ema_update_moves_the_teacher_towards_the_student():
    student = nn.Linear(3, 2)
    teacher = make_teacher(student)
    with torch.no_grad():
        student.weight.fill_(1.0)
        teacher.weight.fill_(0.0)
    ema_update_(teacher, student, momentum=0.9)
    torch.testing.assert_close(teacher.weight, torch.full((2, 3), 0.1))
    ema_update_(teacher, student, momentum=1.0)  # momentum 1: frozen
    torch.testing.assert_close(teacher.weight, torch.full((2, 3), 0.1))
    assert student.weight.grad is None
