"""The course checkpoint: one pretraining, longer than a notebook should take, committed once.

The label-efficiency lesson (notebook 06) needs an encoder pretrained for longer than a notebook
should run on a laptop. As the best tutorials do (annotated-transformer, the SimCLR notebook of
uvadlc), the encoder is pretrained once by a documented command and committed; the notebooks load it
when it is present and pretrain (at the notebook's own preset) only when it is absent.

    make course-checkpoint              # = python -m asit.course: pretrains, then copies the encoder
    python -m asit.course --epochs 2    # a shorter run into a scratch folder, for a quick look

The run is :data:`COURSE_SETTINGS` over the ``cpu`` preset; its ``steps.jsonl`` is committed with
the encoder, so a test can rerun the first steps and compare them loss for loss. The make target
runs on one thread with ``MKL_CBWR=AVX2`` (Intel MKL's conditional numerical reproducibility: the
same AVX2 code path on every x86-64 CPU that has it), because MKL's default picks the newest
instructions a CPU offers and AVX-512 or AMX kernels round the matrix products differently in the
last bits, enough to change the losses from the sixth step on. That pins the steps across the Intel
CPUs seen so far, not across vendors: on an AMD CPU the sixth step differs in the seventh digit
under the same settings (``results/HISTORY.md``). So the checkpoint's ``summary.json`` records the
CPU that ran it (:func:`cpu_identity`), and the test compares bit for bit on that CPU vendor and to
a relative 1e-5 elsewhere or when a checkpoint names no CPU. ``MKL_CBWR=COMPATIBLE`` gave the same
steps on both vendors seen so far but runs the pretraining half as fast, so the target keeps AVX2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from asit.config import get_preset
from asit.pretrain import pretrain
from asit.session import repo_root

# The cpu preset with the built-in unlabelled pool (data/builtin/unlabelled, the `folder` data set)
# beside the labelled sets' training splits, trained for longer.
COURSE_SETTINGS: dict[str, Any] = dict(
    run_name="course",
    datasets=["esc50", "speech_commands_v2", "voxceleb1", "audioset", "folder"],
    epochs=12,  # 195 steps per epoch on the 3,126-clip pool: 2,340 steps (about 35 min on one core)
    warmup_epochs=0.5,
    knn_every=0,  # the label-efficiency sweep measures the encoder instead
    save_every=1,
    save_every_steps=100,
    view_eq_db=10.0,  # each global view through its own random equaliser (asit.augment.random_equaliser)
)
CHECKPOINT_DIR = "results/course_checkpoint"  # relative to the repository
# The environment `make course-checkpoint` runs in (the module docstring says why). MKL reads
# MKL_CBWR once, at its first call, so it must be set before the process starts.
REPRODUCIBLE_ENV = {"MKL_CBWR": "AVX2", "OMP_NUM_THREADS": "1"}


def cpu_identity() -> dict[str, str]:
    """The CPU a run's steps were computed on: its vendor and model (Linux's /proc/cpuinfo), and the
    instruction set PyTorch's own kernels dispatch to."""
    fields = {"vendor_id": platform.processor() or platform.machine(), "model name": ""}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in fields and value.strip():
                fields[key.strip()] = value.strip()
            if line == "":  # the first processor's block is enough
                break
    return {"vendor": fields["vendor_id"], "model": fields["model name"],
            "torch_capability": torch.backends.cpu.get_cpu_capability()}


def course_config(**overrides: Any):
    return get_preset("cpu", **{**COURSE_SETTINGS, **overrides})


def committed_encoder() -> Path | None:
    """The committed course encoder folder, or None when it is absent (e.g. a trimmed copy)."""
    folder = repo_root() / CHECKPOINT_DIR / "encoder"
    return folder if (folder / "model.safetensors").is_file() else None


def preset_encoder(preset: str, output_dir: str | Path) -> Path | None:
    """The pretrained encoder a downstream run of ``preset`` starts from, or None when there is none.

    On the ``cpu`` preset the committed course encoder (the longer pretraining of the same
    architecture) when present; else this preset's pretraining run, ``<output_dir>/pretrain/<preset>/encoder``.
    The one rule :func:`encoder_for`, :func:`asit.classifier.find_pretrained_encoder` and
    :mod:`asit.reproduce` follow.
    """
    if preset == "cpu" and committed_encoder() is not None:
        return committed_encoder()
    own = Path(output_dir) / "pretrain" / preset / "encoder"
    return own if (own / "model.safetensors").is_file() else None


def encoder_for(preset: str, output_dir: str | Path, checkpoint: str = "auto") -> tuple[Path | str, str]:
    """The encoder a downstream notebook should read, and where it came from.

    ``checkpoint="auto"``: :func:`preset_encoder`, else this preset's pretraining, run now. Any
    other value (an encoder folder, or "none" for a random init) is returned as it is.
    """
    if checkpoint != "auto":
        return checkpoint, "given"  # a folder, or "none" for a random init, as asit.classifier reads it
    found = preset_encoder(preset, output_dir)
    if found is not None:  # relative: printed paths name no machine
        course = found == committed_encoder()
        return Path(os.path.relpath(found)), "the committed course checkpoint" if course else "this preset's pretraining run"
    return pretrain(get_preset(preset, output_dir=str(output_dir))).encoder_dir, f"a {preset} pretraining run just now"


def make_checkpoint(output_dir: str | Path = "results/runs", destination: str | Path | None = None, **overrides) -> Path:
    """Pretrain with :func:`course_config`, then copy the encoder, config, logs and summary to ``destination``."""
    cfg = course_config(output_dir=str(output_dir), **overrides)
    result = pretrain(cfg)
    target = Path(destination) if destination is not None else repo_root() / CHECKPOINT_DIR
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(result.encoder_dir, target / "encoder")
    for name in ("config.json", "log.jsonl", "steps.jsonl", "summary.json"):
        shutil.copy2(result.run_dir / name, target / name)
    summary = json.loads((target / "summary.json").read_text())
    summary["recorded_on"] = cpu_identity()  # where the committed steps are bit for bit (the module docstring)
    (target / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"course checkpoint: {summary.get('steps')} steps, final loss {summary.get('final_loss'):.3f}, "
          f"{summary.get('train_time_s')} s -> {target}")
    return target


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m asit.course", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="results/runs", help="where the pretraining run itself goes")
    parser.add_argument("--destination", default=None, help=f"where the checkpoint goes (default: {CHECKPOINT_DIR})")
    parser.add_argument("--epochs", type=int, default=None, help="override the course's epochs (a shorter look)")
    parser.add_argument("--seed", type=int, default=None,
                        help="the pretraining seed (default: the preset's, 0, which made the committed encoder); "
                             "asit.pretraining_seeds pretrains several")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other field of the config over COURSE_SETTINGS, e.g. view_noise_snr=30 (a variant); "
                             "the value is read as JSON when it parses, else as text")
    args = parser.parse_args(argv)
    try:
        overrides = parse_settings(args.set)
    except ValueError as error:
        parser.error(str(error))
    overrides.update({"epochs": args.epochs} if args.epochs else {})
    overrides.update({"seed": args.seed} if args.seed is not None else {})
    return make_checkpoint(args.output_dir, args.destination, **overrides)


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``["view_noise_snr=30", "run_name=x"]`` -> ``{"view_noise_snr": 30, "run_name": "x"}``.

    A value is read as JSON when it parses (numbers, true/false, lists), else kept as text; a
    name that is not a field of the config is an error here, before any training.
    """
    fields = set(asdict(course_config()))
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or key.strip() not in fields:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE with KEY a config field, e.g. view_noise_snr=30")
        try:
            settings[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            settings[key.strip()] = value
    return settings


if __name__ == "__main__":
    main()
