"""ASiT's three objectives: global and local self-distillation, masked reconstruction.

The distillation losses follow DINO's ``DINOLoss`` (Caron et al., arXiv 2104.14294,
github.com/facebookresearch/dino ``main_dino.py``): cross-entropy between the teacher's centred,
sharpened ``softmax((t - center) / tau_t)`` and the student's ``log_softmax(s / tau_s)``; each loss
owns its ``center`` (an EMA of the teacher outputs' batch mean, all-reduced across processes) and
its teacher-temperature schedule. ASiT (arXiv 2211.13189) uses it twice: on class tokens across
views (global) and on patch tokens at the same position of the same view (local).

API
---
- ``DistillationLoss(out_dim, num_epochs, warmup_teacher_temp=0.04, teacher_temp=0.07,
  warmup_teacher_temp_epochs=30, student_temp=0.1, center_momentum=0.9)``: the shared machinery,
  ``teacher_temperature(epoch)``, ``teacher_probs(t, epoch)``, ``update_center(t)``.
- ``GlobalDistillationLoss(...)(student (Vs*B, C), teacher (Vt*B, C), epoch)``: cross-view pairs only;
  ``teacher_entropy`` after each call: the collapse monitor (:func:`teacher_entropies`).
- ``teacher_entropies(probs)``, ``head_collapse(entropy, batch_entropy)``: DINO's two collapses
  (a uniform teacher, or one prototype for every clip), read from the teacher's distributions.
- ``LocalDistillationLoss(...)(student (V*B, N, C), teacher (V*B, N, C), epoch)``: same view, same token.
- ``masked_l1_loss(reconstruction, target, mask)``: L1 over masked pixels only.
- ``ASiTLoss(global_dim, local_dim, num_epochs, w_global=1, w_local=1, w_rec=2, ...)``:
  ``forward(...) -> LossOutput(total, global_, local, reconstruction)``; ``LOSS_WEIGHTS`` holds both
  released weightings.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DistillationLoss",
    "GlobalDistillationLoss",
    "LocalDistillationLoss",
    "masked_l1_loss",
    "ASiTLoss",
    "LossOutput",
    "LOSS_WEIGHTS",
    "UNIFORM_COLLAPSE",
    "ONE_PROTOTYPE_COLLAPSE",
    "teacher_entropies",
    "head_collapse",
]

# (w_global, w_local, w_rec): total = w_global * L_global + w_local * L_local + w_rec * L_rec.
LOSS_WEIGHTS = {
    "earlier": (1.0, 1.0, 2.0),  # released main_ASiT.py: clsloss + dtaloss + 2 * recloss (our default)
    "later": (0.5, 0.5, 1.0),  # later revision: (L_global + L_local) / 2 + L_rec
}

# DINO (arXiv 2104.14294, section 5.3) names two collapses of a self-distilled head: every teacher
# output uniform (the loss then sits at ln K and teaches nothing), or one prototype for every clip.
# Both entropies below are over ln K, so 1 is uniform and 0 is one-hot, for any number of prototypes.
UNIFORM_COLLAPSE = 0.98  # each clip's teacher distribution at least this close to uniform
ONE_PROTOTYPE_COLLAPSE = 0.05  # the batch's mean distribution at most this far from one-hot


@torch.no_grad()
def teacher_entropies(probs: torch.Tensor) -> torch.Tensor:
    """``(2,)``: the mean entropy of each row of ``probs`` ``(M, K)``, and the entropy of their
    mean (the prototypes' share of the batch), both divided by ``ln K``."""
    def entropy(p: torch.Tensor) -> torch.Tensor:
        return -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1)

    scale = torch.log(torch.tensor(float(probs.shape[-1]), device=probs.device))
    return torch.stack([entropy(probs).mean(), entropy(probs.mean(dim=0))]) / scale


def head_collapse(entropy: float | None, batch_entropy: float | None) -> str | None:
    """Which collapse the (normalised) teacher entropies show: ``"uniform"``, ``"one prototype"``
    or None (a working head, or nothing measured)."""
    if entropy is None or batch_entropy is None:
        return None
    if entropy >= UNIFORM_COLLAPSE:
        return "uniform"
    if batch_entropy <= ONE_PROTOTYPE_COLLAPSE:
        return "one prototype"
    return None


class DistillationLoss(nn.Module):
    """Teacher centring and sharpening, shared by the global and local losses.

    Args:
        out_dim: size of the projection head's output.
        num_epochs: length of the run (the temperature schedule's length).
        warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs: the teacher temperature
            rises linearly from the first to the second over that many epochs (``np.linspace``
            as in DINO), then stays. Lower it if training is unstable early (DINO's advice).
        student_temp: 0.1.
        center_momentum: EMA momentum of the center (0.9).
    """

    def __init__(
        self,
        out_dim: int,
        num_epochs: int,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.07,
        warmup_teacher_temp_epochs: int = 30,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.warmup_teacher_temp = warmup_teacher_temp
        self.final_teacher_temp = teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.num_epochs = num_epochs
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_temperature(self, epoch: int) -> float:
        """The teacher temperature at ``epoch`` (0-based): DINO's ``linspace`` warm-up, then constant."""
        n = self.warmup_teacher_temp_epochs
        if epoch >= n:
            return self.final_teacher_temp
        if n == 1:
            return self.warmup_teacher_temp
        return self.warmup_teacher_temp + (self.final_teacher_temp - self.warmup_teacher_temp) * epoch / (n - 1)

    def teacher_probs(self, teacher: torch.Tensor, epoch: int) -> torch.Tensor:
        """Centred, sharpened, detached teacher distribution ``softmax((t - center) / tau_t)``."""
        return F.softmax((teacher.float() - self.center) / self.teacher_temperature(epoch), dim=-1).detach()

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """EMA of the batch mean of ``teacher`` ``(..., C)``, averaged over all processes."""
        flat = teacher.detach().float().reshape(-1, teacher.shape[-1])  # (M, C)
        batch_sum = flat.sum(dim=0, keepdim=True)  # (1, C)
        count = flat.shape[0]
        world = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            world = dist.get_world_size()
        batch_center = batch_sum / (count * world)
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))

    @staticmethod
    def cross_entropy(teacher_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
        """``sum(-p_t * log_softmax(s / tau_s))`` over the last dim, unreduced."""
        return torch.sum(-teacher_probs * F.log_softmax(student_logits.float() / student_temp, dim=-1), dim=-1)


class GlobalDistillationLoss(DistillationLoss):
    """Class-token distillation across views (DINO's multi-crop pairing).

    The teacher sees ``teacher_views`` (2) clean global views, the student the same global views
    (corrupted) first, then any local crops. Every pair (teacher view ``j``, student view ``i``)
    with ``i != j`` counts; the loss is their mean.
    """

    def __init__(self, out_dim: int, num_epochs: int, teacher_views: int = 2, **kwargs):
        super().__init__(out_dim, num_epochs, **kwargs)
        self.teacher_views = teacher_views
        self.teacher_entropy = torch.full((2,), float("nan"))  # the last call's teacher_entropies

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, epoch: int) -> torch.Tensor:
        """``student`` ``(Vs*B, C)``, ``teacher`` ``(Vt*B, C)``, both view-major (``torch.cat`` of views)."""
        if teacher.shape[0] % self.teacher_views:
            raise ValueError(f"teacher batch {teacher.shape[0]} is not {self.teacher_views} views")
        batch = teacher.shape[0] // self.teacher_views
        if student.shape[0] % batch or student.shape[0] // batch < 2:
            raise ValueError(f"student batch {student.shape[0]} is not a whole number (>= 2) of views of {batch}")
        t_probs = self.teacher_probs(teacher, epoch)
        self.teacher_entropy = teacher_entropies(t_probs)
        t_views = t_probs.chunk(self.teacher_views)  # Vt x (B, C)
        s_views = student.chunk(student.shape[0] // batch)  # Vs x (B, C)
        total, pairs = 0.0, 0
        for j, t in enumerate(t_views):
            for i, s in enumerate(s_views):
                if i == j:
                    continue  # same view: skip (the student must predict the *other* view)
                total = total + self.cross_entropy(t, s, self.student_temp).mean()
                pairs += 1
        self.update_center(teacher)
        return total / pairs


class LocalDistillationLoss(DistillationLoss):
    """Patch-token distillation: student token ``n`` of view ``v`` against teacher token ``n`` of
    view ``v``, averaged over all tokens (masked and visible) of all views."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, epoch: int) -> torch.Tensor:
        """``student``, ``teacher``: ``(V*B, N, C)`` of the same shape."""
        if student.shape != teacher.shape:
            raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} patch tokens differ")
        loss = self.cross_entropy(self.teacher_probs(teacher, epoch), student, self.student_temp).mean()
        self.update_center(teacher)
        return loss


def masked_l1_loss(reconstruction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the masked pixels of the whole batch (0 if nothing is masked).

    Args:
        reconstruction, target: ``(B, C, T, F)``.
        mask: ``(B, C, T, F)`` bool (or 0/1), True where the input was corrupted.
    """
    weight = mask.to(torch.float32)
    error = (reconstruction.float() - target.float()).abs() * weight
    return error.sum() / weight.sum().clamp_min(1.0)


class LossOutput(NamedTuple):
    """The weighted total and its parts (``None`` for a switched-off objective)."""

    total: torch.Tensor
    global_: torch.Tensor | None
    local: torch.Tensor | None
    reconstruction: torch.Tensor | None


class ASiTLoss(nn.Module):
    """``w_global * L_global + w_local * L_local + w_rec * L_rec``.

    A weight of 0 switches an objective off: its loss module is not built (no center in the state
    dict) and its inputs may be ``None``. ``LOSS_WEIGHTS["earlier"]`` (1, 1, 2) is the default,
    ``LOSS_WEIGHTS["later"]`` (0.5, 0.5, 1) the later revision. The remaining keyword arguments
    go to both distillation losses.
    """

    def __init__(
        self,
        global_dim: int,
        local_dim: int,
        num_epochs: int,
        w_global: float = 1.0,
        w_local: float = 1.0,
        w_rec: float = 2.0,
        teacher_views: int = 2,
        **kwargs,
    ):
        super().__init__()
        self.w_global, self.w_local, self.w_rec = float(w_global), float(w_local), float(w_rec)
        self.global_loss = GlobalDistillationLoss(global_dim, num_epochs, teacher_views=teacher_views, **kwargs) if w_global > 0 else None
        self.local_loss = LocalDistillationLoss(local_dim, num_epochs, **kwargs) if w_local > 0 else None

    def forward(
        self,
        epoch: int,
        student_global: torch.Tensor | None = None,
        teacher_global: torch.Tensor | None = None,
        student_local: torch.Tensor | None = None,
        teacher_local: torch.Tensor | None = None,
        reconstruction: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> LossOutput:
        """Shapes: ``student_global (Vs*B, Cg)``, ``teacher_global (2B, Cg)``, ``student_local`` and
        ``teacher_local (2B, N, Cl)``, ``reconstruction``, ``target`` (the clean views) and
        ``mask`` ``(2B, 1, T, F)``."""
        total = 0.0
        parts: dict[str, torch.Tensor | None] = {"global_": None, "local": None, "reconstruction": None}
        if self.global_loss is not None:
            parts["global_"] = self.global_loss(student_global, teacher_global, epoch)
            total = total + self.w_global * parts["global_"]
        if self.local_loss is not None:
            parts["local"] = self.local_loss(student_local, teacher_local, epoch)
            total = total + self.w_local * parts["local"]
        if self.w_rec > 0:
            parts["reconstruction"] = masked_l1_loss(reconstruction, target, mask)
            total = total + self.w_rec * parts["reconstruction"]
        if not isinstance(total, torch.Tensor):
            raise ValueError("ASiTLoss: every weight is 0, nothing to train")
        return LossOutput(total, **parts)
