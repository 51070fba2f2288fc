"""The three descriptions of the environment agree: pyproject.toml (loose ranges for users),
constraints.txt (this machine's and CI's exact stack) and environment.yml (conda users)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# Pinned together on purpose: an unpinned torch pulls a release torchaudio does not match.
REQUIRED_TORCH_PINS = {"torch": "2.14.1", "torchvision": "0.29.1", "torchaudio": "2.11.0"}


def pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    return {canonicalize_name(Requirement(line).name): Requirement(line) for line in lines}


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def conda_pip_section() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs exactly one pip section"
    return sections[0]


def test_constraints_pin_the_torch_stack():
    pins = constraints()
    for name, version in REQUIRED_TORCH_PINS.items():
        assert pins.get(name) == version, f"constraints.txt must pin {name}=={version}"


def test_constraints_satisfy_the_package_ranges():
    pins = constraints()
    for name, requirement in pyproject_requirements().items():
        assert name in pins, f"{name} is a dependency in pyproject.toml but not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's range {requirement.specifier}"
        )


def test_conda_environment_matches_pyproject_and_constraints():
    pins = constraints()
    conda = {}
    for entry in conda_pip_section():
        if entry.startswith("-e"):
            continue
        requirement = Requirement(entry)
        conda[canonicalize_name(requirement.name)] = requirement
    assert set(conda) == set(pyproject_requirements()), (
        f"environment.yml's pip section and pyproject.toml list different packages: "
        f"only in environment.yml {sorted(set(conda) - set(pyproject_requirements()))}, "
        f"only in pyproject.toml {sorted(set(pyproject_requirements()) - set(conda))}"
    )
    for name, requirement in conda.items():
        assert str(requirement.specifier) == f"=={pins[name]}", (
            f"environment.yml has {requirement}, constraints.txt pins {name}=={pins[name]}"
        )


def test_conda_python_is_allowed_by_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    version = python.split("=", 1)[1]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert Requirement(f"python{requires}").specifier.contains(version + ".0")
    assert re.fullmatch(r"\d+\.\d+", version)
