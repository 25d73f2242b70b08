"""The chaos suite's agent, run as its own process so that it can be killed:
``python -m tests.chaos.agent --name worker --port 50061 --log calls.log [--crash]``.

Each call appends ``start RUN STEP ATTEMPT`` to the log, sleeps ``input.seconds`` and
appends ``done RUN STEP ATTEMPT`` before it answers: the agent's own account of what it
executed, checked against the database. ``--crash`` makes every call kill the process
(a poison step), after logging its start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

from podium.client.agent import Agent, Skill, Task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--crash", action="store_true")
    args = parser.parse_args()
    log = args.log.open("a", buffering=1, encoding="utf-8")
    agent = Agent(args.name, skills=[Skill("work", name="Work")])

    @agent.task
    async def work(task: Task) -> dict[str, Any]:
        call = f"{task.run_id} {task.step_id} {task.attempt}"
        log.write(f"start {call}\n")
        if args.crash:
            os._exit(3)
        await asyncio.sleep(float(task.input.get("seconds", 0.02)))
        log.write(f"done {call}\n")
        return {"step": task.step_id}

    agent.run(f"127.0.0.1:{args.port}", grace=0)


if __name__ == "__main__":
    main()
