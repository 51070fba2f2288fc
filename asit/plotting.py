"""The figures and tables the downstream notebooks (10-13) share, drawn from a run's result.

``run`` is the dict :func:`asit.finetune.finetune` returns; ``task`` its :class:`~asit.tasks.TaskConfig`.

- :func:`learning_curves`: training loss and validation metric per epoch (one line per fold
  where the task has folds), the kept epoch marked.
- :func:`confusion_figure`: the confusion matrix over every test clip and the accuracy per class
  (single-label tasks); :func:`average_precision_figure`: AP per class (multi-label AudioSet).
- :func:`paper_comparison`: our number, the random-init run's and the paper's in one table.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from asit import metrics, results
from asit.tasks import TaskConfig


def learning_curves(run: dict, task: TaskConfig):
    """Training loss and validation ``task.metric`` per epoch; a star on each kept epoch."""
    histories = run["history"] if task.folds else [run["history"]]
    best_epochs = run["best_epoch"] if task.folds else [run["best_epoch"]]
    labels = [f"fold {fold}" for fold in task.folds] if task.folds else ["train"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.2))
    for history, best, label in zip(histories, best_epochs, labels):
        epochs = [h["epoch"] for h in history]
        axes[0].plot(epochs, [h["train_loss"] for h in history], marker="o", label=label)
        axes[1].plot(epochs, [h[f"val_{task.metric}"] for h in history], marker="o")
        axes[1].plot(best, history[best - 1][f"val_{task.metric}"], "k*", ms=12)
    axes[0].set(title="training loss", xlabel="epoch")
    axes[1].set(title=f"validation {task.metric} (%)", xlabel="epoch")
    axes[0].legend()
    fig.tight_layout()
    return fig


def confusion_figure(run: dict, max_named: int = 40):
    """Confusion matrix over the test clips (classes that occur) and accuracy per class.

    Returns ``(figure, accuracy in percent)``; class names are shown up to ``max_named`` classes.
    """
    scores, targets = run["predictions"]["scores"], run["predictions"]["targets"]
    present = np.unique(np.concatenate([targets, scores.argmax(1)]))  # classes that occur (a subset run may lack some)
    cm = metrics.confusion_matrix(scores, targets, len(run["classes"]))[np.ix_(present, present)]
    assert cm.sum() == len(targets)
    names = [run["classes"][c] for c in present]
    fig, axes = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [3, 2]})
    axes[0].imshow(cm, cmap="Blues")
    if len(names) <= max_named:
        axes[0].set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        axes[0].set_yticks(range(len(names)), names, fontsize=7)
    axes[0].set(title="confusion matrix (rows: true class)", xlabel="predicted", ylabel="true")
    per_class = pd.Series(100 * np.diag(cm) / np.maximum(cm.sum(1), 1), index=names).sort_values()
    per_class.tail(max_named).plot.barh(ax=axes[1], fontsize=7)
    axes[1].set(title="accuracy per class (%)")
    fig.tight_layout()
    return fig, 100 * metrics.accuracy(scores, targets)


def average_precision_figure(run: dict, title: str = "average precision per class"):
    """AP per class (classes with a positive test clip). Returns ``(figure, per-class AP series)``."""
    scores, targets = run["predictions"]["scores"], run["predictions"]["targets"]
    present = np.flatnonzero(targets.sum(0) > 0)
    per_class = pd.Series({run["classes"][c]: 100 * average_precision_score(targets[:, c], scores[:, c]) for c in present})
    per_class = per_class.sort_values()
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(per_class) + 1))
    per_class.plot.barh(ax=ax)
    ax.set(title=title, xlabel="AP (%)")
    fig.tight_layout()
    return fig, per_class


def figure_path(output_dir: str | Path, task: TaskConfig, dataset: str, preset: str) -> Path:
    """Where a run's figure goes: beside its result JSON."""
    return Path(output_dir) / task.name / f"{dataset}__{preset}.png"


def paper_comparison(run: dict, random_run: dict | None, task: TaskConfig, preset: str, dataset: str) -> pd.DataFrame:
    """One row: our number, the random-init run's, the paper's (``asit.results.PAPER_RESULTS``) and a note."""
    paper = results.paper_number(task.name)
    baseline = random_run["metrics"][task.metric] if random_run else None
    return pd.DataFrame([{
        "task": task.title, "metric": task.metric, "preset": preset, "dataset": dataset,
        "ours (" + run["encoder"]["kind"] + ")": round(run["metrics"][task.metric], 2),
        "random init": None if baseline is None else round(baseline, 2),
        "paper (ASiT, ViT-B)": paper,
        "note": results.comparability_note(dataset, preset, paper),
    }])


def measured_sentence(run: dict, random_run: dict | None, task: TaskConfig, preset: str) -> str:
    """The Markdown sentence notebooks 10-13 show under the comparison, written from this run's own
    numbers (never typed into the prose): both starts' test metric, the gap, the clips scored."""
    ours = run["metrics"][task.metric]
    text = (f"**This run** (`{preset}` preset, seed {run.get('seed', 0)}): the {run['encoder']['kind']} "
            f"start scored **{ours:.1f}** {task.metric}")
    if random_run is not None:
        base = random_run["metrics"][task.metric]
        text += f", the random init **{base:.1f}** ({ours - base:+.1f})"
    clips = len(run["predictions"]["targets"])
    return text + (f", over {clips} test clips. One seed's gap is not evidence: the seed-to-seed "
                   "spread and the label-efficiency curves (notebook 06) are.")


__all__ = ["average_precision_figure", "confusion_figure", "figure_path", "learning_curves", "measured_sentence",
           "paper_comparison"]
