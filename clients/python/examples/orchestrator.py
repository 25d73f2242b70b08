"""Example agents that drive runs: an orchestrator and a planner.

:func:`orchestrator_agent` starts a child run of its step with the step credential
every task carries (``task.podium()``), the two lines any agent needs::

    async with task.podium() as podium:
        run = await podium.start_run(plan=task.input["plan"], input=task.input.get("input"))

It returns ``{"run_id": ...}`` at once, or, with ``input.wait`` true, waits for the run
and returns ``{"run_id": ..., "state": ..., "output": ...}``. ``input.hold`` (seconds)
keeps the attempt running afterwards (the child run is cancelled when the attempt ends).

:func:`planner_agent` is the planner of a ``plan`` step: from ``input.agents`` (agent
names) it writes a chain, one step per agent, the first given ``input.input`` and each
next one the previous step's output; ``input.plan``, when given, is returned as it is;
``input.usage`` is reported as the planner's usage (as by the echo example agent).

As a process: ``python -m podium.client.examples.orchestrator [--port N]`` serves both
on 127.0.0.1 and prints ``{"orchestrator": "127.0.0.1:PORT", "planner": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from typing import Any

from podium.client.agent import Agent, Skill, Task, TaskFailed, wait_for_shutdown_signal
from podium.client.examples.agents import report_usage
from podium.client.values import message_to_data
from podium.orchestration.v1 import run_pb2

__all__ = ["main", "orchestrator_agent", "planner_agent"]


def orchestrator_agent(name: str = "orchestrator") -> Agent:
    """Starts ``input.plan`` (a definition) as a child run of its step (module
    docstring)."""

    async def orchestrate(task: Task) -> dict[str, Any]:
        plan = task.input.get("plan")
        if not isinstance(plan, dict):
            raise TaskFailed("INVALID_INPUT", "input.plan must be a definition", False)
        async with task.podium() as podium:
            run = await podium.start_run(plan=plan, input=task.input.get("input") or {})
            result: dict[str, Any] = {"run_id": run.id}
            if task.input.get("wait"):
                async for _ in podium.watch_run(run.id):
                    pass  # it ends after the run's terminal event
                done = await podium.get_run(run.id)
                result["state"] = run_pb2.Run.State.Name(done.state)
                result["output"] = message_to_data(done.output)
        hold = task.input.get("hold")
        if isinstance(hold, int | float) and hold > 0:
            await asyncio.sleep(float(hold))
        return result

    return Agent(
        name,
        handler=orchestrate,
        description="Starts input.plan as a child run of its step with the step credential.",
        skills=[Skill("orchestrate", name="Orchestrate", description="Start a child run")],
    )


def planner_agent(name: str = "planner") -> Agent:
    """The planner of a ``plan`` step (module docstring)."""

    async def plan(task: Task) -> dict[str, Any]:
        report_usage(task)  # input.usage, as the echo agent reports it
        given = task.input.get("plan")
        if isinstance(given, dict):
            return given
        agents = task.input.get("agents")
        if not isinstance(agents, list) or not agents:
            raise TaskFailed("INVALID_INPUT", "input.agents must list agent names", False)
        steps: list[dict[str, Any]] = []
        for index, agent in enumerate(agents):
            step: dict[str, Any] = {"id": f"step-{index + 1}", "agent": str(agent)}
            if index == 0:
                step["input"] = {"value": "${run.input.input}"}
            else:
                previous = steps[-1]["id"]
                step["depends_on"] = [previous]
                step["input"] = {"value": f"${{steps.{previous}.output}}"}
            steps.append(step)
        return {"steps": steps}

    return Agent(
        name,
        handler=plan,
        description="Plans a chain of input.agents (or returns input.plan) for a plan step.",
        skills=[Skill("plan", name="Plan", description="Write a definition")],
    )


async def _serve(port: int) -> None:
    servers = {
        "orchestrator": await orchestrator_agent().serve(f"127.0.0.1:{port}"),
        "planner": await planner_agent().serve("127.0.0.1:0"),
    }
    print(json.dumps({name: s.address for name, s in servers.items()}), flush=True)
    await wait_for_shutdown_signal()
    await asyncio.gather(*(s.stop() for s in servers.values()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--port", type=int, default=0, help="port of the orchestrator")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
