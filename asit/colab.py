"""Prepare a fresh Colab runtime for the course, the same way for every notebook.

Every notebook's setup cell clones the repository and then calls :func:`prepare` from this file,
loaded by path (``runpy``): the package is not importable before it is installed, so this module
uses the standard library only. The steps, each failing loudly with what it printed:

1. the system packages (``espeak-ng``, ``sox``, ``libsndfile1``), after ``apt-get update``
   (a fresh runtime's package lists are stale);
2. the package itself, editable, with Colab's own torch, torchaudio and torchvision held at the
   versions it ships (a constraints file pins them, so pip cannot replace them);
3. the built-in data sets under ``<repo>/data/builtin``, unless they are complete already.

The device report is the setup cell's last line (``asit.session.describe_environment``).
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

SYSTEM_PACKAGES = ("espeak-ng", "sox", "libsndfile1")
KEPT_PACKAGES = ("torch", "torchaudio", "torchvision")  # Colab's builds match its CUDA: keep them

Runner = Callable[[Sequence[str], str], None]


class SetupError(RuntimeError):
    """A set-up step failed; the message names the step and ends with what it printed."""


def run_step(command: Sequence[str], step: str) -> None:
    """Run ``command``; on failure raise :class:`SetupError` with the step and its output's tail."""
    print(f"setup: {step} ...", flush=True)
    done = subprocess.run(list(command), capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise SetupError(f"{step} failed (exit {done.returncode}): {' '.join(command)}\n{tail}")


def kept_versions() -> list[str]:
    """``name==version`` for each of :data:`KEPT_PACKAGES` that is installed."""
    pins = []
    for name in KEPT_PACKAGES:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def missing_system_packages() -> list[str]:
    """The system packages whose program (or, for libsndfile1, whose package) is absent."""
    missing = [name for name in ("espeak-ng", "sox") if shutil.which(name) is None]
    dpkg = shutil.which("dpkg")
    has_libsndfile = dpkg is None or subprocess.run([dpkg, "-s", "libsndfile1"], capture_output=True).returncode == 0
    return missing + ([] if has_libsndfile else ["libsndfile1"])


def prepare(repo: str | Path, run: Runner = run_step, missing: Sequence[str] | None = None) -> None:
    """Install what the course needs into this runtime; ``repo`` is the fresh clone."""
    repo = Path(repo)
    missing = missing_system_packages() if missing is None else list(missing)
    if missing:
        run(["apt-get", "update", "-qq"], "apt-get update")
        run(["apt-get", "install", "-y", "-qq", *missing], f"installing {' '.join(missing)}")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as pins:
        pins.write("\n".join(kept_versions()) + "\n")
    run([sys.executable, "-m", "pip", "install", "-q", "-c", pins.name, "-e", str(repo)],
        "installing the asit package (Colab's torch kept)")
    builtin = repo / "data" / "builtin"
    if not (builtin / ".complete").exists():
        run([sys.executable, "-m", "asit.datasets.builtin", "--out", str(builtin)], "building the built-in data")
    print("setup: done", flush=True)
