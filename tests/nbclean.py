"""Clean notebooks for commit: strip outputs, execution counts and widget state; name the kernel.

Every notebook names the project's kernel (``make lab`` installs it as "Python (asit)") and keeps
the full ``language_info`` that kernel reports, so that opening a notebook changes nothing in it
(JupyterLab marks a notebook modified when the kernel's answer differs from what is stored).
The Colab badge and the setup cell are written from the repository URL (tests/nbsetup.py).

Cells tagged ``keep_output`` keep their outputs: they are the deterministic cells whose stored
output nbval checks (their source starts with ``# NBVAL_CHECK_OUTPUT``). Store those outputs from
a run on the ``smoke`` preset, the one the tests use.

    python tests/nbclean.py notebooks/*.ipynb          # clean in place
    python tests/nbclean.py --check notebooks/*.ipynb  # exit 1 and list what is not clean
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nbsetup

KEEP_TAG = "keep_output"
CHECK_MARKER = "NBVAL_CHECK_OUTPUT"
KERNELSPEC = {"display_name": "Python (asit)", "language": "python", "name": "asit"}
# What ipykernel reports for the Python of constraints.txt (the version is the one place it differs).
LANGUAGE_INFO = {
    "codemirror_mode": {"name": "ipython", "version": 3},
    "file_extension": ".py",
    "mimetype": "text/x-python",
    "name": "python",
    "nbconvert_exporter": "python",
    "pygments_lexer": "ipython3",
    "version": "3.11.7",
}


def problems(nb: dict, name: str | None = None) -> list[str]:
    """What keeps a notebook from being committed as it is (``name``: also check its setup cells)."""
    found = []
    if name is not None and nbsetup.updated(json.loads(json.dumps(nb)), name, nbsetup.repository_url()) != nb:
        found.append("the Colab badge or setup cell is not what tests/nbsetup.py writes")
    metadata = nb.get("metadata", {})
    if "widgets" in metadata:
        found.append("notebook metadata holds widget state")
    if metadata.get("kernelspec") != KERNELSPEC:
        found.append(f"kernelspec is {metadata.get('kernelspec')}, not the project's {KERNELSPEC}")
    if set(metadata.get("language_info", {})) != set(LANGUAGE_INFO):
        found.append("language_info is not the kernel's full answer (opening the notebook would modify it)")
    has_parameters = False
    for number, cell in enumerate(nb.get("cells", []), start=1):
        if "id" not in cell:
            found.append(f"cell {number} has no id (JupyterLab would add one: the notebook opens modified)")
        tags = cell.get("metadata", {}).get("tags", [])
        has_parameters |= "parameters" in tags
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell.get("source", ""))
        keep = KEEP_TAG in tags
        if cell.get("outputs") and not keep:
            found.append(f"cell {number} carries outputs but is not tagged {KEEP_TAG!r}")
        if keep and CHECK_MARKER not in source:
            found.append(f"cell {number} is tagged {KEEP_TAG!r} but nbval does not check it (no {CHECK_MARKER})")
        if keep and not cell.get("outputs"):
            found.append(f"cell {number} is tagged {KEEP_TAG!r} but has no stored output to check")
        for output in cell.get("outputs", []):
            if "application/vnd.jupyter.widget-view+json" in output.get("data", {}):
                found.append(f"cell {number} stores a widget view")
        if cell.get("execution_count") is not None and not keep:
            found.append(f"cell {number} keeps an execution count")
    if not has_parameters:
        found.append("no cell tagged 'parameters' (papermill cannot set its parameters)")
    return found


def clean(nb: dict, name: str | None = None) -> dict:
    if name is not None:
        nbsetup.updated(nb, name, nbsetup.repository_url())
    metadata = nb.setdefault("metadata", {})
    metadata.pop("widgets", None)
    metadata.pop("papermill", None)
    metadata["kernelspec"] = dict(KERNELSPEC)
    metadata["language_info"] = {**LANGUAGE_INFO, **metadata.get("language_info", {})}
    for cell in nb.get("cells", []):
        cell.get("metadata", {}).pop("papermill", None)
        cell.get("metadata", {}).pop("execution", None)
        if cell.get("cell_type") != "code":
            continue
        if KEEP_TAG in cell.get("metadata", {}).get("tags", []):
            cell["outputs"] = [
                o for o in cell.get("outputs", []) if "application/vnd.jupyter.widget-view+json" not in o.get("data", {})
            ]
            for output in cell["outputs"]:
                if "execution_count" in output:
                    output["execution_count"] = 1
            cell["execution_count"] = 1 if cell["outputs"] else None
        else:
            cell["outputs"] = []
            cell["execution_count"] = None
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="report problems instead of cleaning")
    args = parser.parse_args(argv)
    status = 0
    for path in args.notebooks:
        nb = json.loads(path.read_text())
        if args.check:
            for problem in problems(nb, path.name):
                print(f"{path}: {problem}")
                status = 1
        else:
            path.write_text(json.dumps(clean(nb, path.name), indent=1, ensure_ascii=False) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
