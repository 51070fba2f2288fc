"""What every committed notebook promises: clean of outputs except the cells nbval checks, no
widget state, the course's shape (title, Colab badge, one setup cell, a papermill parameters cell
with the shared parameters, the preset resolved right after it) and no executed copies in git."""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import pytest

from nbclean import problems

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
COURSE = [
    "01_spectrograms", "02_group_masking", "03_self_distillation", "04_pretraining", "05_pretraining_strategies",
    "06_label_efficiency", "10_esc50", "11_audioset", "12_speech_commands", "13_voxceleb1", "20_results",
]
SHARED_PARAMETERS = {"preset", "dataset", "data_root", "output_dir", "seed"}


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell.get("source", ""))


def test_the_course_is_complete():
    assert [p.stem for p in NOTEBOOKS] == COURSE


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_for_commit(path):
    assert problems(json.loads(path.read_text())) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_the_course_shape(path):
    cells = _cells(path)
    title = _source(cells[0])
    assert cells[0]["cell_type"] == "markdown" and title.lstrip().startswith("# "), "first cell: a markdown title"
    assert f"colab.research.google.com/github/" in title and f"notebooks/{path.name}" in title, "Open in Colab badge"
    code = [c for c in cells if c["cell_type"] == "code"]
    assert "google.colab" in _source(code[0]), "the first code cell is the setup cell that detects Colab"
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    params = cells[tagged[0]]
    tree = ast.parse(_source(params))
    names = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    assert SHARED_PARAMETERS <= names, f"missing parameters {SHARED_PARAMETERS - names}"
    for node in tree.body:  # papermill parameters are flat literals; derived values come later
        assert isinstance(node, ast.Assign), "the parameters cell holds assignments only"
        ast.literal_eval(node.value)
    following = next(c for c in cells[tagged[0] + 1 :] if c["cell_type"] == "code")
    assert "resolve_preset(preset)" in _source(following), "the cell after the parameters resolves the preset"
    text = " ".join(_source(c).lower() for c in cells if c["cell_type"] == "markdown")
    assert "exercise" in text and "summary" in text


def test_no_executed_notebooks_are_committed():
    tracked = subprocess.run(["git", "ls-files", "results/executed"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert tracked.stdout.strip() == ""
