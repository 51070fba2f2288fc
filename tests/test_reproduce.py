"""The batch reproduction: order, executed copies beside (never over) the sources, parameters
passed only where declared, the pretraining checkpoint handed on, failures reported with their
cell while the other notebooks still run, a summary and a non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from asit import reproduce


def _notebook(path: Path, parameters: str, *body: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"), params] + [nbformat.v4.new_code_cell(b) for b in body]
    nbformat.write(nb, path)


@pytest.fixture()
def course(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_result = (
        "import json, pathlib\n"
        "path = pathlib.Path(output_dir) / 'esc50' / f'builtin__{preset}.json'\n"
        "path.parent.mkdir(parents=True, exist_ok=True)\n"
        "path.write_text(json.dumps({'task': 'esc50', 'dataset': 'builtin', 'preset': preset, 'metrics': {'accuracy': 87.5}}))"
    )
    pretrain = (
        "import json, pathlib\n"
        "run = pathlib.Path(output_dir) / 'pretrain' / preset\n"
        "(run / 'encoder').mkdir(parents=True, exist_ok=True)\n"
        "(run / 'encoder' / 'model.safetensors').write_bytes(b'')  # what marks an encoder folder\n"
        "(run / 'summary.json').write_text(json.dumps({'knn_accuracy': 61.0}))"
    )
    # paths in the checkout reach the notebooks relative to them: what they write names no machine
    _notebook(notebooks / "01_first.ipynb", 'preset = "cpu"\noutput_dir = "x"', "assert output_dir == '../results', output_dir")
    _notebook(notebooks / "02_broken.ipynb", 'preset = "cpu"\noutput_dir = "../results"', "y = 2", "raise ValueError('boom in the second cell')")
    _notebook(notebooks / "04_pretraining.ipynb", 'preset = "cpu"\noutput_dir = "../results"', pretrain)
    _notebook(
        notebooks / "10_esc50.ipynb",
        'preset = "cpu"\noutput_dir = "../results"\ncheckpoint = "auto"',
        "assert checkpoint == '../results/pretrain/smoke/encoder', checkpoint",
        write_result,
    )
    (notebooks / "scratch.ipynb").write_text("{}")  # not numbered: never run
    return notebooks, tmp_path / "results"


def test_runs_in_order_keeps_going_and_reports_the_failure(course, capsys):
    notebooks, results = course
    before = {p: p.read_bytes() for p in notebooks.glob("*.ipynb")}
    code = reproduce.main(["--preset", "smoke", "--notebook-dir", str(notebooks), "--output-dir", str(results)])
    out = capsys.readouterr().out
    assert code == 1
    assert [line.split()[1] for line in out.splitlines() if line.startswith("- ")] == [
        "01_first.ipynb", "02_broken.ipynb", "04_pretraining.ipynb", "10_esc50.ipynb"
    ]
    assert "FAILED 02_broken" in out and "boom in the second cell" in out and "cell [4] `raise ValueError" in out
    # the notebooks after the broken one ran, and the downstream one got the pretraining encoder
    for stem in ("01_first", "02_broken", "04_pretraining", "10_esc50"):
        assert (results / "executed" / f"{stem}__smoke.ipynb").exists()
    assert json.loads((results / "esc50" / "builtin__smoke.json").read_text())["metrics"]["accuracy"] == 87.5
    assert "esc50 accuracy 87.5" in out and "k-NN 61.0%" in out
    assert "3 of 4 notebooks ran" in out
    assert {p: p.read_bytes() for p in notebooks.glob("*.ipynb")} == before  # sources untouched
    assert "smoke" in (results / "README.md").read_text()  # regenerated; smoke runs are left out of its table


def test_only_selects_by_number_or_name(course):
    notebooks, _ = course
    found = reproduce.discover_notebooks(notebooks)
    assert [p.stem for p in reproduce.select_notebooks(found, "1,04_pretraining")] == ["01_first", "04_pretraining"]
    with pytest.raises(SystemExit, match="no notebook for 7"):
        reproduce.select_notebooks(found, "7")


def test_parameter_values_are_parsed_as_literals():
    assert reproduce.parse_value("3") == 3
    assert reproduce.parse_value("0.5") == 0.5
    assert reproduce.parse_value("True") is True
    assert reproduce.parse_value("speech_commands_v1") == "speech_commands_v1"


def test_the_closing_output_gives_the_label_sweep_s_verdicts_and_figure(course, capsys):
    from test_readme import _write_sweep

    notebooks, results = course
    assert reproduce.label_efficiency_headline(results, "smoke") == ""  # no sweep yet: nothing printed
    _write_sweep(results, pool="dino")
    (results / "label_efficiency" / "cpu.json").rename(results / "label_efficiency" / "smoke.json")
    reproduce.main(["--preset", "smoke", "--only", "01", "--notebook-dir", str(notebooks), "--output-dir", str(results)])
    out = capsys.readouterr().out.split("notebooks ran in", 1)[0]
    assert "Label efficiency at 4 labelled clips per class, 2 seeds, probe read-out `dino`" in out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("esc50 ")}
    assert rows["probe"].endswith("apart: every pretrained seed above every random init")
    assert rows["finetune"].endswith("overlap")
    assert f"figure: {results / 'label_efficiency' / 'smoke.png'}" in out
