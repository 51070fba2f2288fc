"""How far the pretraining seed moves the course's result: ``python -m asit.pretraining_seeds``.

The label sweeps (:mod:`asit.label_efficiency`) draw their seeds over the labelled clips and the
random inits, but the pretrained encoder in them is one pretraining run: the committed course
checkpoint, seed 0. Pretrained again with another seed, the same settings move the leads at 4
labels per class by several points (``results/HISTORY.md``), so a claim about the course's settings,
and any comparison of two pretraining variants, needs several pretraining seeds, as the label
draws have. This module

1. pretrains :data:`asit.course.COURSE_SETTINGS` once per seed, as ``make course-checkpoint`` does
   (``python -m asit.course --seed N`` in its own process, ``MKL_CBWR=AVX2`` on one thread),
   ``jobs`` at once, into ``results/runs/pretraining_seeds/`` (not committed). Seed 0 of the
   course settings is the committed checkpoint, read as it is;
2. checks each encoder as :data:`CHECK` says: at 4 labels per class on label seeds 0-4, the events
   (ESC-50, fold 1) and the speakers by the probe and the ``short`` fine-tuning, the keywords
   (``ks2_cmn``) by the probe and ``lpft``. One label-efficiency file per seed, committed:
   ``results/label_efficiency/<name>_seed<N>.json``;
3. gathers every check's leads and margins into ``<name>_seeds.json`` and ``.md``: per pretraining
   seed, and over them the lead's mean and range and how many seeds meet the course's target
   (:data:`TARGET_LEAD` points ahead with the seed ranges apart).

A step whose output exists is skipped, so an interrupted run goes on where it stopped and another
seed costs only its own pretraining and check (their times: the pretraining's ``summary.json``,
``train_time_s``, and the check's ``seconds``).

    make le-pretraining-seeds                               # the course settings, seeds 0-5
    python -m asit.pretraining_seeds --seeds 0-9 --jobs 2           # four more seeds
    python -m asit.pretraining_seeds --set view_noise_snr=30 --name snr30   # a variant, its own seeds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from asit import label_efficiency as le
from asit.course import REPRODUCIBLE_ENV, committed_encoder, parse_settings

# The check of one encoder: the headline's tasks at its hardest label count, five label draws.
CHECK: dict[str, Any] = dict(tasks=("esc50", "ks2_cmn", "voxceleb1"), shots=(4,), seeds=tuple(range(5)),
                             protocols=le.PROTOCOLS, finetune_recipe="short,ks2_cmn:lpft")
TARGET_LEAD = 10.0  # points ahead of random init at 4 labels per class (the course's target, issue 14)
RUNS_DIR = "results/runs/pretraining_seeds"


def checkpoint_dir(runs_dir: str | Path, name: str, seed: int) -> Path:
    return Path(runs_dir) / name / f"seed{seed}" / "course_checkpoint"


def encoder_of(runs_dir: str | Path, name: str, seed: int, settings: dict[str, Any]) -> Path:
    """Where seed ``seed``'s encoder is: the committed one for the course settings' seed 0."""
    if seed == 0 and not settings and committed_encoder() is not None:
        return committed_encoder()
    return checkpoint_dir(runs_dir, name, seed) / "encoder"


def pretrain_command(seed: int, settings: dict[str, Any], destination: Path) -> list[str]:
    """``python -m asit.course`` for one seed, the run itself beside its checkpoint."""
    sets = [f"--set={key}={json.dumps(value)}" for key, value in settings.items()]
    return [sys.executable, "-m", "asit.course", "--seed", str(seed), "--output-dir", str(destination.parent / "run"),
            "--destination", str(destination), *sets]


def pretrain_missing(seeds: Sequence[int], settings: dict[str, Any], runs_dir: str | Path, name: str,
                     jobs: int = 2) -> None:
    """Pretrain every seed whose encoder is absent, ``jobs`` processes at once; each logs beside its run."""
    missing = [s for s in seeds if not (encoder_of(runs_dir, name, s, settings) / "model.safetensors").is_file()]
    env = {**os.environ, **REPRODUCIBLE_ENV}  # what `make course-checkpoint` runs under (asit.course says why)

    def one(seed: int) -> None:
        destination = checkpoint_dir(runs_dir, name, seed)
        destination.parent.mkdir(parents=True, exist_ok=True)
        log = destination.parent / "pretrain.log"
        print(f"pretraining seed {seed} -> {destination} (log: {log})", flush=True)
        with open(log, "w") as handle:
            done = subprocess.run(pretrain_command(seed, settings, destination), env=env, stdout=handle,
                                  stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise RuntimeError(f"pretraining seed {seed} failed (exit {done.returncode}); its log: {log}")

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, missing))  # list(): a failed seed raises here


def check_path(output_dir: str | Path, name: str, seed: int) -> Path:
    return Path(output_dir) / "label_efficiency" / f"{name}_seed{seed}.json"


def check_missing(seeds: Sequence[int], settings: dict[str, Any], runs_dir: str | Path, name: str,
                  output_dir: str | Path = "results", jobs: int = 2) -> dict[int, dict[str, Any]]:
    """Each seed's :data:`CHECK` sweep, read from its file or run now; keyed by pretraining seed."""
    checks = {}
    for seed in seeds:
        path = check_path(output_dir, name, seed)
        if not path.is_file():
            encoder = encoder_of(runs_dir, name, seed, settings)
            le.run(os.path.relpath(encoder), path.stem, output_dir=output_dir, jobs=jobs, **CHECK)
        checks[seed] = json.loads(path.read_text())
    return checks


def leads(check: dict[str, Any]) -> list[dict[str, Any]]:
    """One check's lead and margin per (task, protocol), the protocol named with its recipe."""
    pool = le.pool_shown(check)
    rows = []
    for task in check["tasks"]:
        for protocol in check["protocols"]:
            recipe = le.recipe_of(check, task) if protocol == "finetune" else None
            rows.append({"task": task, "protocol": protocol if recipe is None else f"finetune ({recipe})",
                         **le.gap(check["summary"], task, protocol, 4, pool)})
    return rows


def references(check: dict[str, Any]) -> list[tuple]:
    """The rows that do not depend on the pretrained encoder: random inits and the pooled fbank."""
    return sorted((r["task"], r["protocol"], r["features"], r["pool"], r["seed"], r["score"])
                  for r in check["rows"] if r["features"] != le.PRETRAINED)


def over_seeds(per_seed: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per (task, protocol): the lead's mean and range over pretraining seeds, and how many meet the target."""
    first = next(iter(per_seed.values()))
    keys = [(r["task"], r["protocol"]) for r in first]
    for seed, rows in per_seed.items():  # each row below lines the seeds up by position
        if [(r["task"], r["protocol"]) for r in rows] != keys:
            raise ValueError(f"pretraining seed {seed}'s check scored other tasks or protocols than the first "
                             f"({[(r['task'], r['protocol']) for r in rows]} against {keys}): check it again")
    out = []
    for i, row in enumerate(first):
        lead = np.array([rows[i]["lead"] for rows in per_seed.values()])
        margin = np.array([rows[i]["margin"] for rows in per_seed.values()])
        pretrained = np.array([rows[i]["pretrained"] for rows in per_seed.values()])
        out.append({"task": row["task"], "protocol": row["protocol"], "pretraining_seeds": len(lead),
                    "lead_mean": float(lead.mean()), "lead_min": float(lead.min()), "lead_max": float(lead.max()),
                    "margin_min": float(margin.min()), "pretrained_min": float(pretrained.min()),
                    "pretrained_max": float(pretrained.max()), "random init": row["random init"],
                    "ahead_every_draw": int((margin > 0).sum()),
                    "meets_target": int(((lead >= TARGET_LEAD) & (margin > 0)).sum())})
    return out


def gather(checks: dict[int, dict[str, Any]], settings: dict[str, Any], name: str) -> dict[str, Any]:
    """The summary of every check: per seed, over seeds, and whether their references agree."""
    per_seed = {seed: leads(check) for seed, check in checks.items()}
    first = references(next(iter(checks.values())))
    return {"name": name, "settings": settings, "pretraining_seeds": list(checks), "check": CHECK,
            "target_lead": TARGET_LEAD, "checks": {str(s): c["encoder"] for s, c in checks.items()},
            "check_seconds": {str(s): c["seconds"] for s, c in checks.items()},
            # the random inits and the fbank are the same in every check, on one machine type
            "references_identical": all(references(c) == first for c in checks.values()),
            "per_seed": {str(s): rows for s, rows in per_seed.items()}, "over_seeds": over_seeds(per_seed)}


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a table: one row per (task, protocol), one lead / margin per pretraining seed."""
    seeds = summary["pretraining_seeds"]
    head = (f"| task | protocol | random init | " + " | ".join(f"seed {s}" for s in seeds)
            + f" | lead over seeds | seeds ahead on every draw | seeds meeting the target |")
    lines = [head, "|---" * (6 + len(seeds)) + "|"]
    for i, row in enumerate(summary["over_seeds"]):
        cells = [f"{summary['per_seed'][str(s)][i]['lead']:+.2f} / {summary['per_seed'][str(s)][i]['margin']:+.1f}"
                 for s in seeds]
        lines.append(f"| {row['task']} | {row['protocol']} | {row['random init']:.1f} | " + " | ".join(cells)
                     + f" | {row['lead_mean']:+.2f} [{row['lead_min']:+.2f}, {row['lead_max']:+.2f}]"
                     + f" | {row['ahead_every_draw']} of {len(seeds)} | {row['meets_target']} of {len(seeds)} |")
    return "\n".join(lines) + "\n"


def describe(summary: dict[str, Any]) -> str:
    """What the table's cells are, in words, for the file and the README."""
    settings = ", ".join(f"`{k}={v}`" for k, v in summary["settings"].items()) or "none (`asit.course.COURSE_SETTINGS`)"
    same = ("identical in every check" if summary["references_identical"]
            else "not identical across the checks (they ran on different machine types)")
    return (f"Each pretraining seed's encoder is checked at 4 labels per class on label seeds 0-4 "
            f"(`asit.pretraining_seeds.CHECK`). A cell is the lead / margin of that encoder: the "
            f"pretrained mean minus the random-init mean, and the worst pretrained draw minus the best "
            f"random init (positive: every draw ahead); leads to two decimals, so that one just short "
            f"of the target does not print as it. The target: a lead of {summary['target_lead']:.0f} "
            f"with a positive margin. ESC-50 is scored on its fold 1 alone (40 test clips, 2.5 points a clip; "
            f"the longer sweep's table above scores all five folds). Settings changed: {settings}. The "
            f"random-init and pooled-fbank rows "
            f"are {same}.\n")


def verdict_words(summary: dict[str, Any]) -> str:
    """One bullet per (task, protocol): the lead's range over the pretraining seeds, and how many meet the target."""
    n = len(summary["pretraining_seeds"])
    return "\n".join(
        f"- {row['task']}, {row['protocol']}: a lead of {row['lead_min']:+.2f} to {row['lead_max']:+.2f} points "
        f"(mean {row['lead_mean']:+.2f}) over the {n} pretraining seeds; {row['ahead_every_draw']} of {n} ahead on "
        f"every label draw, {row['meets_target']} of {n} meeting the target."
        for row in summary["over_seeds"]) + "\n"


def write(summary: dict[str, Any], output_dir: str | Path = "results") -> Path:
    out = Path(output_dir) / "label_efficiency" / f"{summary['name']}_seeds.json"
    out.write_text(json.dumps(summary, indent=1) + "\n")
    title = f"# Pretraining seeds: {summary['name']}\n\nWritten by `asit.pretraining_seeds`.\n\n"
    out.with_suffix(".md").write_text(title + describe(summary) + "\n" + markdown(summary) + "\n" + verdict_words(summary))
    return out


def parse_seeds(text: str) -> list[int]:
    """``"0-3"`` -> [0, 1, 2, 3]; ``"0,2"`` -> [0, 2]."""
    seeds = le.parse_numbers(text)
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds takes distinct seeds from 0, e.g. 0-3 or 0,2; got {text!r}")
    return seeds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m asit.pretraining_seeds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0-5", help="pretraining seeds, e.g. 0-3 or 0,2 (0: the committed encoder)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a variant: a config field over COURSE_SETTINGS, as python -m asit.course --set")
    parser.add_argument("--name", default=None, help="the files' prefix (default: course_pretraining, or the variant's)")
    parser.add_argument("--jobs", type=int, default=2, help="pretrainings, and tasks of a check, at once (one core each)")
    parser.add_argument("--runs-dir", default=RUNS_DIR, help="where the pretrainings go (not committed)")
    parser.add_argument("--output-dir", default="results")
    parser.add_argument("--gather-only", action="store_true", help="only gather the checks already written")
    args = parser.parse_args(argv)
    try:
        seeds, settings = parse_seeds(args.seeds), parse_settings(args.set)
    except ValueError as error:
        parser.error(str(error))
    name = args.name or ("course_pretraining" if not settings else "variant_" + "_".join(f"{k}{v}" for k, v in settings.items()))
    if not args.gather_only:
        pretrain_missing(seeds, settings, args.runs_dir, name, args.jobs)
    missing = [s for s in seeds if not check_path(args.output_dir, name, s).is_file()]
    if args.gather_only and missing:
        parser.error(f"--gather-only: no check for seeds {missing} ({check_path(args.output_dir, name, missing[0])})")
    summary = gather(check_missing(seeds, settings, args.runs_dir, name, args.output_dir, args.jobs), settings, name)
    print(describe(summary) + "\n" + markdown(summary) + f"\nwrote {write(summary, args.output_dir)}")
    return summary


__all__ = ["CHECK", "TARGET_LEAD", "checkpoint_dir", "encoder_of", "pretrain_command", "pretrain_missing",
           "check_path", "check_missing", "leads", "references", "over_seeds", "gather", "markdown", "describe",
           "verdict_words", "write", "parse_seeds", "main"]


if __name__ == "__main__":
    main()
