"""What every committed notebook promises: clean of outputs except the cells nbval checks, no
widget state, the project's kernel, the course's shape (title, Colab badge and setup cell written
from the one repository URL, a papermill parameters cell with the shared parameters, the preset
resolved right after it), code lines that fit a cell, and no executed copies in git."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import nbsetup
from nbclean import problems

from asit.results import PAPER_RESULTS

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
COURSE = [
    "01_spectrograms", "02_group_masking", "03_self_distillation", "04_pretraining", "05_pretraining_strategies",
    "06_label_efficiency", "10_esc50", "11_audioset", "12_speech_commands", "13_voxceleb1", "20_results",
]
SHARED_PARAMETERS = {"preset", "dataset", "data_root", "output_dir", "seed"}
MAX_CODE_LINE = 100  # what a cell shows at 1400 px with JupyterLab's file browser open


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell.get("source", ""))


def test_the_course_is_complete():
    assert [p.stem for p in NOTEBOOKS] == COURSE


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_for_commit(path):
    assert problems(json.loads(path.read_text()), path.name) == []


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
    # what `papermill --help-notebook` shows: every parameter with its comment as help
    from papermill.translators import PythonTranslator

    inspected = {p.name for p in PythonTranslator.inspect({"source": _source(params)})}
    assert inspected == names, f"papermill cannot parse the lines of {names - inspected} ('=' in a comment?)"
    following = next(c for c in cells[tagged[0] + 1 :] if c["cell_type"] == "code")
    assert "resolve_preset(preset)" in _source(following), "the cell after the parameters resolves the preset"
    text = " ".join(_source(c).lower() for c in cells if c["cell_type"] == "markdown")
    assert "exercise" in text and "summary" in text


def test_no_executed_notebooks_are_committed():
    tracked = subprocess.run(["git", "ls-files", "results/executed"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert tracked.stdout.strip() == ""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_badge_and_setup_cell_come_from_the_repository_url(path):
    nb = json.loads(path.read_text())
    assert nbsetup.updated(json.loads(path.read_text()), path.name, nbsetup.repository_url()) == nb, (
        "run: python tests/nbclean.py notebooks/*.ipynb"
    )


def test_a_fork_url_reaches_the_badge_and_the_clone():
    nb = nbsetup.updated(json.loads(NOTEBOOKS[0].read_text()), NOTEBOOKS[0].name, "https://github.com/someone/asit-fork")
    title, setup = _source(nb["cells"][0]), _source(next(c for c in nb["cells"] if c["cell_type"] == "code"))
    assert f"colab.research.google.com/github/someone/asit-fork/blob/main/notebooks/{NOTEBOOKS[0].name}" in title
    assert '"https://github.com/someone/asit-fork"' in setup and "asit-tutorial" not in setup + title
    with pytest.raises(SystemExit, match="github.com"):
        nbsetup.github_slug("https://gitlab.com/someone/asit")


def test_the_setup_cell_names_the_kernel_when_asit_is_missing(monkeypatch):
    setup = _source(next(c for c in _cells(NOTEBOOKS[0]) if c["cell_type"] == "code"))
    monkeypatch.setitem(sys.modules, "asit", None)  # what a kernel without the package sees
    monkeypatch.setitem(sys.modules, "asit.session", None)
    with pytest.raises(RuntimeError, match=r"cannot import asit.*'Python \(asit\)'"):
        exec(compile(setup, "setup cell", "exec"), {})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_code_lines_fit_the_cell(path):
    too_long = [
        (number, len(line)) for number, cell in enumerate(_cells(path), start=1) if cell["cell_type"] == "code"
        for line in _source(cell).splitlines() if len(line) > MAX_CODE_LINE
    ]
    assert too_long == [], f"(cell, length) of code lines over {MAX_CODE_LINE} characters"


def test_the_method_reference_is_in_the_repository_and_its_cited_sections_exist():
    headings = {line.lstrip("# ").strip() for line in (ROOT / "notebooks" / "method.md").read_text().splitlines()
                if line.startswith("#")}
    for section in ("Optimisation (pretraining)", "Fine-tuning", "Reported results"):
        assert section in headings
    cited = subprocess.run(["git", "grep", "-l", "shared/reference", "--", "asit", "notebooks", "README.md"],
                           cwd=ROOT, capture_output=True, text=True)
    assert cited.stdout.strip() == "", "cite notebooks/method.md, which the repository holds"


# The paper's numbers the task notebooks cite in their introductions: one table holds them.
CITED = {"10_esc50": ("esc50",), "11_audioset": ("audioset_20k", "audioset_2m"), "12_speech_commands": ("ks2", "ks1")}


@pytest.mark.parametrize("stem", sorted(CITED))
def test_cited_paper_numbers_are_the_results_table(stem):
    cells = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())["cells"]
    text = " ".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    sentence = re.search(r"The paper reports (.*?)\(cited", text, re.S)
    assert sentence, f"{stem}: no 'The paper reports ... (cited' sentence"
    quoted = [float(x) for x in re.findall(r"\d+\.\d+", sentence.group(1))]
    assert quoted == [PAPER_RESULTS["ASiT"][task] for task in CITED[stem]]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_sees_every_assignment_of_the_parameters_cell(path):
    """A value papermill cannot parse (e.g. ``"a=b"`` in a string) is silently no parameter: `-p` skips it."""
    import ast

    import papermill

    (cell,) = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assigned = [n.targets[0].id for n in ast.parse(_source(cell)).body if isinstance(n, ast.Assign)]
    assert sorted(papermill.inspect_notebook(str(path))) == sorted(assigned)
