"""Every exercise of every chapter has its entry in notebooks/solutions/<chapter>.ipynb: a solution
that runs (nbval executes the solutions notebooks in `make test`) or what a good answer contains."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _markdown(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"]


def exercise_numbers(chapter: Path) -> list[int]:
    """The numbers of the list under the chapter's '## Exercises' heading."""
    for text in _markdown(chapter):
        if "## Exercises" in text:
            section = text.split("## Exercises", 1)[1]
            return [int(n) for n in re.findall(r"^(\d+)\.\s", section, flags=re.MULTILINE)]
    return []


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_each_exercise_has_a_solution_or_a_good_answer(chapter):
    solutions = ROOT / "notebooks" / "solutions" / chapter.name
    assert solutions.is_file(), f"{solutions} is missing"
    wanted = exercise_numbers(chapter)
    assert wanted, f"{chapter.name} has no numbered exercises under '## Exercises'"
    cells = json.loads(solutions.read_text())["cells"]
    entries: dict[int, list[dict]] = {}
    current = None
    for cell in cells:
        heading = re.match(r"## Exercise (\d+)", "".join(cell["source"]))
        if cell["cell_type"] == "markdown" and heading:
            current = int(heading.group(1))
            entries[current] = []
        elif current is not None:
            entries[current].append(cell)
    assert sorted(entries) == wanted, f"{solutions.name}: exercises {sorted(entries)}, the chapter has {wanted}"
    for number, body in entries.items():
        runs = any(c["cell_type"] == "code" for c in body)
        described = any("A good answer contains" in "".join(c["source"]) for c in body)
        assert runs or described, f"{solutions.name} exercise {number}: neither a solution that runs nor what a good answer contains"
    assert not any(c.get("outputs") for c in cells if c["cell_type"] == "code"), f"{solutions.name} is committed with outputs"
