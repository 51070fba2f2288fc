"""Batch reproduction: run every numbered notebook headless through papermill.

    python -m asit.reproduce --preset cpu                  # what `make reproduce` runs
    python -m asit.reproduce --preset smoke --only 01,04   # a subset, by number or name
    python -m asit.reproduce --preset gpu -p seed 1        # extra parameters for every notebook

Each notebook runs in order into ``results/executed/<notebook>__<preset>.ipynb`` (never over the
source). The encoder the downstream notebooks fine-tune (on the ``cpu`` preset the committed course
encoder, else the pretraining notebook's) is handed to them through their
``checkpoint`` parameter. A failing notebook is reported with its cell and error and the others
still run; the run ends with a summary table and exits non-zero if any notebook failed.
Finally ``results/README.md`` is regenerated from the result files, and the top README's generated
blocks (``asit.readme``) from them when they are this checkout's ``results/``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from asit import label_efficiency
from asit.course import preset_encoder
from asit.readme import LABEL_EFFICIENCY_COLUMNS, LABEL_SHOTS, label_efficiency_cells, update_readme
from asit.results import TASK_METRICS, write_results_readme
from asit.session import FORCE_PRESET_ENV, PRESETS, repo_root

@dataclass
class NotebookRun:
    name: str
    status: str = "pending"  # ok | failed | skipped
    minutes: float = 0.0
    key_metric: str = ""
    error: str = ""
    executed_path: Path | None = None
    result_files: list[Path] = field(default_factory=list)


def discover_notebooks(notebook_dir: Path) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``) in course order."""
    return sorted(p for p in notebook_dir.glob("[0-9][0-9]_*.ipynb") if p.is_file())


def select_notebooks(notebooks: list[Path], only: str | None) -> list[Path]:
    """``only``: comma-separated numbers (``04``) or names (``04_pretraining``), or ``None`` for all."""
    if not only:
        return notebooks
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    chosen = [nb for nb in notebooks if any(nb.stem == w or nb.stem.split("_", 1)[0] == w.zfill(2) for w in wanted)]
    missing = [w for w in wanted if not any(nb.stem == w or nb.stem.split("_", 1)[0] == w.zfill(2) for nb in notebooks)]
    if missing:
        raise SystemExit(f"--only names no notebook for {', '.join(missing)}; have {', '.join(nb.stem for nb in notebooks)}")
    return chosen


def parse_value(text: str):
    """``-p`` values: Python literals where they parse (numbers, booleans, lists), else strings."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _key_metric(result_files: list[Path]) -> str:
    parts = []
    for path in result_files:
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if path.name == "summary.json":  # pretraining
            knn = record.get("knn_accuracy")
            if isinstance(knn, (int, float)):
                parts.append(f"k-NN {knn:.1f}%")
            continue
        task = record.get("task", path.parent.name)
        metric = TASK_METRICS.get(task)
        value = (record.get("metrics") or {}).get(metric)
        if isinstance(value, (int, float)):
            parts.append(f"{task} {metric} {value:.1f}")
    return "; ".join(parts)


def _describe_failure(err: Exception) -> str:
    """``cell [n] `first line of its source`: Error: message`` (n is the execution count in the executed copy)."""
    count = getattr(err, "exec_count", None)
    source = (getattr(err, "source", "") or "").strip().splitlines()
    ename, evalue = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
    where = f"cell [{count}]" if count is not None else ""
    if source:
        where += f" `{source[0][:60]}`"
    return f"{where}: {ename}: {evalue}" if where else f"{ename}: {evalue}"


def _seen_from(path: Path, notebook_dir: Path) -> str:
    """``path`` as the notebooks (run in ``notebook_dir``) should see it: relative when it lies in
    the checkout that holds them, so the configs and results they write name no machine's folders."""
    try:
        return os.path.join("..", path.relative_to(notebook_dir.parent))
    except ValueError:
        return str(path)


def run_notebook(
    source: Path,
    executed: Path,
    parameters: dict,
    cwd: Path,
    log_output: bool = False,
) -> None:
    import papermill  # ~2 s to import: here so that tests and `asit.book` reading the notebook list do not pay it

    declared = papermill.inspect_notebook(str(source))
    unknown = sorted(set(parameters) - set(declared))
    params = {k: v for k, v in parameters.items() if k in declared}
    if unknown:
        print(f"  ({source.name} has no parameter {', '.join(unknown)}; not passed)")
    executed.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(source),
        str(executed),
        parameters=params,
        cwd=str(cwd),
        kernel_name="python3",
        progress_bar=False,
        log_output=log_output,
    )


def reproduce(
    preset: str,
    only: str | None = None,
    extra_parameters: dict | None = None,
    notebook_dir: Path | None = None,
    output_dir: Path | None = None,
    log_output: bool = False,
) -> list[NotebookRun]:
    if preset not in PRESETS:
        raise SystemExit(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    notebook_dir = Path(notebook_dir or repo_root() / "notebooks").resolve()
    output_dir = Path(output_dir or repo_root() / "results").resolve()
    notebooks = select_notebooks(discover_notebooks(notebook_dir), only)
    if not notebooks:
        raise SystemExit(f"no numbered notebooks found in {notebook_dir}")
    if os.environ.get(FORCE_PRESET_ENV):
        print(f"warning: ${FORCE_PRESET_ENV}={os.environ[FORCE_PRESET_ENV]} overrides --preset inside the notebooks")

    base = {"preset": preset, "output_dir": _seen_from(output_dir, notebook_dir), **(extra_parameters or {})}
    runs: list[NotebookRun] = []
    print(f"Reproducing {len(notebooks)} notebook(s) with preset '{preset}' -> {output_dir / 'executed'}")
    for source in notebooks:
        run = NotebookRun(source.stem, executed_path=output_dir / "executed" / f"{source.stem}__{preset}.ipynb")
        parameters = dict(base)
        encoder_dir = preset_encoder(preset, output_dir)  # looked up again: notebook 04 makes one
        if int(source.stem[:2]) >= 10 and "checkpoint" not in parameters and encoder_dir is not None:
            parameters["checkpoint"] = _seen_from(encoder_dir, notebook_dir)
        print(f"- {source.name} ...", flush=True)
        started = time.time()
        try:
            run_notebook(source, run.executed_path, parameters, cwd=notebook_dir, log_output=log_output)
            run.status = "ok"
        except Exception as err:  # keep going: one broken notebook must not hide the others' results
            run.status = "failed"
            run.error = _describe_failure(err)
            print(f"  FAILED {run.error}")
        run.minutes = (time.time() - started) / 60
        run.result_files = [
            p for p in output_dir.glob("*/*.json") if p.stat().st_mtime >= started and p.parent.name != "executed"
        ] + [p for p in output_dir.glob("pretrain/*/summary.json") if p.stat().st_mtime >= started]
        run.key_metric = _key_metric(run.result_files)
        print(f"  {run.status} in {run.minutes:.1f} min {run.key_metric}")
        runs.append(run)
    write_results_readme(output_dir)
    if output_dir == (repo_root() / "results").resolve():  # the README quotes this checkout's results only
        try:
            update_readme(repo_root() / "README.md", output_dir)
        except (OSError, ValueError, KeyError) as err:  # the runs' summary table still comes; tests/test_readme.py fails
            print(f"warning: README.md's generated blocks not updated: {err!r}")
    return runs


def aligned(rows: list[list[str]]) -> str:
    """A plain-text table: the first row the header, underlined, every column padded to its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_table(runs: list[NotebookRun]) -> str:
    rows = [["notebook", "status", "minutes", "key metric"]]
    rows += [[r.name, r.status, f"{r.minutes:.1f}", r.key_metric or (r.error[:70] if r.error else "")] for r in runs]
    return aligned(rows)


def label_efficiency_headline(output_dir: Path, preset: str) -> str:
    """The label sweep's verdicts at ``LABEL_SHOTS`` labels per class and its figure, or "" without one.

    What the course is about, printed under the closing table so that a batch run shows it too.
    """
    path = output_dir / "label_efficiency" / f"{preset}.json"
    if not path.is_file():
        return ""
    result = json.loads(path.read_text())
    rows = label_efficiency_cells(result)
    if not rows:
        return ""
    return "\n".join([f"Label efficiency at {LABEL_SHOTS} labelled clips per class, {len(result['seeds'])} seeds, "
                      f"probe read-out `{label_efficiency.pool_shown(result)}`, test accuracy mean [min, max] "
                      f"(from {path}):", aligned([list(LABEL_EFFICIENCY_COLUMNS), *rows]),
                      f"figure: {path.with_suffix('.png')}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asit.reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", choices=PRESETS, help="smoke: seconds (tests); cpu: a laptop, minutes; gpu: a Colab GPU; paper: the paper's settings")
    parser.add_argument("--only", help="comma-separated notebook numbers or names, e.g. 01,04,10")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="a parameter for every notebook that declares it (repeatable)")
    parser.add_argument("--output-dir", type=Path, help="default: <repo>/results")
    parser.add_argument("--notebook-dir", type=Path, help="default: <repo>/notebooks")
    parser.add_argument("--log-output", action="store_true", help="stream the notebooks' output to this terminal")
    args = parser.parse_args(argv)
    extra = {name: parse_value(value) for name, value in args.parameter}
    started = time.time()
    runs = reproduce(args.preset, args.only, extra, args.notebook_dir, args.output_dir, args.log_output)
    print()
    print(summary_table(runs))
    headline = label_efficiency_headline(Path(args.output_dir or repo_root() / "results").resolve(), args.preset)
    if headline:
        print("\n" + headline)
    failed = [r for r in runs if r.status != "ok"]
    print(f"\n{len(runs) - len(failed)} of {len(runs)} notebooks ran in {(time.time() - started) / 60:.1f} min")
    for run in failed:
        print(f"FAILED {run.name}: {run.error}  (executed copy: {run.executed_path})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
