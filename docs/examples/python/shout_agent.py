"""A Podium agent in Python with one skill, ``shout`` (docs/agents.md).

    pip install podium-client
    python shout_agent.py 127.0.0.1:50061

Prints ``{"address": ...}`` once serving, then serves until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from podium.client.agent import Agent, Skill, Task, TaskFailed

agent = Agent("shouter", version="1.0.0", skills=[Skill("shout", name="Shout")])


@agent.task
async def shout(task: Task) -> dict[str, Any]:
    text = task.input.get("text")
    if not isinstance(text, str):
        raise TaskFailed("INVALID_INPUT", "input.text must be a string", retryable=False)
    await task.progress("shouting", 0.5)  # a step.progress event of the run
    return {"text": text.upper() + "!"}  # the step's output


if __name__ == "__main__":
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50061"
    agent.run(address, on_ready=lambda s: print(json.dumps({"address": s.address}), flush=True))
