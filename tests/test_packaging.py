"""pyproject.toml declares ranges; constraints.txt pins what the tests ran with (issue 26.4)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if sys.version_info < (3, 11):
    pytest.skip("tomllib: Python 3.11+", allow_module_level=True)
import tomllib  # noqa: E402

from packaging.requirements import Requirement  # noqa: E402


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for reqs in project["optional-dependencies"].values() for r in reqs]
    return [Requirement(r) for r in [*project["dependencies"], *extras]]


def test_dependencies_are_ranges_and_the_pins_fall_inside_them():
    pins = _pins()
    for req in _requirements():
        assert not any(s.operator == "==" for s in req.specifier), f"{req}: a range, not an exact pin (pins: constraints.txt)"
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name}: no pin in constraints.txt"
        assert req.specifier.contains(pins[name]), f"{req.name}=={pins[name]} (constraints.txt) is outside {req.specifier}"


def test_torch_lower_bounds_admit_the_gpu_image():
    reqs = {r.name: r for r in _requirements()}
    assert reqs["torch"].specifier.contains("2.11.0") and reqs["torchvision"].specifier.contains("0.26.0")


def test_the_makefile_installs_with_the_constraints():
    make = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in make and re.search(r"^\$\(STAMP\):.*constraints\.txt", make, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
