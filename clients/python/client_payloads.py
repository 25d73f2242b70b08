"""The run payload methods of :class:`~podium.client.client.PodiumClient` (a mixin):
GetRunPayload, and putting back the payloads a GetRun response left out for its size."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from google.protobuf.message import Message

from podium.client.common import enum_value
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import run_pb2

if TYPE_CHECKING:
    from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc

__all__ = ["PayloadMethods"]

_Payload = pb.GetRunPayloadRequest.Payload


class PayloadMethods:
    """GetRunPayload, and :meth:`fill_omitted` for a run from GetRun."""

    _stub: pb_grpc.OrchestrationServiceAsyncStub

    async def _unary(
        self, method: Callable[..., Any], request: Message, timeout: float | None
    ) -> Any:
        raise NotImplementedError  # PodiumClient's

    async def get_run_payload(
        self,
        run_id: str,
        payload: _Payload.ValueType | str,
        *,
        step_id: str = "",
        timeout: float | None = None,
    ) -> Any:
        """One payload of a run (``step_id`` empty) or of a step, read whole through
        GetRunPayload range by range: its JSON value (None when unset).

        ``payload`` is a ``GetRunPayloadRequest.Payload`` value or name: ``"input"``,
        ``"output"``, ``"metadata"`` or ``"plan"`` (the last two for runs only).
        ``timeout`` applies to each range.

        Raises:
            ValueError: An unknown payload name.
            NotFoundError: No such run or step.
        """
        kind = enum_value(_Payload, "PAYLOAD_", payload)
        data = bytearray()
        offset = 0
        while True:
            request = pb.GetRunPayloadRequest(
                run_id=run_id, step_id=step_id, payload=kind, offset=offset
            )
            response = await self._unary(self._stub.GetRunPayload, request, timeout)
            data += response.data
            if not response.next_offset:
                return json.loads(bytes(data))
            offset = response.next_offset

    async def fill_omitted(self, run: run_pb2.Run, *, timeout: float | None = None) -> run_pb2.Run:
        """``run`` (from GetRun) with every payload the server left out for its size
        (``Run.omitted``, ``StepRun.omitted``) read back through GetRunPayload and put in
        place; the ``omitted`` lists are emptied. The result may be larger than the
        server's message limit: it is never sent anywhere."""
        for omitted in list(run.omitted):
            value = await self.get_run_payload(run.id, omitted.field, timeout=timeout)
            _put(run, omitted.field, value)
        run.ClearField("omitted")
        for step in run.steps:
            for omitted in list(step.omitted):
                value = await self.get_run_payload(
                    run.id, omitted.field, step_id=step.step_id, timeout=timeout
                )
                _put(step, omitted.field, value)
            step.ClearField("omitted")
        return run


def _put(message: Message, field: str, value: Any) -> None:
    target = getattr(message, field)
    target.Clear()
    if isinstance(value, dict):
        json_format.ParseDict(value, target, ignore_unknown_fields=True)
