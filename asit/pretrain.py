"""ASiT pretraining engine: one epoch loop for a notebook, a laptop, or ``torchrun`` on N GPUs.

    python -m asit.pretrain --preset cpu
    python -m asit.pretrain --preset smoke --set epochs=3 --set masking.max_fraction=0.5
    torchrun --nproc_per_node=4 -m asit.pretrain --preset paper --set data_root=/data/audioset

One step (:func:`train_step`), following the method reference and DINO's ``main_dino.py``:

1. waveforms ``(B, V, S)`` (``V = num_global_views`` crops per clip, cut by the data workers)
   become normalised spectrograms ``(V*B, 1, T, F)`` on the device (:class:`FbankFrontend`);
2. :func:`asit.masking.group_mask` corrupts large groups of pixels of every view (student input);
3. the teacher (an EMA of the student, no gradients, no drop path) encodes the *clean* views;
4. the student encodes the corrupted views (plus optional 2 s local crops of the clean ones);
5. losses: global (class tokens, cross-view), local (patch tokens, same position), masked L1
   reconstruction; weighted sum;
6. AdamW with per-step lr and weight-decay schedules, gradient clipping, then the teacher's EMA
   update with its own momentum schedule.

Nothing in the step waits for the device: losses stay tensors, a non-finite step is dropped by
the gradient scaler's on-device check (exact at scale 1 in fp32/bf16), and the host reads values
only every ``log_every`` steps, at checkpoints and at epoch ends.

Reproducibility: every random draw of a step is seeded from ``(seed, step, rank)`` and every
data item's crop / roll from ``(seed, epoch, index)``, so a run killed mid-epoch and resumed from
its checkpoint continues exactly as an uninterrupted run (on CPU; GPU kernels may differ in the
last bits), and the data workers' number does not change the data.

Distributed: under ``torchrun`` each rank takes a contiguous slice of every global batch
(``batch_size`` clips each), gradients are averaged by DDP, the loss centers are all-reduced
inside the losses, and only rank 0 writes logs, checkpoints and the encoder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import asit
from asit import checkpoint as ckpt
from asit.config import MAY_CHANGE_ON_RESUME, PretrainConfig, get_preset, override
from asit.features import FbankFrontend
from asit.clipping import clip_gradients_
from asit.schedules import cosine_schedule
from asit.session import pick_device
from asit.teacher import ema_update_, make_teacher

LOSS_NAMES = ("global", "local", "reconstruction")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite and ``nan_policy="stop"``."""


# ----------------------------------------------------------------------------- distributed


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_preference: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when started by ``torchrun`` (nccl on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), pick_device(device_preference)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_preference in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local_rank), device


# ----------------------------------------------------------------------------- data


class EpochBatchSampler:
    """The batches of one epoch, identical for any number of processes.

    A global order is drawn from ``(seed, epoch)``; global step ``s`` covers positions
    ``[s * G, (s + 1) * G)`` with ``G = batch_size * world_size``, and rank ``r`` takes the
    ``r``-th contiguous slice of it. Incomplete last batches are dropped. ``start_step`` skips the
    steps a resumed run has already done. Yields lists of ``(epoch, index)`` keys for
    :class:`SeededItems`.
    """

    def __init__(self, num_items: int, batch_size: int, world_size: int, rank: int, seed: int, epoch: int, start_step: int = 0):
        self.num_items, self.batch_size = num_items, batch_size
        self.world_size, self.rank, self.seed, self.epoch = world_size, rank, seed, epoch
        self.start_step = start_step
        self.steps_per_epoch = num_items // (batch_size * world_size)

    def __len__(self) -> int:
        return max(self.steps_per_epoch - self.start_step, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_items, generator=generator).tolist()
        global_batch = self.batch_size * self.world_size
        for step in range(self.start_step, self.steps_per_epoch):
            first = step * global_batch + self.rank * self.batch_size
            yield [(self.epoch, order[i]) for i in range(first, first + self.batch_size)]


def _base_dataset(dataset: Dataset) -> Dataset:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


class SeededItems(Dataset):
    """Each item's random roll and crop drawn from ``(seed, epoch, index)`` only.

    The data set draws its rolls and crops from ``dataset.generator()``
    (:class:`asit.datasets.AudioDataset`); here that method returns a generator seeded for the
    item being loaded. Neither the worker that loads an item nor a resume mid-epoch changes the
    data, and the number of processes does not either.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed
        self._generator = torch.Generator()
        _base_dataset(dataset).generator = self._item_generator  # instance attribute beats the method

    def _item_generator(self) -> torch.Generator:
        return self._generator

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        self._generator.manual_seed((self.seed * 1_000_003 + epoch * 100_003 + index) % 2**63)
        return self.dataset[index]


def build_pretraining_data(cfg: PretrainConfig) -> Dataset:
    """The unlabelled pool (training splits only): ``num_global_views`` random crops per clip."""
    from asit.datasets import pretraining_pool

    names = {"names": tuple(cfg.datasets)} if cfg.datasets else {}  # default: every built-in data set
    data_root: Any = cfg.data_root or None
    if data_root and len(cfg.datasets) == 1:
        from asit.datasets import BUILTIN_FOLDERS

        name = cfg.datasets[0]
        if not (Path(data_root) / BUILTIN_FOLDERS.get(name, name)).is_dir():
            data_root = {name: data_root}  # one data set: data_root is its own unpacked root
    dataset = pretraining_pool(
        **names,
        data_root=data_root,
        num_frames=cfg.num_frames,
        random_crop=True,
        roll_prob=cfg.roll_prob,
        num_views=cfg.num_global_views,
        roll_once=cfg.roll_once,
        sample_rate=cfg.sample_rate,
    )
    if cfg.max_clips and cfg.max_clips < len(dataset):
        step = len(dataset) / cfg.max_clips  # evenly spread, so every pooled data set is present
        subset = Subset(dataset, [int(i * step) for i in range(cfg.max_clips)])
        dataset = subset
    return dataset


def _collate():
    from asit.datasets import collate_clips

    return collate_clips


def make_loader(dataset: Dataset, sampler: EpochBatchSampler, cfg: PretrainConfig, device: torch.device) -> DataLoader:
    return DataLoader(
        SeededItems(dataset, cfg.seed),
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=_collate(),
        pin_memory=device.type == "cuda",
    )


# ----------------------------------------------------------------------------- training state


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``amp`` on ``device`` (``None`` = full precision)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    if amp in ("fp16", "auto"):
        return torch.float16
    raise ValueError(f"amp must be auto, bf16, fp16 or off, got {amp!r}")


def param_groups(model: nn.Module) -> list[dict]:
    """DINO's split: weight decay on weight matrices only, none on biases and norm parameters."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "name": "decay"}, {"params": no_decay, "name": "no_decay", "weight_decay": 0.0}]


@dataclass
class TrainState:
    """Everything one optimisation step needs; :func:`build_training` makes it."""

    cfg: PretrainConfig
    device: torch.device
    student: nn.Module  # the ASiT model (encoder + heads), unwrapped
    model: nn.Module  # what the step calls: the student, or its DDP / compiled wrapper
    teacher: nn.Module
    frontend: FbankFrontend
    losses: nn.ModuleDict  # "global", "local" distillation losses (own centers, temperatures)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    lr: np.ndarray  # per-step schedules
    wd: np.ndarray
    momentum: np.ndarray
    steps_per_epoch: int
    dist: DistInfo = field(default_factory=DistInfo)
    mask_generator: torch.Generator | None = None
    bad_steps: torch.Tensor | None = None  # non-finite steps so far (device counter, read rarely)
    first_bad_step: torch.Tensor | None = None  # global step of the first one, -1 if none

    @property
    def peak_lr(self) -> float:
        return float(self.lr.max()) if len(self.lr) else self.cfg.base_lr


def _make_losses(cfg: PretrainConfig) -> nn.ModuleDict:
    from asit.losses import GlobalDistillationLoss, LocalDistillationLoss

    common = dict(
        num_epochs=cfg.epochs,
        warmup_teacher_temp=cfg.warmup_teacher_temp,
        teacher_temp=cfg.teacher_temp,
        warmup_teacher_temp_epochs=cfg.warmup_teacher_temp_epochs,
        student_temp=cfg.student_temp,
        center_momentum=cfg.center_momentum,
    )
    return nn.ModuleDict(
        {
            "global": GlobalDistillationLoss(cfg.global_dim, teacher_views=cfg.num_global_views, **common),
            "local": LocalDistillationLoss(cfg.local_dim, **common),
        }
    )


def build_student(cfg: PretrainConfig) -> nn.Module:
    """The ASiT student of ``cfg`` with its initial weights (seeded by ``cfg.seed``, on the CPU)."""
    from asit.models import build_asit

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


def build_training(
    cfg: PretrainConfig,
    device: torch.device | str,
    stats=None,
    steps_per_epoch: int = 1,
    dist_info: DistInfo | None = None,
) -> TrainState:
    """Student, teacher, front end, losses, optimiser, scaler and schedules for ``cfg``.

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
    model: nn.Module = student
    if dist_info.enabled:
        every_objective = cfg.use_global and cfg.use_local and cfg.use_reconstruction
        model = nn.parallel.DistributedDataParallel(
            student,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not every_objective,  # a switched-off objective leaves its head unused
        )
    if cfg.compile:
        model = torch.compile(model)

    global_batch = cfg.batch_size * dist_info.world_size
    peak_lr = cfg.base_lr * global_batch / 256  # linear scaling rule
    end = cfg.schedule_end
    lr = cosine_schedule(peak_lr, cfg.min_lr, cfg.epochs, steps_per_epoch, warmup_epochs=cfg.warmup_epochs, end=end)
    wd = cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, cfg.epochs, steps_per_epoch, end=end)
    momentum = cosine_schedule(cfg.momentum_teacher, 1.0, cfg.epochs, steps_per_epoch, end=end)

    amp_dtype = resolve_amp(cfg.amp, device)
    # Fused AdamW (one kernel for all parameters) on CUDA, and on CPU where it exists: it also
    # lets the scaler skip a non-finite step without waiting for the device.
    try:
        optimizer = torch.optim.AdamW(param_groups(student), lr=peak_lr, fused=device.type in ("cuda", "cpu"))
    except (RuntimeError, TypeError):
        optimizer = torch.optim.AdamW(param_groups(student), lr=peak_lr)
    # fp16 needs loss scaling; in fp32 / bf16 a scale of 1 (exact) still gives on-device
    # non-finite detection and step skipping.
    fp16 = amp_dtype == torch.float16
    try:
        scaler = torch.amp.GradScaler(
            device.type, init_scale=2.0**16 if fp16 else 1.0, growth_interval=2000 if fp16 else 2**30
        )
    except (RuntimeError, ValueError):  # a backend without GradScaler support
        scaler = torch.amp.GradScaler(device.type, enabled=False)

    frontend = FbankFrontend(cfg.num_frames, stats, sample_rate=cfg.sample_rate, padding=cfg.padding).to(device)
    losses = _make_losses(cfg).to(device)
    return TrainState(
        cfg=cfg,
        device=device,
        student=student,
        model=model,
        teacher=teacher,
        frontend=frontend,
        losses=losses,
        optimizer=optimizer,
        scaler=scaler,
        amp_dtype=amp_dtype,
        lr=lr,
        wd=wd,
        momentum=momentum,
        steps_per_epoch=steps_per_epoch,
        dist=dist_info,
        mask_generator=torch.Generator(device=device),
        bad_steps=torch.zeros((), dtype=torch.long, device=device),
        first_bad_step=torch.full((), -1, dtype=torch.long, device=device),
    )


# ----------------------------------------------------------------------------- one step


def _step_seed(cfg: PretrainConfig, it: int, rank: int) -> int:
    return (cfg.seed * 7_919 + it * 104_729 + rank * 15_485_863 + 1) % 2**62


def _local_crops(spec: torch.Tensor, cfg: PretrainConfig, generator: torch.Generator) -> torch.Tensor:
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


def _mask_views(state: TrainState, spec: torch.Tensor, views: int, it: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-mask every view; the masks are a function of the step, not of the process count.

    With zero-filling (the default) under DDP, each rank draws the masks of the whole global batch
    from the same seed and keeps its own slice, so N processes mask exactly as one process with the
    same global batch would (mask drawing is cheap next to the ViT). Noise and swap corruption
    depend on the local batch and are drawn per rank.
    """
    from asit.masking import group_mask

    cfg, info = state.cfg, state.dist
    plain = cfg.masking.corruption == "zeros" and cfg.masking.swap_prob == 0
    state.mask_generator.manual_seed(_step_seed(cfg, it, 0 if plain else info.rank))
    if not info.enabled or not plain:
        return group_mask(spec, cfg.masking, state.mask_generator, views=views)
    batch = spec.shape[0] // views
    shape = (views, info.world_size, batch) + spec.shape[1:]
    _, mask = group_mask(spec.new_zeros(()).expand(views * info.world_size * batch, *spec.shape[1:]), cfg.masking, state.mask_generator)
    mask = mask.view(shape)[:, info.rank].reshape(spec.shape)  # global rows v*G + r*B + b -> local v*B + b
    return spec.masked_fill(mask, 0.0), mask


def _set_schedules(state: TrainState, it: int) -> None:
    it = min(it, len(state.lr) - 1)
    for group in state.optimizer.param_groups:
        group["lr"] = float(state.lr[it])
        if group.get("name") == "decay":
            group["weight_decay"] = float(state.wd[it])


def train_step(state: TrainState, waves: torch.Tensor, lengths: torch.Tensor, it: int) -> dict[str, torch.Tensor]:
    """One optimisation step on a batch already on the device; returns detached loss tensors.

    Args:
        waves: ``(B, V, S)`` waveform crops, ``V = num_global_views`` (``(B, S)`` means ``V = 1``).
        lengths: ``(B, V)`` or ``(B,)`` valid samples per crop.
        it: global step (indexes the schedules, seeds the masks).

    Returns:
        ``{"loss", "global", "local", "reconstruction", "finite"}`` as 0-d tensors (no host sync).
    """
    cfg, device = state.cfg, state.device
    epoch = it // state.steps_per_epoch  # the losses' teacher-temperature schedule is per epoch (DINO)
    _set_schedules(state, it)
    torch.manual_seed(_step_seed(cfg, it, state.dist.rank))  # drop path: a function of the step and rank

    if waves.dim() == 2:
        waves, lengths = waves[:, None], lengths.reshape(-1, 1)
    batch, views, samples = waves.shape
    lengths = lengths.reshape(batch, -1).expand(batch, views)
    # view-major order: rows [v*B, (v+1)*B) hold view v of every clip (DINO's chunk layout)
    spec = state.frontend(waves.transpose(0, 1).reshape(views * batch, samples), lengths.T.reshape(-1))  # (V*B, 1, T, F)

    corrupted, mask = _mask_views(state, spec, views, it)  # (V*B, 1, T, F) each
    distill = cfg.use_global or cfg.use_local
    autocast = torch.autocast(device.type, dtype=state.amp_dtype, enabled=state.amp_dtype is not None)

    zero = torch.zeros((), device=device)
    parts = {name: zero for name in LOSS_NAMES}
    centers = [buffer.clone() for buffer in state.losses.buffers()]  # restored if the step is dropped
    with autocast:
        teacher_out = None
        if distill:
            with torch.no_grad():
                teacher_out = state.teacher(spec, return_reconstruction=False)
        out = state.model(corrupted, return_reconstruction=cfg.use_reconstruction)
        if cfg.use_global:
            student_global = out.global_out  # (V*B, Cg)
            if cfg.num_local_crops > 0:
                local = _local_crops(spec, cfg, state.mask_generator)
                student_global = torch.cat([student_global, state.model(local, return_reconstruction=False).global_out])
            parts["global"] = state.losses["global"](student_global.float(), teacher_out.global_out.float(), epoch)
        if cfg.use_local:
            parts["local"] = state.losses["local"](out.local_out.float(), teacher_out.local_out.float(), epoch)
        if cfg.use_reconstruction:
            from asit.losses import masked_l1_loss

            parts["reconstruction"] = masked_l1_loss(out.reconstruction.float(), spec, mask)
        total = (
            cfg.weight_global * parts["global"]
            + cfg.weight_local * parts["local"]
            + cfg.weight_reconstruction * parts["reconstruction"]
        )

    finite = torch.isfinite(total)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(total).backward()
    state.scaler.unscale_(state.optimizer)
    clip_gradients_(state.student, cfg.clip_grad, cfg.clip_mode)
    state.scaler.step(state.optimizer)  # skipped on device when a gradient is NaN / inf
    state.scaler.update()

    with torch.no_grad():
        # a dropped (non-finite) step must not move the loss centers either
        for buffer, before in zip(state.losses.buffers(), centers):
            buffer.copy_(torch.where(finite, buffer, before))
        momentum = float(state.momentum[min(it, len(state.momentum) - 1)])
        ema_update_(state.teacher, state.student, momentum)
        state.bad_steps += (~finite).long()
        state.first_bad_step.copy_(
            torch.where((~finite) & (state.first_bad_step < 0), torch.tensor(it, device=device), state.first_bad_step)
        )
    return {"loss": total.detach(), **{name: value.detach() for name, value in parts.items()}, "finite": finite}


# ----------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    np.random.set_state(("MT19937", state["numpy"]["key"].numpy().astype(np.uint32), state["numpy"]["pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def training_state_dict(state: TrainState) -> dict:
    return {
        "student": state.student.state_dict(),
        "teacher": state.teacher.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        "losses": state.losses.state_dict(),
        "mask_generator": state.mask_generator.get_state(),
        "rng": _rng_state(),
    }


def load_training_state(state: TrainState, saved: dict) -> None:
    state.student.load_state_dict(saved["student"])
    state.teacher.load_state_dict(saved["teacher"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scaler.load_state_dict(saved["scaler"])
    state.losses.load_state_dict(saved["losses"])
    state.mask_generator.set_state(saved["mask_generator"])
    _set_rng_state(saved["rng"])


# ----------------------------------------------------------------------------- the run


@dataclass
class PretrainResult:
    history: list[dict]  # one dict per epoch, as in log.jsonl
    run_dir: Path
    encoder_dir: Path
    summary: dict = field(default_factory=dict)


def _all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        tensor /= info.world_size
    return tensor


def _knn_probe(state: TrainState, cfg: PretrainConfig):
    """The k-NN monitor's labelled clips (``cfg.knn_dataset``), seen through the run's own front end
    (the pool's normalisation, the pretraining crop length), so that every encoder compared on it
    (the teacher at each measured epoch, the random init) gets the same inputs."""
    from asit.knn import KnnProbe

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


def _teacher_temperature(state: TrainState, epoch: int) -> float | None:
    loss = state.losses["global"]
    for attr in ("teacher_temperature", "teacher_temp"):
        value = getattr(loss, attr, None)
        if callable(value):
            return float(value(epoch))
    schedule = getattr(loss, "teacher_temp_schedule", None)
    if schedule is not None:
        return float(schedule[min(epoch, len(schedule) - 1)])
    return None


def _save_encoder(state: TrainState, cfg: PretrainConfig, run_dir: Path, extra: dict) -> Path:
    from asit.models import save_encoder

    directory = run_dir / "encoder"
    save_encoder(
        state.teacher.encoder,
        directory,
        extra={"source": "asit.pretrain (teacher)", "preset": cfg.preset, **extra},
        stats=state.frontend.stats,
        sample_rate=cfg.sample_rate,
    )
    return directory


def pretrain(cfg: PretrainConfig, progress: bool = True) -> PretrainResult:
    """Pretrain ASiT per ``cfg``; resume from ``<run_dir>/checkpoint.pth`` when ``cfg.resume == "auto"``.

    ``resume="auto"``: a checkpoint in the run folder written under compatible settings (every field
    equal except :data:`asit.config.MAY_CHANGE_ON_RESUME`) is continued, a finished one is reused
    (nothing to train; the summary is rewritten) and ``epochs`` may grow; one written under other
    settings raises :class:`asit.checkpoint.CheckpointMismatch` naming each differing field, never
    silently reused. ``resume="never"`` starts over (the folder's logs and summary are replaced).

    Writes ``<run_dir>/``: ``config.json``, ``log.jsonl`` (one line per epoch: mean losses, lr, wd,
    momentum, teacher temperature, time, ``knn_accuracy`` in percent where measured),
    ``steps.jsonl`` (every ``log_every`` steps: that step's losses), checkpoints, ``encoder/`` (the
    teacher's) and ``summary.json`` (``epochs``, ``final_loss``, first and final losses per objective,
    ``knn_accuracy`` and ``knn_accuracy_random_init`` in percent: the final teacher and the same
    encoder at its initial weights, on the same clips through the same front end).

    Returns the per-epoch history, the run directory and the saved teacher encoder's directory.
    Raises :class:`NonFiniteLossError` when the loss is NaN / infinite and ``nan_policy="stop"``
    (the last good checkpoint stays on disk).
    """
    if cfg.nan_policy not in ("stop", "skip"):
        raise ValueError(f"nan_policy must be 'stop' or 'skip', got {cfg.nan_policy!r}")
    if cfg.use_global and cfg.num_global_views + cfg.num_local_crops < 2:
        raise ValueError("the global loss pairs different views: use num_global_views=2 (or local crops), or use_global=false")
    info, device = init_distributed(cfg.device)
    run_dir = cfg.run_dir()
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    dataset = build_pretraining_data(cfg)
    global_batch = cfg.batch_size * info.world_size
    steps_per_epoch = len(dataset) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(dataset)} clips make no full batch of {global_batch} (batch_size {cfg.batch_size} x {info.world_size} "
            "processes); lower batch_size or add data"
        )
    base = _base_dataset(dataset)
    stats = base.stats  # normalisation: published numbers or computed over the pool (cached)
    state = build_training(cfg, device, stats, steps_per_epoch, info)

    history: list[dict] = []
    start_epoch, start_step = 0, 0
    sums = torch.zeros(len(LOSS_NAMES) + 2, device=device)  # loss, global, local, reconstruction, finite steps
    from asit.datasets import SkipLog

    skipped = SkipLog(base.skipped)  # bad files found when the pool was built, then by the workers
    resume_path = None
    if cfg.resume == "auto":
        resume_path = ckpt.find_latest(run_dir)
    elif cfg.resume not in ("never", ""):
        resume_path = Path(cfg.resume)
    if resume_path is not None:
        saved = ckpt.load_checkpoint(resume_path, cfg, may_change=MAY_CHANGE_ON_RESUME, map_location=device)
        load_training_state(state, saved)
        start_epoch, start_step = int(saved["epoch"]), int(saved["step_in_epoch"])
        history = list(saved.get("history", []))
        sums = saved["sums"].to(device)
        skipped.extend(tuple(record) for record in saved.get("skipped_files", []))
        state.bad_steps.fill_(int(saved.get("bad_steps", 0)))
        if start_step >= steps_per_epoch:
            start_epoch, start_step = start_epoch + 1, 0
            sums.zero_()
        if info.is_main:
            print(f"resuming {run_dir} from {resume_path.name}: epoch {start_epoch}, step {start_step}", flush=True)
    if info.is_main:
        cfg.to_json(run_dir / "config.json")
        if not history:  # a fresh run replaces an old run's logs
            for name in ("log.jsonl", "steps.jsonl", "summary.json"):
                (run_dir / name).unlink(missing_ok=True)

    def save(epoch: int, step_in_epoch: int, numbered: bool) -> None:
        check_finite(epoch, step_in_epoch)
        if not info.is_main:
            return
        payload = training_state_dict(state)
        payload.update(
            epoch=epoch,
            step_in_epoch=step_in_epoch,
            it=epoch * steps_per_epoch + step_in_epoch,
            history=history,
            sums=sums.cpu(),
            skipped_files=[list(record) for record in skipped.records],
            bad_steps=int(state.bad_steps),
        )
        ckpt.save_checkpoint(payload, run_dir, cfg, epoch=epoch + 1 if numbered else None, keep_last=cfg.keep_last)

    def check_finite(epoch: int, step_in_epoch: int) -> None:
        """Read the device's non-finite counter (a host sync: only at log points and saves)."""
        if cfg.nan_policy != "stop" or int(state.bad_steps) == 0:
            return
        first = int(state.first_bad_step)
        last_good = ckpt.find_latest(run_dir)
        where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written before it"
        raise NonFiniteLossError(
            f"the loss became NaN or infinite at step {first} (epoch {first // steps_per_epoch}); training stopped and "
            f"{where}. Try a lower base_lr, a longer warmup_epochs, clip_grad 1.0, amp=off (or bf16), "
            "or nan_policy=skip to drop such steps."
        )

    encoder_dir = run_dir / "encoder"
    probe = None  # the k-NN monitor's clips, loaded at its first use
    started = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.time()
        sampler = EpochBatchSampler(len(dataset), cfg.batch_size, info.world_size, info.rank, cfg.seed, epoch, start_step)
        loader = make_loader(dataset, sampler, cfg, device)
        state.student.train()
        bar = None
        if progress and info.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for step_in_epoch, batch in enumerate(loader, start=start_step):
            it = epoch * steps_per_epoch + step_in_epoch
            skipped.extend(batch.get("skipped", []))
            waves = batch["wave"].to(device, non_blocking=True)
            lengths = torch.as_tensor(batch["length"]).to(device, non_blocking=True)
            out = train_step(state, waves, lengths, it)
            values = torch.stack([out["loss"], out["global"], out["local"], out["reconstruction"], torch.ones_like(out["loss"])])
            sums += torch.where(out["finite"], values, torch.zeros_like(values))  # epoch means over finite steps
            done = step_in_epoch + 1
            if done % cfg.log_every == 0 or done == steps_per_epoch:
                check_finite(epoch, done)
                if info.is_main:  # this step's losses (one step, not a mean): the curves' detail
                    point = {"step": it + 1, "epoch": epoch + (done / steps_per_epoch),
                             **{key: float(out[key]) for key in ("loss", *LOSS_NAMES)}, "lr": float(state.lr[it])}
                    with open(run_dir / "steps.jsonl", "a") as steps_log:
                        steps_log.write(json.dumps(point) + "\n")
                if bar is not None:
                    bar.set_postfix(loss=f"{out['loss'].item():.4f}", lr=f"{state.lr[it]:.2e}")
            if bar is not None:
                bar.update(1)
            if cfg.save_every_steps and done % cfg.save_every_steps == 0 and done < steps_per_epoch:
                save(epoch, done, numbered=False)
        if bar is not None:
            bar.close()

        check_finite(epoch, steps_per_epoch)
        if info.enabled:  # every rank's workers found their own bad files
            gathered: list = [None] * info.world_size
            dist.all_gather_object(gathered, skipped.records)
            for records in gathered:
                skipped.extend(records)
        reduced = _all_reduce_mean(sums, info)
        means = reduced[:-1] / reduced[-1].clamp_min(1e-12)
        last_it = (epoch + 1) * steps_per_epoch - 1
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(means[0]),
            **{f"loss_{name}": float(means[i + 1]) for i, name in enumerate(LOSS_NAMES)},
            "lr": float(state.lr[last_it]),
            "wd": float(state.wd[last_it]),
            "momentum": float(state.momentum[last_it]),
            "teacher_temp": _teacher_temperature(state, epoch),
            "skipped_files": len(skipped),
            "skipped_steps": int(state.bad_steps),
            "steps": steps_per_epoch,
            "time_s": round(time.time() - epoch_start, 3),
        }
        is_last = epoch + 1 == cfg.epochs
        if cfg.knn_every and ((epoch + 1) % cfg.knn_every == 0 or is_last) and info.is_main:
            probe = probe or _knn_probe(state, cfg)
            record["knn_accuracy"] = probe.accuracy(state.teacher.encoder)  # percent
        history.append(record)
        sums.zero_()
        start_step = 0
        if info.is_main:
            with open(run_dir / "log.jsonl", "a") as log:
                log.write(json.dumps(record) + "\n")
            if progress:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k.startswith("loss") or k == "knn_accuracy")
                print(f"epoch {epoch + 1}/{cfg.epochs}: {shown}", flush=True)
        if is_last or (cfg.save_every and (epoch + 1) % cfg.save_every == 0):
            save(epoch, steps_per_epoch, numbered=True)
            if info.is_main:
                encoder_dir = _save_encoder(state, cfg, run_dir, {"epoch": epoch + 1})

    # k-NN of the final teacher against the same architecture at its initial weights (the run's own
    # starting point), on the same clips through the same front end: what pretraining added.
    knn_final = next((h["knn_accuracy"] for h in reversed(history) if "knn_accuracy" in h), None)
    knn_random = None
    if cfg.knn_every and info.is_main and history:
        probe = probe or _knn_probe(state, cfg)
        knn_random = probe.accuracy(initial_encoder(cfg).to(device))
        if knn_final is None:  # a run resumed after its last epoch: measure the teacher now
            knn_final = probe.accuracy(state.teacher.encoder)
    final = history[-1] if history else {}
    summary = {
        "preset": cfg.preset,
        "run_dir": str(run_dir),
        "encoder_dir": str(encoder_dir),
        "epochs": cfg.epochs,
        "steps": sum(h.get("steps", 0) for h in history),
        "final_loss": final.get("loss"),
        "final_losses": {name: final.get(f"loss_{name}") for name in LOSS_NAMES},
        "first_losses": {name: history[0].get(f"loss_{name}") for name in LOSS_NAMES} if history else {},
        "knn_accuracy": knn_final,  # percent, the teacher's class token (None: monitor off)
        "knn_accuracy_random_init": knn_random,  # percent, the same encoder before training
        "knn_dataset": cfg.knn_dataset if cfg.knn_every else None,
        "knn_clips": list(probe.sizes) if probe is not None else None,  # (bank, queries)
        "knn_k": cfg.knn_k,
        "train_time_s": round(sum(h.get("time_s", 0.0) for h in history), 3),  # every epoch, resumed or not
        "final": final,
        "skipped_files": len(skipped),
        "skipped_kinds": dict(skipped.counts),
        "skipped": [list(record) for record in skipped.records],
        "skipped_steps": int(state.bad_steps),
        "time_s": round(time.time() - started, 3),
        "world_size": info.world_size,
        "device": str(device),
        "asit_version": asit.__version__,
    }
    if info.is_main:
        if not encoder_dir.exists() and history:
            encoder_dir = _save_encoder(state, cfg, run_dir, {"epoch": len(history)})
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if progress and knn_final is not None:
            shown = "-" if knn_random is None else f"{knn_random:.1f}%"
            print(f"k-NN accuracy on {cfg.knn_dataset}: pretrained {knn_final:.1f}%, random init {shown}", flush=True)
        if progress or summary["skipped_files"]:
            if summary["skipped_files"]:
                print(skipped.summary() + "; see summary.json for each file and why", flush=True)
            if summary["skipped_steps"]:
                print(f"skipped {summary['skipped_steps']} step(s) with a non-finite loss", flush=True)
    if info.enabled:
        dist.barrier()
    return PretrainResult(history=history, run_dir=run_dir, encoder_dir=encoder_dir, summary=summary)


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m asit.pretrain",
        description="ASiT self-supervised pretraining (GMML reconstruction + local and global self-distillation).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "gpu", "paper", "paper_v2"],
                        help="starting settings: smoke (tests, seconds), cpu (laptop, minutes), gpu (Colab T4, ~1 h), "
                             "paper (ViT-B, AudioSet-2M, the authors' released code), paper_v2 (its later revision)")
    parser.add_argument("--config", default=None, help="a config.json from an earlier run (replaces the preset)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override a PretrainConfig field, e.g. --set base_lr=2e-4 --set masking.max_fraction=0.5; "
                             "see asit/config.py for every field and what to try when training is unstable")
    parser.add_argument("--resume", default=None,
                        help="'auto' continues from <run_dir>/checkpoint.pth if present, 'never' starts over, "
                             "or a checkpoint path (default: the config's, auto)")
    parser.add_argument("--output-dir", default=None, help="runs go to <output_dir>/pretrain/<run_name>/")
    parser.add_argument("--run-name", default=None, help="the run's folder name (default: the preset)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log files only)")
    return parser


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    cfg = PretrainConfig.from_json(args.config) if args.config else get_preset(args.preset)
    cfg = override(cfg, *args.assignments)
    changes = {}
    if args.resume is not None:
        changes["resume"] = args.resume
    if args.output_dir is not None:
        changes["output_dir"] = args.output_dir
    if args.run_name is not None:
        changes["run_name"] = args.run_name
    return dataclasses.replace(cfg, **changes)


def main(argv: Sequence[str] | None = None) -> PretrainResult:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    try:
        result = pretrain(cfg, progress=not args.no_progress)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"encoder saved to {result.encoder_dir}")
    return result


if __name__ == "__main__":
    main()
