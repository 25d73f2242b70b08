"""The previous release's Python SDK against the current server (docs/clients.md,
"Versions and compatibility"): the source of the commit that froze ``protos/released/v0.1.0.binpb``
is taken from git, its ``podium`` distribution (the SDK was part of it then) is built
and installed with ``--no-deps`` into a fresh venv beside exactly the packages its
client and agent SDK import, pinned by that commit's lock. A script in that venv then
uses the OLD ``podium.client`` API and an agent written with the OLD
``podium.client.agent`` against a server of this checkout.

Needs the git history (a clean full clone works; a shallow one skips) and the
dependencies from the registry or pip's cache. The venv is built once per session.
Slow (a build and a venv); marked ``slow``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from podium.client.examples.agents import ExampleAgents
from tests.integration.conftest import StartServer, static_agents

REPO = Path(__file__).resolve().parents[2]
RELEASED = "v0.1.0"
CONTRACT = f"protos/released/{RELEASED}.binpb"

OLD_SOURCE = ["pyproject.toml", "README.md", "generated", "server", "clients/python", "migrations"]
"""What the old ``pyproject.toml`` packages (its ``package-dir``)."""

CLIENT_DEPENDENCIES = [
    "grpcio",
    "grpcio-status",
    "grpcio-health-checking",
    "grpcio-reflection",
    "protobuf",
    "googleapis-common-protos",
    "PyYAML",
]
"""What ``podium.client`` (client, errors, definitions, agent) of v0.1.0 imports."""

OFFLINE_SIGNS = (
    "No matching distribution found",
    "Could not find a version",
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "NameResolutionError",
    "ConnectTimeoutError",
    "Could not fetch URL",
)
"""pip's words for a registry it cannot reach with a cache that lacks the package."""

OLD_SDK_SCRIPT = textwrap.dedent(
    '''
    """Uses the v0.1.0 SDK only: its PodiumClient and its agent SDK."""

    import asyncio
    import json
    import sys
    from importlib import metadata

    import podium.client
    from podium.client import NotFoundError, PodiumClient, to_dict
    from podium.client.agent import Agent, Skill, Task


    shouter = Agent("old-shouter", version="0.1.0", skills=[Skill("shout", name="Shout")])


    @shouter.task
    async def shout(task: Task) -> dict:
        await task.progress("shouting", 0.5)
        return {"text": str(task.input["text"]).upper() + "!", "run": task.run_id}


    DEFINITION = {
        "name": "compat-v0-1-0",
        "description": "An example agent, then an agent of the v0.1.0 SDK.",
        "steps": [
            {"id": "hello", "agent": "echo", "input": {"text": "${run.input.text}"}},
            {
                "id": "loud",
                "agent": "old-shouter",
                "depends_on": ["hello"],
                "input": {"text": "${steps.hello.output.echo.text}"},
            },
        ],
    }


    async def main(address: str) -> None:
        server = await shouter.serve("127.0.0.1:0")
        try:
            async with PodiumClient(address, timeout=30) as client:
                agent = await client.register_agent(
                    "old-shouter", server.address, skills=["shout"]
                )
                created = await client.create_definition(DEFINITION)
                run = await client.start_run(created.name, input={"text": "hello"})
                done = await client.wait_run(run.id, timeout=60)
                again = await client.get_run(run.id)
                events, _ = await client.list_run_events(run.id, page_size=100)
                try:
                    await client.get_run("00000000-0000-0000-0000-000000000000")
                    refusal = None
                except NotFoundError as exc:
                    refusal = type(exc).__name__
        finally:
            await server.stop(0)
        report = {
            "version": metadata.version("podium"),
            "client_file": podium.client.__file__,
            "agent": agent.name,
            "definition_version": created.version,
            "run_id": run.id,
            "waited": to_dict(done),
            "read": to_dict(again),
            "events": [to_dict(event) for event in events],
            "refusal": refusal,
        }
        print(json.dumps(report))


    asyncio.run(main(sys.argv[1]))
    '''
)


def _run(*command: str | Path, cwd: Path = REPO, timeout: float = 300) -> str:
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    offline = [line for line in result.stderr.splitlines() if any(s in line for s in OFFLINE_SIGNS)]
    if result.returncode != 0 and offline:
        pytest.skip(
            "the package index is not reachable and pip's cache lacks a package "
            f"({' '.join(map(str, command[3:]))[:200]}): {offline[-1][:300]}"
        )
    assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
    return result.stdout


def _release_commit() -> str:
    """The commit that added the released contract (skips when the history lacks it)."""
    try:
        shallow = _git("rev-parse", "--is-shallow-repository") == "true"
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the previous release's source comes from git history")
    added = _git("log", "--diff-filter=A", "--format=%H", "--", CONTRACT).splitlines()
    # In a shallow clone the oldest commit kept "adds" every file: not the release.
    boundary = set(_shallow_roots()) if shallow else set()
    if not added or added[-1] in boundary:
        pytest.skip(
            f"the commit that released {CONTRACT} is not in this clone's history"
            + (" (a shallow clone: clone with full history)" if shallow else "")
        )
    return added[-1]


def _shallow_roots() -> list[str]:
    path = Path(_git("rev-parse", "--git-path", "shallow"))
    path = path if path.is_absolute() else REPO / path
    return path.read_text().split() if path.is_file() else []


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def _pins(lock: str) -> dict[str, str]:
    """``name==version`` of each package of a uv lock, by lower-case name."""
    pins = {}
    for line in lock.splitlines():
        requirement = line.split("#")[0].split(";")[0].strip()
        if "==" in requirement:
            pins[requirement.split("==")[0].lower()] = requirement
    return pins


def _build_old_venv(root: Path) -> Path:
    """A venv with the release's ``podium`` (no deps) and its client's dependencies."""
    commit = _release_commit()
    source = root / "source"
    source.mkdir()
    archive = root / "source.tar"
    _run("git", "archive", "--format=tar", "-o", archive, commit, *OLD_SOURCE)
    with tarfile.open(archive) as tar:
        tar.extractall(source, filter="data")
    lock = root / "release.lock"
    lock.write_text(_git("show", f"{commit}:requirements/dev.lock") + "\n")
    pins = _pins(lock.read_text())
    _run(
        sys.executable,
        "-m",
        "build",
        "--no-isolation",
        "--skip-dependency-check",
        "--wheel",
        "--outdir",
        root / "dist",
        source,
    )
    wheels = sorted((root / "dist").glob("podium-*.whl"))
    assert [w.name for w in wheels] == [f"podium-{RELEASED[1:]}-py3-none-any.whl"], (
        f"{commit} does not build the {RELEASED} release: {wheels}"
    )
    wheel = wheels[0]
    venv = root / "venv"
    _run(sys.executable, "-m", "venv", venv)
    pip = (venv / "bin" / "python", "-m", "pip", "install", "--quiet")
    _run(*pip, "--no-deps", wheel)
    _run(*pip, "-c", lock, *(pins[name.lower()] for name in CLIENT_DEPENDENCIES))
    return venv / "bin" / "python"


@pytest.fixture(scope="session")
def old_sdk_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The venv's python with the v0.1.0 SDK, built once per session."""
    return _build_old_venv(tmp_path_factory.mktemp("sdk-v0.1.0"))


async def _old_sdk(python: Path, script: Path, address: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PODIUM_API_KEY"}}
    process = await asyncio.create_subprocess_exec(
        str(python),
        str(script),
        address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd="/",  # nothing of this checkout on sys.path: the old release only
        env=env,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 0, stderr.decode()
    result: dict[str, object] = json.loads(stdout)
    return result


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_previous_release_sdk_runs_against_current_server(
    old_sdk_python: Path,
    start_server: StartServer,
    example_agents: ExampleAgents,
    tmp_path: Path,
) -> None:
    server = await start_server(agents=static_agents(example_agents, "echo"))
    script = tmp_path / "old_sdk.py"
    script.write_text(OLD_SDK_SCRIPT)

    report = await _old_sdk(old_sdk_python, script, server.address)

    assert report["version"] == "0.1.0"
    assert str(report["client_file"]).startswith(str(old_sdk_python.parents[1]))
    assert report["agent"] == "old-shouter"
    assert report["definition_version"] == 1
    assert report["refusal"] == "NotFoundError"

    run_id = report["run_id"]
    waited, read = report["waited"], report["read"]
    assert isinstance(waited, dict) and isinstance(read, dict)
    assert read == waited
    assert read["state"] == "STATE_SUCCEEDED", read
    assert read["output"] == {"loud": {"text": "HELLO!", "run": run_id}}
    steps = {step["step_id"]: step for step in read["steps"]}
    assert steps["hello"]["output"] == {"echo": {"text": "hello"}}
    assert steps["loud"]["output"] == {"text": "HELLO!", "run": run_id}
    assert {step["state"] for step in steps.values()} == {"STATE_SUCCEEDED"}

    events = report["events"]
    assert isinstance(events, list)
    assert [int(event["sequence"]) for event in events] == list(range(1, len(events) + 1))
    kinds = [(event["type"], event.get("step_id", "")) for event in events]
    assert kinds[0] == ("TYPE_RUN_CREATED", "")
    assert kinds[-1] == ("TYPE_RUN_COMPLETED", "")
    order = [
        ("TYPE_RUN_STARTED", ""),
        ("TYPE_STEP_QUEUED", "hello"),
        ("TYPE_STEP_STARTED", "hello"),
        ("TYPE_STEP_COMPLETED", "hello"),
        ("TYPE_STEP_QUEUED", "loud"),
        ("TYPE_STEP_STARTED", "loud"),
        ("TYPE_STEP_PROGRESS", "loud"),
        ("TYPE_STEP_COMPLETED", "loud"),
    ]
    positions = [kinds.index(kind) for kind in order]
    assert positions == sorted(positions), kinds
    progress = next(event for event in events if event["type"] == "TYPE_STEP_PROGRESS")
    assert progress["progress"]["message"] == "shouting"
