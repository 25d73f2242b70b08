"""Regenerate the console screenshots of README.md and docs/usage.md (docs/images/).

Starts the example agents and a Podium server with the console in this process
(PODIUM_DATABASE_URL if set, else the embedded PostgreSQL in a temporary directory),
runs the demo definition plus one run held at a checkpoint (its first step reports model
usage, for the usage page), and photographs the main pages in Debian's chromium
(/usr/bin/chromium, or CHROMIUM=path) through Playwright:

    .venv/bin/python scripts/screenshots.py [--out docs/images]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.resources
import os
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright

from podium.client.client import PodiumClient
from podium.client.definitions import parse_definition
from podium.client.demo import agents_setting
from podium.client.examples.agents import serve_examples
from podium.orchestration.v1 import run_pb2
from podium.server.app import PodiumServer
from podium.server.config import Settings

GATED = """
name: release-notes
description: Draft release notes, wait for a human, publish them.
steps:
  - id: draft
    agent: echo
    input:
      text: "${run.input.version} is out"
      usage: { input_tokens: 1840, output_tokens: 412, cost_usd: 0.0031, model: "gpt-4o-mini" }
  - id: review
    agent: echo
    depends_on: [draft]
    checkpoint: { when: before, prompt: "Publish these release notes?" }
    input: { notes: "${steps.draft.output.echo.text}" }
  - id: publish
    agent: echo
    depends_on: [review]
"""


async def _wait(client: PodiumClient, run_id: str, *states: int) -> None:
    for _ in range(600):
        run = await client.get_run(run_id)
        if run.state in states or any(s.state in states for s in run.steps):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"run {run_id} did not reach {states}")


async def main(out: Path, chromium: str) -> None:
    examples = await serve_examples()
    with tempfile.TemporaryDirectory(prefix="podium-shots-") as data_dir:
        settings = Settings.from_env(
            os.environ,
            listen_address="127.0.0.1:0",
            console_address="127.0.0.1:0",
            data_dir=data_dir,
            agents=agents_setting(examples),
            agent_allowed_networks="loopback",
            shutdown_grace_seconds=0.0,
        )
        server = PodiumServer(settings)
        await server.start()
        try:
            assert server.gateway is not None
            url = server.gateway.url.rstrip("/")
            async with PodiumClient(server.address) as client:
                text = importlib.resources.files("podium.client.examples").joinpath("demo.yaml")
                demo = await client.create_definition(
                    parse_definition(text.read_text(), source="demo.yaml")
                )
                gated = await client.create_definition(parse_definition(GATED, source="gated"))
                done = await client.start_run(demo.name, input={"topic": "tea", "language": "fr"})
                await _wait(client, done.id, run_pb2.Run.STATE_SUCCEEDED)
                held = await client.start_run(gated.name, input={"version": "v1.2"})
                await _wait(client, held.id, run_pb2.StepRun.STATE_AWAITING_APPROVAL)
            pages = {
                "console-runs.png": "/runs",
                "console-run.png": f"/runs/{done.id}",
                "console-approval.png": f"/runs/{held.id}",
                "console-definition.png": f"/definitions/{demo.name}",
                "console-agents.png": "/agents",
                "console-usage.png": "/usage?days=30&by=agent",
            }
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=chromium)
                page = await browser.new_page(viewport={"width": 1280, "height": 800})
                for name, path in pages.items():
                    await page.goto(url + path)
                    await page.wait_for_selector("main h1")
                    await page.wait_for_timeout(500)  # the event log fills in
                    await page.screenshot(path=str(out / name), full_page=False)
                    print(out / name)
                await browser.close()
        finally:
            await server.stop(0)
            await examples.stop(0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(args.out, os.environ.get("CHROMIUM", "/usr/bin/chromium")))
