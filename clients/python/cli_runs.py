"""``podium runs ...``: start, inspect, follow and control runs (each an async function
given a :class:`~podium.client.PodiumClient`; the parser is in :mod:`podium.client.cli_parser`)."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from podium.client.cli_output import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_RUN_FAILED,
    EXIT_USAGE,
    CliError,
    event_kind,
    json_arg,
    labels_arg,
    load_file,
    print_data,
    print_event,
    print_item,
    print_run,
    run_state,
    time_arg,
)
from podium.client.client import PodiumClient
from podium.orchestration.v1 import run_pb2


def _run_exit(run: run_pb2.Run) -> int:
    return EXIT_OK if run.state == run_pb2.Run.STATE_SUCCEEDED else EXIT_RUN_FAILED


async def watch(client: PodiumClient, run_id: str, output: str) -> run_pb2.Run:
    """Follow a run to its end: the live rich view, or JSON lines (``{"event": ...}``
    per event, then ``{"run": ...}``) with ``-o json``. Returns the finished run."""
    if output != "text":
        async for event in client.watch_run(run_id):
            print_item("event", event, output)
        run = await client.get_run(run_id, fill_omitted=True)
        print_item("run", run, output)
        return run

    # Imported here: only --watch needs rich.
    from rich.console import Console
    from rich.live import Live

    from podium.client.run_view import RunView

    console = Console(highlight=False)
    view = RunView(await client.get_run(run_id), console)

    def current() -> RunView:
        # Running steps' durations grow between events (on the local clock).
        view.tick(datetime.now(UTC).replace(tzinfo=None))
        return view

    live = Live(
        get_renderable=current if console.is_terminal else None,
        renderable=view,
        console=console,
        refresh_per_second=4,
        auto_refresh=console.is_terminal,
    )
    with live:
        async for event in client.watch_run(run_id):
            view.apply(event)
        run = await client.get_run(run_id)
        view.sync(run)  # before the last render
    if not console.is_terminal:
        console.line()  # rich ends its last render without a newline there
    view.finish(run)
    return run


async def _wait_or_watch(client: PodiumClient, run: run_pb2.Run, args: argparse.Namespace) -> int:
    """After a command that started a run: ``--watch``, ``--wait``, or print it."""
    if getattr(args, "watch", False):
        return _run_exit(await watch(client, run.id, args.output))
    if getattr(args, "wait", False):
        # Payloads left out of a run too large for one response are read back.
        run = await client.fill_omitted(await client.wait_run(run.id))
        print_run(run, args.output)
        return _run_exit(run)
    if args.output == "text":
        print(run.id)
    else:
        print_data(run, args.output)
    return EXIT_OK


async def _watch_all(client: PodiumClient, args: argparse.Namespace) -> int:
    """``runs watch --all``: the events of every matching run, until interrupted."""
    since = time.time() - args.since if args.since else None
    async for event in client.watch_runs(
        definition_name=args.definition or "",
        states=args.state or (),
        labels=labels_arg(args.label),
        start_time=since,
    ):
        if args.output == "text":
            print(
                f"{event.run_id}  #{event.sequence:<4} {event_kind(event):<24} {event.step_id}",
                flush=True,
            )
        else:
            print_item("event", event, args.output)
    return EXIT_OK


async def _list(client: PodiumClient, args: argparse.Namespace) -> int:
    started = time.time()
    runs: list[run_pb2.Run] = []
    token = ""
    try:
        # A page may stop short of --limit (the server's message limit): follow tokens.
        while len(runs) < args.limit:
            page = await client.list_runs(
                states=args.state or (),
                definition_name=args.definition or "",
                labels=labels_arg(args.label),
                page_size=args.limit - len(runs),
                page_token=token,
                view=args.view,
            )
            runs.extend(page.items)
            token = page.next_page_token
            if not token:
                break
    except ValueError as exc:
        raise CliError(f"--state: {exc}", EXIT_USAGE) from None
    if args.watch:
        from podium.client.runs_table import follow_runs

        return await follow_runs(client, runs, args, since=started)
    if args.output == "text":
        for run in runs:
            created = run.create_time.ToDatetime().isoformat(timespec="seconds")
            print(
                f"{run.id}  {run_state(run):<10} {created}  "
                f"{run.definition_name or '(inline plan)'}"
            )
    else:
        print_data(runs, args.output)
    return EXIT_OK


EXPORT_MAX_RUNS = 10_000
"""Runs one ``runs export`` writes at most (a tree larger than this is refused)."""


async def export(
    client: PodiumClient, run_id: str, *, data: bool = True, output: str = "json"
) -> int:
    """``runs export``: the run, its events and deliverables as JSON lines (YAML
    documents with ``-o yaml``), then the same for each child run (depth first, in step
    order). Returns the runs written."""
    fmt = "yaml" if output == "yaml" else "json"
    pending = [run_id]
    seen: set[str] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        if len(seen) >= EXPORT_MAX_RUNS:
            raise CliError(f"more than {EXPORT_MAX_RUNS} runs under {run_id}", EXIT_REFUSED)
        seen.add(current)
        run = await client.get_run(current)
        print_item("run", run, fmt)
        after = 0
        while True:
            events = await client.list_run_events(current, after_sequence=after, page_size=1000)
            for event in events.items:
                print_item("event", event, fmt)
            after = events.next_after_sequence
            if not after:
                break
        token = ""
        while True:
            page = await client.list_deliverables(
                current, include_data=data, page_size=100, page_token=token
            )
            for deliverable in page.items:
                print_item("deliverable", deliverable, fmt)
            token = page.next_page_token
            if not token:
                break
        children = [s.child_run_id for s in run.steps if s.child_run_id]
        pending.extend(reversed(children))
    return len(seen)


async def cmd_runs(client: PodiumClient, args: argparse.Namespace) -> int:
    if args.action == "start":
        if bool(args.file) == bool(args.definition):
            raise CliError("give a definition name or --file PLAN.yaml (not both)", EXIT_USAGE)
        if args.create_only and (args.wait or args.watch):
            raise CliError("--create-only cannot be combined with --wait/--watch", EXIT_USAGE)
        run = await client.start_run(
            args.definition,
            version=args.version,
            plan=load_file(args.file) if args.file else None,
            input=json_arg(args.input, "--input"),
            labels=labels_arg(args.label),
            metadata=json_arg(args.metadata, "--metadata"),
            webhook_url=args.webhook_url or "",
            request_id=args.request_id,
            start=not args.create_only,
            bypass_cache=args.bypass_cache,
            priority=args.priority,
            start_time=time_arg(args.start_at, "--start-at"),
        )
        return await _wait_or_watch(client, run, args)
    if args.action == "get":
        # A full run too large for one response comes without its largest payloads;
        # they are read back through GetRunPayload.
        run = await client.get_run(args.run_id, view=args.view, fill_omitted=args.view == "full")
        print_run(run, args.output)
    elif args.action == "watch":
        if args.all == bool(args.run_id):
            raise CliError("give a run id or --all (not both)", EXIT_USAGE)
        if not args.all and (args.definition or args.state or args.label or args.since):
            raise CliError("--definition, --state, --label and --since need --all", EXIT_USAGE)
        if args.all:
            try:
                return await _watch_all(client, args)
            except ValueError as exc:
                raise CliError(f"--state: {exc}", EXIT_USAGE) from None
        return _run_exit(await watch(client, args.run_id, args.output))
    elif args.action == "list":
        return await _list(client, args)
    elif args.action == "cancel":
        print_run(await client.cancel_run(args.run_id, reason=args.reason or ""), args.output)
    elif args.action == "continue":
        run = await client.continue_run(args.run_id, input=json_arg(args.input, "--input"))
        return await _wait_or_watch(client, run, args)
    elif args.action == "resume":
        run = await client.resume_run(args.run_id)
        return await _wait_or_watch(client, run, args)
    elif args.action == "fork":
        run = await client.fork_run(
            args.run_id,
            args.step,
            input=json_arg(args.input, "--input"),
            request_id=args.request_id,
        )
        return await _wait_or_watch(client, run, args)
    elif args.action == "payload":
        value = await client.get_run_payload(args.run_id, args.field, step_id=args.step)
        print_data(value, args.output)
    elif args.action == "export":
        await export(client, args.run_id, data=not args.no_data, output=args.output)
    elif args.action == "events":
        if args.follow:
            async for event in client.watch_run(args.run_id, after_sequence=args.after):
                print_event(event, args.output)
            return EXIT_OK
        after = args.after
        while True:
            page = await client.list_run_events(args.run_id, after_sequence=after)
            for event in page.items:
                print_event(event, args.output)
            after = page.next_after_sequence
            if not after:
                break
    return EXIT_OK
