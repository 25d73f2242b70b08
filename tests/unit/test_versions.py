"""One version for the contracts, the server and the SDKs: ``VERSION`` (read by both
Python distributions through setuptools' dynamic version) is also the Node package's
version, and the server pins the SDK of that same version."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path

import pytest

from scripts.release import ReleaseError, build, sha256sums, version_problems

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


def test_release_script_finds_no_disagreement() -> None:
    assert version_problems(VERSION) == []
    assert version_problems("9.9.9") == [
        "pyproject.toml does not depend on podium-client==9.9.9",
        f"clients/node/package.json has version {VERSION}",
        "clients/node/package-lock.json has another version",
    ]


def test_sha256sums_in_the_format_of_sha256sum(tmp_path: Path) -> None:
    (tmp_path / "b.whl").write_bytes(b"wheel")
    (tmp_path / "a.tgz").write_bytes(b"")
    (tmp_path / "SHA256SUMS").write_text("old")
    assert sha256sums(tmp_path) == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  a.tgz\n"
        f"{hashlib.sha256(b'wheel').hexdigest()}  b.whl\n"
    )


def test_release_refuses_disagreeing_versions_before_building(tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match="versions disagree: pyproject.toml"):
        build("9.9.9", tmp_path / "dist")
    assert not (tmp_path / "dist").exists()
