"""The pretraining engine: one ASiT step, one epoch, the k-NN monitor (as MAE's ``engine_pretrain.py``).

One step (:func:`train_step`), following the method reference and DINO's ``main_dino.py``:

1. waveforms ``(B, V, S)`` (``V = num_global_views`` crops per clip, cut by the data workers)
   become normalised spectrograms ``(V*B, 1, T, F)`` on the device (:func:`spectrograms`);
2. :func:`mask_views` corrupts large groups of pixels of every view (the student's input);
3. the teacher (an EMA of the student, no gradients, no drop path) encodes the *clean* views;
4. the student encodes the corrupted views (plus :func:`local_crops`, short crops of the clean ones);
5. the criterion, :class:`asit.losses.ASiTLoss`, weighs global (class tokens, cross-view), local
   (patch tokens, same position) distillation and the masked L1 reconstruction;
6. AdamW with per-step lr and weight-decay schedules, gradient clipping, then the teacher's EMA
   update with its own momentum schedule.

Nothing in the step waits for the device: losses stay tensors, a non-finite step is dropped by
the gradient scaler's on-device check (exact at scale 1 in fp32/bf16) and counted by
:class:`asit.training.NonFiniteSteps`; the host reads values only at log points. A step whose
loss was finite but whose update left a NaN or infinite weight (an lr far too high) counts as
non-finite too; under ``nan_policy="skip"`` :class:`asit.training.LastGoodState` puts the
weights and optimiser state of before it back, so a skipped step changes nothing.

Every random draw of a step is seeded from ``(seed, step, rank)`` (:func:`step_seed`), so a
resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from asit.augment import random_equaliser, random_frequency_warp, random_noise_floor
from asit.clipping import clip_gradients_
from asit.config import PretrainConfig
from asit.features import FbankFrontend
from asit.knn import KnnProbe
from asit.losses import ASiTLoss, LossOutput
from asit.masking import group_mask
from asit.models import build_asit
from asit.schedules import cosine_schedule
from asit.teacher import ema_update_, make_teacher
from asit.training import (
    DistInfo,
    LastGoodState,
    NonFiniteSteps,
    all_reduce_mean,
    autocast,
    parameters_finite,
    grad_scaler,
    param_groups,
    resolve_amp,
    set_schedules,
)

LOSS_NAMES = ("global", "local", "reconstruction")
EPOCH_SUMS = len(LOSS_NAMES) + 4  # total loss, the three objectives, two teacher entropies, steps


@dataclass
class TrainState:
    """Everything one optimisation step needs; :func:`build_training` makes it."""

    cfg: PretrainConfig
    device: torch.device
    student: nn.Module  # the ASiT model (encoder + heads), unwrapped
    model: nn.Module  # what the step calls: the student, or its DDP / compiled wrapper
    teacher: nn.Module
    frontend: FbankFrontend
    criterion: ASiTLoss  # the weighted objectives; its distillation losses own centers and temperatures
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    lr: np.ndarray  # per-step schedules
    wd: np.ndarray
    momentum: np.ndarray
    steps_per_epoch: int
    nonfinite: NonFiniteSteps
    dist: DistInfo = field(default_factory=DistInfo)
    mask_generator: torch.Generator | None = None
    last_good: LastGoodState | None = None  # nan_policy="skip": the state a bad step is undone to

    @property
    def peak_lr(self) -> float:
        return float(self.lr.max()) if len(self.lr) else self.cfg.base_lr


# ----------------------------------------------------------------------------- building


def build_criterion(cfg: PretrainConfig) -> ASiTLoss:
    """:class:`ASiTLoss` of ``cfg``: a switched-off objective gets weight 0 (no loss module)."""
    return ASiTLoss(
        cfg.global_dim,
        cfg.local_dim,
        cfg.epochs,
        w_global=cfg.weight_global if cfg.use_global else 0.0,
        w_local=cfg.weight_local if cfg.use_local else 0.0,
        w_rec=cfg.weight_reconstruction if cfg.use_reconstruction else 0.0,
        teacher_views=cfg.num_global_views,
        warmup_teacher_temp=cfg.warmup_teacher_temp,
        teacher_temp=cfg.teacher_temp,
        warmup_teacher_temp_epochs=cfg.warmup_teacher_temp_epochs,
        student_temp=cfg.student_temp,
        center_momentum=cfg.center_momentum,
    )


def build_student(cfg: PretrainConfig) -> nn.Module:
    """The ASiT student of ``cfg`` with its initial weights (seeded by ``cfg.seed``, on the CPU)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        student = build_asit(
            cfg.model_size,
            num_frames=cfg.num_frames,
            global_dim=cfg.global_dim,
            local_dim=cfg.local_dim,
            drop_path_rate=cfg.drop_path_rate,
            with_reconstruction=cfg.use_reconstruction,
            reconstruction_hidden_dim=cfg.reconstruction_hidden_dim,
            cls_token_std=cfg.cls_token_std or None,
            head_hidden_dim=cfg.head_hidden_dim,
            head_bottleneck_dim=cfg.head_bottleneck_dim,
            imagenet_weights=cfg.init_weights,
            **({"depth": cfg.depth} if cfg.depth else {}),
        )
    return student


def initial_encoder(cfg: PretrainConfig) -> nn.Module:
    """The encoder exactly as the run of ``cfg`` starts it: the "random init" baseline.

    Same architecture, same seed, same weights as the student (and the teacher) before step 1, so
    a k-NN comparison against it measures what pretraining added and nothing else.
    """
    encoder = build_student(cfg).encoder
    encoder.eval()
    return encoder


def _wrap(student: nn.Module, cfg: PretrainConfig, device: torch.device, dist_info: DistInfo) -> nn.Module:
    """What the step calls: DDP under torchrun, ``torch.compile`` with ``cfg.compile``."""
    model: nn.Module = student
    if dist_info.enabled:
        every_objective = cfg.use_global and cfg.use_local and cfg.use_reconstruction
        model = nn.parallel.DistributedDataParallel(
            student,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not every_objective,  # a switched-off objective leaves its head unused
        )
    return torch.compile(model) if cfg.compile else model


def _adamw(student: nn.Module, lr: float, device: torch.device) -> torch.optim.Optimizer:
    # Fused AdamW (one kernel for all parameters) on CUDA, and on CPU where it exists: it also
    # lets the scaler skip a non-finite step without waiting for the device.
    try:
        return torch.optim.AdamW(param_groups(student), lr=lr, fused=device.type in ("cuda", "cpu"))
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(param_groups(student), lr=lr)


def build_training(
    cfg: PretrainConfig,
    device: torch.device | str,
    stats=None,
    steps_per_epoch: int = 1,
    dist_info: DistInfo | None = None,
) -> TrainState:
    """Student, teacher, front end, criterion, optimiser, scaler and schedules for ``cfg``.

    Usable alone (benchmarks, notebooks): ``state = build_training(cfg, "cuda", stats)`` then
    ``train_step(state, waves, lengths, it)`` on tensors already on the device.
    """
    device = torch.device(device)
    dist_info = dist_info or DistInfo()
    student = build_student(cfg).to(device)  # seeded: identical initial weights on every rank
    torch.manual_seed(cfg.seed)
    teacher = make_teacher(student)  # DINO: starts as the student, then follows its EMA
    if cfg.grad_checkpointing:
        student.set_grad_checkpointing(True)
    model = _wrap(student, cfg, device, dist_info)

    global_batch = cfg.batch_size * dist_info.world_size
    peak_lr = cfg.base_lr * global_batch / 256  # linear scaling rule
    amp_dtype = resolve_amp(cfg.amp, device)
    optimizer = _adamw(student, peak_lr, device)
    return TrainState(
        cfg=cfg,
        device=device,
        student=student,
        model=model,
        teacher=teacher,
        frontend=FbankFrontend(cfg.num_frames, stats, sample_rate=cfg.sample_rate, padding=cfg.padding).to(device),
        criterion=build_criterion(cfg).to(device),
        optimizer=optimizer,
        scaler=grad_scaler(device, amp_dtype, always=True),  # scale 1 outside fp16: on-device skipping
        amp_dtype=amp_dtype,
        lr=cosine_schedule(peak_lr, cfg.min_lr, cfg.epochs, steps_per_epoch, warmup_epochs=cfg.warmup_epochs, end=cfg.schedule_end),
        wd=cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, cfg.epochs, steps_per_epoch, end=cfg.schedule_end),
        momentum=cosine_schedule(cfg.momentum_teacher, 1.0, cfg.epochs, steps_per_epoch, end=cfg.schedule_end),
        steps_per_epoch=steps_per_epoch,
        nonfinite=NonFiniteSteps(device, cfg.nan_policy),
        dist=dist_info,
        mask_generator=torch.Generator(device=device),
        last_good=LastGoodState(student, optimizer) if cfg.nan_policy == "skip" else None,
    )


# ----------------------------------------------------------------------------- the pieces of a step


def step_seed(cfg: PretrainConfig, it: int, rank: int) -> int:
    """The seed of step ``it``'s random draws on process ``rank`` (drop path, masks, local crops)."""
    return (cfg.seed * 7_919 + it * 104_729 + rank * 15_485_863 + 1) % 2**62


def spectrograms(state: TrainState, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Waveforms ``(B, V, S)`` (or ``(B, S)``), lengths ``(B, V)`` or ``(B,)`` -> ``(V*B, 1, T, F)``.

    View-major order: rows ``[v*B, (v+1)*B)`` hold view ``v`` of every clip (DINO's chunk layout).
    """
    if waves.dim() == 2:
        waves, lengths = waves[:, None], lengths.reshape(-1, 1)
    batch, views, samples = waves.shape
    lengths = lengths.reshape(batch, -1).expand(batch, views)
    return state.frontend(waves.transpose(0, 1).reshape(views * batch, samples), lengths.T.reshape(-1))


def local_crops(spec: torch.Tensor, cfg: PretrainConfig, generator: torch.Generator) -> torch.Tensor:
    """``num_local_crops`` random ``local_crop_frames`` windows per clip, cut from the clean views.

    ``spec``: ``(V*B, 1, T, F)``. Returns ``(L*B, 1, local_crop_frames, F)``, crop-major.
    """
    views_b, _, frames, _ = spec.shape
    batch = views_b // cfg.num_global_views
    length = min(cfg.local_crop_frames, frames)
    crops = []
    for _ in range(cfg.num_local_crops):
        view = torch.randint(cfg.num_global_views, (batch,), generator=generator, device=spec.device)
        start = torch.randint(frames - length + 1, (batch,), generator=generator, device=spec.device)
        rows = view * batch + torch.arange(batch, device=spec.device)  # (B,)
        time_index = start[:, None] + torch.arange(length, device=spec.device)[None]  # (B, length)
        crops.append(spec[rows[:, None], 0, time_index].unsqueeze(1))  # (B, 1, length, F)
    return torch.cat(crops)


def mask_views(state: TrainState, spec: torch.Tensor, views: int, it: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-mask every view; the masks are a function of the step, not of the process count.

    With zero-filling (the default) under DDP, each rank draws the masks of the whole global batch
    from the same seed and keeps its own slice, so N processes mask exactly as one process with the
    same global batch would (mask drawing is cheap next to the ViT). Noise and swap corruption
    depend on the local batch and are drawn per rank.
    """
    cfg, info = state.cfg, state.dist
    plain = cfg.masking.corruption == "zeros" and cfg.masking.swap_prob == 0
    state.mask_generator.manual_seed(step_seed(cfg, it, 0 if plain else info.rank))
    if not info.enabled or not plain:
        return group_mask(spec, cfg.masking, state.mask_generator, views=views)
    batch = spec.shape[0] // views
    shape = (views, info.world_size, batch) + spec.shape[1:]
    _, mask = group_mask(spec.new_zeros(()).expand(views * info.world_size * batch, *spec.shape[1:]), cfg.masking, state.mask_generator)
    mask = mask.view(shape)[:, info.rank].reshape(spec.shape)  # global rows v*G + r*B + b -> local v*B + b
    return spec.masked_fill(mask, 0.0), mask


def forward_losses(state: TrainState, spec: torch.Tensor, corrupted: torch.Tensor, mask: torch.Tensor, epoch: int) -> LossOutput:
    """Teacher on the clean views, student on the corrupted ones (and the local crops), the criterion."""
    criterion = state.criterion
    distill = criterion.global_loss is not None or criterion.local_loss is not None
    with_reconstruction = criterion.w_rec > 0
    teacher_out = None
    if distill:
        with torch.no_grad():
            teacher_out = state.teacher(spec, return_reconstruction=False)
    out = state.model(corrupted, return_reconstruction=with_reconstruction)
    student_global = out.global_out  # (V*B, Cg)
    if criterion.global_loss is not None and state.cfg.num_local_crops > 0:
        crops = local_crops(spec, state.cfg, state.mask_generator)  # the generator continues from the masks
        student_global = torch.cat([student_global, state.model(crops, return_reconstruction=False).global_out])
    return criterion(
        epoch,
        student_global=student_global.float(),
        teacher_global=teacher_out.global_out.float() if distill else None,
        student_local=out.local_out.float(),
        teacher_local=teacher_out.local_out.float() if distill else None,
        reconstruction=out.reconstruction.float() if with_reconstruction else None,
        target=spec,
        mask=mask,
    )


# ----------------------------------------------------------------------------- one step, one epoch


def train_step(state: TrainState, waves: torch.Tensor, lengths: torch.Tensor, it: int) -> dict[str, torch.Tensor]:
    """One optimisation step on a batch already on the device; returns detached loss tensors.

    Args:
        waves: ``(B, V, S)`` waveform crops, ``V = num_global_views`` (``(B, S)`` means ``V = 1``).
        lengths: ``(B, V)`` or ``(B,)`` valid samples per crop.
        it: global step (indexes the schedules, seeds the masks).

    Returns:
        ``{"loss", "global", "local", "reconstruction", "finite"}`` as 0-d tensors (no host sync);
        ``finite``: the loss and every weight after the step are finite. ``teacher_entropy``
        ``(2,)``: the global head's :func:`asit.losses.teacher_entropies` (zeros without it).
    """
    cfg = state.cfg
    epoch = it // state.steps_per_epoch  # the losses' teacher-temperature schedule is per epoch (DINO)
    at = min(it, len(state.lr) - 1)
    set_schedules(state.optimizer, float(state.lr[at]), float(state.wd[at]))
    torch.manual_seed(step_seed(cfg, it, state.dist.rank))  # drop path: a function of the step and rank

    spec = spectrograms(state, waves, lengths)  # (V*B, 1, T, F)
    # Per-view augmentations (off in every preset; asit.course turns some on), drawn after the step's
    # seed: the voice, then the channel's colouring, then its noise floor.
    if cfg.view_warp > 0:
        spec = random_frequency_warp(spec, cfg.view_warp, state.frontend.sample_rate)
    if cfg.view_eq_db > 0:
        spec = random_equaliser(spec, cfg.view_eq_db, state.frontend.stats.std if state.frontend.stats else None)
    if cfg.view_noise_snr > 0:
        spec = random_noise_floor(spec, cfg.view_noise_snr, state.frontend.stats)
    corrupted, mask = mask_views(state, spec, spec.shape[0] // waves.shape[0], it)  # (V*B, 1, T, F) each
    centers = [buffer.clone() for buffer in state.criterion.buffers()]  # restored if the step is dropped
    with autocast(state.device, state.amp_dtype):
        losses = forward_losses(state, spec, corrupted, mask, epoch)

    total = losses.total
    if state.last_good is not None:
        state.last_good.snapshot()
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(total).backward()
    state.scaler.unscale_(state.optimizer)
    clip_gradients_(state.student, cfg.clip_grad, cfg.clip_mode)
    state.scaler.step(state.optimizer)  # skipped on device when a gradient is NaN / inf
    state.scaler.update()
    finite = torch.isfinite(total) & parameters_finite(list(state.student.parameters()))
    if state.last_good is not None:
        state.last_good.restore_unless(finite)

    with torch.no_grad():
        # a dropped (non-finite) step must not move the loss centers either
        for buffer, before in zip(state.criterion.buffers(), centers):
            buffer.copy_(torch.where(finite, buffer, before))
        ema_update_(state.teacher, state.student, float(state.momentum[min(it, len(state.momentum) - 1)]))
        state.nonfinite.record(finite, it)
    zero = torch.zeros((), device=state.device)
    parts = {"global": losses.global_, "local": losses.local, "reconstruction": losses.reconstruction}
    global_loss = state.criterion.global_loss
    entropy = global_loss.teacher_entropy if global_loss is not None else torch.zeros(2, device=state.device)
    return {"loss": total.detach(), **{k: (zero if v is None else v.detach()) for k, v in parts.items()},
            "teacher_entropy": entropy, "finite": finite}


def train_one_epoch(
    state: TrainState,
    loader: Iterable[dict],
    epoch: int,
    sums: torch.Tensor,
    *,
    start_step: int = 0,
    on_batch: Callable[[dict], None] | None = None,
    on_log: Callable[[int, dict], None] | None = None,
    on_save: Callable[[int], None] | None = None,
    progress: bool = False,
    bar: Any = None,
) -> None:
    """One pass over ``loader`` (from step ``start_step`` of the epoch on).

    ``sums`` (device, ``(EPOCH_SUMS,)``) accumulates the finite steps' losses (total, global,
    local, reconstruction), the global head's two teacher entropies and the steps' count;
    :func:`epoch_means` turns it into the epoch's means. The
    callbacks let the driver see each batch (``on_batch``: skipped files), log a step
    (``on_log(done, point)`` every ``log_every`` steps and at the epoch's end: that step's losses)
    and checkpoint mid-epoch (``on_save(done)`` every ``save_every_steps``). ``bar``: the run's
    progress bar (one per run, the driver's), advanced here; else ``progress`` draws one for the epoch.
    """
    cfg, steps = state.cfg, state.steps_per_epoch
    state.student.train()
    own_bar = bar is None and progress
    if own_bar:
        bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
    elif bar is not None:
        bar.set_description(f"pretraining, epoch {epoch + 1}/{cfg.epochs}")
    for step_in_epoch, batch in enumerate(loader, start=start_step):
        it = epoch * steps + step_in_epoch
        if on_batch is not None:
            on_batch(batch)
        waves = batch["wave"].to(state.device, non_blocking=True)
        lengths = torch.as_tensor(batch["length"]).to(state.device, non_blocking=True)
        out = train_step(state, waves, lengths, it)
        values = torch.cat([torch.stack([out["loss"], out["global"], out["local"], out["reconstruction"]]),
                            out["teacher_entropy"], torch.ones_like(out["loss"])[None]])
        sums += torch.where(out["finite"], values, torch.zeros_like(values))  # epoch means over finite steps
        done = step_in_epoch + 1
        if done % cfg.log_every == 0 or done == steps:
            point = {"step": it + 1, "epoch": epoch + (done / steps),
                     **{key: float(out[key]) for key in ("loss", *LOSS_NAMES)}, "lr": float(state.lr[it])}
            if on_log is not None:
                on_log(done, point)
            if bar is not None:
                bar.set_postfix(loss=f"{point['loss']:.4f}", lr=f"{state.lr[it]:.2e}")
        if bar is not None:
            bar.update(1)
        if on_save is not None and cfg.save_every_steps and done % cfg.save_every_steps == 0 and done < steps:
            on_save(done)
    if own_bar:
        bar.close()


def epoch_means(state: TrainState, sums: torch.Tensor, epoch: int) -> dict[str, Any]:
    """The epoch's log record: mean losses over finite steps (all processes; None when every step
    was skipped), the global head's mean teacher entropies (None without it), the schedules' values."""
    reduced = all_reduce_mean(sums, state.dist)
    means = reduced[:-1] / reduced[-1] if float(reduced[-1]) > 0 else torch.full_like(reduced[:-1], float("nan"))
    last_it = (epoch + 1) * state.steps_per_epoch - 1
    global_loss = state.criterion.global_loss
    return {
        "epoch": epoch + 1,
        "loss": _number(means[0]),
        **{f"loss_{name}": _number(means[i + 1]) for i, name in enumerate(LOSS_NAMES)},
        "teacher_entropy": _number(means[4]) if global_loss is not None else None,
        "teacher_batch_entropy": _number(means[5]) if global_loss is not None else None,
        "lr": float(state.lr[last_it]),
        "wd": float(state.wd[last_it]),
        "momentum": float(state.momentum[last_it]),
        "teacher_temp": float(global_loss.teacher_temperature(epoch)) if global_loss is not None else None,
    }


def _number(value: torch.Tensor) -> float | None:
    """A float for the log, None for NaN (an epoch with no finite step has no mean loss)."""
    value = float(value)
    return None if value != value else value


# ----------------------------------------------------------------------------- the k-NN monitor


def build_knn_monitor(state: TrainState) -> KnnProbe:
    """The k-NN monitor's labelled clips (``cfg.knn_dataset``), seen through the run's own front end
    (the pool's normalisation, the pretraining crop length), so that every encoder compared on it
    (the teacher at each measured epoch, the random init) gets the same inputs."""
    cfg = state.cfg
    return KnnProbe(
        cfg.knn_dataset,
        state.frontend,
        data_root=cfg.knn_data_root or None,
        max_clips=cfg.knn_max_clips,
        k=cfg.knn_k,
        temperature=cfg.knn_temperature,
        batch_size=max(cfg.batch_size, 8),
        device=state.device,
        clip_frames=cfg.knn_clip_frames,
    )


def evaluate(monitor: KnnProbe, encoder: nn.Module) -> float:
    """k-NN accuracy (percent) of ``encoder``'s class tokens on the monitor's clips."""
    return monitor.accuracy(encoder)


__all__ = [
    "EPOCH_SUMS",
    "LOSS_NAMES",
    "TrainState",
    "build_criterion",
    "build_knn_monitor",
    "build_student",
    "build_training",
    "epoch_means",
    "evaluate",
    "forward_losses",
    "initial_encoder",
    "local_crops",
    "mask_views",
    "spectrograms",
    "step_seed",
    "train_one_epoch",
    "train_step",
]
