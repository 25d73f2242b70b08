"""One version for the contracts, the server and the SDKs: ``VERSION`` (read by both
Python distributions through setuptools' dynamic version) is also the Node package's
version, and the server pins the SDK of that same version."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VERSION = (REPO / "VERSION").read_text().strip()


def test_version_is_semver() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION), VERSION


def test_python_distributions_read_version_and_the_server_pins_the_sdk() -> None:
    server = tomllib.loads((REPO / "pyproject.toml").read_text())
    sdk = tomllib.loads((REPO / "clients" / "python-client" / "pyproject.toml").read_text())
    for project in (server, sdk):
        assert project["project"]["dynamic"] == ["version"]
        assert project["tool"]["setuptools"]["dynamic"]["version"] == {"file": "VERSION"}
    assert (REPO / "clients" / "python-client" / "VERSION").resolve() == REPO / "VERSION"
    assert f"podium-client=={VERSION}" in server["project"]["dependencies"]


def test_node_package_has_the_version() -> None:
    node = REPO / "clients" / "node"
    assert json.loads((node / "package.json").read_text())["version"] == VERSION
    lock = json.loads((node / "package-lock.json").read_text())
    assert lock["version"] == VERSION
    assert lock["packages"][""]["version"] == VERSION
