"""The course as a website: the executed notebooks of ``make reproduce``, the results and figures.

    python -m asit.book --preset cpu                 # what `make book` runs -> build/book/html/index.html
    python -m asit.book --preset smoke --results /tmp/run --out /tmp/book

Built with **Sphinx + MyST-NB** (and the Jupyter Book look, ``sphinx-book-theme``), because it
builds offline from PyPI packages alone. Jupyter Book 2 does not: it is a front end to the
``mystmd`` Node.js tool, and fetches Node.js through ``nodeenv`` from nodejs.org (not a package
registry) when it is absent, then the site theme at build time. MkDocs + mkdocs-jupyter also
installs from PyPI, but Sphinx + MyST-NB is the engine Jupyter Book 1 was built on: the site
looks like the Jupyter Books the field publishes, and MyST-NB reads each notebook as a Sphinx
document with its stored outputs.

Nothing is executed here (``nb_execution_mode = "off"``): the pages are the executed copies
``results/executed/<notebook>__<preset>.ipynb`` that ``python -m asit.reproduce`` writes, so
every number and figure on the site is the one that run produced. The source tree is assembled
under ``<out>/src`` (the Sphinx configuration is written there by :func:`write_conf`), the site
goes to ``<out>/html``. The results page is ``results/README.md`` (generated from the result
files) followed by the preset's summary figure.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from asit.reproduce import discover_notebooks
from asit.session import repo_root

CONF = '''# Written by asit.book; edit asit/book.py instead.
project = "ASiT: a course in self-supervised audio transformers"
author = "the asit contributors"
extensions = ["myst_nb"]
nb_execution_mode = "off"  # the executed copies of `make reproduce` are shown as they are
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header", "misc.highlighting_failure"]
exclude_patterns = ["_build"]
html_theme = "sphinx_book_theme"
html_title = project
html_theme_options = {{"show_toc_level": 2, "use_download_button": False, "home_page_in_toc": True}}
html_last_updated_fmt = ""
html_copy_source = False
preset = {preset!r}
'''

INDEX = """# ASiT: a course in self-supervised audio transformers

The numbered notebooks of the asit repository, as executed by `python -m asit.reproduce --preset {preset}`
(`make reproduce`). Every number and figure on these pages was produced by that run; the
[results](results.md) page puts them beside the paper's.

```{{toctree}}
:maxdepth: 1
:caption: Notebooks

{notebooks}
```

```{{toctree}}
:maxdepth: 1
:caption: Results

results
```
"""


def write_conf(src: Path, preset: str) -> Path:
    path = src / "conf.py"
    path.write_text(CONF.format(preset=preset))
    return path


def executed_notebooks(results_dir: Path, preset: str, notebook_dir: Path) -> list[tuple[Path, str]]:
    """``(executed copy, page name)`` of every numbered notebook, in course order; an error lists the missing ones."""
    pages, missing = [], []
    for source in discover_notebooks(notebook_dir):
        executed = results_dir / "executed" / f"{source.stem}__{preset}.ipynb"
        (pages if executed.is_file() else missing).append((executed, source.stem))
    if missing:
        names = ", ".join(name for _, name in missing)
        raise FileNotFoundError(
            f"no executed copy of {names} under {results_dir / 'executed'} for preset {preset!r}: "
            f"run `python -m asit.reproduce --preset {preset}` (make reproduce) first"
        )
    return pages


def results_page(results_dir: Path, preset: str, src: Path) -> Path:
    """``results.md``: ``results/README.md`` and the preset's summary figure (copied beside it)."""
    readme = results_dir / "README.md"
    if not readme.is_file():
        raise FileNotFoundError(f"{readme} is missing: python -m asit.reproduce writes it from the result files")
    text = readme.read_text()
    figure = results_dir / f"summary__{preset}.png"
    if figure.is_file():
        shutil.copy2(figure, src / figure.name)
        text += f"\n\n## Summary figure\n\n![the {preset} preset's results]({figure.name})\n"
    path = src / "results.md"
    path.write_text(text)
    return path


def assemble(results_dir: Path, preset: str, src: Path, notebook_dir: Path) -> list[str]:
    """Lay out the Sphinx source tree in ``src``; returns the notebook page names."""
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    pages = executed_notebooks(results_dir, preset, notebook_dir)
    for executed, name in pages:
        # Page names drop the preset, so a link to `04_pretraining.ipynb` in one notebook finds the other.
        shutil.copy2(executed, src / f"{name}.ipynb")
    results_page(results_dir, preset, src)
    names = [name for _, name in pages]
    (src / "index.md").write_text(INDEX.format(preset=preset, notebooks="\n".join(names)))
    write_conf(src, preset)
    return names


def build(results_dir: Path, preset: str, out: Path, notebook_dir: Path | None = None) -> Path:
    """Assemble and build the site; returns ``<out>/html``. Sphinx's warnings are printed, errors raise."""
    notebook_dir = notebook_dir or repo_root() / "notebooks"
    src, html = out / "src", out / "html"
    started = time.time()
    pages = assemble(results_dir, preset, src, notebook_dir)
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-j", "1", "-d", str(out / "doctrees"), str(src), str(html)]
    done = subprocess.run(command, capture_output=True, text=True)
    warnings = [line for line in done.stderr.splitlines() if re.search(r"WARNING|ERROR", line)]
    for line in warnings:
        print(line)
    if done.returncode != 0:
        raise RuntimeError(f"sphinx-build failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(f"built {len(pages)} notebook pages and the results page into {html} in {time.time() - started:.0f} s ({len(warnings)} warnings)")
    return html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asit.book", description="Build the course website from the executed notebooks.")
    parser.add_argument("--preset", default="cpu", help="whose executed copies to show (default: cpu, what make reproduce runs)")
    parser.add_argument("--results", type=Path, default=None, help="the results folder (default: <repo>/results)")
    parser.add_argument("--out", type=Path, default=None, help="build folder (default: <repo>/build/book)")
    args = parser.parse_args(argv)
    results_dir = (args.results or repo_root() / "results").resolve()
    out = (args.out or repo_root() / "build" / "book").resolve()
    html = build(results_dir, args.preset, out)
    print(f"open {html / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
