"""Fine-tuning and linear probing of an (ASiT-pretrained) encoder on a downstream task.

    python -m asit.finetune --task esc50 --preset cpu --dataset builtin --checkpoint auto
    python -m asit.finetune --task ks2 --preset paper --dataset speech_commands_v2 --data-root /data/speech_commands_v0.02

One run, step by step:

1. **Starting point** (:func:`asit.classifier.resolve_checkpoint`): a pretrained encoder directory or safetensors
   file, ``"auto"`` (:func:`asit.course.preset_encoder`: the course encoder on ``cpu``, else
   ``<output_dir>/pretrain/<preset>/encoder``; else the newest ``<output_dir>/pretrain/*/encoder``; a random init with a warning when there is none),
   ``"none"`` (random init) or ``"imagenet:<path>"`` (ImageNet ViT weights). A random or ImageNet
   init has the task config's ``model_size`` and ``depth``, which :func:`asit.tasks.get_task` copies
   from the pretraining preset of the same name; :func:`asit.classifier.same_architecture` gives the random-init
   baseline the shape of whatever encoder a checkpoint holds.
   The encoder's positional embedding is interpolated to the task's input length
   (``asit.models.load_encoder``), so an encoder pretrained on 592-frame crops fine-tunes on 128
   (Speech Commands), 512 (ESC-50) or 1024 frames (AudioSet).
2. **Data** (:mod:`asit.downstream_data`): data workers decode, resample and crop waveforms
   (``asit.datasets``); nothing else runs there. With ``cache_fbanks`` (small data, many epochs),
   every clip's fbank is computed once into an on-disk cache (:mod:`asit.fbank_cache`, under
   ``<data_dir>/cache/finetune``) and the workers crop from it instead.
3. **On the device**, per batch (:func:`asit.engine_finetune.train_one_epoch`): background-noise
   mixing on the waveforms (keyword spotting), the batched fbank (:class:`asit.features.FbankFrontend`),
   SpecAugment and mixup (:mod:`asit.augment`), then the model under the shared mixed-precision
   policy (:mod:`asit.training`: bf16 on GPUs that compute it natively, fp16 with loss scaling on
   older ones such as a T4, full precision on CPU).
4. **Optimisation**: AdamW (no weight decay on biases, norms, positional embedding and class
   token), a linear warm-up then a cosine decay to ``min_lr`` per step (``schedule="cosine"``,
   our default), or AST's step decay (``schedule="step"``: x ``lr_decay_rate`` every epoch from
   ``lr_decay_start``); optionally layer-wise lr decay (``layer_decay``). Cross-entropy on
   (mixed) soft targets, or BCE for multi-label AudioSet.
5. **Model choice and numbers**: evaluation on the validation split after every epoch; the best
   epoch's weights (by the task's metric on validation only) are restored and evaluated once on
   the test split. ESC-50 repeats this for every fold present and reports the mean accuracy and
   its standard deviation over folds. Evaluation hears each whole clip (``eval_windows``, the
   default): a clip longer than the model's input is scored in windows of that length with 50 %
   overlap, and its scores are the mean over its windows, as :mod:`asit.predict` scores a file.

``mode="linear"`` is a linear probe: the encoder is frozen (eval mode, no gradient, dropout and
stochastic depth off) and only a linear layer on its **class token** (after the encoder's final
LayerNorm; no BatchNorm) is trained. ``pool="mean"`` in the task config uses the mean of the
patch tokens instead, for both modes.

Outputs (``output_dir``, see ``asit/README.md``):

- ``<output_dir>/<task>/<dataset>__<preset>.json``: metrics (percent), config, checkpoint used,
  time, device, versions (``asit.results.write_run_result``). A linear probe writes
  ``<dataset>-linear__<preset>.json``.
- ``<output_dir>/<task>/<dataset>__<preset>/``: ``log.jsonl`` (one JSON line per epoch) and the
  fine-tuned classifier(s), ``classifier/`` (``classifier-fold<k>/`` for ESC-50): ``model.safetensors``
  (encoder + head) and ``config.json`` (classes, task, front-end settings; :mod:`asit.classifier`),
  which :mod:`asit.predict` reads.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from asit.augment import SpecAugment
from asit.atomic import DiskFullError
from asit.classifier import AudioClassifier, build_encoder, save_classifier
from asit.datasets.base import SkipLog, base_dataset, skipped_by_split
from asit.downstream_data import (
    background_noise_for,
    build_datasets,
    build_loaders,
    cache_datasets,
    check_coverage,
    esc50_folds_present,
    subset_paths,
)
from asit.engine_finetune import FinetuneState, evaluate, lr_schedule, train_one_epoch
from asit.features import FbankFrontend
from asit.results import write_run_result
from asit.session import PRESETS, describe_environment, pick_device, seed_everything
from asit.tasks import TASKS, TaskConfig, get_task
from asit.training import apply_settings, grad_scaler, param_groups, resolve_amp

# --------------------------------------------------------------------------------------------
# One run: train, keep the best epoch on validation, test once


def train_one_run(
    task: TaskConfig,
    datasets: dict[str, Any],
    checkpoint: str | Path | None = "auto",
    mode: str = "finetune",
    output_dir: str | Path = "results",
    device: torch.device | None = None,
    progress: bool = True,
    seed: int = 0,
    log_file: Path | None = None,
    label: str = "",
    cache_fbanks: bool | None = None,
) -> dict[str, Any]:
    """Train on ``datasets["train"]``, keep the best epoch on ``datasets["val"]``, test once.

    ``cache_fbanks`` serves the splits from the on-disk fbank cache (:func:`cache_datasets`);
    ``None``: ``task.cache_fbanks is True``.

    Returns a dict with ``model`` (best weights loaded, on the device), ``test`` (the
    :func:`asit.engine_finetune.evaluate` output on the test split), ``val_metrics``, ``best_epoch``,
    ``history``, ``encoder_info``, ``frontend``, ``classes``, ``skipped`` (every bad file's
    ``(path, problem)``) and ``skipped_by_split`` (``{split: SkipLog}``).
    """
    if mode not in ("finetune", "linear"):
        raise ValueError(f"mode must be 'finetune' or 'linear', got {mode!r}")
    device = device or pick_device()
    seed_everything(seed)
    data = base_dataset(datasets["train"])
    if bool(data.multilabel) != task.multilabel:
        raise ValueError(f"task {task.name} expects multilabel={task.multilabel}, the data set says {bool(data.multilabel)}")
    encoder, encoder_info = build_encoder(task, checkpoint, output_dir, mode)
    _check_sample_rate(encoder, data.sample_rate)
    model = AudioClassifier(encoder, data.num_classes, pool=task.pool, freeze_encoder=(mode == "linear")).to(device)
    noise = background_noise_for(task, datasets["train"])
    found = {split: SkipLog(base_dataset(data).skipped) for split, data in datasets.items()}  # header checks
    datasets, skipped = _cached_if_asked(task, datasets, noise, cache_fbanks, progress)
    loaders = build_loaders(datasets, task, seed, device)
    state = _training_state(task, model, data, noise, len(loaders["train"]), mode, device, seed)
    windows = task.num_frames if task.eval_windows else None  # evaluation: whole clips, in windows

    def evaluate_split(split: str, description: str) -> dict[str, Any]:
        scored = evaluate(state.model, loaders[split], state.frontend, device, state.multilabel,
                          description=description, window_frames=windows, amp_dtype=state.amp_dtype)
        found[split].extend(scored["skipped"])
        return scored

    best = {"value": -math.inf, "epoch": -1, "state": None, "metrics": None}
    history = []
    # one bar per run, not per epoch
    run_bar = tqdm(total=task.epochs * state.steps_per_epoch, desc=label or "fine-tuning", disable=not progress)
    for epoch in range(task.epochs):
        started = time.time()
        train_loss = train_one_epoch(state, loaders["train"], epoch, skipped, label, progress, bar=run_bar)
        found["train"].extend(skipped)
        val = evaluate_split("val", "validation")
        value = val["metrics"][task.metric]
        value = -math.inf if math.isnan(value) else value
        record = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            **{f"val_{k}": v for k, v in val["metrics"].items()},
            "lr": float(state.lrs[state.step - 1]) if state.step else float(state.optimizer.defaults["lr"]),
            "seconds": round(time.time() - started, 2),
        }
        history.append(record)
        on_screen = progress and shown_epoch(epoch + 1, task.epochs)
        _log_epoch(record, log_file, label, f"val {task.metric} {value:.2f}" if on_screen else None)
        if best["state"] is None or value > best["value"]:  # NaN (undefined) never beats a number
            best = {"value": value, "epoch": epoch + 1, "metrics": val["metrics"],
                    "state": {k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()}}
    run_bar.close()
    state.model.load_state_dict(best["state"])
    test = evaluate_split("test", "test")
    return {
        "model": state.model,
        "test": test,
        "val_metrics": best["metrics"],
        "best_epoch": best["epoch"],
        "history": history,
        "encoder_info": encoder_info,
        "frontend": state.frontend,
        "classes": list(data.classes),
        "stats": data.stats,
        "multilabel": state.multilabel,
        "skipped": sorted({tuple(record) for log in found.values() for record in log}),
        "skipped_by_split": found,
    }


def _cached_if_asked(task: TaskConfig, datasets: dict[str, Any], noise, cache_fbanks: bool | None,
                     progress: bool) -> tuple[dict[str, Any], list]:
    """The splits served from the fbank cache when asked (``None``: ``task.cache_fbanks is True``),
    and the bad files caching found; else the splits unchanged and no skips."""
    if not (task.cache_fbanks is True if cache_fbanks is None else cache_fbanks):
        return datasets, []
    if noise is not None:
        raise ValueError(
            f"task {task.name}: cache_fbanks=True cannot mix background noise into waveforms (background_noise="
            f"{task.background_noise}); set one of them off"
        )
    return cache_datasets(datasets, progress=progress)


def shown_epoch(epoch: int, epochs: int, lines: int = 10) -> bool:
    """Whether epoch ``epoch`` (1-based) of ``epochs`` gets a line on screen: the first, the last and
    every ``ceil(epochs / lines)``-th, so a 30-epoch run prints 11 lines, not 30 (log.jsonl has all)."""
    return epoch in (1, epochs) or epoch % math.ceil(epochs / lines) == 0


def _log_epoch(record: dict[str, Any], log_file: Path | None, label: str, shown: str | None) -> None:
    """One line per epoch in the run's ``log.jsonl``, and on screen when ``shown`` (the validation score)."""
    if log_file is not None:
        with open(log_file, "a") as f:
            f.write(json.dumps({"run": label.strip(": ") or None, **record}) + "\n")
    if shown is not None:
        print(f"{label}epoch {record['epoch']}: loss {record['train_loss']:.4f}, {shown}")


def _check_sample_rate(encoder: nn.Module, sample_rate: int) -> None:
    pretrained_rate = (getattr(encoder, "asit_config", None) or {}).get("fbank", {}).get("sample_rate")
    if pretrained_rate and pretrained_rate != sample_rate:
        warnings.warn(
            f"the encoder was pretrained on {pretrained_rate} Hz audio, the data set is read at {sample_rate} Hz: "
            "the mel bins mean different frequencies (pass sample_rate in the task's dataset_options)", stacklevel=3
        )


def _training_state(
    task: TaskConfig, model: AudioClassifier, data, noise, batches: int, mode: str, device: torch.device, seed: int
) -> FinetuneState:
    """Criterion, optimiser, schedule and augmentations of one run of ``model``."""
    multilabel = bool(data.multilabel)
    steps_per_epoch = batches if task.max_steps_per_epoch is None else min(batches, task.max_steps_per_epoch)
    peak_lr = task.linear_lr if mode == "linear" else task.lr
    trainable = model.head if mode == "linear" else model
    layer_decay = task.layer_decay if mode == "finetune" else 1.0
    groups = param_groups(trainable, task.weight_decay, layer_decay, decay_embeddings=False)
    amp_dtype = resolve_amp("auto", device)
    return FinetuneState(
        task=task,
        model=model,
        criterion=nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss(label_smoothing=task.label_smoothing),
        optimizer=torch.optim.AdamW(groups, lr=peak_lr, betas=(0.9, 0.999)),
        scaler=grad_scaler(device, amp_dtype),
        amp_dtype=amp_dtype,
        frontend=FbankFrontend(task.num_frames, data.stats, data.sample_rate).to(device),
        spec_augment=SpecAugment(task.freq_mask, task.time_mask).to(device),
        noise=noise.to(device) if noise is not None else None,
        generator=torch.Generator().manual_seed(seed),
        lrs=lr_schedule(task, steps_per_epoch, peak_lr),
        steps_per_epoch=steps_per_epoch,
        num_classes=data.num_classes,
        multilabel=multilabel,
        device=device,
    )


def finetune(
    task_cfg: TaskConfig | str,
    dataset: str = "builtin",
    data_root: str | Path | None = None,
    checkpoint: str | Path | None = "auto",
    mode: str = "finetune",
    output_dir: str | Path = "results",
    device: str | torch.device | None = None,
    progress: bool = True,
    *,
    seed: int = 0,
    write_result: bool = True,
    baseline_metrics: dict[str, float] | None = None,
    baseline_encoder: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune (or linearly probe) an encoder on a task and report its test metrics.

    Args:
        task_cfg: a :class:`~asit.tasks.TaskConfig` (``get_task(name, preset)``) or a task name
            (its ``paper`` preset).
        dataset: the course's ``dataset``: ``"builtin"`` (no ``data_root``) or the data set's name
            (e.g. ``"speech_commands_v2"``) in ``data_root``, its publisher's layout; it names the result file.
        checkpoint: encoder dir / safetensors, ``"auto"``, ``"none"`` or ``"imagenet:<path>"``
            (:func:`asit.classifier.resolve_checkpoint`); ``output_dir`` is where ``"auto"`` looks.
        mode: ``"finetune"`` (every weight trains) or ``"linear"`` (frozen encoder, linear head).
        device: ``None``/``"auto"``: CUDA, else MPS, else CPU. ``progress``: bars, a line per epoch (at most about 10: :func:`shown_epoch`).
        seed: seeds Python, NumPy, torch, the data order, crops and augmentations.
        write_result: write the result JSON, the epoch log and the classifier.
        baseline_metrics: the random-init run's metrics under the same budget, stored beside ours.
        baseline_encoder: that run's ``encoder`` description (kind, size, depth), stored too; a
            warning says so when its shape differs from ours (the comparison is then not fair).

    Returns:
        ``{"metrics", "per_fold", "predictions": {"scores", "targets"}, "classes", "history",
        "checkpoint", "encoder", "best_epoch", "seconds", "device", "notes", "result_path",
        "classifier_paths", "model"}``. ``predictions`` covers the test split (every fold's test
        clips for ESC-50, each clip tested once); ``model`` is the last run's best model.
    """
    started = time.time()
    task = get_task(task_cfg) if isinstance(task_cfg, str) else task_cfg
    label_dataset = _dataset_label(dataset, data_root, mode)
    data_root = data_root or None
    device = pick_device("auto" if device is None else str(device))
    run_dir = Path(output_dir) / task.name / f"{label_dataset}__{task.preset}"
    log_file = None
    if write_result:
        run_dir.mkdir(parents=True, exist_ok=True)
        log_file = run_dir / "log.jsonl"
        log_file.write_text("")

    folds, runs, notes = _run_folds(task, data_root, checkpoint, mode, output_dir, device, progress, seed, log_file)
    per_fold = [{"fold": fold, "best_epoch": run["best_epoch"], **run["test"]["metrics"],
                 **{f"val_{k}": v for k, v in run["val_metrics"].items()}} for fold, run in zip(folds, runs)]
    metrics = _combine(task, per_fold)
    bad_files = skipped_by_split({split: [rec for r in runs for rec in r["skipped_by_split"][split]]
                                  for split in ("train", "val", "test")})
    metrics["skipped_files"] = bad_files["total"]
    seconds = time.time() - started
    encoder_info = runs[0]["encoder_info"]
    result = _result_of_runs(task, label_dataset, mode, metrics, per_fold, runs, seconds, device, notes, bad_files)
    notes += _baseline_shape_notes(baseline_encoder, encoder_info)
    disk_full = None
    if write_result:  # the classifiers first, but a full disk there must not cost the result JSON
        for fold, run in zip(folds, runs):
            try:
                result["classifier_paths"].append(_save_run_classifier(run, fold, task, mode, run_dir))
            except DiskFullError as err:
                disk_full = err
                notes.append(f"the classifier{'' if fold is None else f' of fold {fold}'} was not saved: {err}")
        result["result_path"] = _write_result(result, output_dir, task, metrics, baseline_metrics, device, seconds,
                                              notes, data_root, seed, baseline_encoder)
    if progress:
        shown = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, float))
        print(f"{task.title} [{task.preset}, {mode}, {encoder_info['kind']} init]: {shown} ({seconds:.0f} s)")
    if bad_files["total"] or progress:
        split_counts = ", ".join(f"{n} {split}" for split, n in bad_files["by_split"].items())
        print(f"skipped {bad_files['total']} bad file(s) ({split_counts}); each good clip scored once")
    if disk_full is not None:
        raise disk_full  # the result JSON is written; the missing classifier is an error all the same
    return result


def _run_folds(task: TaskConfig, data_root, checkpoint, mode: str, output_dir, device: torch.device, progress: bool,
               seed: int, log_file: Path | None) -> tuple[list, list[dict[str, Any]], list[str]]:
    """One :func:`train_one_run` per fold the task runs (one run for a task without folds), the
    checkpoint resolved by each; returns the folds, their runs and the notes of the first fold's checks."""
    folds = _folds_to_run(task, data_root)
    if task.cache_fbanks not in (True, False, "builtin"):
        raise ValueError(f"cache_fbanks must be True, False or 'builtin', got {task.cache_fbanks!r}")
    use_cache = task.cache_fbanks is True or (task.cache_fbanks == "builtin" and data_root is None)
    runs, notes = [], []
    for fold in folds:
        datasets = build_datasets(task, data_root, fold, seed)
        if fold == folds[0]:
            notes += _first_fold_checks(task, datasets, folds, data_root)
        label = f"fold {fold}: " if fold is not None else ""
        runs.append(train_one_run(task, datasets, checkpoint, mode, output_dir, device, progress, seed, log_file, label, use_cache))
    return folds, runs, notes


def _result_of_runs(task: TaskConfig, label_dataset: str, mode: str, metrics: dict, per_fold: list, runs: list,
                    seconds: float, device: torch.device, notes: list, bad_files: dict) -> dict[str, Any]:
    """:func:`finetune`'s returned dict (see its docstring) from its runs; ``notes`` is kept, not copied,
    so notes added later show in it."""
    encoder_info = runs[0]["encoder_info"]
    return {
        "task": task.name,
        "dataset": label_dataset,
        "preset": task.preset,
        "mode": mode,
        "metrics": metrics,
        "per_fold": per_fold,
        "predictions": {key: np.concatenate([r["test"][key] for r in runs]) for key in ("scores", "targets")},
        "classes": runs[0]["classes"],
        "history": [r["history"] for r in runs] if task.folds else runs[0]["history"],
        "checkpoint": encoder_info["path"] or encoder_info["kind"],
        "encoder": encoder_info,
        "best_epoch": [r["best_epoch"] for r in runs] if task.folds else runs[0]["best_epoch"],
        "seconds": seconds,
        "device": str(device),
        "notes": notes,
        "result_path": None,
        "classifier_paths": [],
        "skipped_files_by_split": bad_files,
        "model": runs[-1]["model"],
    }


def _write_result(result: dict, output_dir, task: TaskConfig, metrics: dict, baseline_metrics, device, seconds: float,
                  notes: list, data_root, seed: int, baseline_encoder) -> str:
    """The result JSON (:func:`asit.results.write_run_result`); on a full disk its content is
    printed instead, so the run's numbers are never lost, and the error raised."""
    fields = dict(
        baseline_metrics=baseline_metrics, config=task, checkpoint=result["checkpoint"],
        device=describe_environment(device), seconds=round(seconds, 1), notes=notes,
        mode=result["mode"], encoder=result["encoder"], per_fold=result["per_fold"],
        classifier_paths=result["classifier_paths"], skipped_files_by_split=result["skipped_files_by_split"],
        data_root=str(data_root) if data_root else None, seed=seed, baseline_encoder=baseline_encoder,
    )
    try:
        return str(write_run_result(output_dir, task.name, result["dataset"], task.preset, metrics, **fields))
    except DiskFullError:
        record = {"metrics": metrics, "per_fold": result["per_fold"], "notes": notes,
                  "skipped_files_by_split": result["skipped_files_by_split"]}
        print("the result JSON could not be written (no space left); its numbers:\n"
              + json.dumps(record, indent=2, default=str), flush=True)
        raise


def _dataset_label(dataset: str, data_root: str | Path | None, mode: str) -> str:
    """The data label of the result file: ``builtin``, ``custom`` (another root) or the caller's, ``-linear`` for a probe."""
    if dataset != "builtin" and data_root is None:
        raise ValueError(f"dataset={dataset!r} needs data_root (the unpacked data set); use dataset='builtin' for the built-in copy")
    if dataset == "builtin" and data_root not in (None, ""):
        print(f"note: data_root={str(data_root)!r} is not the built-in copy: results are labelled dataset='custom'")
        dataset = "custom"  # so the results table never calls real data "builtin"
    return dataset if mode == "finetune" else f"{dataset}-linear"


def _folds_to_run(task: TaskConfig, data_root: str | Path | None) -> list[int | None]:
    """The ESC-50 folds of ``task`` present in the data, or ``[None]`` for a task with fixed splits."""
    if not task.folds:
        return [None]
    present = esc50_folds_present(data_root)
    folds = [f for f in task.folds if f in present]
    if not folds:
        raise ValueError(f"none of the task's folds {list(task.folds)} is in the data (folds present: {present})")
    if len(present) < 2:
        raise ValueError(f"ESC-50 cross-validation needs at least 2 folds; the data holds {present}")
    return folds


def _first_fold_checks(task: TaskConfig, datasets: dict[str, Any], folds: list, data_root) -> list[str]:
    """Coverage notes (said once, a warning on real data) and the validation / test disjointness check."""
    notes = check_coverage(task, datasets, folds if folds[0] is not None else None)
    for note in notes:
        if data_root is not None:
            warnings.warn(note, stacklevel=3)
        print(("warning: " if data_root is not None else "note: ") + note)
    return notes


def _save_run_classifier(run: dict, fold: int | None, task: TaskConfig, mode: str, run_dir: Path) -> str:
    name = "classifier" if fold is None else f"classifier-fold{fold}"
    return str(save_classifier(
        run["model"], run_dir / name, classes=run["classes"], task=task, stats=run["stats"],
        multilabel=run["multilabel"], sample_rate=run["frontend"].sample_rate,
        extra={"fold": fold, "mode": mode, "test_metrics": run["test"]["metrics"], "encoder": run["encoder_info"]},
    ))


def _baseline_shape_notes(baseline_encoder: dict | None, encoder_info: dict) -> list[str]:
    """A warning when the random-init baseline's shape is not this encoder's (an unfair comparison)."""
    if baseline_encoder is None:
        return []
    shape = (baseline_encoder.get("model_size"), baseline_encoder.get("depth"))
    if shape == (encoder_info["model_size"], encoder_info["depth"]):
        return []
    message = (f"the random-init baseline (ViT-{shape[0]}, {shape[1]} blocks) does not have this encoder's shape "
               f"(ViT-{encoder_info['model_size']}, {encoder_info['depth']} blocks): the comparison is not like for like")
    warnings.warn(message, stacklevel=3)
    return [message]


def _combine(task: TaskConfig, per_fold: list[dict]) -> dict[str, float]:
    """One metrics dict: a fixed-split run's test metrics, or the mean and spread over folds."""
    keys = [k for k, v in per_fold[0].items() if isinstance(v, (int, float)) and k not in ("fold", "best_epoch")]
    if len(per_fold) == 1 and per_fold[0]["fold"] is None:
        return {k: float(per_fold[0][k]) for k in keys}
    metrics = {k: float(np.mean([f[k] for f in per_fold])) for k in keys}
    metrics[f"{task.metric}_std"] = float(np.std([f[task.metric] for f in per_fold]))
    metrics["folds"] = len(per_fold)
    for f in per_fold:
        metrics[f"fold{f['fold']}_{task.metric}"] = float(f[task.metric])
    return metrics


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m asit.finetune",
        description="Fine-tune (or linearly probe) an ASiT encoder on a downstream task; writes "
        "<output-dir>/<task>/<dataset>__<preset>.json.",
    )
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--preset", default="cpu", choices=PRESETS, help="smoke: seconds; cpu: minutes on a laptop; gpu; paper: the recipe")
    parser.add_argument("--dataset", default="builtin", help="'builtin' (no --data-root needed) or the data set's name, "
                        "e.g. 'speech_commands_v1' (with --data-root); it names the result file")
    parser.add_argument("--train-manifest", help="AudioSet: the training json (default balanced_train.json, "
                        "AS-2M unbalanced_train.json), absolute or relative to --data-root")
    parser.add_argument("--eval-manifest", help="AudioSet: the evaluation json (default eval.json)")
    parser.add_argument("--data-root", default=None, help="the unpacked data set in its publisher's layout")
    parser.add_argument("--checkpoint", default="auto", help="encoder folder / .safetensors, 'auto' (newest pretraining output), 'none', or 'imagenet:<path>'")
    parser.add_argument("--mode", default="finetune", choices=("finetune", "linear"), help="linear: frozen encoder, only a linear head trains")
    parser.add_argument("--output-dir", default="results")
    parser.add_argument("--device", default=None, help="cuda, cpu, mps (default: the best available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override TaskConfig fields, e.g. --set epochs=5 lr=1e-4 --set folds=1,2 "
                             "(the grammar of asit.pretrain's --set: values take the field's type)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    manifests = {role: path for role, path in (("train", args.train_manifest), ("eval", args.eval_manifest)) if path}
    task = apply_settings(get_task(args.task, args.preset, manifests=manifests), args.set)
    result = finetune(task, args.dataset, args.data_root, args.checkpoint, args.mode, args.output_dir, args.device,
                      progress=not args.no_progress, seed=args.seed)
    print(json.dumps({"result": result["result_path"], "metrics": result["metrics"]}, indent=2))
    return result


if __name__ == "__main__":
    main()


__all__ = [
    "build_datasets",
    "build_loaders",
    "cache_datasets",
    "check_coverage",
    "esc50_folds_present",
    "finetune",
    "subset_paths",
    "train_one_run",
]
