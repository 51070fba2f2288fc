"""Benchmarks of the input pipeline and the pretraining step: ``python -m asit.bench``.

The released ASiT code computes one fbank per clip and masks one sample at a time, in Python,
inside CPU data workers; on a 2-vCPU Colab machine that starves the accelerator. Here the
workers only decode, resample and crop; fbank, normalisation and group masking run batched on
the training device. This module measures what that buys, each figure side by side in one run:

- ``loader``: CPU time per clip in a data worker (one thread, ``time.process_time``), ours
  (decode, resample, roll, crop two views: the real :class:`asit.datasets.AudioFolder`) against
  the released path (:func:`released_worker_item`: decode, resample, per-clip Kaldi fbank, roll,
  crop, normalise and the per-sample masking loop for each view), on real WAV files written to a
  temporary folder (10 s, 32 kHz by default).
- ``masking``: :func:`asit.masking.group_mask` (batched) against
  :func:`asit.masking.reference_group_mask_loop` (the released algorithm), pixel- and
  patch-aligned; on a GPU the batched version runs there as well.
- ``features``: :class:`asit.features.FbankFrontend` on a batch against
  :func:`asit.audio.kaldi_fbank` clip by clip.
- ``step``: :func:`asit.pretrain.train_step` alone on tensors already on the device, per model
  size: clips per second, FLOPs per step (``torch.utils.flop_counter.FlopCounterMode``), FLOP/s
  and, on a GPU whose peak is known, model FLOPs utilisation.
- ``end_to_end``: the same step fed by a ``DataLoader`` with 2 workers reading the WAV files,
  against the step alone.

Each section also records its peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU
the peak resident set size above the section's start, sampled from ``/proc/self/statm`` every
few milliseconds by a background thread (``ru_maxrss`` where ``/proc`` is missing).

Results go to ``results/benchmarks/<device>.json`` (``cpu``, or the GPU's name slugified, e.g.
``nvidia-h100``), with the device, versions, threads, sizes, every figure, every ratio and which
of the targets are met. ``--quick`` runs everything in seconds (the tests use it); its figures
are for checking that the benchmark works, not for reading.

    python -m asit.bench                              # everything, defaults for this device
    python -m asit.bench --only masking,features      # some sections
    python -m asit.bench --only step --sizes base --batch-size 32 --steps 20 --compile
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.flop_counter import FlopCounterMode

from asit.audio import (
    DATASET_STATS,
    NormStats,
    kaldi_fbank,
    load_audio,
    normalize,
    pad_or_crop,
    prepare_wave,
    samples_for_frames,
)
from asit.config import get_preset
from asit.datasets import collate_clips, get_dataset
from asit.engine_pretrain import build_training, train_step
from asit.features import FbankFrontend
from asit.masking import MaskingConfig, group_mask, reference_group_mask_loop
from asit.session import pick_device, torch_threads
from asit.training import param_groups

SECTIONS = ("loader", "masking", "features", "step", "end_to_end")

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets; the first match of the
# lower-cased device name wins. Unknown devices get no MFU (pass --peak-flops).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h100", 989e12),  # SXM
    ("h200", 989e12),
    ("a100", 312e12),
    ("l4", 121e12),
    ("t4", 65e12),
)

# Targets of the issue; a ratio is always "ours / released" in speed (or "released / ours" in cost).
TARGETS = {
    "loader_cpu_time_ratio": 5.0,  # released-path worker CPU time per clip / ours
    "masking_cpu_vs_loop": 1.0,  # batched on CPU, clips/s / loop clips/s (each alignment)
    "masking_gpu_vs_cpu_loop": 50.0,  # batched on the GPU / loop on CPU (each alignment)
    "end_to_end_vs_step_gpu": 0.90,  # end-to-end clips/s / step alone, on a GPU
}

STATS = DATASET_STATS["audioset"]


# ----------------------------------------------------------------------------- helpers


def slugify_device_name(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100``: lower case, words joined by ``-``, memory and
    form-factor suffixes dropped."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    noise = re.compile(r"^(\d+gb|\d+g|hbm\d*e?|pcie|sxm\d*|nvl|mig.*)$")
    return "-".join(w for w in words if not noise.match(w)) or "gpu"


def device_slug(device: torch.device) -> str:
    """``cpu``, or the GPU's name slugified (:func:`slugify_device_name`)."""
    if device.type != "cuda":
        return device.type
    return slugify_device_name(torch.cuda.get_device_name(device))


def peak_flops_for(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of a known GPU, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    for key, flops in PEAK_BF16_FLOPS:
        if all(part in name for part in key.split()):
            return flops
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak (absolute), or the CPU process's resident set above its start.

    ``with PeakMemory(device) as mem: ...`` then ``mem.mib`` and ``mem.method``.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.005):
        self.device, self.interval_s = device, interval_s
        self.mib: float | None = None
        self.method = ""
        self._stop = threading.Event()
        self._peak = 0
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = _rss_bytes()
            if rss is not None and rss > self._peak:
                self._peak = rss

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = 0  # absolute: everything allocated, what decides whether a batch fits
            self.method = "torch.cuda.max_memory_allocated (absolute peak during the section)"
        elif _rss_bytes() is not None:
            self._start = self._peak = _rss_bytes()
            self.method = "CPU resident set size sampled every 5 ms from /proc/self/statm (peak minus start)"
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self._start = _maxrss_bytes()
            self.method = "resource.getrusage(RUSAGE_SELF).ru_maxrss delta (growth of the process's peak only)"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_bytes() or 0)
        else:
            peak = _maxrss_bytes()
        self.mib = round(max(peak - self._start, 0) / 2**20, 1)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Best (least) wall seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed ones.

    The minimum, as ``timeit`` recommends: on a shared machine the slower runs measure the other
    processes, not the code.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None:
        return None
    return float(f"{value:.{digits}g}")


# ----------------------------------------------------------------------------- test audio


def write_test_clips(folder: str | Path, count: int, seconds: float, sample_rate: int, seed: int = 0) -> list[Path]:
    """``count`` mono 16-bit WAV files of ``seconds`` at ``sample_rate``: tones, chirps and noise."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    paths = []
    for i in range(count):
        f0 = rng.uniform(100, 2000)
        wave = 0.3 * np.sin(2 * np.pi * (f0 + rng.uniform(-50, 50) * t) * t)
        wave += 0.05 * rng.standard_normal(n)
        wave *= 0.5 + 0.5 * np.abs(np.sin(2 * np.pi * rng.uniform(0.2, 3) * t))
        path = folder / f"clip_{i:03d}.wav"
        sf.write(path, np.clip(wave, -1, 1).astype(np.float32), sample_rate, subtype="PCM_16")
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- loader


def released_worker_item(
    path: str | Path,
    *,
    num_frames: int,
    sample_rate: int,
    num_views: int = 2,
    roll_prob: float = 0.5,
    stats: NormStats = STATS,
    masking: MaskingConfig | None = None,
    generator: torch.Generator | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """What a data worker of the released code does for one pretraining clip.

    Decode and resample, one Kaldi fbank of the whole clip, then per view: a random roll (whole
    frames), a random crop to ``num_frames`` (zero-padded when shorter), normalisation and the
    per-sample group-masking loop (:func:`asit.masking.reference_group_mask_loop`, pixel-aligned
    by default, as released). The fbank is computed once per clip and shared by the views, which
    is the cheaper reading of the released code (it does not inflate our advantage).

    ``timings``, when given, accumulates CPU seconds (``time.process_time``) under ``decode``,
    ``fbank`` and ``masking``.

    Returns:
        ``fbank`` ``(V, 1, num_frames, 128)`` clean views, ``corrupted`` the same shape, ``mask``
        ``(V, 1, num_frames, 128)`` bool.
    """
    masking = masking or MaskingConfig()
    clock = time.process_time
    t0 = clock()
    wave = prepare_wave(load_audio(path, sample_rate))
    t1 = clock()
    fbank = kaldi_fbank(wave, sample_rate)  # (T_clip, F)
    views = []
    for _ in range(num_views):
        view = fbank
        frames = view.shape[0]
        if torch.rand((), generator=generator).item() < roll_prob:
            shift = int(torch.randint(-frames, frames + 1, (1,), generator=generator).item())
            view = torch.roll(view, shift, dims=0)
        start = int(torch.randint(0, max(frames - num_frames, 0) + 1, (1,), generator=generator).item())
        views.append(normalize(pad_or_crop(view, num_frames, start), stats))
    clean = torch.stack(views)[:, None]  # (V, 1, T, F)
    t2 = clock()
    corrupted, mask = [], []
    for v in range(num_views):  # one sample at a time, as the released workers do
        c, m = reference_group_mask_loop(clean[v : v + 1], masking, generator)
        corrupted.append(c)
        mask.append(m)
    t3 = clock()
    if timings is not None:
        for key, value in (("decode", t1 - t0), ("fbank", t2 - t1), ("masking", t3 - t2)):
            timings[key] = timings.get(key, 0.0) + value
    return {"fbank": clean, "corrupted": torch.cat(corrupted), "mask": torch.cat(mask)}


def _loader_pair(args, folder: Path, clips: Sequence[Path]) -> dict:
    """Per-clip worker CPU time of both paths over the files in ``folder``, measured alternately."""
    ours_ds = get_dataset(
        "folder",
        "all",
        data_root=folder,
        num_frames=args.num_frames,
        random_crop=True,
        roll_prob=0.5,
        num_views=2,
        sample_rate=args.sample_rate,
        seed=0,
    )
    generator = torch.Generator().manual_seed(0)
    masking = MaskingConfig(align="pixel")  # the released default (--drop_align 1)
    clock = time.process_time
    cpu = {"ours": [], "released": []}
    wall = {"ours": [], "released": []}
    parts: dict[str, float] = {}
    ours_ds[0]  # warm-up: first calls allocate and build kernels
    released_worker_item(clips[0], num_frames=args.num_frames, sample_rate=args.sample_rate, generator=generator)
    for i, path in enumerate(clips):
        order = ("ours", "released") if i % 2 == 0 else ("released", "ours")
        for which in order:  # alternate the order, so neither always runs second
            w0, c0 = time.perf_counter(), clock()
            if which == "ours":
                item = ours_ds[i]
            else:
                item = released_worker_item(
                    path, num_frames=args.num_frames, sample_rate=args.sample_rate, masking=masking,
                    generator=generator, timings=parts,
                )
            cpu[which].append(clock() - c0)
            wall[which].append(time.perf_counter() - w0)
    n = len(clips)
    ours_ms, released_ms = 1e3 * statistics.fmean(cpu["ours"]), 1e3 * statistics.fmean(cpu["released"])
    return {
        "ours_cpu_ms_per_clip": _round(ours_ms),
        "released_cpu_ms_per_clip": _round(released_ms),
        "released_cpu_ms_per_clip_parts": {k: _round(1e3 * v / n) for k, v in parts.items()},
        "ours_wall_ms_per_clip": _round(1e3 * statistics.fmean(wall["ours"])),
        "released_wall_ms_per_clip": _round(1e3 * statistics.fmean(wall["released"])),
        "ratio_released_over_ours": _round(released_ms / ours_ms),
    }


def bench_loader(args, device: torch.device, clips: Sequence[Path], folder: Path) -> dict:
    """CPU time per clip in a (one-thread) data worker: ours against the released path.

    Measured on the files at ``--source-rate`` (resampled on load, the headline figure) and, when
    that differs from the model's rate, again on the same clips written at the model's rate (no
    resampling: what a data set stored at 16 kHz costs).
    """
    out: dict[str, Any] = {
        "clips": len(clips),
        "clip_seconds": args.clip_seconds,
        "source_sample_rate": args.source_rate,
        "sample_rate": args.sample_rate,
        "num_frames": args.num_frames,
        "views_per_clip": 2,
        "masking_align": "pixel",
        "threads": 1,
        "clock": "time.process_time (CPU time of this process, one torch thread, as in a DataLoader worker)",
    }
    with torch_threads(1), PeakMemory(torch.device("cpu")) as mem:  # DataLoader workers run one thread
        out.update(_loader_pair(args, folder, clips))
        if args.source_rate != args.sample_rate:
            native = folder.parent / "clips_at_model_rate"
            native_clips = write_test_clips(native, len(clips), args.clip_seconds, args.sample_rate)
            out["files_at_model_rate"] = {"source_sample_rate": args.sample_rate, **_loader_pair(args, native, native_clips)}
    out.update(peak_memory_mib=mem.mib, memory_method=mem.method)
    return out


# ----------------------------------------------------------------------------- masking


def bench_masking(args, device: torch.device) -> dict:
    """Batched group masking against the per-sample loop, pixel- and patch-aligned."""
    cpu = torch.device("cpu")
    B = args.mask_batch
    x_cpu = torch.randn(B, 1, args.num_frames, 128)
    out: dict[str, Any] = {"batch": B, "shape": [B, 1, args.num_frames, 128], "unit": "spectrograms (one view each) per second"}
    for align in ("pixel", "patch"):
        cfg = MaskingConfig(align=align)
        gen = torch.Generator().manual_seed(0)
        loop_s = _timed(lambda: reference_group_mask_loop(x_cpu, cfg, gen), cpu, args.repeats)
        with PeakMemory(cpu) as mem_cpu:
            batched_cpu_s = _timed(lambda: group_mask(x_cpu, cfg, gen), cpu, args.repeats)
        fractions = group_mask(x_cpu, cfg, gen)[1].flatten(1).float().mean(1)
        row = {
            "loop_cpu_clips_per_s": _round(B / loop_s),
            "batched_cpu_clips_per_s": _round(B / batched_cpu_s),
            "ratio_batched_cpu_over_loop": _round(loop_s / batched_cpu_s),
            "batched_cpu_peak_memory_mib": mem_cpu.mib,
            "mean_masked_fraction": _round(float(fractions.mean()), 3),
        }
        if device.type != "cpu":
            x_dev = x_cpu.to(device)
            gen_dev = torch.Generator(device=device).manual_seed(0)
            with PeakMemory(device) as mem_dev:
                batched_dev_s = _timed(lambda: group_mask(x_dev, cfg, gen_dev), device, args.repeats)
            row.update(
                batched_device_clips_per_s=_round(B / batched_dev_s),
                ratio_batched_device_over_cpu_loop=_round(loop_s / batched_dev_s),
                batched_device_peak_memory_mib=mem_dev.mib,
            )
        out[align] = row
    out["memory_method"] = mem_cpu.method
    return out


# ----------------------------------------------------------------------------- features


def bench_features(args, device: torch.device) -> dict:
    """Batched fbank (FbankFrontend) against per-clip kaldi_fbank + pad/crop + normalise."""
    cpu = torch.device("cpu")
    B = args.mask_batch
    S = samples_for_frames(args.num_frames, args.sample_rate)
    waves = 0.1 * torch.randn(B, S, generator=torch.Generator().manual_seed(0))
    waves -= waves.mean(1, keepdim=True)
    lengths = torch.full((B,), S)

    def per_clip():
        return [normalize(pad_or_crop(kaldi_fbank(w, args.sample_rate), args.num_frames), STATS) for w in waves]

    front_cpu = FbankFrontend(args.num_frames, STATS, sample_rate=args.sample_rate)
    per_clip_s = _timed(per_clip, cpu, args.repeats)
    with PeakMemory(cpu) as mem_cpu:
        batched_cpu_s = _timed(lambda: front_cpu(waves, lengths), cpu, args.repeats)
    err = float((front_cpu(waves, lengths)[:, 0] - torch.stack(per_clip())).abs().max())
    out = {
        "batch": B,
        "samples_per_clip": S,
        "num_frames": args.num_frames,
        "per_clip_cpu_clips_per_s": _round(B / per_clip_s),
        "batched_cpu_clips_per_s": _round(B / batched_cpu_s),
        "ratio_batched_cpu_over_per_clip": _round(per_clip_s / batched_cpu_s),
        "batched_cpu_peak_memory_mib": mem_cpu.mib,
        "max_abs_difference": _round(err, 3),
        "memory_method": mem_cpu.method,
    }
    if device.type != "cpu":
        front = FbankFrontend(args.num_frames, STATS, sample_rate=args.sample_rate).to(device)
        w_dev, l_dev = waves.to(device), lengths.to(device)
        with PeakMemory(device) as mem_dev:
            batched_dev_s = _timed(lambda: front(w_dev, l_dev), device, args.repeats)
        out.update(
            batched_device_clips_per_s=_round(B / batched_dev_s),
            ratio_batched_device_over_per_clip_cpu=_round(per_clip_s / batched_dev_s),
            batched_device_peak_memory_mib=mem_dev.mib,
        )
    return out


# ----------------------------------------------------------------------------- training step


def step_config(args, size: str):
    """The paper's pretraining config at ``size``, with the benchmark's overrides."""
    overrides = dict(
        model_size=size,
        batch_size=args.batch_size,
        num_frames=args.num_frames,
        sample_rate=args.sample_rate,
        num_workers=args.workers,
        compile=args.compile,
        grad_checkpointing=args.grad_checkpointing,
        amp=args.amp,
        datasets=[],
    )
    if args.global_dim:
        overrides["global_dim"] = args.global_dim
    if args.local_dim:
        overrides["local_dim"] = args.local_dim
    return get_preset("paper", **overrides)


def build_state(args, size: str, device: torch.device):
    cfg = step_config(args, size)
    state = build_training(cfg, device, STATS, steps_per_epoch=max(args.steps + args.warmup + 2, 10))
    if args.no_fused_attn:  # timm's Attention: explicit softmax(q k^T) v instead of fused SDPA
        for model in (state.student, state.teacher):
            for module in model.modules():
                if hasattr(module, "fused_attn"):
                    module.fused_attn = False
    if args.no_fused_adamw:
        lr = state.optimizer.param_groups[0]["lr"]
        state.optimizer = torch.optim.AdamW(param_groups(state.student), lr=lr, fused=False, foreach=True)
    return cfg, state


def _step_inputs(cfg, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    S = samples_for_frames(cfg.num_frames, cfg.sample_rate)
    waves = 0.1 * torch.randn(cfg.batch_size, cfg.num_global_views, S, generator=torch.Generator().manual_seed(0))
    lengths = torch.full((cfg.batch_size, cfg.num_global_views), S)
    return waves.to(device), lengths.to(device)


def count_step_flops(state, waves: torch.Tensor, lengths: torch.Tensor, it: int) -> float:
    """FLOPs of one training step (forward, backward, teacher), counted on the uncompiled student."""
    compiled = state.model
    state.model = state.student  # FlopCounterMode sees eager ops only
    try:
        with FlopCounterMode(display=False) as counter:
            train_step(state, waves, lengths, it)
    finally:
        state.model = compiled
    return float(counter.get_total_flops())


def _run_steps(state, waves, lengths, device, start: int, count: int) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    for it in range(start, start + count):
        train_step(state, waves, lengths, it)
    synchronize(device)
    return time.perf_counter() - t0


def bench_step(args, device: torch.device, peak: float | None) -> dict:
    """Training-step throughput per model size on tensors already on the device."""
    out: dict[str, Any] = {}
    for size in args.sizes:
        with PeakMemory(device) as mem:  # weights, optimiser state, activations: all of it
            cfg, state = build_state(args, size, device)
            waves, lengths = _step_inputs(cfg, device)
            flops = count_step_flops(state, waves, lengths, 0)  # also the first warm-up step
            warm_s = _run_steps(state, waves, lengths, device, 1, args.warmup)
            seconds = _run_steps(state, waves, lengths, device, 1 + args.warmup, args.steps)
        step_s = seconds / args.steps
        flops_per_s = flops / step_s
        out[size] = {
            "batch_size": cfg.batch_size,
            "views_per_clip": cfg.num_global_views,
            "num_frames": cfg.num_frames,
            "global_dim": cfg.global_dim,
            "local_dim": cfg.local_dim,
            "parameters_m": _round(sum(p.numel() for p in state.student.parameters()) / 1e6),
            "amp": str(state.amp_dtype).replace("torch.", "") if state.amp_dtype else "off",
            "steps": args.steps,
            "warmup_steps": args.warmup,
            "warmup_s": _round(warm_s),
            "step_s": _round(step_s),
            "clips_per_s": _round(cfg.batch_size / step_s),
            "flops_per_step": _round(flops),
            "flops_per_s": _round(flops_per_s),
            "mfu": _round(flops_per_s / peak, 3) if peak else None,
            "peak_memory_mib": mem.mib,
        }
        del state, waves, lengths
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out["options"] = {
        "compile": args.compile,
        "grad_checkpointing": args.grad_checkpointing,
        "amp": args.amp,
        "fused_attention": not args.no_fused_attn,
        "fused_adamw": not args.no_fused_adamw,
    }
    out["flops_counted"] = (
        "FLOPs executed by one step (teacher forward, student forward and backward), counted by "
        "torch.utils.flop_counter.FlopCounterMode on the uncompiled student"
        + ("; with gradient checkpointing they include the recomputed forward (hardware, not model, FLOPs)" if args.grad_checkpointing else "")
    )
    out["memory_method"] = mem.method + " (model, optimiser state and activations)"
    out["peak_bf16_flops"] = peak
    return out


# ----------------------------------------------------------------------------- end to end


def bench_end_to_end(args, device: torch.device, folder: Path) -> dict:
    """Step fed by a DataLoader with ``--workers`` workers reading WAV files, against the step alone.

    The step alone is timed just before and just after the end-to-end run, and averaged.
    """
    size = args.e2e_size
    cfg, state = build_state(args, size, device)
    waves, lengths = _step_inputs(cfg, device)
    # at least one (except --quick): the loader's first batch waits for the workers to start
    warmup = args.warmup if args.quick else max(args.warmup, 1)
    with PeakMemory(device) as mem_step:
        _run_steps(state, waves, lengths, device, 0, warmup)
        alone_before_s = _run_steps(state, waves, lengths, device, warmup, args.steps)

    dataset = get_dataset(
        "folder", "all", data_root=folder, num_frames=cfg.num_frames, random_crop=True,
        roll_prob=cfg.roll_prob, num_views=cfg.num_global_views, sample_rate=cfg.sample_rate, seed=0,
    )
    total = cfg.batch_size * (warmup + args.steps)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=RandomSampler(dataset, replacement=True, num_samples=total, generator=torch.Generator().manual_seed(0)),
        num_workers=args.workers,
        collate_fn=collate_clips,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    with PeakMemory(device) as mem_e2e:
        batches = iter(loader)
        for it in range(warmup):  # includes starting the workers: not timed
            batch = next(batches)
            train_step(state, batch["wave"].to(device, non_blocking=True), batch["length"].to(device, non_blocking=True), it)
        synchronize(device)
        t0 = time.perf_counter()
        for it, batch in zip(range(warmup, warmup + args.steps), batches):
            train_step(state, batch["wave"].to(device, non_blocking=True), batch["length"].to(device, non_blocking=True), it)
        synchronize(device)
        e2e_s = time.perf_counter() - t0
    del batches, loader
    gc.collect()
    # the step alone again, after: a slow drift of the machine (clocks, other jobs) then weighs on
    # both sides of the ratio equally
    alone_after_s = _run_steps(state, waves, lengths, device, warmup + args.steps, args.steps)
    del state
    gc.collect()
    alone = 2 * cfg.batch_size * args.steps / (alone_before_s + alone_after_s)
    e2e = cfg.batch_size * args.steps / e2e_s
    return {
        "model_size": size,
        "batch_size": cfg.batch_size,
        "steps": args.steps,
        "workers": args.workers,
        "files": len(dataset),
        "step_alone_clips_per_s": _round(alone),
        "step_alone_before_after_clips_per_s": [_round(cfg.batch_size * args.steps / t) for t in (alone_before_s, alone_after_s)],
        "end_to_end_clips_per_s": _round(e2e),
        "ratio_end_to_end_over_step": _round(e2e / alone),
        "step_alone_peak_memory_mib": mem_step.mib,
        "end_to_end_peak_memory_mib": mem_e2e.mib,
        "memory_method": mem_e2e.method + ("; CPU figures cover the main process only, not the workers" if device.type != "cuda" else ""),
    }


# ----------------------------------------------------------------------------- targets and report


def evaluate_targets(results: dict, device: torch.device) -> dict:
    """Each target: its threshold, the measured value and whether it is met (None: not measured here)."""
    sections = results["sections"]
    targets: dict[str, dict] = {}

    def add(name: str, value, threshold: float, note: str) -> None:
        targets[name] = {"target": threshold, "value": value, "met": None if value is None else bool(value >= threshold), "note": note}

    if "loader" in sections:
        add("loader_cpu_time", sections["loader"]["ratio_released_over_ours"], TARGETS["loader_cpu_time_ratio"],
            "released-path worker CPU time per clip / ours: at least 5x less")
    if "masking" in sections:
        for align in ("pixel", "patch"):
            row = sections["masking"][align]
            add(f"masking_cpu_{align}", row["ratio_batched_cpu_over_loop"], TARGETS["masking_cpu_vs_loop"],
                "batched masking on CPU no slower than the per-sample loop")
            gpu = row.get("ratio_batched_device_over_cpu_loop") if device.type == "cuda" else None
            add(f"masking_gpu_{align}", gpu, TARGETS["masking_gpu_vs_cpu_loop"],
                "batched masking on the GPU at least 50x the CPU loop" + ("" if device.type == "cuda" else " (no GPU in this run)"))
    if "end_to_end" in sections:
        ratio = sections["end_to_end"]["ratio_end_to_end_over_step"] if device.type == "cuda" else None
        add("end_to_end_gpu", ratio, TARGETS["end_to_end_vs_step_gpu"],
            "end-to-end throughput at least 90% of the step alone on a GPU" + ("" if device.type == "cuda" else
            f" (no GPU in this run; the CPU ratio, {sections['end_to_end']['ratio_end_to_end_over_step']}, shares its cores with the workers)"))
    return targets


def environment(device: torch.device, args) -> dict:
    env = {
        "device": device_slug(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "threads": {
            "torch_intra_op": torch.get_num_threads(),
            "torch_inter_op": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "loader_section": 1,
        },
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
    return env


def format_table(results: dict) -> str:
    """A plain-text summary of the figures, for the terminal."""
    s = results["sections"]
    lines = [f"asit.bench on {results['device']} ({results['device_name']}), torch {results['torch']}, "
             f"{results['threads']['torch_intra_op']} threads{' [QUICK: not for reading]' if results['quick'] else ''}"]
    if "loader" in s:
        r = s["loader"]
        lines.append(f"loader    CPU ms/clip: ours {r['ours_cpu_ms_per_clip']}, released {r['released_cpu_ms_per_clip']} "
                     f"{r['released_cpu_ms_per_clip_parts']} -> {r['ratio_released_over_ours']}x less")
        if "files_at_model_rate" in r:
            n = r["files_at_model_rate"]
            lines.append(f"          (files at {n['source_sample_rate']} Hz, no resampling: ours {n['ours_cpu_ms_per_clip']}, "
                         f"released {n['released_cpu_ms_per_clip']} -> {n['ratio_released_over_ours']}x less)")
    if "masking" in s:
        for align in ("pixel", "patch"):
            r = s["masking"][align]
            extra = f", device {r['batched_device_clips_per_s']} ({r['ratio_batched_device_over_cpu_loop']}x)" if "batched_device_clips_per_s" in r else ""
            lines.append(f"masking   {align:5s} clips/s: loop {r['loop_cpu_clips_per_s']}, batched CPU {r['batched_cpu_clips_per_s']} "
                         f"({r['ratio_batched_cpu_over_loop']}x){extra}")
    if "features" in s:
        r = s["features"]
        extra = f", device {r['batched_device_clips_per_s']} ({r['ratio_batched_device_over_per_clip_cpu']}x)" if "batched_device_clips_per_s" in r else ""
        lines.append(f"features  clips/s: per clip {r['per_clip_cpu_clips_per_s']}, batched CPU {r['batched_cpu_clips_per_s']} "
                     f"({r['ratio_batched_cpu_over_per_clip']}x){extra}")
    if "step" in s:
        for size, r in s["step"].items():
            if isinstance(r, dict) and "clips_per_s" in r:
                mfu = f", MFU {r['mfu']}" if r["mfu"] is not None else ""
                lines.append(f"step      {size:5s} batch {r['batch_size']}: {r['clips_per_s']} clips/s, {r['step_s']} s/step, "
                             f"{r['flops_per_s']:.3g} FLOP/s{mfu}, peak {r['peak_memory_mib']} MiB")
    if "end_to_end" in s:
        r = s["end_to_end"]
        lines.append(f"end2end   {r['model_size']} batch {r['batch_size']}, {r['workers']} workers: {r['end_to_end_clips_per_s']} clips/s "
                     f"vs step alone {r['step_alone_clips_per_s']} -> {r['ratio_end_to_end_over_step']}")
    for name, t in results["targets"].items():
        met = {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]
        lines.append(f"target    {name}: {t['value']} (>= {t['target']}): {met}")
    return "\n".join(lines)


def markdown_table(results: dict) -> str:
    """The figures of a results file as a Markdown table (what results/benchmarks/README.md shows)."""
    s, rows = results["sections"], []
    t = results.get("targets", {})

    def met(name: str) -> str:
        value = t.get(name, {}).get("met")
        return {True: "met", False: "**not met**", None: "n/a"}[value]

    if "loader" in s:
        r = s["loader"]
        parts = ", ".join(f"{k} {v}" for k, v in r["released_cpu_ms_per_clip_parts"].items())
        rows.append((f"loader: worker CPU ms per clip, {r['source_sample_rate'] // 1000} kHz files",
                     f"{r['ours_cpu_ms_per_clip']}", f"{r['released_cpu_ms_per_clip']} ({parts})",
                     f"{r['ratio_released_over_ours']}x less", f">= 5x: {met('loader_cpu_time')}"))
        if "files_at_model_rate" in r:
            n = r["files_at_model_rate"]
            rows.append((f"loader: same, files already at {n['source_sample_rate'] // 1000} kHz (no resampling)",
                         f"{n['ours_cpu_ms_per_clip']}", f"{n['released_cpu_ms_per_clip']}", f"{n['ratio_released_over_ours']}x less", ""))
    if "masking" in s:
        for align in ("pixel", "patch"):
            r = s["masking"][align]
            rows.append((f"masking, {align}-aligned: clips/s (batch {s['masking']['batch']})", f"{r['batched_cpu_clips_per_s']} (CPU)",
                         f"{r['loop_cpu_clips_per_s']} (loop, CPU)", f"{r['ratio_batched_cpu_over_loop']}x", f">= 1x: {met('masking_cpu_' + align)}"))
            if "batched_device_clips_per_s" in r:
                rows.append((f"masking, {align}-aligned, on the GPU", f"{r['batched_device_clips_per_s']}", f"{r['loop_cpu_clips_per_s']} (loop, CPU)",
                             f"{r['ratio_batched_device_over_cpu_loop']}x", f">= 50x: {met('masking_gpu_' + align)}"))
    if "features" in s:
        r = s["features"]
        rows.append((f"fbank: clips/s (batch {r['batch']})", f"{r['batched_cpu_clips_per_s']} (CPU)", f"{r['per_clip_cpu_clips_per_s']} (per clip, CPU)",
                     f"{r['ratio_batched_cpu_over_per_clip']}x", ""))
        if "batched_device_clips_per_s" in r:
            rows.append(("fbank on the GPU", f"{r['batched_device_clips_per_s']}", f"{r['per_clip_cpu_clips_per_s']} (per clip, CPU)",
                         f"{r['ratio_batched_device_over_per_clip_cpu']}x", ""))
    if "step" in s:
        for size, r in s["step"].items():
            if isinstance(r, dict) and "clips_per_s" in r:
                mfu = f", MFU {r['mfu']:.1%}" if r["mfu"] is not None else ""
                precision = "fp32" if r["amp"] == "off" else r["amp"]
                rows.append((f"step {size} (batch {r['batch_size']}, {precision}): clips/s", f"{r['clips_per_s']}",
                             f"{r['flops_per_step']:.3g} FLOPs per step",
                             f"{r['flops_per_s']:.3g} FLOP/s{mfu}", f"peak {r['peak_memory_mib']} MiB"))
    if "end_to_end" in s:
        r = s["end_to_end"]
        rows.append((f"end to end, {r['model_size']} batch {r['batch_size']}, {r['workers']} workers: clips/s", f"{r['end_to_end_clips_per_s']}",
                     f"{r['step_alone_clips_per_s']} (step alone)", f"{r['ratio_end_to_end_over_step']:.1%}", f">= 90% on a GPU: {met('end_to_end_gpu')}"))
    lines = ["| figure | ours | released path / reference | ratio | target |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m asit.bench",
        description="Input-pipeline and pretraining-step benchmarks; prints a summary and writes "
        "results/benchmarks/<device>.json. Run it on an otherwise idle machine: every figure is "
        "measured side by side in one run, so ratios are more trustworthy than absolute numbers.",
    )
    p.add_argument("--table", metavar="JSON", default=None, help="print the Markdown table of an existing results file and exit")
    p.add_argument("--quick", action="store_true", help="seconds: tiny sizes and counts (what the tests run); not for reading")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections to run, of {','.join(SECTIONS)}")
    p.add_argument("--sizes", default=None, help="model sizes for the step benchmark (default: tiny,small,base)")
    p.add_argument("--batch-size", type=int, default=None, help="clips per training step (default: 32 on a GPU, 2 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per size (default: 20 on a GPU, 2 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps after the FLOP-counting one, which warms up too (compilation happens here; default 3 GPU, 0 CPU)")
    p.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--output", default=None, help="JSON path (default results/benchmarks/<device>.json)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads for the run (default: torch's choice)")
    p.add_argument("--compile", action="store_true", help="torch.compile the student in the step benchmarks")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward (less memory, slower)")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"), help="autocast (auto: bf16 on GPUs that have it, off on CPU)")
    p.add_argument("--no-fused-attn", action="store_true", help="timm's explicit attention instead of fused SDPA (to measure its effect)")
    p.add_argument("--no-fused-adamw", action="store_true", help="foreach AdamW instead of the fused kernel (to measure its effect)")
    p.add_argument("--e2e-size", default=None, help="model size of the end-to-end benchmark (default: small, the Colab 'gpu' preset; tiny on CPU)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the end-to-end benchmark (Colab has 2 vCPUs)")
    p.add_argument("--num-frames", type=int, default=None, help="frames per view (default 592 = 6 s, the paper's)")
    p.add_argument("--global-dim", type=int, default=None, help="class-token head size (default: the paper's 8192)")
    p.add_argument("--local-dim", type=int, default=None, help="patch-token head size (default: the paper's 1024)")
    p.add_argument("--mask-batch", type=int, default=None, help="spectrograms per masking / fbank call (default 64 = 2 views x 32 clips)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats of the masking and fbank calls (median; default 3)")
    p.add_argument("--clips", type=int, default=None, help="WAV files written for the loader benchmarks (default 32)")
    p.add_argument("--clip-seconds", type=float, default=10.0, help="length of each WAV file (AudioSet clips are 10 s)")
    p.add_argument("--source-rate", type=int, default=32_000, help="sample rate of the WAV files (resampled on load)")
    p.add_argument("--sample-rate", type=int, default=16_000, help="model sample rate")
    p.add_argument("--peak-flops", type=float, default=None, help="device peak FLOP/s for MFU when the device is not in the table")
    return p


def resolve_args(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """Fill the defaults that depend on the device and on --quick."""
    gpu = device.type == "cuda"
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    args.only = [s for s in SECTIONS if s in only]
    if args.quick:
        defaults = dict(sizes="tiny", batch_size=2, steps=1, warmup=0, num_frames=64, mask_batch=4, repeats=1,
                        clips=3, e2e_size="tiny", global_dim=256, local_dim=64)
        args.clip_seconds = min(args.clip_seconds, 2.0)
    else:
        defaults = dict(sizes="tiny,small,base", batch_size=32 if gpu else 2, steps=20 if gpu else 2, warmup=3 if gpu else 0,
                        num_frames=592, mask_batch=64, repeats=3, clips=32, e2e_size="small" if gpu else "tiny")
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()] if isinstance(args.sizes, str) else args.sizes
    return args


def run(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmarks; print the summary; write and return the results."""
    args = build_parser().parse_args(argv)
    if args.table:
        results = json.loads(Path(args.table).read_text())
        print(markdown_table(results))
        return results
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    args = resolve_args(args, device)
    peak = args.peak_flops or peak_flops_for(device)
    started = time.time()
    results: dict[str, Any] = {
        **environment(device, args),
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "command": "python -m asit.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("output",)},
        "sections": {},
    }
    sections = results["sections"]
    with tempfile.TemporaryDirectory(prefix="asit-bench-") as tmp:
        folder = Path(tmp) / "clips"
        clips: list[Path] = []
        if {"loader", "end_to_end"} & set(args.only):
            clips = write_test_clips(folder, args.clips, args.clip_seconds, args.source_rate)
        for name in args.only:
            t0 = time.perf_counter()
            print(f"[asit.bench] {name} ...", file=sys.stderr, flush=True)
            if name == "loader":
                sections[name] = bench_loader(args, device, clips, folder)
            elif name == "masking":
                sections[name] = bench_masking(args, device)
            elif name == "features":
                sections[name] = bench_features(args, device)
            elif name == "step":
                sections[name] = bench_step(args, device, peak)
            elif name == "end_to_end":
                sections[name] = bench_end_to_end(args, device, folder)
            sections[name]["section_wall_s"] = _round(time.perf_counter() - t0, 3)
    results["targets"] = evaluate_targets(results, device)
    results["wall_s"] = _round(time.time() - started, 3)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    output = Path(args.output) if args.output else Path("results") / "benchmarks" / f"{results['device']}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    print(f"wrote {output}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
