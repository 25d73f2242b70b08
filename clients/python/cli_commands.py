"""The remote commands of the ``podium`` CLI (each an async function given a
:class:`~podium.client.PodiumClient`), their output and their exit codes. The parser
and the entry point are in :mod:`podium.client.cli`."""

from __future__ import annotations

import argparse
import getpass
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from podium.client.client import PodiumClient
from podium.client.definitions import DefinitionFileError, definition_to_dict, load_definition
from podium.client.errors import (
    DeadlineExceededError,
    PodiumError,
    UnavailableError,
    UnimplementedError,
)
from podium.orchestration.v1 import approval_pb2, definition_pb2, event_pb2, run_pb2

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_RUN_FAILED = 4


class CliError(Exception):
    """An error already formatted for the terminal, with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def refusal(error: PodiumError, client: PodiumClient, timeout: float) -> CliError:
    """The CLI error of a failed call: exit 3 when the server was not reached or did not
    answer in time, 1 when it refused (every field violation listed)."""
    address = client.address
    if isinstance(error, UnavailableError | DeadlineExceededError):
        if not client.connected():
            return CliError(
                f"cannot reach a Podium server at {address} (UNAVAILABLE; retried for up to "
                f"--timeout {timeout:g} s)\n{error.describe()}",
                EXIT_UNREACHABLE,
            )
        return CliError(f"{error.describe()}\n(server {address})", EXIT_UNREACHABLE)
    if isinstance(error, UnimplementedError):
        return CliError(
            f"the server at {address} does not implement this command yet "
            f"(an older Podium?)\n{error.describe()}",
            EXIT_REFUSED,
        )
    return CliError(error.describe(), EXIT_REFUSED)


def _as_data(message: Message) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _print(data: Message | dict[str, Any] | list[Any], output: str) -> None:
    if isinstance(data, Message):
        data = _as_data(data)
    if output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False).rstrip())
    else:
        print(json.dumps(data, indent=2))


def _print_list(messages: Sequence[Message], output: str) -> None:
    _print([_as_data(m) for m in messages], output)


def _load(path: str) -> definition_pb2.Definition:
    try:
        return load_definition(path)
    except DefinitionFileError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def _json_arg(text: str | None, what: str) -> dict[str, Any] | None:
    if not text:
        return None
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"{what}: cannot read {text[1:]}: {exc.strerror}", EXIT_USAGE) from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{what} must be a JSON object: {exc}", EXIT_USAGE) from None
    if not isinstance(value, dict):
        raise CliError(f"{what} must be a JSON object", EXIT_USAGE)
    return value


def _run_state(run: run_pb2.Run) -> str:
    return str(run_pb2.Run.State.Name(run.state)).removeprefix("STATE_")


def _event_kind(event: event_pb2.RunEvent) -> str:
    kind = str(event_pb2.RunEvent.Type.Name(event.type)).removeprefix("TYPE_").lower()
    return kind.replace("_", ".", 1)


def _run_exit(run: run_pb2.Run) -> int:
    return EXIT_OK if run.state == run_pb2.Run.STATE_SUCCEEDED else EXIT_RUN_FAILED


def _print_run(run: run_pb2.Run, output: str) -> None:
    if output != "text":
        _print(run, output)
        return
    print(f"run {run.id}  {_run_state(run)}  {run.definition_name or '(inline plan)'}")
    for step in run.steps:
        state = str(run_pb2.StepRun.State.Name(step.state)).removeprefix("STATE_")
        error = f"  {step.error.code}: {step.error.message}" if step.error.code else ""
        print(
            f"  {step.step_id:<24} {state:<18} attempt {step.attempt}/{step.max_attempts}"
            f"  {step.agent}{error}"
        )
    if run.error.code:
        print(f"error: {run.error.code}: {run.error.message}")
    if run.HasField("output") and run.output.fields:
        print("output: " + json.dumps(json_format.MessageToDict(run.output)))


async def _watch(client: PodiumClient, run_id: str, output: str) -> run_pb2.Run:
    """Follow a run to its end: the live rich view, or JSON lines (``{"event": ...}``
    per event, then ``{"run": ...}``) with ``-o json``. Returns the finished run."""
    if output != "text":
        async for event in client.watch_run(run_id):
            print(json.dumps({"event": _as_data(event)}), flush=True)
        run = await client.get_run(run_id)
        print(json.dumps({"run": _as_data(run)}), flush=True)
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
        return _run_exit(await _watch(client, run.id, args.output))
    if getattr(args, "wait", False):
        run = await client.wait_run(run.id)
        _print_run(run, args.output)
        return _run_exit(run)
    if args.output == "text":
        print(run.id)
    else:
        _print(run, args.output)
    return EXIT_OK


async def cmd_definitions(client: PodiumClient, args: argparse.Namespace) -> int:
    if args.action == "apply":
        created = await client.create_definition(_load(args.file))
        if args.output == "text":
            print(
                f"definition {created.name} version {created.version} created "
                f"({len(created.steps)} steps)"
            )
        else:
            _print(created, args.output)
    elif args.action == "validate":
        await client.validate_definition(_load(args.file))
        if args.output == "text":
            print(f"{args.file}: valid")
        else:
            _print({"valid": True, "file": args.file}, args.output)
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
            _print_list(rows, args.output)
    elif args.action == "get":
        got = await client.get_definition(args.name, version=args.version)
        _print(definition_to_dict(got), "yaml" if args.output == "text" else args.output)
    elif args.action == "archive":
        archived = await client.archive_definition(args.name)
        if args.output == "text":
            print(f"definition {archived.name} archived")
        else:
            _print(archived, args.output)
    return EXIT_OK


def _labels(pairs: Sequence[str] | None) -> dict[str, str]:
    labels = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--label {pair!r}: expected KEY=VALUE", EXIT_USAGE)
        labels[key] = value
    return labels


async def cmd_runs(client: PodiumClient, args: argparse.Namespace) -> int:
    if args.action == "start":
        if bool(args.file) == bool(args.definition):
            raise CliError("give a definition name or --file PLAN.yaml (not both)", EXIT_USAGE)
        if args.create_only and (args.wait or args.watch):
            raise CliError("--create-only cannot be combined with --wait/--watch", EXIT_USAGE)
        run = await client.start_run(
            args.definition,
            version=args.version,
            plan=_load(args.file) if args.file else None,
            input=_json_arg(args.input, "--input"),
            labels=_labels(args.label),
            request_id=args.request_id,
            start=not args.create_only,
            bypass_cache=args.bypass_cache,
        )
        return await _wait_or_watch(client, run, args)
    if args.action == "get":
        _print_run(await client.get_run(args.run_id), args.output)
    elif args.action == "watch":
        return _run_exit(await _watch(client, args.run_id, args.output))
    elif args.action == "list":
        try:
            page = await client.list_runs(
                states=args.state or (),
                definition_name=args.definition or "",
                labels=_labels(args.label),
                page_size=args.limit,
            )
        except ValueError as exc:
            raise CliError(f"--state: {exc}", EXIT_USAGE) from None
        if args.output == "text":
            for run in page.items:
                created = run.create_time.ToDatetime().isoformat(timespec="seconds")
                print(
                    f"{run.id}  {_run_state(run):<10} {created}  "
                    f"{run.definition_name or '(inline plan)'}"
                )
        else:
            _print_list(page.items, args.output)
    elif args.action == "cancel":
        _print_run(await client.cancel_run(args.run_id, reason=args.reason or ""), args.output)
    elif args.action == "continue":
        run = await client.continue_run(args.run_id, input=_json_arg(args.input, "--input"))
        return await _wait_or_watch(client, run, args)
    elif args.action == "resume":
        run = await client.resume_run(args.run_id)
        return await _wait_or_watch(client, run, args)
    elif args.action == "fork":
        run = await client.fork_run(
            args.run_id,
            args.step,
            input=_json_arg(args.input, "--input"),
            request_id=args.request_id,
        )
        return await _wait_or_watch(client, run, args)
    elif args.action == "events":
        if args.follow:
            async for event in client.watch_run(args.run_id, after_sequence=args.after):
                _print_event(event, args.output)
            return EXIT_OK
        after = args.after
        while True:
            events, after = await client.list_run_events(args.run_id, after_sequence=after)
            for event in events:
                _print_event(event, args.output)
            if not after:
                break
    return EXIT_OK


def _print_event(event: event_pb2.RunEvent, output: str) -> None:
    if output == "text":
        print(f"#{event.sequence:<4} {_event_kind(event):<24} {event.step_id}", flush=True)
    else:
        print(json_format.MessageToJson(event, indent=None), flush=True)


def _approval_line(approval: approval_pb2.Approval) -> str:
    kind = str(approval_pb2.Approval.Kind.Name(approval.kind)).removeprefix("KIND_").lower()
    state = str(approval_pb2.Approval.State.Name(approval.state)).removeprefix("STATE_")
    return f"{approval.id}  {state:<9} {kind:<18} run {approval.run_id}  step {approval.step_id}"


def _print_approval(approval: approval_pb2.Approval, output: str) -> None:
    if output != "text":
        _print(approval, output)
        return
    print(_approval_line(approval))
    if approval.prompt:
        print(f"  prompt: {approval.prompt}")
    if approval.HasField("subject") and approval.subject.fields:
        print("  subject: " + json.dumps(json_format.MessageToDict(approval.subject)))
    if approval.decision:
        decision = str(approval_pb2.Decision.Name(approval.decision)).removeprefix("DECISION_")
        by = f" by {approval.actor}" if approval.actor else ""
        comment = f": {approval.comment}" if approval.comment else ""
        print(f"  decided {decision.lower()}{by}{comment}")


def default_actor() -> str:
    """``PODIUM_ACTOR``, else the OS user name, else empty (the server records none)."""
    try:
        return os.environ.get("PODIUM_ACTOR") or getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (some containers)
        return ""


DECISIONS = ("approve", "reject", "retry", "skip", "fail")


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
                print(_approval_line(approval))
        else:
            _print_list(page.items, args.output)
        return EXIT_OK
    if args.action == "get":
        _print_approval(await client.get_approval(args.approval_id), args.output)
        return EXIT_OK
    decision = args.decision if args.action == "decide" else args.action
    approval = await client.decide_approval(
        args.approval_id,
        decision,
        comment=args.comment or "",
        actor=args.actor,
        input=_json_arg(args.input, "--input"),
        request_id=args.request_id,
    )
    _print_approval(approval, args.output)
    return EXIT_OK


async def cmd_agents(client: PodiumClient, args: argparse.Namespace) -> int:
    if args.action == "list":
        agents = (await client.list_agents(skill=args.skill or "", page_size=500)).items
        if args.output == "text":
            for agent in agents:
                print(
                    f"{agent.name:<24} {agent.endpoint:<28} skills={','.join(agent.skills)}"
                    f" max={agent.max_concurrency}"
                )
        else:
            _print_list(agents, args.output)
    elif args.action == "register":
        stored = await client.register_agent(
            args.name,
            args.endpoint,
            skills=args.skill or (),
            max_concurrency=args.max_concurrency,
            default_timeout_seconds=args.default_timeout,
        )
        if args.output == "text":
            print(f"agent {stored.name} registered at {stored.endpoint}")
        else:
            _print(stored, args.output)
    elif args.action == "deregister":
        await client.deregister_agent(args.name)
        print(f"agent {args.name} deregistered")
    return EXIT_OK


async def cmd_cache(client: PodiumClient, args: argparse.Namespace) -> int:
    deleted = await client.invalidate_cache(args.name, definition_version=args.version)
    if args.output == "text":
        which = f"version {args.version}" if args.version else "every version"
        print(f"{deleted} cached step outputs of {args.name} ({which}) deleted")
    else:
        _print({"deleted": deleted}, args.output)
    return EXIT_OK
