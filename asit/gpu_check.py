"""Every GPU path in one short command: ``python -m asit.gpu_check``.

On a CUDA machine (under 8 minutes on one recent GPU) it runs, in this order:

- **correctness**, each against the CPU on the same input:
  the batched fbank (``max |GPU - CPU| <= 1e-4``); group masking, identical masks from the same
  (CPU) generator state, and the same distribution of masked fractions from the device's own
  generator, which the training step uses and whose random stream differs by design; one
  pretraining step under bf16 and under fp16 + GradScaler, finite and close to fp32 on the same
  batch and weights; a fine-tuning step likewise; a checkpoint written on the GPU, read and
  resumed on the CPU;
- **speed**, side by side: the ViT-B pretraining step at batch 64 with and without
  ``torch.compile`` (clips/s, model FLOPs utilisation against the chip's dense bf16 peak, peak
  memory), group masking on the GPU against the released per-sample CPU loop, the step fed by a
  ``DataLoader`` from WAV files against the step alone, and fine-tuning throughput at the ``gpu``
  preset (the speed sections reuse :mod:`asit.bench`);
- **capacity**: the largest batch of the ``gpu`` and ``paper`` presets that fits, and from the
  measured step the projected time of one ``gpu``-preset pretraining and one AudioSet-2M epoch of
  the ``paper`` preset.

It writes ``results/benchmarks/gpu_check/<gpu>.json`` (``<gpu>`` as in :mod:`asit.bench`, e.g.
``nvidia-h100``) and prints a short table. On a machine without CUDA the same command runs the
correctness half on tiny shapes (the device side is then the CPU too; the tests run it this way,
so the code cannot rot) and writes ``cpu.json``.

``python -m asit.gpu_check --t4-estimate`` needs no GPU: it measures the parameter, optimiser and
activation bytes of the ``gpu`` preset's step on the CPU and projects its peak memory on a 16 GB
T4 (:func:`t4_estimate`); ``--table JSON`` prints a results file as Markdown.

Every call into the training engines goes through the section "the engines" below.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from asit import bench
from asit import checkpoint as ckpt
from asit.audio import DATASET_STATS, kaldi_fbank, normalize, pad_or_crop, samples_for_frames
from asit.augment import SpecAugment
from asit.classifier import AudioClassifier
from asit.config import MAY_CHANGE_ON_RESUME, get_preset
from asit.engine_finetune import FinetuneState, lr_schedule, train_one_epoch
from asit.engine_pretrain import TrainState, build_training, train_step
from asit.features import FbankFrontend
from asit.masking import MaskingConfig, fraction_bounds, group_mask, masked_fraction
from asit.models import create_encoder
from asit.pretrain import build_pretraining_data, load_training_state, training_state_dict
from asit.session import pick_device
from asit.tasks import TaskConfig, get_task
from asit.training import NonFiniteLossError, grad_scaler, param_groups, resolve_amp

STATS = DATASET_STATS["audioset"]
FBANK_TOLERANCE = 1e-4  # max |device - CPU| of the normalised fbank (the bound)
# A step's losses under autocast against fp32 on the same batch: |amp - fp32| <= tol * max(|fp32|, 1).
# bf16 keeps 8 mantissa bits (0.4 % per value), fp16 11; the losses average thousands of values.
LOSS_TOLERANCE = {"bf16": 0.03, "fp16": 0.01}
# The teacher's fp32 output on the GPU against the CPU, relative to its largest value: cuDNN runs
# the patch-embedding convolution in TF32 by default (10 mantissa bits), and 12 blocks add rounding.
TEACHER_TOLERANCE = 5e-3
MASK_FRACTION_TOLERANCE = 0.02  # |mean masked fraction, device generator - CPU generator|
AUDIOSET_2M_CLIPS = 2_000_000  # the "2M" of the name; a download holds fewer (videos taken down)
PAPER_GPUS = 4  # the released pretraining command: 32 clips per GPU on 4 GPUs
FINETUNE_TASKS = ("esc50", "audioset_20k")  # 512 and 1024 frames: the short and the long recipe input
T4_MEMORY_GIB = 15.0  # a T4's 16 GB as CUDA reports it (15,360 MiB), before the CUDA context
CUDA_CONTEXT_GIB = 0.4  # CUDA context and kernels, outside torch's allocator
T4_MARGIN = 0.8  # "fits with margin": the estimate stays under 80 % of what the allocator can have


@dataclass(frozen=True)
class Shapes:
    """Model and batch of the correctness checks."""

    model_size: str
    depth: int  # 0: the size's 12 blocks
    num_frames: int
    batch_size: int  # clips (two views each)
    global_dim: int
    local_dim: int
    head_hidden_dim: int
    head_bottleneck_dim: int
    mask_batch: int  # spectrograms per masking call
    finetune_frames: int


CPU_SHAPES = Shapes("tiny", 2, 64, 2, 256, 64, 128, 64, 8, 64)  # seconds on a CPU
GPU_SHAPES = Shapes("base", 0, 592, 8, 8192, 1024, 2048, 256, 64, 1024)  # the paper's model and heads


# ----------------------------------------------------------------------------- the engines
# Every call gpu_check makes into the pretraining and fine-tuning engines is in this section.


def amp_mode(device: torch.device, amp: str = "auto") -> str:
    """The engines' AMP policy (:func:`asit.training.resolve_amp`) for ``device``: ``"bf16"``,
    ``"fp16"`` (with a GradScaler) or ``"off"``."""
    return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[resolve_amp(amp, device)]


def build_pretraining(cfg, device: torch.device, steps_per_epoch: int = 10) -> TrainState:
    return build_training(cfg, device, STATS, steps_per_epoch=steps_per_epoch)


def pretrain_step(state: TrainState, waves: torch.Tensor, lengths: torch.Tensor, it: int) -> dict[str, torch.Tensor]:
    return train_step(state, waves, lengths, it)


def save_pretraining(state: TrainState, run_dir: Path) -> Path:
    payload = {**training_state_dict(state), "epoch": 0, "step_in_epoch": 1}
    return ckpt.save_checkpoint(payload, run_dir, state.cfg, epoch=None, keep_last=1)


def load_pretraining(path: Path, cfg, state: TrainState | None = None) -> dict:
    """The checkpoint at ``path`` read onto the CPU; loaded into ``state`` (the engine's resume) if given."""
    saved = ckpt.load_checkpoint(path, cfg, may_change=MAY_CHANGE_ON_RESUME, map_location="cpu")
    if state is not None:
        load_training_state(state, saved)
    return saved


def build_finetuning(task: TaskConfig, amp: str, device: torch.device, num_classes: int = 10, schedule_steps: int = 100) -> FinetuneState:
    """The fine-tuning engine's state for ``task`` on a fresh, seeded encoder (no data set: tensors come in)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = create_encoder(task.model_size, num_frames=task.num_frames, drop_path_rate=task.drop_path_rate,
                                 **({"depth": task.depth} if task.depth else {}))
        model = AudioClassifier(encoder, num_classes, pool=task.pool).to(device)
    amp_dtype = resolve_amp(amp, device)
    groups = param_groups(model, task.weight_decay, task.layer_decay, decay_embeddings=False)
    return FinetuneState(
        task=task, model=model, criterion=nn.CrossEntropyLoss(), optimizer=torch.optim.AdamW(groups, lr=task.lr),
        scaler=grad_scaler(device, amp_dtype), amp_dtype=amp_dtype,
        frontend=FbankFrontend(task.num_frames, STATS).to(device),
        spec_augment=SpecAugment(task.freq_mask, task.time_mask).to(device), noise=None,
        generator=torch.Generator().manual_seed(0), lrs=lr_schedule(task, schedule_steps, task.lr),
        steps_per_epoch=1, num_classes=num_classes, multilabel=False, device=device,
    )


def finetune_steps(state: FinetuneState, batch: dict, steps: int = 1) -> float:
    """``steps`` steps of the engine's epoch on one batch; their mean loss (raises on a non-finite one)."""
    state.steps_per_epoch = steps
    return train_one_epoch(state, [batch] * steps, epoch=0, skipped=[])


# ----------------------------------------------------------------------------- helpers


def pretrain_config(shapes: Shapes, amp: str = "auto", **overrides: Any):
    """The paper's pretraining config at ``shapes`` (no data set: the checks feed tensors)."""

    return get_preset(
        "paper", model_size=shapes.model_size, depth=shapes.depth, num_frames=shapes.num_frames,
        batch_size=shapes.batch_size, global_dim=shapes.global_dim, local_dim=shapes.local_dim,
        head_hidden_dim=shapes.head_hidden_dim, head_bottleneck_dim=shapes.head_bottleneck_dim,
        amp=amp, datasets=[], num_workers=0, **overrides,
    )


def test_waves(batch: int, views: int | None, num_frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-mean noise crops ``(batch, views, S)`` (``(batch, S)`` when ``views`` is None) and their lengths."""
    samples = samples_for_frames(num_frames, 16_000)
    shape = (batch, samples) if views is None else (batch, views, samples)
    waves = 0.1 * torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return waves - waves.mean(-1, keepdim=True), torch.full(shape[:-1], samples)


def _close(value: float, reference: float, tolerance: float) -> bool:
    return abs(value - reference) <= tolerance * max(abs(reference), 1.0)


def _floats(out: dict[str, torch.Tensor]) -> dict[str, float]:
    """The step's scalars (the losses, ``finite``) as floats; vectors (teacher entropies) are left out."""
    return {key: float(value) for key, value in out.items() if value.dim() == 0}


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- correctness


def check_fbank(device: torch.device, shapes: Shapes) -> dict:
    """The batched fbank on ``device`` against the CPU batch and the per-clip reference."""

    waves, lengths = test_waves(shapes.mask_batch, None, shapes.num_frames)
    lengths[0] = lengths[0] // 2  # one short clip: the frames past its end must be zeroed
    on_device = FbankFrontend(shapes.num_frames, STATS).to(device)(waves.to(device), lengths.to(device)).cpu()
    on_cpu = FbankFrontend(shapes.num_frames, STATS)(waves, lengths)
    per_clip = torch.stack([
        normalize(pad_or_crop(kaldi_fbank(w[: int(n)], 16_000), shapes.num_frames), STATS) for w, n in zip(waves, lengths)
    ])[:, None]
    vs_cpu, vs_clip = float((on_device - on_cpu).abs().max()), float((on_device - per_clip).abs().max())
    return {
        "clips": shapes.mask_batch,
        "max_abs_diff_vs_cpu_batch": vs_cpu,
        "max_abs_diff_vs_per_clip_reference": vs_clip,
        "tolerance": FBANK_TOLERANCE,
        "ok": vs_cpu <= FBANK_TOLERANCE and vs_clip <= FBANK_TOLERANCE,
    }


def check_masking(device: torch.device, shapes: Shapes, rounds: int = 8) -> dict:
    """Group masks on ``device`` against the CPU's.

    ``same_generator``: one CPU generator state, the batch on either device, the same (sync-free)
    algorithm: the masks must be identical. ``device_generator``: the training step draws on a
    generator of the batch's device (on CUDA a Philox stream, not the CPU's Mersenne twister), so
    only the distribution can match: the mean masked fraction over ``rounds`` batches within
    :data:`MASK_FRACTION_TOLERANCE` of the CPU's, every fraction inside :func:`fraction_bounds`.
    """
    x = torch.randn(shapes.mask_batch, 1, shapes.num_frames, 128)
    out: dict[str, Any] = {"batch": shapes.mask_batch, "shape": list(x.shape)}
    for align in ("pixel", "patch"):
        cfg = MaskingConfig(align=align)
        masks = [
            group_mask(x.to(where), cfg, torch.Generator().manual_seed(1), sync_free=True)[1].cpu()
            for where in (torch.device("cpu"), device)
        ]
        low, high = fraction_bounds(cfg, shapes.num_frames, 128)
        fractions = {}
        for name, where in (("cpu", torch.device("cpu")), ("device", device)):
            generator = torch.Generator(device=where).manual_seed(2)
            fractions[name] = torch.cat([masked_fraction(group_mask(x.to(where), cfg, generator)[1]).cpu() for _ in range(rounds)])
        gap = float(fractions["device"].mean() - fractions["cpu"].mean())
        inside = all(bool(((f >= low) & (f < high)).all()) for f in fractions.values())
        same_stream = device.type == "cpu"  # a CPU "device" generator is the CPU's: the same stream
        out[align] = {
            "same_generator_identical": bool(torch.equal(masks[0], masks[1])),
            "device_generator": "identical stream (both on the CPU)" if same_stream else "own stream: same distribution checked",
            "mean_fraction_cpu": round(float(fractions["cpu"].mean()), 4),
            "mean_fraction_device": round(float(fractions["device"].mean()), 4),
            "fraction_bounds": [round(low, 4), round(high, 4)],
            "ok": bool(torch.equal(masks[0], masks[1])) and inside and abs(gap) <= MASK_FRACTION_TOLERANCE,
        }
    out["ok"] = out["pixel"]["ok"] and out["patch"]["ok"]
    return out


def amp_modes(device: torch.device) -> list[str]:
    """The autocast modes worth checking here: bf16 only where the chip computes it (sm80+, or the CPU)."""
    if device.type != "cuda":
        return ["bf16", "fp16"]
    return ["bf16", "fp16"] if torch.cuda.get_device_capability(device)[0] >= 8 else ["fp16"]


def _compare_modes(run: Callable[[str], dict], modes: Sequence[str]) -> dict:
    """``run(mode)`` for fp32 and each mode; each mode's first-step losses against fp32's."""
    reference = run("off")
    out: dict[str, Any] = {"off": reference}
    for mode in modes:
        result = run(mode)
        first = result["losses"][0]
        result["close_to_fp32"] = all(_close(first[k], reference["losses"][0][k], LOSS_TOLERANCE[mode]) for k in first)
        result["ok"] = result["finite"] and result["close_to_fp32"]
        out[mode] = result
    out["tolerance"] = {m: LOSS_TOLERANCE[m] for m in modes}
    out["ok"] = reference["finite"] and all(out[m]["ok"] for m in modes)
    return out


def check_pretrain_amp(device: torch.device, shapes: Shapes) -> dict:
    """Two pretraining steps on one batch, in fp32 and each AMP mode, from the same weights.

    The first step's losses (the forward before any update) must be within
    :data:`LOSS_TOLERANCE` of fp32's; both steps' losses and every weight after them finite.
    fp16's GradScaler starts at 2**16 and may drop a first step that overflows (it then halves
    its scale): ``scale`` records where it ended.
    """
    waves, lengths = test_waves(shapes.batch_size, 2, shapes.num_frames)
    waves, lengths = waves.to(device), lengths.to(device)

    def run(mode: str) -> dict:
        state = build_pretraining(pretrain_config(shapes, mode), device)
        before = [p.detach().clone() for p in state.student.parameters()]
        losses = [_floats(pretrain_step(state, waves, lengths, it)) for it in range(2)]
        moved = any(not torch.equal(b, p) for b, p in zip(before, state.student.parameters()))
        finite = all(math.isfinite(v) for step in losses for v in step.values())
        finite = finite and all(bool(torch.isfinite(p).all()) for p in state.student.parameters())
        result = {"losses": [{k: v for k, v in s.items() if k != "finite"} for s in losses], "finite": finite,
                  "weights_moved": moved,  # False: fp16's scaler dropped both steps (overflow at its first scales)
                  "scale": float(state.scaler.get_scale()) if state.scaler.is_enabled() else None}
        del state
        _release(device)
        return result

    return _compare_modes(run, amp_modes(device))


def check_finetune_amp(device: torch.device, shapes: Shapes, num_classes: int = 10) -> dict:
    """Two fine-tuning steps on one batch through the engine's epoch loop, in fp32 and each AMP
    mode, from the same weights (SpecAugment, mixup and drop path off: the same input every time)."""
    task = get_task("esc50", "smoke", model_size=shapes.model_size, depth=shapes.depth, num_frames=shapes.finetune_frames,
                    freq_mask=0, time_mask=0, mixup=0.0, drop_path_rate=0.0, warmup_epochs=0.0)
    waves, lengths = test_waves(shapes.batch_size * 2, None, shapes.finetune_frames)
    batch = {"wave": waves, "length": lengths, "target": torch.arange(len(waves)) % num_classes}

    def run(mode: str) -> dict:
        state = build_finetuning(task, mode, device, num_classes)
        try:
            losses = [{"loss": finetune_steps(state, batch)} for _ in range(2)]
            finite = all(bool(torch.isfinite(p).all()) for p in state.model.parameters())
        except NonFiniteLossError:
            losses, finite = [{"loss": math.nan}] * 2, False
        result = {"losses": losses, "finite": finite, "scale": float(state.scaler.get_scale()) if state.scaler.is_enabled() else None}
        del state
        _release(device)
        return result

    return _compare_modes(run, amp_modes(device))


def check_checkpoint(device: torch.device, shapes: Shapes) -> dict:
    """A checkpoint written by a run on ``device``, read on the CPU and resumed there.

    Every tensor read back equals the one on the device; the engine's resume loads it into a
    CPU run, whose teacher then gives the device teacher's output (fp32, within
    :data:`TEACHER_TOLERANCE` of its scale) and takes a finite step.
    """
    cfg = pretrain_config(shapes, "auto", drop_path_rate=0.0)
    waves, lengths = test_waves(shapes.batch_size, 2, shapes.num_frames)
    state = build_pretraining(cfg, device)
    pretrain_step(state, waves.to(device), lengths.to(device), 0)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="asit-gpu-check-") as tmp:
        path = save_pretraining(state, Path(tmp))
        saved = load_pretraining(path, cfg)
        weights = {**{f"student.{k}": v for k, v in state.student.state_dict().items()},
                   **{f"teacher.{k}": v for k, v in state.teacher.state_dict().items()}}
        read = {**{f"student.{k}": v for k, v in saved["student"].items()}, **{f"teacher.{k}": v for k, v in saved["teacher"].items()}}
        out["tensors_equal"] = all(torch.equal(weights[k].cpu(), read[k]) for k in weights) and weights.keys() == read.keys()
        out["all_on_cpu"] = all(v.device.type == "cpu" for v in read.values())
        cpu_state = build_pretraining(cfg, torch.device("cpu"))
        try:
            load_pretraining(path, cfg, cpu_state)
            out["resume_on_cpu"] = "ok"
        except Exception as err:  # noqa: BLE001 - reported, and the check fails
            out["resume_on_cpu"] = f"{type(err).__name__}: {err}"
    if out["resume_on_cpu"] == "ok":
        spec = state.frontend(waves[:, 0].to(device), lengths[:, 0].to(device))
        with torch.no_grad():
            on_device = state.teacher(spec, return_reconstruction=False).global_out.float().cpu()
            on_cpu = cpu_state.teacher(spec.cpu(), return_reconstruction=False).global_out
        out["teacher_max_abs_diff"] = float((on_device - on_cpu).abs().max())
        out["teacher_scale"] = float(on_cpu.abs().max())
        step = _floats(pretrain_step(cpu_state, waves, lengths, 1))
        out["cpu_step_finite"] = bool(step["finite"])
    out["ok"] = (out["tensors_equal"] and out["all_on_cpu"] and out["resume_on_cpu"] == "ok"
                 and out["teacher_max_abs_diff"] <= TEACHER_TOLERANCE * max(out["teacher_scale"], 1.0)
                 and out["cpu_step_finite"]) if "cpu_step_finite" in out else False
    del state, cpu_state
    _release(device)
    return out


def check_collectives(device: torch.device) -> dict:
    """One-process NCCL (gloo on the CPU) group: an all-reduce as DDP and the loss centers use it."""
    if dist.is_initialized():
        return {"backend": dist.get_backend(), "skipped": "a process group is already running", "ok": True}
    backend = "nccl" if device.type == "cuda" else "gloo"
    with socket.socket() as sock:  # a free local port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        value = torch.arange(4.0, device=device)
        dist.all_reduce(value)
        ok = bool(torch.equal(value.cpu(), torch.arange(4.0)))
        error = None
    except Exception as err:  # noqa: BLE001 - reported, and the check fails
        ok, error = False, f"{type(err).__name__}: {err}"
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return {"backend": backend, "error": error, "ok": ok}


CORRECTNESS = {
    "fbank": check_fbank,
    "masking": check_masking,
    "pretrain_amp": check_pretrain_amp,
    "finetune_amp": check_finetune_amp,
    "checkpoint": check_checkpoint,
    "collectives": lambda device, shapes: check_collectives(device),
}


# ----------------------------------------------------------------------------- speed (CUDA)


def _bench_args(device: torch.device, *argv: str) -> argparse.Namespace:
    return bench.resolve_args(bench.build_parser().parse_args(list(argv)), device)


def _is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower() or "ALLOC_FAILED" in str(err)


def speed_pretrain_step(device: torch.device, size: str = "base", batch: int = 64, steps: int = 10, extra: Sequence[str] = ()) -> dict:
    """ViT-B pretraining step at batch 64 under the AMP policy, eager and ``torch.compile``-d (via :mod:`asit.bench`).

    ``extra``: more :mod:`asit.bench` options (the tests shrink the shapes with them).
    """
    mode, peak = amp_mode(device), bench.peak_flops_for(device)
    out: dict[str, Any] = {"amp": mode, "peak_bf16_flops": peak}
    for name, compile_flag in (("eager", ()), ("compiled", ("--compile",))):
        args = _bench_args(device, "--only", "step", "--sizes", size, "--batch-size", str(batch), "--steps", str(steps),
                           "--warmup", "3", "--amp", mode, *compile_flag, *extra)
        try:
            out[name] = bench.bench_step(args, device, peak)[size]
        except Exception as err:  # noqa: BLE001 - an OOM or a compiler failure is a finding, not a crash
            out[name] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        _release(device)
    if "clips_per_s" in out["eager"] and "clips_per_s" in out["compiled"]:
        out["compile_speedup"] = bench._round(out["compiled"]["clips_per_s"] / out["eager"]["clips_per_s"])
    return out


def speed_masking(device: torch.device, batch: int = 64, num_frames: int = 592) -> dict:
    """Batched group masking on the GPU against the released per-sample loop on the CPU (batch 64, 592 x 128)."""
    args = _bench_args(device, "--mask-batch", str(batch), "--num-frames", str(num_frames), "--repeats", "3")
    return bench.bench_masking(args, device)


def speed_end_to_end(device: torch.device, workers: int, size: str = "small", batch: int = 32, steps: int = 20,
                     extra: Sequence[str] = ()) -> dict:
    """The ``gpu`` preset's step (ViT-S, batch 32, its 4096 / 1024 heads) fed from WAV files by
    ``workers`` DataLoader workers, against the step alone (via :mod:`asit.bench`)."""
    args = _bench_args(device, "--e2e-size", size, "--batch-size", str(batch), "--steps", str(steps), "--warmup", "3",
                       "--workers", str(workers), "--amp", amp_mode(device), "--global-dim", "4096", "--local-dim", "1024", *extra)
    with tempfile.TemporaryDirectory(prefix="asit-gpu-check-") as tmp:
        folder = Path(tmp) / "clips"
        bench.write_test_clips(folder, 2 * batch, 10.0, 32_000)
        return bench.bench_end_to_end(args, device, folder)


def speed_finetune(device: torch.device, steps: int = 10, warmup: int = 3, preset: str = "gpu") -> dict:
    """Fine-tuning clips per second at the ``gpu`` preset's model, input length, batch and
    augmentations, through the engine's epoch loop (fbank, SpecAugment and mixup on the device)."""
    out: dict[str, Any] = {"amp": amp_mode(device), "preset": preset}
    for name in FINETUNE_TASKS:
        task = get_task(name, preset)
        waves, lengths = test_waves(task.batch_size, None, task.num_frames)
        batch = {"wave": waves.pin_memory() if device.type == "cuda" else waves, "length": lengths,
                 "target": torch.arange(task.batch_size) % 10}
        with bench.PeakMemory(device) as mem:
            state = build_finetuning(task, "auto", device)
            finetune_steps(state, batch, warmup)
            bench.synchronize(device)
            start = time.perf_counter()
            finetune_steps(state, batch, steps)
            bench.synchronize(device)
            seconds = (time.perf_counter() - start) / steps
        out[name] = {"model_size": task.model_size, "num_frames": task.num_frames, "batch_size": task.batch_size,
                     "step_s": bench._round(seconds), "clips_per_s": bench._round(task.batch_size / seconds),
                     "peak_memory_mib": mem.mib}
        del state
        _release(device)
    out["note"] = "the engine's epoch loop on one batch of noise crops, copied from pinned memory each step"
    return out


# ----------------------------------------------------------------------------- capacity (CUDA)


def _try_batch(state, cfg, device: torch.device, batch: int) -> float | None:
    """Peak MiB of one pretraining step at ``batch`` clips, or None when it does not fit."""
    samples = samples_for_frames(cfg.num_frames, cfg.sample_rate)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        waves = 0.1 * torch.randn(batch, cfg.num_global_views, samples, device=device)
        lengths = torch.full((batch, cfg.num_global_views), samples, device=device)
        pretrain_step(state, waves, lengths, 0)
        torch.cuda.synchronize(device)
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    except Exception as err:  # noqa: BLE001
        if not _is_out_of_memory(err):
            raise
        return None
    finally:
        waves = lengths = None
        state.optimizer.zero_grad(set_to_none=True)
        _release(device)


def _time_steps(state, cfg, device: torch.device, steps: int, warmup: int = 2) -> float:
    waves, lengths = test_waves(cfg.batch_size, cfg.num_global_views, cfg.num_frames)
    waves, lengths = waves.to(device), lengths.to(device)
    for it in range(warmup):
        pretrain_step(state, waves, lengths, it)
    bench.synchronize(device)
    start = time.perf_counter()
    for it in range(warmup, warmup + steps):
        pretrain_step(state, waves, lengths, it)
    bench.synchronize(device)
    return (time.perf_counter() - start) / steps


def largest_batch(preset: str, device: torch.device, cap: int = 4096, steps: int = 5) -> dict:
    """The preset's step time at its own batch, then the largest batch (clips) whose step fits.

    Doubles from the preset's batch until a step runs out of memory (or ``cap``), then halves the
    gap three times: the answer is within 1/8 of the true limit, from below. The peak memory of
    the batches that fit, fitted linearly, gives the batch that would fit a 16 GB T4 (on this
    GPU's kernels; the T4's own attention kernels differ).
    """

    cfg = get_preset(preset, datasets=[], amp="auto")
    state = build_pretraining(cfg, device)
    step_s = _time_steps(state, cfg, device, steps)
    trials: dict[int, float | None] = {}
    low, high = 0, None
    batch = cfg.batch_size
    while batch <= cap:
        trials[batch] = _try_batch(state, cfg, device, batch)
        if trials[batch] is None:
            high = batch
            break
        low, batch = batch, batch * 2
    for _ in range(3 if high is not None and low else 0):
        middle = (low + high) // 2
        if middle in (low, high):
            break
        trials[middle] = _try_batch(state, cfg, device, middle)
        low, high = (middle, high) if trials[middle] is not None else (low, middle)
    fitted = sorted((b, m) for b, m in trials.items() if m is not None)
    t4_batch = None
    if len(fitted) >= 2:
        (b0, m0), (b1, m1) = fitted[0], fitted[-1]
        slope = (m1 - m0) / (b1 - b0)
        t4_batch = int((T4_MARGIN * (T4_MEMORY_GIB - CUDA_CONTEXT_GIB) * 1024 - (m0 - slope * b0)) // slope)
    del state
    _release(device)
    return {
        "preset": preset, "model_size": cfg.model_size, "preset_batch_size": cfg.batch_size, "amp": amp_mode(device),
        "step_s_at_preset_batch": bench._round(step_s), "clips_per_s_at_preset_batch": bench._round(cfg.batch_size / step_s),
        "largest_batch_that_fits": low or None, "first_batch_that_did_not": high, "cap": cap,
        "trials_peak_memory_mib": {str(b): m for b, m in sorted(trials.items())},
        "batch_within_t4_margin_by_linear_fit": t4_batch,
    }


def projections(capacity: dict, pool_clips: int | None) -> dict:
    """Hours of one ``gpu``-preset pretraining (built-in pool) and one AudioSet-2M epoch of ``paper``."""

    out: dict[str, Any] = {}
    gpu, paper = capacity.get("gpu", {}), capacity.get("paper", {})
    if gpu.get("step_s_at_preset_batch") and pool_clips:
        cfg = get_preset("gpu")
        steps = cfg.epochs * (pool_clips // cfg.batch_size)
        out["gpu_preset_pretraining"] = {"pool_clips": pool_clips, "steps": steps,
                                         "hours": bench._round(steps * gpu["step_s_at_preset_batch"] / 3600, 3),
                                         "note": "training steps only: the k-NN monitor and data loading are not in it"}
    if paper.get("clips_per_s_at_preset_batch"):
        hours = AUDIOSET_2M_CLIPS / paper["clips_per_s_at_preset_batch"] / 3600
        out["paper_audioset_2m_epoch"] = {"clips": AUDIOSET_2M_CLIPS, "hours_one_gpu": bench._round(hours, 3),
                                          f"hours_{PAPER_GPUS}_gpus_linear_scaling": bench._round(hours / PAPER_GPUS, 3),
                                          "note": "the step at batch 32 per GPU, from tensors; 100 epochs make the paper's run"}
    return out


def pool_size() -> int | None:
    """Clips of the built-in pretraining pool (``make data``), None when it is not built."""

    try:
        return len(build_pretraining_data(get_preset("gpu")))
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"[asit.gpu_check] no built-in pool ({err}); run `make data` for the gpu-preset projection", file=sys.stderr)
        return None


# ----------------------------------------------------------------------------- T4 memory, without a GPU


def saved_activation_bytes(state, batch: int) -> dict:
    """Bytes autograd keeps for the backward pass of one pretraining step at ``batch`` clips.

    Counted with ``saved_tensors_hooks`` over the whole step (student forward, losses): each
    storage once, parameters left out (counted apart), autocast's low-precision weight copies in.
    On the CPU the step runs the same modules and the same fused-attention contract (no attention
    matrix is kept), so the count is the GPU's too, up to kernel workspaces.
    """
    params = {p.untyped_storage().data_ptr() for model in (state.student, state.teacher) for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    cfg = state.cfg
    waves, lengths = test_waves(batch, cfg.num_global_views, cfg.num_frames)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        pretrain_step(state, waves, lengths, 0)
    return {"bytes": sum(storages.values()), "largest_bytes": max(storages.values()), "tensors": len(storages)}


def t4_estimate(preset: str = "gpu", batches: Sequence[int] = (1, 2, 3), **overrides: Any) -> dict:
    """Peak memory of ``preset``'s pretraining step on a 16 GB T4, from byte counts on the CPU.

    Fixed: student and teacher weights (fp32), gradients (fp32), AdamW's two moments (fp32).
    Per clip: the saved activations of a step, measured at ``batches[0]`` and ``batches[1]`` clips
    (bf16 autocast on the CPU: the same 2 bytes a value as the T4's fp16), extrapolated linearly
    to the preset's batch; ``batches[2]`` checks the line. Transient: twice the largest saved
    tensor (a backward pass holds a gradient beside the activation it consumes). Cross-check: the
    encoder blocks' share counted analytically, 32 bytes per token and width per block with fused
    attention and no dropout (Korthikanti et al. 2022, "Reducing Activation Recomputation in
    Large Transformer Models", their 34 sbh less the two dropout masks).
    """

    cfg = get_preset(preset, datasets=[], amp="bf16", device="cpu", **overrides)
    state = build_pretraining(cfg, torch.device("cpu"))
    with bench.torch_threads(1):
        measured = {b: saved_activation_bytes(state, b) for b in batches}
    (b0, b1, b2) = batches
    per_clip = (measured[b1]["bytes"] - measured[b0]["bytes"]) / (b1 - b0)
    fixed_saved = measured[b0]["bytes"] - per_clip * b0
    predicted = fixed_saved + per_clip * b2
    parameters = sum(p.numel() for p in state.student.parameters())
    teacher = sum(p.numel() for p in state.teacher.parameters())
    encoder = state.student.encoder
    tokens = encoder.patch_embed.num_patches + encoder.num_prefix_tokens
    analytic_per_clip = 32 * cfg.num_global_views * tokens * encoder.embed_dim * len(encoder.blocks)
    batch = cfg.batch_size
    gib = 2**30
    parts = {
        "weights_student_fp32": 4 * parameters,
        "weights_teacher_fp32": 4 * teacher,
        "gradients_fp32": 4 * parameters,
        "adamw_moments_fp32": 8 * parameters,
        "activations_at_batch": int(fixed_saved + per_clip * batch),
        "transient_backward": 2 * measured[b1]["largest_bytes"] * batch // b1,
    }
    total = sum(parts.values()) / gib
    budget = T4_MEMORY_GIB - CUDA_CONTEXT_GIB
    return {
        "preset": preset, "model_size": cfg.model_size, "batch_size": batch, "num_frames": cfg.num_frames,
        "views": cfg.num_global_views, "grad_checkpointing": cfg.grad_checkpointing, "tokens_per_view": tokens,
        "student_parameters_m": round(parameters / 1e6, 2), "teacher_parameters_m": round(teacher / 1e6, 2),
        "measured_saved_mib": {str(b): round(m["bytes"] / 2**20, 1) for b, m in measured.items()},
        "activation_mib_per_clip": round(per_clip / 2**20, 1),
        "linear_fit_error_at_batch_%d" % b2: round(abs(measured[b2]["bytes"] - predicted) / measured[b2]["bytes"], 4),
        "analytic_encoder_blocks_mib_per_clip": round(analytic_per_clip / 2**20, 1),
        "bytes": parts,
        "gib": {k: round(v / gib, 3) for k, v in parts.items()},
        "total_gib": round(total, 2),
        "t4_budget_gib": budget,
        "fits_with_margin": total <= T4_MARGIN * budget,
        "margin": T4_MARGIN,
        "largest_batch_with_margin": int((T4_MARGIN * budget * gib - sum(parts.values()) + parts["activations_at_batch"]
                                          + parts["transient_backward"]) / (per_clip + 2 * measured[b1]["largest_bytes"] / b1)),
        "measured_on": "CPU, bf16 autocast, one thread, torch " + torch.__version__,
    }


# ----------------------------------------------------------------------------- the run and its report


def run_checks(device: torch.device, shapes: Shapes, speed: bool) -> dict:
    """Every correctness check (and, with ``speed``, every speed and capacity section) on ``device``."""
    results: dict[str, Any] = {"correctness": {}, "speed": {}, "capacity": {}}

    def section(group: str, name: str, fn: Callable[[], dict]) -> None:
        start = time.perf_counter()
        print(f"[asit.gpu_check] {group}: {name} ...", file=sys.stderr, flush=True)
        results[group][name] = {**fn(), "section_s": round(time.perf_counter() - start, 2)}

    # Tiny CPU shapes run several times faster on one thread (and leave a shared machine's other cores alone).
    with bench.torch_threads(1) if device.type == "cpu" else contextlib.nullcontext():
        for name, check in CORRECTNESS.items():
            section("correctness", name, lambda check=check: check(device, shapes))
    if speed:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
        section("speed", "pretrain_step_vit_b_batch_64", lambda: speed_pretrain_step(device))
        section("speed", "masking", lambda: speed_masking(device))
        section("speed", "end_to_end", lambda: speed_end_to_end(device, workers))
        section("speed", "finetune_gpu_preset", lambda: speed_finetune(device))
        for preset in ("gpu", "paper"):
            section("capacity", preset, lambda preset=preset: largest_batch(preset, device))
        results["projections"] = projections(results["capacity"], pool_size())
    results["ok"] = all(r["ok"] for r in results["correctness"].values())
    return results


def environment(device: torch.device) -> dict:
    env = {
        "device": bench.device_slug(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "amp_policy": amp_mode(device),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(capability=list(torch.cuda.get_device_capability(device)), memory_gib=round(props.total_memory / 2**30, 1))
    return env


def _verdict(ok: bool | None) -> str:
    return {True: "ok", False: "FAILED", None: "-"}[ok]


def table_rows(results: dict) -> list[tuple[str, str, str]]:
    """``(what, verdict, figures)`` rows of a results file: the short table."""
    c, rows = results["correctness"], []
    f = c["fbank"]
    rows.append(("fbank, device vs CPU", _verdict(f["ok"]), f"max diff {f['max_abs_diff_vs_cpu_batch']:.2g} (CPU batch), "
                 f"{f['max_abs_diff_vs_per_clip_reference']:.2g} (per clip); bound {f['tolerance']}"))
    for align in ("pixel", "patch"):
        m = c["masking"][align]
        rows.append((f"masking ({align}), device vs CPU", _verdict(m["ok"]),
                     f"same CPU generator: {'identical' if m['same_generator_identical'] else 'DIFFERENT'}; device generator "
                     f"({m['device_generator']}): mean fraction {m['mean_fraction_device']} vs {m['mean_fraction_cpu']}"))
    for name, title in (("pretrain_amp", "pretraining step"), ("finetune_amp", "fine-tuning step")):
        r = c[name]
        for mode in (m for m in ("bf16", "fp16") if m in r):
            ours, ref = r[mode]["losses"][0]["loss"], r["off"]["losses"][0]["loss"]
            scale = f", scaler {r[mode]['scale']:g}" if r[mode].get("scale") else ""
            scale += "" if r[mode].get("weights_moved", True) else " (both steps dropped by the scaler)"
            rows.append((f"{title}, {mode} vs fp32", _verdict(r[mode]["ok"]), f"loss {ours:.5g} vs {ref:.5g}, "
                         f"finite {r[mode]['finite']}{scale}"))
    k = c["checkpoint"]
    rows.append(("checkpoint written on the device, resumed on CPU", _verdict(k["ok"]),
                 f"tensors equal {k['tensors_equal']}, resume {k['resume_on_cpu']}"
                 + (f", teacher diff {k['teacher_max_abs_diff']:.2g}" if "teacher_max_abs_diff" in k else "")))
    d = c["collectives"]
    rows.append((f"{d['backend']} all-reduce, one process", _verdict(d["ok"]), d.get("error") or d.get("skipped") or ""))
    rows += _speed_rows(results)
    return rows


def _speed_rows(results: dict) -> list[tuple[str, str, str]]:
    s, rows = results.get("speed", {}), []
    step = s.get("pretrain_step_vit_b_batch_64", {})
    for name in ("eager", "compiled"):
        r = step.get(name, {})
        if "clips_per_s" in r:
            mfu = f", MFU {r['mfu']:.1%}" if r.get("mfu") is not None else ""
            rows.append((f"ViT-B step, batch 64, {step['amp']}, {name}", "", f"{r['clips_per_s']} clips/s{mfu}, peak {r['peak_memory_mib']} MiB"))
        elif r:
            rows.append((f"ViT-B step, batch 64, {name}", "FAILED", r.get("error", "")))
    if "masking" in s:
        for align in ("pixel", "patch"):
            r = s["masking"][align]
            rows.append((f"masking ({align}) GPU vs CPU loop", _verdict(r["ratio_batched_device_over_cpu_loop"] >= 50),
                         f"{r['batched_device_clips_per_s']} vs {r['loop_cpu_clips_per_s']} clips/s: "
                         f"{r['ratio_batched_device_over_cpu_loop']}x (goal 50x)"))
    if "end_to_end" in s:
        r = s["end_to_end"]
        rows.append((f"from WAV files, {r['workers']} workers, vs step alone", _verdict(r["ratio_end_to_end_over_step"] >= 0.9),
                     f"{r['end_to_end_clips_per_s']} vs {r['step_alone_clips_per_s']} clips/s: "
                     f"{r['ratio_end_to_end_over_step']:.0%} (goal 90%)"))
    for task in FINETUNE_TASKS:
        r = s.get("finetune_gpu_preset", {}).get(task)
        if r:
            rows.append((f"fine-tuning {task}, gpu preset", "", f"{r['clips_per_s']} clips/s at batch {r['batch_size']}, "
                         f"{r['num_frames']} frames, peak {r['peak_memory_mib']} MiB"))
    for preset, r in results.get("capacity", {}).items():
        rows.append((f"largest batch, {preset} preset", "", f"{r['largest_batch_that_fits']} clips "
                     f"(preset {r['preset_batch_size']}: {r['clips_per_s_at_preset_batch']} clips/s)"))
    p = results.get("projections", {})
    if "gpu_preset_pretraining" in p:
        rows.append(("projected gpu-preset pretraining", "", f"{p['gpu_preset_pretraining']['hours']} h"))
    if "paper_audioset_2m_epoch" in p:
        r = p["paper_audioset_2m_epoch"]
        rows.append(("projected AudioSet-2M epoch, paper preset", "", f"{r['hours_one_gpu']} h on one GPU"))
    return rows


def format_table(results: dict) -> str:
    rows = table_rows(results)
    width = max(len(r[0]) for r in rows)
    head = f"asit.gpu_check on {results['device_name']} (AMP policy {results['amp_policy']}): {_verdict(results['ok'])}"
    return "\n".join([head] + [f"{what:<{width}}  {verdict:<6}  {figures}" for what, verdict, figures in rows])


def markdown_table(results: dict) -> str:
    lines = ["| check | verdict | figures |", "|---|---|---|"]
    return "\n".join(lines + [f"| {what} | {verdict} | {figures} |" for what, verdict, figures in table_rows(results)])


def t4_markdown(estimate: dict) -> str:
    """The README's table of a :func:`t4_estimate` result."""
    g = estimate["gib"]
    rows = [
        ("weights, student + teacher (fp32)", f"{g['weights_student_fp32'] + g['weights_teacher_fp32']:.2f}"),
        ("gradients (fp32)", f"{g['gradients_fp32']:.2f}"),
        ("AdamW moments (fp32)", f"{g['adamw_moments_fp32']:.2f}"),
        (f"activations, batch {estimate['batch_size']} ({estimate['activation_mib_per_clip']} MiB per clip)", f"{g['activations_at_batch']:.2f}"),
        ("backward transient (2x the largest saved tensor)", f"{g['transient_backward']:.2f}"),
        ("**total**", f"**{estimate['total_gib']:.2f}**"),
        (f"T4 budget ({T4_MEMORY_GIB:g} GiB less {CUDA_CONTEXT_GIB:g} GiB CUDA context), {estimate['margin']:.0%} of it",
         f"{estimate['margin'] * estimate['t4_budget_gib']:.2f}"),
    ]
    return "\n".join(["| part | GiB |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m asit.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cuda, cuda:1, cpu")
    p.add_argument("--output", default=None, help="JSON path (default results/benchmarks/gpu_check/<device>.json)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes and no speed sections, even on a GPU (seconds)")
    p.add_argument("--t4-estimate", action="store_true", help="project the gpu preset's memory on a 16 GB T4 (CPU only)")
    p.add_argument("--table", metavar="JSON", default=None, help="print a results file (check or T4 estimate) as Markdown")
    return p


def main(argv: Sequence[str] | None = None) -> int:

    args = build_parser().parse_args(argv)
    if args.table:
        results = json.loads(Path(args.table).read_text())
        print(t4_markdown(results) if "total_gib" in results else markdown_table(results))
        return 0
    if args.t4_estimate:
        results = t4_estimate()
        output = Path(args.output or "results/benchmarks/gpu_check/t4_estimate.json")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n")
        print(t4_markdown(results))
        print(f"fits with margin: {results['fits_with_margin']}; wrote {output}")
        return 0
    device = pick_device(args.device)
    gpu = device.type == "cuda" and not args.tiny
    started = time.perf_counter()
    results = {**environment(device), "shapes": dataclasses.asdict(GPU_SHAPES if gpu else CPU_SHAPES)}
    results.update(run_checks(device, GPU_SHAPES if gpu else CPU_SHAPES, speed=gpu))
    results["wall_s"] = round(time.perf_counter() - started, 1)
    output = Path(args.output or f"results/benchmarks/gpu_check/{results['device']}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    print(f"wrote {output} in {results['wall_s']} s")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
