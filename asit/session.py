"""What every notebook and script does first: pick the preset, seed, find the device and the data.

Notebooks keep their ``parameters`` cell (papermill) of flat literals and call :func:`resolve_preset`
right after it, so the tests can force the ``smoke`` preset with an environment variable: nbval
runs a notebook as stored and cannot inject parameters.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import sys
from pathlib import Path

import numpy as np
import timm
import torch
import torchaudio

from asit import __version__

PRESETS = ("smoke", "cpu", "gpu", "paper")
FORCE_PRESET_ENV = "ASIT_FORCE_PRESET"  # set by `make test` to "smoke"
DATA_DIR_ENV = "ASIT_DATA_DIR"  # where the built-in data lives (default: <repo>/data)


def resolve_preset(preset: str) -> str:
    """The preset to run: ``$ASIT_FORCE_PRESET`` if set, else ``preset``; validated."""
    forced = os.environ.get(FORCE_PRESET_ENV, "").strip()
    chosen = forced or preset
    if chosen not in PRESETS:
        raise ValueError(f"unknown preset {chosen!r}; choose one of {', '.join(PRESETS)}")
    if forced and forced != preset:
        print(f"preset forced to {forced!r} by ${FORCE_PRESET_ENV} (the notebook asked for {preset!r})")
    return chosen


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run torch's intra-op pool with ``n`` threads inside the ``with`` block, then restore it.

    Loops over small tensors (toy models, one clip at a time) spend more time handing work to the
    pool than computing: one thread is 5-10x faster for them on a laptop CPU.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pick_device(preference: str = "auto") -> torch.device:
    """``auto``: CUDA if available, else Apple's MPS, else CPU."""
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def in_colab() -> bool:
    return "google.colab" in sys.modules


def repo_root() -> Path:
    """The repository checkout the package was installed from (editable install)."""
    return Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """Root of the built-in data sets: ``$ASIT_DATA_DIR`` or ``<repo>/data``."""
    return Path(os.environ.get(DATA_DIR_ENV) or repo_root() / "data")


def portable_path(path: str | Path | None, output_dir: str | Path) -> str | None:
    """``path`` as a result file stores it: relative to the run's ``output_dir`` when it lies
    inside it, so committed results name no machine's folders; other paths as given."""
    if path is None:
        return None
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(output_dir)).as_posix()
    except ValueError:
        return str(path)


def describe_environment(device: torch.device | None = None) -> str:
    """One line a learner can paste into a question: versions and the device."""
    device = device or pick_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return (
        f"asit {__version__} | python {platform.python_version()} | torch {torch.__version__} | "
        f"torchaudio {torchaudio.__version__} | timm {timm.__version__} | device {device} ({name})"
        + (" | Colab" if in_colab() else "")
    )
