"""ASiT pretraining driver: config, data, engine, checkpoints, results, and the CLI.

    python -m asit.pretrain --preset cpu
    python -m asit.pretrain --preset smoke --set epochs=3 --set masking.max_fraction=0.5
    torchrun --nproc_per_node=4 -m asit.pretrain --preset paper --set data_root=/data/audioset

The step, the epoch loop and the k-NN monitor are :mod:`asit.engine_pretrain`'s; the shared
training core (mixed precision, parameter groups, the non-finite policy, ``torchrun`` start-up,
``--set``) is :mod:`asit.training`'s. This module wires them to the data, the checkpoints and
the run folder.

Reproducibility: every random draw of a step is seeded from ``(seed, step, rank)`` and every
data item's crop / roll from ``(seed, epoch, index)`` (:class:`SeededItems`), so a run killed
mid-epoch and resumed from its checkpoint continues exactly as an uninterrupted run (on CPU; GPU
kernels may differ in the last bits), and the data workers' number does not change the data.

Distributed: under ``torchrun`` each rank takes a contiguous slice of every global batch
(``batch_size`` clips each, :class:`EpochBatchSampler`), gradients are averaged by DDP, the loss
centers are all-reduced inside the losses, and only rank 0 writes logs, checkpoints and the encoder.
A rank that hangs or is stopped ends the job after :data:`asit.training.DIST_TIMEOUT_S` (10 minutes;
``ASIT_DIST_TIMEOUT_S=<seconds>`` changes it), not after PyTorch's default half hour.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
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
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

import asit
from asit import checkpoint as ckpt
from asit.config import MAY_CHANGE_ON_RESUME, PretrainConfig, get_preset
from asit.datasets import BUILTIN_FOLDERS, SkipLog, collate_clips, pretraining_pool
from asit.datasets.base import base_dataset
from asit.engine_pretrain import (
    EPOCH_SUMS,
    LOSS_NAMES,
    TrainState,
    build_knn_monitor,
    build_student,
    build_training,
    epoch_means,
    evaluate,
    initial_encoder,
    train_one_epoch,
    train_step,
)
from asit.atomic import atomic_write
from asit.losses import head_collapse
from asit.models import NonFiniteWeightsError, save_encoder
from asit.session import PRESETS, portable_path
from asit.training import (
    MAX_SKIPPED_SHARE,
    DistInfo,
    NonFiniteLossError,
    apply_settings,
    check_skipped_share,
    init_distributed,
)

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
        base_dataset(dataset).generator = self._item_generator  # instance attribute beats the method

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
    names = {"names": tuple(cfg.datasets)} if cfg.datasets else {}  # default: every built-in data set
    data_root: Any = cfg.data_root or None
    if data_root and len(cfg.datasets) == 1:
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


def make_loader(dataset: Dataset, sampler: EpochBatchSampler, cfg: PretrainConfig, device: torch.device) -> DataLoader:
    return DataLoader(
        SeededItems(dataset, cfg.seed),
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate_clips,
        pin_memory=device.type == "cuda",
    )


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
        "losses": state.criterion.state_dict(),  # the criterion's centers
        "mask_generator": state.mask_generator.get_state(),
        "rng": _rng_state(),
    }


def load_training_state(state: TrainState, saved: dict) -> None:
    state.student.load_state_dict(saved["student"])
    state.teacher.load_state_dict(saved["teacher"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scaler.load_state_dict(saved["scaler"])
    state.criterion.load_state_dict(saved["losses"])
    if saved["mask_generator"].numel() == state.mask_generator.get_state().numel():  # a CUDA generator's state
        state.mask_generator.set_state(saved["mask_generator"])  # does not fit a CPU one; every step reseeds it anyway
    _set_rng_state(saved["rng"])


# ----------------------------------------------------------------------------- the run


@dataclass
class PretrainResult:
    history: list[dict]  # one dict per epoch, as in log.jsonl
    run_dir: Path
    encoder_dir: Path
    summary: dict = field(default_factory=dict)


@dataclass
class _Run:
    """The driver's bookkeeping for one run: where it writes, what it has done so far."""

    cfg: PretrainConfig
    info: DistInfo
    run_dir: Path
    dataset: Dataset
    state: TrainState
    sums: torch.Tensor  # losses, teacher entropies, finite steps (this epoch, on the device; EPOCH_SUMS)
    skipped: SkipLog  # bad files found when the pool was built, then by the workers
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    start_step: int = 0
    resumed: bool = False
    monitor: Any = None  # the k-NN monitor's clips, loaded at its first use

    @property
    def steps_per_epoch(self) -> int:
        return self.state.steps_per_epoch

    @property
    def encoder_dir(self) -> Path:
        return self.run_dir / "encoder"


def _start(cfg: PretrainConfig) -> _Run:
    """Check ``cfg``, join the process group, build the data and the training state."""
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
    base = base_dataset(dataset)
    state = build_training(cfg, device, base.stats, steps_per_epoch, info)  # stats: published, or over the pool
    sums = torch.zeros(EPOCH_SUMS, device=device)
    return _Run(cfg, info, run_dir, dataset, state, sums, SkipLog(base.skipped))


def _resume(run: _Run) -> None:
    """Continue from the run's checkpoint (``resume="auto"`` or a path), if there is one."""
    cfg, state = run.cfg, run.state
    if cfg.resume == "auto":  # checkpoint.pth, or the newest intact numbered one (with a warning)
        found = ckpt.load_latest_checkpoint(run.run_dir, cfg, may_change=MAY_CHANGE_ON_RESUME, map_location=state.device)
        if found is None:
            return
        resume_path, saved = found
    elif cfg.resume not in ("never", ""):
        resume_path = Path(cfg.resume)
        saved = ckpt.load_checkpoint(resume_path, cfg, may_change=MAY_CHANGE_ON_RESUME, map_location=state.device)
    else:
        return
    _check_same_data(run, saved, resume_path)
    load_training_state(state, saved)
    run.resumed = True
    run.start_epoch, run.start_step = int(saved["epoch"]), int(saved["step_in_epoch"])
    run.history = list(saved.get("history", []))
    run.sums = _epoch_sums(saved["sums"]).to(state.device)
    run.skipped.extend(tuple(record) for record in saved.get("skipped_files", []))
    state.nonfinite.count.fill_(int(saved.get("bad_steps", 0)))
    if run.start_step >= run.steps_per_epoch:
        run.start_epoch, run.start_step = run.start_epoch + 1, 0
        run.sums.zero_()
    if run.info.is_main:
        _trim_logs(run, int(saved.get("it", run.start_epoch * run.steps_per_epoch + run.start_step)))
        print(f"resuming {run.run_dir} from {resume_path.name}: epoch {run.start_epoch}, step {run.start_step}", flush=True)


def _check_same_data(run: _Run, saved: dict, path: Path) -> None:
    """Refuse to resume on other data: ``data_root`` may change (the same data moved elsewhere)
    only when the normalisation statistics stay those the checkpoint was trained with."""
    before, now = saved.get("config", {}).get("data_root", ""), run.cfg.data_root
    if before == now:
        return
    then, stats = saved.get("norm_stats"), run.state.frontend.stats
    if then is not None and stats is not None and all(
        math.isclose(then[key], getattr(stats, key), rel_tol=1e-6, abs_tol=1e-9) for key in ("mean", "std")
    ):
        if run.info.is_main:
            print(f"note: {path.name} was trained on data_root {before!r}; this run reads {now!r}, whose "
                  "normalisation statistics are the same: continuing", flush=True)
        return
    shown = f"mean {stats.mean:.4g}, std {stats.std:.4g}" if stats is not None else None
    raise ckpt.CheckpointMismatch(path, {"data_root": (before, now), "normalisation statistics": (then, shown)})


def _trim_logs(run: _Run, it: int) -> None:
    """After resuming at global step ``it``: ``log.jsonl`` holds the checkpoint's epochs and
    ``steps.jsonl`` every logged step up to ``it``, each once (a killed run may have logged past
    its last checkpoint, or cut a line in half)."""
    with atomic_write(run.run_dir / "log.jsonl", "w") as log:
        log.writelines(json.dumps(record) + "\n" for record in run.history)
    steps_file = run.run_dir / "steps.jsonl"
    points: dict[int, dict] = {}
    if steps_file.is_file():
        for line in steps_file.read_text().splitlines():
            try:
                point = json.loads(line)
            except ValueError:
                continue  # the line a kill cut short
            if isinstance(point, dict) and isinstance(point.get("step"), int) and point["step"] <= it:
                points[point["step"]] = point
    with atomic_write(steps_file, "w") as steps_log:
        steps_log.writelines(json.dumps(points[step]) + "\n" for step in sorted(points))


def _check_finite(run: _Run) -> None:
    """Stop on a non-finite loss under ``nan_policy="stop"`` (a host sync: only at log points and saves)."""

    def message(first: int) -> str:
        last_good = ckpt.find_latest(run.run_dir)
        where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written before it"
        return (
            f"the loss or the weights became NaN or infinite at step {first} (epoch {first // run.steps_per_epoch}); "
            "training stopped and "
            f"{where}. Try a lower base_lr, a longer warmup_epochs, clip_grad 1.0, amp=off (or bf16), "
            "or nan_policy=skip to drop such steps."
        )

    run.state.nonfinite.check(message)


def _save(run: _Run, epoch: int, step_in_epoch: int, numbered: bool) -> None:
    """Checkpoint the training state (rank 0), after checking the losses are finite."""
    _check_finite(run)
    if not run.info.is_main:
        return
    payload = training_state_dict(run.state)
    payload.update(
        epoch=epoch,
        step_in_epoch=step_in_epoch,
        it=epoch * run.steps_per_epoch + step_in_epoch,
        history=run.history,
        sums=run.sums.cpu(),
        skipped_files=[list(record) for record in run.skipped.records],
        bad_steps=int(run.state.nonfinite.count),
        norm_stats=_stats_dict(run.state.frontend.stats),  # a resume on other data is refused by these
    )
    ckpt.save_checkpoint(payload, run.run_dir, run.cfg, epoch=epoch + 1 if numbered else None, keep_last=run.cfg.keep_last)


def _stats_dict(stats) -> dict | None:
    return None if stats is None else {"mean": float(stats.mean), "std": float(stats.std)}


def _save_encoder(run: _Run, extra: dict) -> Path:
    """The teacher's encoder, as ``encoder/`` (safetensors + JSON, loadable by timm)."""
    save_encoder(
        run.state.teacher.encoder,
        run.encoder_dir,
        extra={"source": "asit.pretrain (teacher)", "preset": run.cfg.preset, **extra},
        stats=run.state.frontend.stats,
        sample_rate=run.cfg.sample_rate,
    )
    return run.encoder_dir


def _train_epoch(run: _Run, epoch: int, progress: bool, bar=None) -> None:
    """One epoch through the engine; logs steps to ``steps.jsonl`` and checkpoints mid-epoch."""
    cfg, info = run.cfg, run.info

    def log_step(done: int, point: dict) -> None:
        _check_finite(run)
        if info.is_main:  # this step's losses (one step, not a mean): the curves' detail
            point = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in point.items()}
            with open(run.run_dir / "steps.jsonl", "a") as steps_log:
                steps_log.write(json.dumps(point) + "\n")

    sampler = EpochBatchSampler(len(run.dataset), cfg.batch_size, info.world_size, info.rank, cfg.seed, epoch, run.start_step)
    train_one_epoch(
        run.state, make_loader(run.dataset, sampler, cfg, run.state.device), epoch, run.sums,
        start_step=run.start_step,
        on_batch=lambda batch: run.skipped.extend(batch.get("skipped", [])),
        on_log=log_step,
        on_save=lambda done: _save(run, epoch, done, numbered=False),
        progress=progress and info.is_main,
        bar=bar,
    )
    _check_finite(run)
    if info.enabled:  # every rank's workers found their own bad files
        gathered: list = [None] * info.world_size
        dist.all_gather_object(gathered, run.skipped.records)
        for records in gathered:
            run.skipped.extend(records)


def _end_epoch(run: _Run, epoch: int, seconds: float, progress: bool) -> None:
    """The epoch's log line (mean losses, schedules, k-NN where measured), checkpoint and encoder."""
    cfg, state = run.cfg, run.state
    record: dict[str, Any] = {
        **epoch_means(state, run.sums, epoch),
        "skipped_files": len(run.skipped),
        "skipped_steps": int(state.nonfinite.count),
        "steps": run.steps_per_epoch,
        "time_s": round(seconds, 3),
    }
    is_last = epoch + 1 == cfg.epochs
    if cfg.knn_every and ((epoch + 1) % cfg.knn_every == 0 or is_last) and run.info.is_main:
        run.monitor = run.monitor or build_knn_monitor(state)
        record["knn_accuracy"] = evaluate(run.monitor, state.teacher.encoder)  # percent
    run.history.append(record)
    run.sums.zero_()
    run.start_step = 0
    if run.info.is_main:
        with open(run.run_dir / "log.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")
        if progress:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                              if (k.startswith("loss") or k == "knn_accuracy") and v is not None)
            print(f"epoch {epoch + 1}/{cfg.epochs}: {shown}", flush=True)
    if is_last or (cfg.save_every and (epoch + 1) % cfg.save_every == 0):
        _save(run, epoch, run.steps_per_epoch, numbered=True)
        if run.info.is_main:
            _save_encoder(run, {"epoch": epoch + 1})


def _knn_results(run: _Run) -> tuple[float | None, float | None]:
    """k-NN of the final teacher against the same architecture at its initial weights (the run's own
    starting point), on the same clips through the same front end: what pretraining added."""
    knn_final = next((h["knn_accuracy"] for h in reversed(run.history) if "knn_accuracy" in h), None)
    knn_random = None
    if run.cfg.knn_every and run.info.is_main and run.history:
        run.monitor = run.monitor or build_knn_monitor(run.state)
        knn_random = evaluate(run.monitor, initial_encoder(run.cfg).to(run.state.device))
        if knn_final is None:  # a run resumed after its last epoch: measure the teacher now
            knn_final = evaluate(run.monitor, run.state.teacher.encoder)
    return knn_final, knn_random


def _epoch_sums(saved: torch.Tensor) -> torch.Tensor:
    """A checkpoint's partial-epoch sums in today's layout. Checkpoints written before the teacher
    entropies were logged hold 5 entries: their entropies are NaN, so that epoch logs None for them."""
    if saved.numel() == EPOCH_SUMS:
        return saved
    if saved.numel() == EPOCH_SUMS - 2:
        return torch.cat([saved[:-1], torch.full((2,), float("nan"), dtype=saved.dtype), saved[-1:]])
    raise ValueError(f"checkpoint's epoch sums have {saved.numel()} entries, expected {EPOCH_SUMS}")


def _summary(run: _Run, started: float) -> dict:
    cfg, history = run.cfg, run.history
    knn_final, knn_random = _knn_results(run)
    final = history[-1] if history else {}
    return {
        "preset": cfg.preset,
        "run_dir": portable_path(run.run_dir, run.cfg.output_dir),  # relative: no machine's folders
        "encoder_dir": portable_path(run.encoder_dir, run.cfg.output_dir),
        "epochs": cfg.epochs,
        "steps": sum(h.get("steps", 0) for h in history),
        "final_loss": final.get("loss"),
        "final_losses": {name: final.get(f"loss_{name}") for name in LOSS_NAMES},
        "first_losses": {name: history[0].get(f"loss_{name}") for name in LOSS_NAMES} if history else {},
        "global_head_collapse": head_collapse(final.get("teacher_entropy"), final.get("teacher_batch_entropy")),
        "knn_accuracy": knn_final,  # percent, the teacher's class token (None: monitor off)
        "knn_accuracy_random_init": knn_random,  # percent, the same encoder before training
        "knn_dataset": cfg.knn_dataset if cfg.knn_every else None,
        "knn_clips": list(run.monitor.sizes) if run.monitor is not None else None,  # (bank, queries)
        "knn_k": cfg.knn_k,
        "train_time_s": round(sum(h.get("time_s", 0.0) for h in history), 3),  # every epoch, resumed or not
        "final": final,
        "skipped_files": len(run.skipped),
        "skipped_kinds": dict(run.skipped.counts),
        "skipped": [list(record) for record in run.skipped.records],
        "skipped_steps": int(run.state.nonfinite.count),
        "max_skipped_share": MAX_SKIPPED_SHARE if cfg.nan_policy == "skip" else 0.0,
        "time_s": round(time.time() - started, 3),
        "world_size": run.info.world_size,
        "device": str(run.state.device),
        "asit_version": asit.__version__,
    }


def _report(run: _Run, summary: dict, progress: bool) -> None:
    """Write ``summary.json`` (rank 0) and say what the run found."""
    if not run.encoder_dir.exists() and run.history:
        _save_encoder(run, {"epoch": len(run.history)})
    (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    knn_final, knn_random = summary["knn_accuracy"], summary["knn_accuracy_random_init"]
    if progress and knn_final is not None:
        shown = "-" if knn_random is None else f"{knn_random:.1f}%"
        print(f"k-NN accuracy on {run.cfg.knn_dataset}: pretrained {knn_final:.1f}%, random init {shown}", flush=True)
    # What the run left out is part of its result: said whenever something was, also without progress
    # (a loop of quiet runs, as notebook 05's, does not repeat "skipped nothing"; summary.json has the counts).
    if progress or summary["skipped_files"]:
        where = "; see summary.json for each file and why" if summary["skipped_files"] else ""
        print(f"data: {run.skipped.summary()}{where}", flush=True)
    if summary["global_head_collapse"] is not None:  # said also without progress: the run taught nothing
        print(f"warning: the global head collapsed ({summary['global_head_collapse']}: teacher entropy "
              f"{summary['final']['teacher_entropy']:.3f}, batch {summary['final']['teacher_batch_entropy']:.3f} "
              "of ln K); its loss teaches nothing. Lower teacher_temp or lengthen warmup_teacher_temp_epochs "
              "(uniform), or raise center_momentum (one prototype), as DINO section 5.3", flush=True)
    if progress or summary["skipped_steps"]:
        print(f"steps: skipped {summary['skipped_steps']} of {summary['steps']} with a non-finite loss or weights "
              f"(nan_policy={run.cfg.nan_policy})", flush=True)


def pretrain(cfg: PretrainConfig, progress: bool = True) -> PretrainResult:
    """Pretrain ASiT per ``cfg``; resume from ``<run_dir>/checkpoint.pth`` when ``cfg.resume == "auto"``.

    ``resume="auto"``: a checkpoint in the run folder written under compatible settings (every field
    equal except :data:`asit.config.MAY_CHANGE_ON_RESUME`) is continued, a finished one is reused
    (nothing to train; the summary is rewritten) and ``epochs`` may grow; one written under other
    settings raises :class:`asit.checkpoint.CheckpointMismatch` naming each differing field, never
    silently reused. ``resume="never"`` starts over (the folder's logs and summary are replaced).

    Writes ``<run_dir>/``: ``config.json``, ``log.jsonl`` (one line per epoch: mean losses, lr, wd,
    momentum, teacher temperature, the global head's mean ``teacher_entropy`` and
    ``teacher_batch_entropy`` over ln K (:func:`asit.losses.teacher_entropies`), time,
    ``knn_accuracy`` in percent where measured),
    ``steps.jsonl`` (every ``log_every`` steps: that step's losses), checkpoints, ``encoder/`` (the
    teacher's) and ``summary.json`` (``epochs``, ``final_loss``, first and final losses per objective,
    ``global_head_collapse``: "uniform", "one prototype" or None, from the last epoch's entropies,
    also printed as a warning;
    ``knn_accuracy`` and ``knn_accuracy_random_init`` in percent: the final teacher and the same
    encoder at its initial weights, on the same clips through the same front end).

    Returns the per-epoch history, the run directory and the saved teacher encoder's directory.
    Raises :class:`asit.training.NonFiniteLossError` when the loss or the weights become NaN /
    infinite and ``nan_policy="stop"`` (the last good checkpoint stays on disk), and
    :class:`asit.training.TooManySkippedSteps` when ``nan_policy="skip"`` dropped more than
    :data:`asit.training.MAX_SKIPPED_SHARE` of the steps (after writing the summary and the
    encoder: the weights are finite, since a skipped step is undone). A resume with another
    ``data_root`` whose normalisation statistics differ raises :class:`asit.checkpoint.CheckpointMismatch`.
    """
    run = _start(cfg)
    _resume(run)
    if run.info.is_main:
        cfg.to_json(run.run_dir / "config.json")
        if not run.resumed:  # a fresh run replaces an old run's logs
            for name in ("log.jsonl", "steps.jsonl", "summary.json"):
                (run.run_dir / name).unlink(missing_ok=True)
    started = time.time()
    steps = run.state.steps_per_epoch
    bar = None  # one bar for the whole run (not one per epoch), on the main process only
    if progress and run.info.is_main and run.start_epoch < cfg.epochs:
        bar = tqdm(total=cfg.epochs * steps, initial=run.start_epoch * steps + run.start_step, desc="pretraining")
    for epoch in range(run.start_epoch, cfg.epochs):
        epoch_start = time.time()
        _train_epoch(run, epoch, progress, bar)
        _end_epoch(run, epoch, time.time() - epoch_start, progress)
    if bar is not None:
        bar.close()
    summary = _summary(run, started)
    if run.info.is_main:
        _report(run, summary, progress)
    if run.info.enabled:
        dist.barrier()
    if cfg.nan_policy == "skip":  # finite weights, but from too few good steps: a failed run all the same
        check_skipped_share(summary["skipped_steps"], summary["steps"])
    return PretrainResult(history=run.history, run_dir=run.run_dir, encoder_dir=run.encoder_dir, summary=summary)


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m asit.pretrain",
        description="ASiT self-supervised pretraining (GMML reconstruction + local and global self-distillation).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", default="cpu", choices=(*PRESETS, "paper_v2"),
                        help="starting settings: smoke (tests, seconds), cpu (laptop, minutes), gpu (Colab T4, ~1 h), "
                             "paper (ViT-B, AudioSet-2M, the authors' released code), paper_v2 (its later revision)")
    parser.add_argument("--config", default=None, help="a config.json from an earlier run (replaces the preset)")
    parser.add_argument("--set", dest="assignments", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
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
    cfg = apply_settings(cfg, args.assignments)
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
    except (NonFiniteLossError, NonFiniteWeightsError, ckpt.CheckpointMismatch, ckpt.UnreadableCheckpoint) as err:
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
