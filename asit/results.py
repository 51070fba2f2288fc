"""Run results: one JSON per run, the paper's numbers as data, and the table that puts them side by side.

Every downstream run writes ``<output_dir>/<task>/<dataset>__<preset>.json`` through
:func:`write_run_result`; pretraining writes ``<output_dir>/pretrain/<preset>/summary.json``.
:func:`collect_results` reads them all into a pandas table, :func:`comparison_table` adds the
paper's number and the difference, and :func:`write_results_readme` renders ``results/README.md``.

A number from the built-in data or a small preset is *not* comparable with the paper's: the table
says so in its ``note`` column instead of leaving a reader to guess.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from asit import __version__
from asit.atomic import atomic_write
from asit.session import portable_path
from asit.tasks import TASK_METRICS, TASK_TITLES

# Reported results (ViT-B, AudioSet pretraining, fine-tuned), as quoted in later literature's
# comparison tables; see notebooks/method.md, "Reported results". ``None``: not reported there. ASiT's
# VoxCeleb1 accuracy is not recorded in our reference, so it stays empty rather than invented.
PAPER_RESULTS: dict[str, dict[str, float | None]] = {
    #                 AS-2M mAP        AS-20K mAP         ESC-50 acc    KS1 acc      KS2 acc      VoxCeleb1 acc
    "ASiT": {"audioset_2m": 48.0, "audioset_20k": 38.6, "esc50": 95.3, "ks1": 98.2, "ks2": 98.9, "voxceleb1": None},
    "AST": {"audioset_2m": 45.9, "audioset_20k": 34.7, "esc50": 88.7, "ks1": 95.5, "ks2": 98.1, "voxceleb1": None},
    "SSAST": {"audioset_2m": None, "audioset_20k": 31.0, "esc50": 88.8, "ks1": 96.0, "ks2": 98.0, "voxceleb1": None},
    "MAE-AST": {"audioset_2m": None, "audioset_20k": 30.6, "esc50": 90.0, "ks1": 95.8, "ks2": 97.9, "voxceleb1": None},
    "Audio-MAE": {"audioset_2m": 47.3, "audioset_20k": 37.1, "esc50": 94.1, "ks1": 96.9, "ks2": 98.3, "voxceleb1": None},
    "BEATs iter3": {"audioset_2m": 48.0, "audioset_20k": 38.3, "esc50": 95.6, "ks1": 97.7, "ks2": 98.3, "voxceleb1": None},
    "EAT": {"audioset_2m": 48.6, "audioset_20k": 40.2, "esc50": 95.9, "ks1": None, "ks2": 98.3, "voxceleb1": None},
}

# The paper's table's order of the tasks (their metrics and titles are asit.tasks').
TASK_ORDER = ["audioset_2m", "audioset_20k", "esc50", "ks1", "ks2", "voxceleb1"]


def paper_number(task: str, model: str = "ASiT") -> float | None:
    """The paper's reported number for ``task`` (percent), or ``None`` where none is recorded."""
    return PAPER_RESULTS.get(model, {}).get(task)


def result_path(output_dir: str | Path, task: str, dataset: str, preset: str) -> Path:
    return Path(output_dir) / task / f"{dataset}__{preset}.json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()  # numpy / torch scalars
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable(asdict(value))
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _portable_paths(extra: dict[str, Any], output_dir: str | Path) -> dict[str, Any]:
    """``extra`` with the encoders' and classifiers' paths relative to ``output_dir`` (when inside)."""
    out = dict(extra)
    for key in ("encoder", "baseline_encoder"):
        if isinstance(out.get(key), dict) and out[key].get("path"):
            out[key] = {**out[key], "path": portable_path(out[key]["path"], output_dir)}
    if out.get("classifier_paths"):
        out["classifier_paths"] = [portable_path(p, output_dir) for p in out["classifier_paths"]]
    return out


def write_run_result(
    output_dir: str | Path,
    task: str,
    dataset: str,
    preset: str,
    metrics: dict[str, float],
    *,
    baseline_metrics: dict[str, float] | None = None,
    config: Any = None,
    checkpoint: str | None = None,
    device: str | None = None,
    seconds: float | None = None,
    notes: list[str] | None = None,
    **extra: Any,
) -> Path:
    """Write one run's result JSON atomically and return its path.

    Args:
        metrics: numbers of the run being reported (the pretrained encoder's, for a downstream task).
        baseline_metrics: the same metrics from a random-init encoder under the same budget, if run.
    """
    path = result_path(output_dir, task, dataset, preset)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "task": task,
        "dataset": dataset,
        "preset": preset,
        "metrics": _jsonable(metrics),
        "baseline_metrics": _jsonable(baseline_metrics) if baseline_metrics is not None else None,
        "paper": {"model": "ASiT", "metric": TASK_METRICS.get(task), "value": paper_number(task)},
        "checkpoint": portable_path(checkpoint, output_dir),
        "device": device,
        "seconds": seconds,
        "notes": notes or [],
        "config": _jsonable(config),
        "asit_version": __version__,
        "python": platform.python_version(),
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **_jsonable(_portable_paths(extra, output_dir)),
    }
    with atomic_write(path, "w") as handle:
        handle.write(json.dumps(record, indent=2) + "\n")
    return path


def _primary_value(metrics: dict | None, task: str) -> float | None:
    if not metrics:
        return None
    name = TASK_METRICS.get(task)
    value = metrics.get(name) if name else None
    return float(value) if isinstance(value, (int, float)) else None


def collect_results(output_dir: str | Path) -> pd.DataFrame:
    """Every downstream result JSON under ``output_dir`` as one row each."""
    rows = []
    for path in sorted(Path(output_dir).glob("*/*__*.json")):
        if path.parent.name in ("pretrain", "pretrain_strategies", "benchmarks", "executed"):
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            print(f"skipping unreadable result {path}: {err}")
            continue
        task = record.get("task", path.parent.name)
        rows.append(
            {
                "task": task,
                "dataset": record.get("dataset"),
                "preset": record.get("preset"),
                "metric": TASK_METRICS.get(task),
                "ours": _primary_value(record.get("metrics"), task),
                "random_init": _primary_value(record.get("baseline_metrics"), task),
                "seconds": record.get("seconds"),
                "path": str(path),
            }
        )
    columns = ["task", "dataset", "preset", "metric", "ours", "random_init", "seconds", "path"]
    return pd.DataFrame(rows, columns=columns)


def comparability_note(dataset: str, preset: str, paper: float | None) -> str:
    if paper is None or pd.isna(paper):
        return "no paper number recorded"
    if dataset == "builtin" or dataset.startswith("builtin-"):  # e.g. builtin-linear (a linear probe)
        return "not comparable: built-in synthetic data"
    if preset != "paper":
        return f"not comparable: '{preset}' preset is smaller than the paper's"
    return "comparable"


def comparison_table(results: pd.DataFrame) -> pd.DataFrame:
    """Ours beside the paper's ASiT number, the difference, and whether they can be compared."""
    table = results.copy()
    table["paper_asit"] = [paper_number(task) for task in table["task"]]
    table["difference"] = [
        (ours - paper) if ours is not None and paper is not None and not pd.isna(ours) else None
        for ours, paper in zip(table["ours"], table["paper_asit"])
    ]
    table["pretraining_gain"] = [
        (ours - base) if ours is not None and base is not None and not pd.isna(base) and not pd.isna(ours) else None
        for ours, base in zip(table["ours"], table["random_init"])
    ]
    table["note"] = [comparability_note(d, p, pap) for d, p, pap in zip(table["dataset"], table["preset"], table["paper_asit"])]
    order = {task: i for i, task in enumerate(TASK_ORDER)}
    table = table.sort_values(by=["task", "preset", "dataset"], key=lambda s: s.map(order) if s.name == "task" else s)
    return table.reset_index(drop=True)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:+.{digits}f}" if digits < 0 else f"{value:.{digits}f}"
    return str(value)


def _signed(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.1f}"


def load_pretraining_summaries(output_dir: str | Path) -> list[dict]:
    summaries = []
    for path in sorted(Path(output_dir).glob("pretrain/*/summary.json")):
        if path.parent.name == "smoke":
            continue
        try:
            summaries.append({"run": path.parent.name, **json.loads(path.read_text())})
        except (OSError, json.JSONDecodeError):
            continue
    return summaries


def comparison_markdown(output_dir: str | Path) -> list[str]:
    """The lines of the per-task table (results/README.md's and the top README's), smoke runs left out."""
    results = collect_results(output_dir)
    table = comparison_table(results[results["preset"] != "smoke"])  # smoke runs are tests; their numbers mean nothing
    if table.empty:
        return ["No downstream results yet: run `make reproduce`."]
    lines = [
        "| task | metric | dataset | preset | ours | random init | pretraining gain | paper (ASiT) | difference | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        lines.append(
            f"| {TASK_TITLES.get(row.task, row.task)} | {row.metric or '-'} | {row.dataset} | {row.preset} | "
            f"{_fmt(row.ours)} | {_fmt(row.random_init)} | {_signed(row.pretraining_gain)} | "
            f"{_fmt(row.paper_asit)} | {_signed(row.difference)} | {row.note} |"
        )
    return lines


def render_results_markdown(output_dir: str | Path) -> str:
    """The body of ``results/README.md``."""
    lines = [
        "# Results",
        "",
        "Generated by `python -m asit.reproduce` (or `asit.results.write_results_readme`); do not edit by hand.",
        f"Last written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "Our number is the ASiT-pretrained encoder fine-tuned under the named preset; *random init* is the",
        "same recipe from a randomly initialised encoder; *paper* is ASiT's reported ViT-B number (see",
        "`asit/results.py` for its source). Numbers on the built-in synthetic data or from a preset smaller",
        "than `paper` show whether pretraining helps at small scale; they cannot be compared with the paper.",
        "Runs on the `smoke` preset (the tests' preset) are left out.",
        "",
    ]
    lines += comparison_markdown(output_dir) + [""]
    summaries = load_pretraining_summaries(output_dir)
    if summaries:
        lines += ["## Pretraining runs", "", "| run | epochs | final loss | k-NN accuracy (pretrained / random init) |", "|---|---|---|---|"]
        for s in summaries:
            knn = s.get("knn_accuracy")
            knn_random = s.get("knn_accuracy_random_init")
            lines.append(
                f"| {s['run']} | {s.get('epochs', '-')} | {_fmt(s.get('final_loss'), 3)} | "
                f"{_fmt(knn)} / {_fmt(knn_random)} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_results_readme(output_dir: str | Path) -> Path:
    path = Path(output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_results_markdown(output_dir))
    return path
