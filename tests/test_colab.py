"""asit/colab.py, the Colab set-up every notebook runs: the package lists are refreshed before
any install, Colab's torch is pinned where it is, the built-in data are built, a failure is loud."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest

from asit import colab


def _recorded(tmp_path: Path, missing: list[str]) -> list[list[str]]:
    commands = []
    colab.prepare(tmp_path, run=lambda command, step: commands.append(list(command)), missing=missing)
    return commands


def test_a_fresh_runtime_gets_packages_after_the_list_refresh_then_the_package_then_the_data(tmp_path):
    commands = _recorded(tmp_path, missing=["espeak-ng", "sox"])
    assert commands[0] == ["apt-get", "update", "-qq"]
    assert commands[1][:2] == ["apt-get", "install"] and commands[1][-2:] == ["espeak-ng", "sox"]
    pip = commands[2]
    assert pip[:4] == [sys.executable, "-m", "pip", "install"] and pip[-2:] == ["-e", str(tmp_path)]
    pins = Path(pip[pip.index("-c") + 1]).read_text().split()
    assert f"torch=={importlib.metadata.version('torch')}" in pins  # the runtime's torch stays
    assert commands[3] == [sys.executable, "-m", "asit.datasets.builtin", "--out", str(tmp_path / "data" / "builtin")]


def test_nothing_is_installed_twice(tmp_path):
    (tmp_path / "data" / "builtin").mkdir(parents=True)
    (tmp_path / "data" / "builtin" / ".complete").touch()
    commands = _recorded(tmp_path, missing=[])
    assert [c[:4] for c in commands] == [[sys.executable, "-m", "pip", "install"]]


def test_a_failing_step_names_itself_and_shows_its_output():
    with pytest.raises(colab.SetupError, match=r"(?s)listing a folder that is not there failed \(exit \d+\).*nowhere"):
        colab.run_step(["ls", "/nowhere"], "listing a folder that is not there")
