"""GetRunPayload: one payload of a run or step, read in byte ranges.

A run's or step's input, output, metadata or plan can be too large for a GetRun
response (``sizes.fit_run`` leaves it out and lists it in ``omitted``); this reads it
as compact JSON (``sizes.payload_json``), at most ``MAX_PAYLOAD_RANGE_BYTES`` at a time,
so nothing a run may legally hold is unreadable.
"""

from __future__ import annotations

from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.server.engine.errors import FieldViolation, InvalidArgument, NotFound
from podium.server.engine.requests import parse_run_id
from podium.server.engine.sizes import MAX_PAYLOAD_RANGE_BYTES, payload_json
from podium.server.engine.storage_errors import storage_errors
from podium.server.storage.runs import RunsRepository

__all__ = ["PayloadService"]

_Payload = pb.GetRunPayloadRequest.Payload
_FIELDS = {
    _Payload.PAYLOAD_INPUT: "input",
    _Payload.PAYLOAD_OUTPUT: "output",
    _Payload.PAYLOAD_METADATA: "metadata",
    _Payload.PAYLOAD_PLAN: "plan",
}
_STEP_FIELDS = frozenset({"input", "output"})


class PayloadService:
    """Use case behind GetRunPayload."""

    def __init__(self, repository: RunsRepository, max_range_bytes: int) -> None:
        """``max_range_bytes``: the largest range returned (at most
        ``MAX_PAYLOAD_RANGE_BYTES``; less when the message limit is smaller)."""
        self._repository = repository
        self._max_range = max(1, min(MAX_PAYLOAD_RANGE_BYTES, max_range_bytes))

    async def read(
        self, organization_id: str, request: pb.GetRunPayloadRequest
    ) -> pb.GetRunPayloadResponse:
        """The range of the payload the request names."""
        rid = parse_run_id(request.run_id)
        problems = []
        field = _FIELDS.get(request.payload)
        if field is None:
            problems.append(
                FieldViolation(
                    field="payload",
                    description="PAYLOAD_INPUT, PAYLOAD_OUTPUT, PAYLOAD_METADATA or PAYLOAD_PLAN",
                )
            )
        elif request.step_id and field not in _STEP_FIELDS:
            problems.append(
                FieldViolation(
                    field="payload", description="a step has only PAYLOAD_INPUT and PAYLOAD_OUTPUT"
                )
            )
        if request.offset < 0:
            problems.append(FieldViolation(field="offset", description="must be >= 0"))
        if request.max_bytes < 0:
            problems.append(FieldViolation(field="max_bytes", description="must be >= 0"))
        if problems or field is None:
            raise InvalidArgument("GetRunPayload request is invalid", violations=problems)
        async with storage_errors():
            found, value = await self._repository.payload(
                organization_id, rid, request.step_id or None, field
            )
        if not found:
            if request.step_id:
                raise NotFound(
                    f"step {request.step_id} of run {request.run_id} not found",
                    reason="STEP_NOT_FOUND",
                    metadata={"run_id": request.run_id, "step_id": request.step_id},
                )
            raise NotFound(
                f"run {request.run_id} not found",
                reason="RUN_NOT_FOUND",
                metadata={"run_id": request.run_id},
            )
        data = payload_json(value)
        if request.offset > len(data):
            raise InvalidArgument(
                f"offset {request.offset} is past the payload's {len(data)} bytes",
                reason="OFFSET_OUT_OF_RANGE",
                violations=[FieldViolation(field="offset", description=f"at most {len(data)}")],
            )
        limit = min(request.max_bytes or self._max_range, self._max_range)
        end = min(len(data), request.offset + limit)
        return pb.GetRunPayloadResponse(
            data=data[request.offset : end],
            total_size_bytes=len(data),
            next_offset=end if end < len(data) else 0,
        )
