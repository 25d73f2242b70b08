"""``podium schedules create|get|list|pause|resume|delete``: the parser and the command,
registered by :func:`podium.client.cli.build_parser`."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any

from podium.client.cli_commands import (
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    _json_arg,
    _labels,
    _print,
    _print_list,
)
from podium.client.client import PodiumClient
from podium.client.client_schedules import CATCH_UP_POLICIES, OVERLAP_POLICIES
from podium.orchestration.v1 import schedule_pb2

__all__ = ["add_schedules_parser", "cmd_schedules"]

Command = Callable[[PodiumClient, argparse.Namespace], Awaitable[int]]


def add_schedules_parser(
    sub: Any,
    common: argparse.ArgumentParser,
    remote: Callable[[Command], Callable[[argparse.Namespace], int]],
) -> None:
    """Add ``schedules`` and its actions to the ``podium`` subcommands ``sub``."""
    schedules = sub.add_parser(
        "schedules", help="run definitions on a cron expression or an interval"
    ).add_subparsers(dest="action", required=True)
    p = schedules.add_parser("create", parents=[common], help="create a schedule")
    p.add_argument("definition", help="definition name")
    p.add_argument("--version", type=int, default=0, help="definition version (default: latest)")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='five-field cron expression, e.g. "0 9 * * MON-FRI"')
    when.add_argument("--every", type=float, metavar="SECONDS", help="fixed interval")
    p.add_argument("--time-zone", default="", help="IANA time zone of --cron (default UTC)")
    p.add_argument("--jitter", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--overlap", choices=tuple(OVERLAP_POLICIES), default="skip")
    p.add_argument("--catch-up", choices=tuple(CATCH_UP_POLICIES), default="skip")
    p.add_argument(
        "--max-catch-up-runs", type=int, default=0, help="cap of --catch-up run_all (default 10)"
    )
    p.add_argument("--input", help="run input as a JSON object, or @FILE holding one")
    p.add_argument("--label", action="append", help="KEY=VALUE (repeatable)")
    p = schedules.add_parser("list", parents=[common], help="list schedules")
    p.add_argument("--definition", default="", help="only schedules of this definition")
    for action, text in (
        ("get", "show a schedule and its next fire times"),
        ("pause", "pause a schedule"),
        ("resume", "resume a paused schedule (from its next tick)"),
        ("delete", "delete a schedule (its runs are kept)"),
    ):
        schedules.add_parser(action, parents=[common], help=text).add_argument("schedule_id")
    for parser in schedules.choices.values():
        parser.set_defaults(func=remote(cmd_schedules))


def _when(schedule: schedule_pb2.Schedule) -> str:
    if schedule.WhichOneof("spec") == "cron":
        return f"cron {schedule.cron!r} {schedule.time_zone or 'UTC'}"
    return f"every {schedule.interval_seconds:g}s"


def _print_schedule(schedule: schedule_pb2.Schedule, output: str, *, detail: bool) -> None:
    if output != "text":
        _print(schedule, output)
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
            input=_json_arg(args.input, "--input"),
            labels=_labels(args.label),
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
            _print_list(page.items, args.output)
    elif args.action == "get":
        schedule = await client.get_schedule(args.schedule_id)
        _print_schedule(schedule, args.output, detail=True)
    elif args.action in ("pause", "resume"):
        call = client.pause_schedule if args.action == "pause" else client.resume_schedule
        schedule = await call(args.schedule_id)
        _print_schedule(schedule, args.output, detail=False)
    elif args.action == "delete":
        await client.delete_schedule(args.schedule_id)
        print(f"schedule {args.schedule_id} deleted")
    return EXIT_OK
