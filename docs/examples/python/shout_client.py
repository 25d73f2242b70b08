"""Call Podium from Python (docs/clients.md): register the ``shout`` agent, store a
one-step definition, run it and print the run's output.

    pip install podium-client
    python shout_client.py 127.0.0.1:50051 127.0.0.1:50061

The first address is Podium's, the second the agent's (docs/examples/python/shout_agent.py).
"""

from __future__ import annotations

import json
import sys

from podium.client import NotFoundError, SyncPodiumClient, ValidationError, to_dict

podium_address, agent_address = sys.argv[1], sys.argv[2]

with SyncPodiumClient(podium_address, timeout=10) as podium:
    podium.register_agent("shouter", agent_address, skills=["shout"])
    podium.create_definition(
        {
            "name": "shout",
            "steps": [{"id": "loud", "skill": "shout", "input": {"text": "${run.input.text}"}}],
        }
    )
    run = podium.start_run("shout", input={"text": "hello"})
    run = podium.wait_run(run.id, timeout=60)
    print(json.dumps({"state": run.State.Name(run.state), "output": to_dict(run.output)}))

    try:  # refusals are typed errors carrying the server's google.rpc details
        podium.get_run("00000000-0000-4000-8000-000000000000")  # no such run
    except (NotFoundError, ValidationError) as error:
        print(json.dumps({"refused": type(error).__name__, "reason": error.reason}))
