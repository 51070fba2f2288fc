"""Every notebook's Colab badge and setup cell, written from the one repository URL.

The URL is ``Repository`` in ``pyproject.toml``'s ``[project.urls]``; a fork changes it there and
runs ``python tests/nbclean.py notebooks/*.ipynb``, which rewrites both with :func:`updated`
(``--check`` lists the notebooks out of date). The badge is the title cell's line that opens
colab.research.google.com; the setup cell is the first code cell. Both are replaced whole, so
edit the templates below, not the notebooks.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BADGE_LINE = re.compile(r"^\[!\[Open In Colab\]\(.*\)\]\(https://colab\.research\.google\.com/.*\)$")

BADGE = (
    "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
    "(https://colab.research.google.com/github/{slug}/blob/{branch}/notebooks/{notebook})"
)

SETUP = '''\
# Setup, the same in every notebook (written by tests/nbsetup.py from pyproject.toml's URL).
# On Colab: clone the repository, then asit/colab.py installs the system packages, the package
# beside Colab's own torch and the built-in data. Locally `make lab` has done all of that.
import os, runpy, subprocess, sys
if "google.colab" in sys.modules:
    repo, url = "/content/asit", "{url}"
    if not os.path.exists(repo):
        subprocess.run(["git", "clone", "--depth", "1", url, repo], check=True)
    runpy.run_path(f"{{repo}}/asit/colab.py")["prepare"](repo)
    sys.path.insert(0, repo)  # the running kernel does not see a fresh editable install otherwise
    os.chdir(f"{{repo}}/notebooks")
try:
    import asit.session
except ImportError as missing:  # a kernel other than the project's
    raise RuntimeError(
        f"this kernel's Python ({{sys.executable}}) cannot import asit ({{missing}}): choose the "
        "kernel 'Python (asit)' (`make lab` installs it) or run `pip install -e .` in this Python"
    ) from None
print(asit.session.describe_environment())'''


def repository_url(pyproject: Path = ROOT / "pyproject.toml") -> str:
    urls = tomllib.loads(pyproject.read_text())["project"].get("urls", {})
    if "Repository" not in urls:
        raise SystemExit(f"{pyproject}: [project.urls] has no 'Repository' entry")
    return urls["Repository"].rstrip("/")


def github_slug(url: str) -> str:
    """``owner/name`` of a GitHub URL (Colab opens notebooks from GitHub only)."""
    match = re.fullmatch(r"https://github\.com/([^/]+/[^/]+?)(\.git)?", url)
    if not match:
        raise SystemExit(f"the repository URL must be https://github.com/<owner>/<name>, not {url!r}")
    return match.group(1)


def _lines(text: str) -> list[str]:
    """A cell's ``source`` as nbformat stores it: lines keeping their newline, the last without."""
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + [lines[-1]]


def updated(nb: dict, name: str, url: str, branch: str = "main") -> dict:
    """``nb`` with its badge and setup cell written from ``url``; raises if either is not found."""
    title = nb["cells"][0]
    lines = "".join(title["source"]).split("\n")
    badge_at = [i for i, line in enumerate(lines) if BADGE_LINE.match(line)]
    if title["cell_type"] != "markdown" or len(badge_at) != 1:
        raise SystemExit(f"{name}: the title cell must hold exactly one 'Open In Colab' badge line")
    lines[badge_at[0]] = BADGE.format(slug=github_slug(url), branch=branch, notebook=name)
    title["source"] = _lines("\n".join(lines))
    setup = next(c for c in nb["cells"] if c["cell_type"] == "code")
    setup["source"] = _lines(SETUP.format(url=url))
    return nb
