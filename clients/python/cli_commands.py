"""The remote commands of the ``podium`` CLI other than ``runs`` (in
:mod:`podium.client.cli_runs`): each an async function given a
:class:`~podium.client.PodiumClient`. Output and exit codes are in
:mod:`podium.client.cli_output`; the parser in :mod:`podium.client.cli_parser`."""

from __future__ import annotations

import argparse
import difflib
import re
from pathlib import Path
from typing import Any

import yaml

from podium.client.cli_output import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    CliError,
    agent_line,
    approval_line,
    json_arg,
    load_file,
    print_approval,
    print_data,
)
from podium.client.client import PodiumClient
from podium.client.definitions import definition_to_dict
from podium.client.errors import NotFoundError
from podium.orchestration.v1 import agent_pb2, definition_pb2, orchestration_service_pb2, run_pb2

DECISIONS = ("approve", "reject", "retry", "skip", "fail")

# Set by the server on a stored version; not part of what an author writes.
_OUTPUT_ONLY = ("version", "organization_id", "create_time", "archived", "content_hash")


def _authored(definition: definition_pb2.Definition) -> dict[str, Any]:
    data = definition_to_dict(definition)
    for key in _OUTPUT_ONLY:
        data.pop(key, None)
    return data


async def _diff(client: PodiumClient, args: argparse.Namespace) -> int:
    """``definitions diff FILE``: the file (as the server would store it) against the
    latest stored version, as a unified diff of their YAML forms."""
    local = await client.validate_definition(load_file(args.file))
    try:
        stored = await client.get_definition(local.name)
    except NotFoundError:
        stored = None
    # Sorted keys: the stored document's Struct keys come back in another order.
    old = yaml.safe_dump(_authored(stored), sort_keys=True) if stored is not None else ""
    new = yaml.safe_dump(_authored(local), sort_keys=True)
    latest = stored.version if stored is not None else 0
    label = f"{local.name} version {latest}" if stored is not None else "(not stored)"
    lines = list(
        difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), label, args.file
        )
    )
    changed = bool(lines)
    if args.output != "text":
        print_data(
            {
                "name": local.name,
                "latest_version": latest,
                "changed": changed,
                "diff": "".join(lines),
            },
            args.output,
        )
    elif not changed:
        print(f"definition {local.name}: no changes against version {latest}")
    else:
        print("".join(lines), end="")
    return EXIT_REFUSED if changed and args.exit_code else EXIT_OK


async def cmd_definitions(client: PodiumClient, args: argparse.Namespace) -> int:
    if args.action == "apply":
        stored, created = await client.apply_definition(
            load_file(args.file), force_new_version=args.force_new_version
        )
        if args.output != "text":
            print_data(stored, args.output)
        elif created:
            print(
                f"definition {stored.name} version {stored.version} created "
                f"({len(stored.steps)} steps)"
            )
        else:
            print(f"definition {stored.name} version {stored.version} unchanged")
    elif args.action == "diff":
        return await _diff(client, args)
    elif args.action == "validate":
        await client.validate_definition(load_file(args.file))
        if args.output == "text":
            print(f"{args.file}: valid")
        else:
            print_data({"valid": True, "file": args.file}, args.output)
    elif args.action == "list":
        rows = [
            d
            async for d in client.iter_definitions(
                name_prefix=args.prefix or "", include_archived=args.all
            )
        ]
        if args.output == "text":
            print(f"{'NAME':<40} {'VERSION':>7} {'STEPS':>5} ARCHIVED")
            for d in rows:
                print(
                    f"{d.name:<40} {d.version:>7} {len(d.steps):>5} {'yes' if d.archived else ''}"
                )
        else:
            print_data(rows, args.output)
    elif args.action == "get":
        got = await client.get_definition(args.name, version=args.version)
        print_data(got, "yaml" if args.output == "text" else args.output)
    elif args.action == "archive":
        archived = await client.archive_definition(args.name)
        if args.output == "text":
            print(f"definition {archived.name} archived")
        else:
            print_data(archived, args.output)
    return EXIT_OK


async def cmd_approvals(client: PodiumClient, args: argparse.Namespace) -> int:
    if args.action == "list":
        try:
            page = await client.list_approvals(
                run_id=args.run or "", states=args.state or (), page_size=args.limit
            )
        except ValueError as exc:
            raise CliError(f"--state: {exc}", EXIT_USAGE) from None
        if args.output == "text":
            for approval in page.items:
                print(approval_line(approval))
        else:
            print_data(list(page.items), args.output)
        return EXIT_OK
    if args.action == "get":
        print_approval(await client.get_approval(args.approval_id), args.output)
        return EXIT_OK
    decision = args.decision if args.action == "decide" else args.action
    approval = await client.decide_approval(
        args.approval_id,
        decision,
        comment=args.comment or "",
        actor=args.actor,
        input=json_arg(args.input, "--input"),
        request_id=args.request_id,
        budget_max_tokens=args.budget_tokens,
        budget_max_cost_usd=args.budget_cost,
    )
    print_approval(approval, args.output)
    return EXIT_OK


async def cmd_agents(client: PodiumClient, args: argparse.Namespace) -> int:
    if args.action == "list":
        agents = (await client.list_agents(skill=args.skill or "", page_size=500)).items
        if args.output == "text":
            for agent in agents:
                print(agent_line(agent))
        else:
            print_data(list(agents), args.output)
    elif args.action == "get":
        agent = await client.get_agent(args.name)
        if args.output == "text":
            print(agent_line(agent))
            if agent.health.message:
                print(f"  {agent.health.message}")
        else:
            print_data(agent, args.output)
    elif args.action == "register":
        rate_limit = agent_rate_limit(args.rate_limit, args.tokens_limit)
        if args.rate_per_key:
            if rate_limit is None:
                raise CliError("--rate-per-key needs --rate-limit or --tokens-limit", EXIT_USAGE)
            rate_limit.per_key = True
        try:
            stored = await client.register_agent(
                args.name,
                args.endpoint,
                skills=args.skill or (),
                max_concurrency=args.max_concurrency,
                default_timeout_seconds=args.default_timeout,
                protocol=args.protocol,
                rate_limit=rate_limit,
                lazy=args.lazy,
            )
        except ValueError as exc:
            raise CliError(f"--protocol: {exc}", EXIT_USAGE) from None
        if args.output == "text":
            print(f"agent {stored.name} registered at {stored.endpoint}")
        else:
            print_data(stored, args.output)
    elif args.action == "deregister":
        await client.deregister_agent(args.name)
        if args.output == "text":
            print(f"agent {args.name} deregistered")
        else:
            print_data({"deregistered": args.name}, args.output)
    return EXIT_OK


async def cmd_cache(client: PodiumClient, args: argparse.Namespace) -> int:
    deleted = await client.invalidate_cache(args.name, definition_version=args.version)
    if args.output == "text":
        which = f"version {args.version}" if args.version else "every version"
        print(f"{deleted} cached step outputs of {args.name} ({which}) deleted")
    else:
        print_data({"deleted": deleted}, args.output)
    return EXIT_OK


async def _deliverables(
    client: PodiumClient, run_id: str, step_id: str, *, include_data: bool
) -> list[run_pb2.Deliverable]:
    found: list[run_pb2.Deliverable] = []
    token = ""
    while True:
        page = await client.list_deliverables(
            run_id, step_id=step_id, include_data=include_data, page_size=500, page_token=token
        )
        found.extend(page.items)
        token = page.next_page_token
        if not token:
            return found


async def cmd_deliverables(client: PodiumClient, args: argparse.Namespace) -> int:
    if args.action == "list":
        rows = await _deliverables(client, args.run_id, args.step or "", include_data=False)
        if args.output == "text":
            for d in rows:
                where = f"  {d.uri}" if d.uri else ""
                print(
                    f"{d.id}  {d.step_id:<20} {d.name:<28} {d.media_type:<24} "
                    f"{d.size_bytes:>9} B{where}"
                )
        else:
            print_data(rows, args.output)
        return EXIT_OK
    # download: by id, or by name (the latest with that name)
    rows = await _deliverables(client, args.run_id, args.step or "", include_data=True)
    matches = [d for d in rows if d.id == args.deliverable] or [
        d for d in rows if d.name == args.deliverable
    ]
    if not matches:
        raise CliError(
            f"run {args.run_id} has no deliverable with id or name {args.deliverable!r}",
            EXIT_REFUSED,
        )
    chosen = matches[-1]
    if not chosen.data and chosen.uri:
        raise CliError(
            f"deliverable {chosen.id} is not stored inline; its content is at {chosen.uri}",
            EXIT_REFUSED,
        )
    target = Path(args.to) if args.to else Path(Path(chosen.name).name or chosen.id)
    if target.is_dir():
        target = target / (Path(chosen.name).name or chosen.id)
    try:
        target.write_bytes(chosen.data)
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror}", EXIT_USAGE) from None
    if args.output == "text":
        print(f"{target}  ({len(chosen.data)} bytes, {chosen.media_type or 'no media type'})")
    else:
        print_data(
            {"file": str(target), "size_bytes": len(chosen.data), "id": chosen.id}, args.output
        )
    return EXIT_OK


async def cmd_webhooks(client: PodiumClient, args: argparse.Namespace) -> int:
    try:
        page = await client.list_webhook_deliveries(
            run_id=args.run or "", states=args.state or (), page_size=args.limit
        )
    except ValueError as exc:
        raise CliError(f"--state: {exc}", EXIT_USAGE) from None
    if args.output != "text":
        print_data(list(page.items), args.output)
        return EXIT_OK
    names = orchestration_service_pb2.WebhookDelivery.State
    for d in page.items:
        state = str(names.Name(d.state)).removeprefix("STATE_")
        error = f"  {d.last_error}" if d.last_error else ""
        print(
            f"{d.id}  {state:<9} run {d.run_id} #{d.sequence:<4} tries {d.attempts}  {d.url}{error}"
        )
    return EXIT_OK


async def cmd_events(client: PodiumClient, args: argparse.Namespace) -> int:
    sent = await client.send_event(
        args.name, event_id=args.id, key=args.key, payload=json_arg(args.payload, "--payload")
    )
    if args.output == "text":
        if sent.duplicate:
            print(f"event {args.id} was already received: nothing delivered again")
        else:
            print(f"event {args.id} delivered to {sent.delivered_steps} waiting steps")
        for run_id in sent.triggered_run_ids:
            print(f"run {run_id} started by an event trigger")
    else:
        print_data(sent, args.output)
    return EXIT_OK


_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", re.IGNORECASE)
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def agent_rate_limit(requests: str | None, tokens: str | None) -> agent_pb2.AgentRateLimit | None:
    """The rate limit of ``--rate-limit`` / ``--tokens-limit`` (``COUNT/PERIOD``, periods
    in seconds unless suffixed ``s``, ``m`` or ``h``); None when neither is given."""
    limit = agent_pb2.AgentRateLimit()
    periods: set[float] = set()
    for flag, value in (("--rate-limit", requests), ("--tokens-limit", tokens)):
        if value is None:
            continue
        match = _RATE.fullmatch(value)
        if match is None:
            raise CliError(
                f"{flag}: expected COUNT/PERIOD such as 60/60s, got {value!r}", EXIT_USAGE
            )
        count = int(match.group(1))
        periods.add(float(match.group(2)) * _UNIT_SECONDS[match.group(3).lower()])
        if flag == "--rate-limit":
            limit.requests_per_period = count
        else:
            limit.tokens_per_period = count
    if not periods:
        return None
    if len(periods) > 1:
        raise CliError("--rate-limit and --tokens-limit must have the same period", EXIT_USAGE)
    limit.period_seconds = periods.pop()
    return limit
