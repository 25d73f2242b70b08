"""The schedule methods of :class:`~podium.client.client.PodiumClient` (a mixin, kept
apart so the client module stays readable)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from podium.client.common import Page, struct_or_none
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import schedule_pb2

if TYPE_CHECKING:
    from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc

__all__ = ["OVERLAP_POLICIES", "CATCH_UP_POLICIES", "ScheduleMethods"]

Schedule = schedule_pb2.Schedule

OVERLAP_POLICIES = {
    "skip": Schedule.OVERLAP_POLICY_SKIP,
    "buffer_one": Schedule.OVERLAP_POLICY_BUFFER_ONE,
    "allow": Schedule.OVERLAP_POLICY_ALLOW,
}
"""Overlap policies by their short name."""

CATCH_UP_POLICIES = {
    "skip": Schedule.CATCH_UP_POLICY_SKIP,
    "run_once": Schedule.CATCH_UP_POLICY_RUN_ONCE,
    "run_all": Schedule.CATCH_UP_POLICY_RUN_ALL,
}
"""Catch-up policies by their short name."""


class ScheduleMethods:
    """CreateSchedule, GetSchedule, ListSchedules, PauseSchedule, ResumeSchedule and
    DeleteSchedule."""

    _stub: pb_grpc.OrchestrationServiceAsyncStub

    async def _unary(
        self, method: Callable[..., Any], request: Message, timeout: float | None
    ) -> Any:
        raise NotImplementedError  # PodiumClient's

    async def create_schedule(
        self,
        definition: str,
        *,
        cron: str = "",
        time_zone: str = "",
        interval_seconds: float = 0.0,
        version: int = 0,
        input: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        jitter_seconds: float = 0.0,
        overlap_policy: str = "skip",
        catch_up_policy: str = "skip",
        max_catch_up_runs: int = 0,
        timeout: float | None = None,
    ) -> schedule_pb2.Schedule:
        """Create a schedule starting runs of ``definition`` on ``cron`` (in
        ``time_zone``, default UTC) or every ``interval_seconds``.

        ``overlap_policy``: ``skip``, ``buffer_one`` or ``allow``; ``catch_up_policy``:
        ``skip``, ``run_once`` or ``run_all`` (at most ``max_catch_up_runs``, 0: 10).
        Not retried by the client (a retry could create a second schedule).

        Raises:
            ValueError: Neither or both of ``cron`` and ``interval_seconds``, or an
                unknown policy name.
            ValidationError: The server refused a field (bad cron, unknown time zone,
                unknown definition...).
        """
        if bool(cron) == bool(interval_seconds):
            raise ValueError("give exactly one of cron and interval_seconds")
        if overlap_policy not in OVERLAP_POLICIES:
            raise ValueError(f"overlap_policy: one of {', '.join(OVERLAP_POLICIES)}")
        if catch_up_policy not in CATCH_UP_POLICIES:
            raise ValueError(f"catch_up_policy: one of {', '.join(CATCH_UP_POLICIES)}")
        schedule = Schedule(
            definition_name=definition,
            definition_version=version,
            time_zone=time_zone,
            jitter_seconds=jitter_seconds,
            overlap_policy=OVERLAP_POLICIES[overlap_policy],
            catch_up_policy=CATCH_UP_POLICIES[catch_up_policy],
            max_catch_up_runs=max_catch_up_runs,
            input=struct_or_none(input),
            labels=dict(labels or {}),
        )
        if cron:
            schedule.cron = cron
        else:
            schedule.interval_seconds = interval_seconds
        request = pb.CreateScheduleRequest(schedule=schedule)
        response = await self._unary(self._stub.CreateSchedule, request, timeout)
        return response.schedule  # type: ignore[no-any-return]

    async def get_schedule(
        self, schedule_id: str, *, timeout: float | None = None
    ) -> schedule_pb2.Schedule:
        """A schedule with its next fire times."""
        request = pb.GetScheduleRequest(schedule_id=schedule_id)
        response = await self._unary(self._stub.GetSchedule, request, timeout)
        return response.schedule  # type: ignore[no-any-return]

    async def list_schedules(
        self,
        *,
        definition: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[schedule_pb2.Schedule]:
        """One page of schedules, oldest first (only ``definition``'s when given)."""
        request = pb.ListSchedulesRequest(
            definition_name=definition, page_size=page_size, page_token=page_token
        )
        response = await self._unary(self._stub.ListSchedules, request, timeout)
        return Page(list(response.schedules), response.next_page_token)

    async def pause_schedule(
        self, schedule_id: str, *, timeout: float | None = None
    ) -> schedule_pb2.Schedule:
        """Stop a schedule from firing until it is resumed."""
        request = pb.PauseScheduleRequest(schedule_id=schedule_id)
        response = await self._unary(self._stub.PauseSchedule, request, timeout)
        return response.schedule  # type: ignore[no-any-return]

    async def resume_schedule(
        self, schedule_id: str, *, timeout: float | None = None
    ) -> schedule_pb2.Schedule:
        """Let a paused schedule fire again, from its next tick after now."""
        request = pb.ResumeScheduleRequest(schedule_id=schedule_id)
        response = await self._unary(self._stub.ResumeSchedule, request, timeout)
        return response.schedule  # type: ignore[no-any-return]

    async def delete_schedule(self, schedule_id: str, *, timeout: float | None = None) -> None:
        """Delete a schedule (the runs it started are kept)."""
        request = pb.DeleteScheduleRequest(schedule_id=schedule_id)
        await self._unary(self._stub.DeleteSchedule, request, timeout)
