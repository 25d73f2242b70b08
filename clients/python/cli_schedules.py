"""``podium schedules create|get|list|pause|resume|delete``: the command and its output
(the parser is in :mod:`podium.client.cli_parser`)."""

from __future__ import annotations

import argparse
from datetime import UTC

from podium.client.cli_output import (
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    json_arg,
    labels_arg,
    print_data,
)
from podium.client.client import PodiumClient
from podium.orchestration.v1 import schedule_pb2

__all__ = ["cmd_schedules"]


def _when(schedule: schedule_pb2.Schedule) -> str:
    if schedule.WhichOneof("spec") == "cron":
        return f"cron {schedule.cron!r} {schedule.time_zone or 'UTC'}"
    return f"every {schedule.interval_seconds:g}s"


def _print_schedule(schedule: schedule_pb2.Schedule, output: str, *, detail: bool) -> None:
    if output != "text":
        print_data(schedule, output)
        return
    state = "paused" if schedule.paused else "active"
    following = (
        schedule.next_fire_time.ToDatetime(tzinfo=UTC).isoformat()
        if schedule.HasField("next_fire_time")
        else "-"
    )
    print(
        f"{schedule.id}  {schedule.definition_name:<20} {_when(schedule):<32} {state:<6}"
        f" next={following} runs={schedule.runs_started}"
    )
    if detail:
        overlap = schedule_pb2.Schedule.OverlapPolicy.Name(schedule.overlap_policy)
        catch_up = schedule_pb2.Schedule.CatchUpPolicy.Name(schedule.catch_up_policy)
        print(f"  overlap: {overlap.removeprefix('OVERLAP_POLICY_').lower()}")
        print(f"  catch-up: {catch_up.removeprefix('CATCH_UP_POLICY_').lower()}")
        if schedule.last_run_id:
            print(f"  last run: {schedule.last_run_id}")
        for when in schedule.upcoming_fire_times:
            print(f"  fires at: {when.ToDatetime(tzinfo=UTC).isoformat()}")


async def cmd_schedules(client: PodiumClient, args: argparse.Namespace) -> int:
    if args.action == "create":
        if args.time_zone and not args.cron:
            raise CliError("--time-zone applies to --cron only", EXIT_USAGE)
        schedule = await client.create_schedule(
            args.definition,
            version=args.version,
            cron=args.cron or "",
            time_zone=args.time_zone,
            interval_seconds=args.every or 0.0,
            input=json_arg(args.input, "--input"),
            labels=labels_arg(args.label),
            jitter_seconds=args.jitter,
            overlap_policy=args.overlap,
            catch_up_policy=args.catch_up,
            max_catch_up_runs=args.max_catch_up_runs,
        )
        _print_schedule(schedule, args.output, detail=True)
    elif args.action == "list":
        page = await client.list_schedules(definition=args.definition, page_size=500)
        if args.output == "text":
            for schedule in page.items:
                _print_schedule(schedule, "text", detail=False)
        else:
            print_data(list(page.items), args.output)
    elif args.action == "get":
        schedule = await client.get_schedule(args.schedule_id)
        _print_schedule(schedule, args.output, detail=True)
    elif args.action in ("pause", "resume"):
        call = client.pause_schedule if args.action == "pause" else client.resume_schedule
        schedule = await call(args.schedule_id)
        _print_schedule(schedule, args.output, detail=False)
    elif args.action == "delete":
        await client.delete_schedule(args.schedule_id)
        if args.output == "text":
            print(f"schedule {args.schedule_id} deleted")
        else:
            print_data({"deleted_schedule": args.schedule_id}, args.output)
    return EXIT_OK
