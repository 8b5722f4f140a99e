"""Packaging conventions: typed packages (PEP 561), the license file and field, no unused dependency."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("package", ["supervisor", "policies", "exporters"])
def test_every_package_is_typed(package: str) -> None:
    assert (ROOT / package / "py.typed").is_file()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"][package]


def test_license_file_and_spdx_field_agree() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert pyproject["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    assert importlib.metadata.metadata("corral")["License-Expression"] == "Apache-2.0"


def test_declared_dependencies_are_imported_somewhere() -> None:
    """A dependency nobody imports is weight every user installs (msgspec was one)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    sources = "\n".join(
        p.read_text() for pkg in ("supervisor", "policies", "exporters") for p in (ROOT / pkg).rglob("*.py")
    )
    import_names = {"prometheus-client": "prometheus_client"}
    for dep in deps:
        name = dep.split(">")[0].split("=")[0].split("<")[0].strip()
        module = import_names.get(name, name.replace("-", "_"))
        assert f"import {module}" in sources or f"from {module}" in sources, name
