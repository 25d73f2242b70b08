"""Run a Podium definition from any A2A client (docs/a2a.md, "Podium as an A2A agent"):
a2a-sdk's client over Podium's JSON-RPC binding (``PODIUM_A2A_HTTP_ADDRESS``).

    pip install "a2a-sdk[http-server]"
    PODIUM_API_KEY=pdm_... python a2a_client.py http://127.0.0.1:50053/ greet '{"who": "ada"}'

Prints the agent card's skills (the organization's definitions), then one JSON line per
update of the task (its state and Podium's event), then the task's output.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid

import httpx
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.types import a2a_pb2
from google.protobuf import json_format, struct_pb2


async def main(url: str, definition: str, run_input: dict[str, object]) -> None:
    key = os.environ.get("PODIUM_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(headers=headers, timeout=None) as http:
        card = await A2ACardResolver(http, url).get_agent_card()
        print(json.dumps({"skills": [skill.id for skill in card.skills]}))
        client = ClientFactory(
            ClientConfig(httpx_client=http, supported_protocol_bindings=["JSONRPC"])
        ).create(card)
        data = struct_pb2.Value()
        data.struct_value.update(run_input)
        message = a2a_pb2.Message(
            message_id=str(uuid.uuid4()),  # also the run's request id: a retry is no new run
            role=a2a_pb2.ROLE_USER,
            parts=[a2a_pb2.Part(data=data, media_type="application/json")],
        )
        message.metadata.update({"podium": {"definition": definition}})
        task_id = ""
        async for event in client.send_message(a2a_pb2.SendMessageRequest(message=message)):
            kind = event.WhichOneof("payload")
            if kind == "task":
                task_id = event.task.id  # the run id
                state = event.task.status.state
                detail: dict[str, object] = {}
            elif kind == "status_update":
                state = event.status_update.status.state
                detail = json_format.MessageToDict(event.status_update.metadata)
            else:
                continue
            print(json.dumps({"state": a2a_pb2.TaskState.Name(state), **detail}))
        task = await client.get_task(a2a_pb2.GetTaskRequest(id=task_id))
        for artifact in task.artifacts:
            for part in artifact.parts:
                print(json.dumps({"output": json_format.MessageToDict(part.data)}))
        await client.close()


if __name__ == "__main__":
    asyncio.run(
        main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
    )
