"""``podium demo``: the built-in example agents, a server, and one run to watch.

Starts every example agent (real gRPC servers) in this process, starts ``podium serve``
as a child process with those agents as static agents (``PODIUM_AGENTS``), applies the
example definition ``examples/demo.yaml`` (fan-out / fan-in with data passing), starts a
run, prints its events as they happen (``PodiumClient.watch_run``) and its result, then
keeps serving until Ctrl-C (or exits at once with ``--exit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import os
import signal
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from podium.client.client import PodiumClient
from podium.client.common import DEFAULT_CONSOLE_ADDRESS, to_dict
from podium.client.definitions import parse_definition
from podium.client.examples.agents import ExampleAgents, serve_examples
from podium.orchestration.v1 import event_pb2, run_pb2


def agents_setting(examples: ExampleAgents, names: list[str] | None = None) -> str:
    """A ``PODIUM_AGENTS`` value (``name=address;skills=a|b,...``) for running examples."""
    entries = []
    for name in names or list(examples.addresses):
        skills = "|".join(skill.id for skill in examples[name].card().skills)
        entry = f"{name}={examples.addresses[name]}"
        entries.append(entry + (f";skills={skills}" if skills else ""))
    return ",".join(entries)


def _event_line(event: event_pb2.RunEvent, started: float) -> str:
    kind = event_pb2.RunEvent.Type.Name(event.type).removeprefix("TYPE_").lower()
    kind = kind.replace("_", ".", 1)
    detail = ""
    data = to_dict(event.data) if event.HasField("data") else {}
    if "agent" in data:
        detail = f"agent={data['agent']}"
    if event.HasField("progress"):
        fraction = event.progress.fraction
        percent = f" {fraction:.0%}" if fraction >= 0 else ""
        detail = f"{event.progress.message}{percent}"
    elif event.HasField("output_chunk"):
        text = event.output_chunk.text
        detail = repr(text if len(text) <= 48 else text[:45] + "...")
    if event.HasField("error"):
        detail = f"{event.error.code}: {event.error.message}"
    step = f"{event.step_id}#{event.attempt}" if event.step_id and event.attempt else event.step_id
    return (
        f"  {time.monotonic() - started:6.2f}s  #{event.sequence:<3} {kind:<22} {step:<20} {detail}"
    )


async def _wait_serving(address: str, process: asyncio.subprocess.Process, wait: float) -> None:
    deadline = time.monotonic() + wait
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"podium serve exited with code {process.returncode}")
            with contextlib.suppress(grpc.aio.AioRpcError):
                response = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"podium serve did not report SERVING within {wait:.0f}s")


async def _demo_key(env: dict[str, str]) -> str | None:
    """With a database URL the server requires a key (unless PODIUM_AUTH=disabled):
    make an admin key of the default organization with ``podium keys create``, unless
    PODIUM_API_KEY holds one. None: the client's default (PODIUM_API_KEY)."""
    auth = env.get("PODIUM_AUTH", "auto").lower()
    if env.get("PODIUM_API_KEY") or auth == "disabled":
        return None
    if auth == "auto" and not env.get("PODIUM_DATABASE_URL"):
        return None
    org = env.get("PODIUM_DEFAULT_ORGANIZATION") or "default"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "podium.client.cli",
        "keys",
        "create",
        "--org",
        org,
        "--role",
        "admin",
        "--name",
        "podium demo",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError("podium keys create failed: cannot make the demo's API key")
    print(f"made an admin API key of {org} for the demo (podium keys list shows it)")
    return out.decode().strip()


def console_url(console_address: str) -> str:
    """The console's URL for a HOST:PORT (a wildcard host shown as loopback)."""
    host, _, port = console_address.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)
    return f"http://{host}:{port}/"


async def run_demo(
    address: str,
    *,
    topic: str,
    language: str,
    exit_after: bool,
    console_address: str = DEFAULT_CONSOLE_ADDRESS,
) -> int:
    """Run the demo; returns the process exit code (0 when the run succeeded).
    ``console_address``: where the server serves the web console ('' for nowhere)."""
    examples = await serve_examples()
    env = {
        **os.environ,
        "PODIUM_AGENTS": agents_setting(examples),
        # The example agents listen on loopback, which the outbound guard refuses
        # unless allowed.
        "PODIUM_AGENT_ALLOWED_NETWORKS": "loopback",
        "PODIUM_LISTEN_ADDRESS": address,
        "PODIUM_CONSOLE_ADDRESS": console_address,
    }
    print(f"example agents: {', '.join(f'{n}@{a}' for n, a in examples.addresses.items())}")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "podium.client.cli", "serve", env=env
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 1
    try:
        await _wait_serving(address, process, wait=180)
        print(f"podium serving on {address}")
        if console_address:
            print(f"web console: {console_url(console_address)}")
        text = importlib.resources.files("podium.client.examples").joinpath("demo.yaml").read_text()
        definition = parse_definition(text, source="demo.yaml")
        async with PodiumClient(address, api_key=await _demo_key(env)) as client:
            created = await client.create_definition(definition)
            print(f"definition {created.name} v{created.version}: {len(created.steps)} steps")
            run = await client.start_run(created.name, input={"topic": topic, "language": language})
            print(f"run {run.id} started; events:")
            started = time.monotonic()
            async for event in client.watch_run(run.id):
                print(_event_line(event, started), flush=True)
            run = await client.get_run(run.id)
            print(f"run {run_pb2.Run.State.Name(run.state).removeprefix('STATE_')}")
            for step in run.steps:
                state = run_pb2.StepRun.State.Name(step.state).removeprefix("STATE_")
                agent = f"agent={step.agent}"
                skipped = step.state == run_pb2.StepRun.STATE_SKIPPED
                reason = f"  {step.error.code}" if skipped else ""  # e.g. CONDITION_FALSE
                child = f"  child run {step.child_run_id}" if step.child_run_id else ""
                print(
                    f"  {step.step_id:<18} {state:<10} {agent:<18} attempts={step.attempt}"
                    f"{reason}{child}"
                )
            print("output:")
            print(json.dumps(to_dict(run.output), indent=2))
            code = 0 if run.state == run_pb2.Run.STATE_SUCCEEDED else 1
        if not exit_after:
            print(f"\nPodium keeps serving on {address} (Ctrl-C to stop). Try:")
            print(f"  grpcurl -plaintext {address} list")
            print(f"  .venv/bin/podium definitions list --address {address}")
            if console_address:
                url = console_url(console_address)
                print(f"  open {url} (the web console), or the HTTP/JSON gateway:")
                json_type = "-H 'content-type: application/json'"
                print(f"  curl -s -X POST {url}v1/ListRuns {json_type} -d '{{}}'")
            await stop.wait()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await process.wait()
        await examples.stop(0)
    return code
