"""The ``podium`` command line.

``podium serve`` runs a server; the other commands talk to one over gRPC
(``--address`` or ``PODIUM_ADDRESS``, default ``127.0.0.1:50051``).
Exit codes: 0 success, 1 the server refused the request, 2 bad usage or input,
3 the server is unreachable, 4 a waited-for run did not succeed.
"""

from __future__ import annotations

import os

# The server starts PostgreSQL and the demo starts the server as child processes; gRPC's
# fork handlers are not needed for that and only print warnings. Set before grpc loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from podium.client.definitions import DefinitionFileError, definition_to_dict, load_definition
from podium.orchestration.v1 import agent_pb2, event_pb2, run_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

DEFAULT_ADDRESS = "127.0.0.1:50051"

R = TypeVar("R", bound=Message)


class CliError(Exception):
    """An error already formatted for the terminal, with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def format_rpc_error(error: grpc.RpcError) -> str:
    """A readable message of a failed call, listing field violations one per line."""
    code = error.code() if isinstance(error, grpc.Call) else None
    name = code.name if code is not None else "ERROR"
    lines = [f"{name}: {error.details() if isinstance(error, grpc.Call) else error}"]
    status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                for violation in bad.field_violations:
                    lines.append(f"  - {violation.field}: {violation.description}")
    return "\n".join(lines)


def _call(fn: Callable[..., R], request: Message, timeout: float) -> R:
    try:
        return fn(request, timeout=timeout)
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else None
        exit_code = (
            EXIT_UNREACHABLE
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            else EXIT_REFUSED
        )
        raise CliError(format_rpc_error(error), exit_code) from None


def _print(message: Message | dict[str, Any] | list[Any], output: str) -> None:
    data = (
        json_format.MessageToDict(message, preserving_proto_field_name=True)
        if isinstance(message, Message)
        else message
    )
    if output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False).rstrip())
    else:
        print(json.dumps(data, indent=2))


def _stub(args: argparse.Namespace) -> tuple[grpc.Channel, pb_grpc.OrchestrationServiceStub]:
    channel = grpc.insecure_channel(args.address)
    return channel, pb_grpc.OrchestrationServiceStub(channel)


def _load(path: str) -> Any:
    try:
        return load_definition(path)
    except DefinitionFileError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror}", EXIT_USAGE) from None


def cmd_definitions(args: argparse.Namespace) -> int:
    channel, stub = _stub(args)
    with channel:
        if args.action == "apply":
            created = _call(
                stub.CreateDefinition,
                pb.CreateDefinitionRequest(definition=_load(args.file)),
                args.timeout,
            )
            d = created.definition
            if args.output == "text":
                print(f"definition {d.name} version {d.version} created ({len(d.steps)} steps)")
            else:
                _print(created.definition, args.output)
        elif args.action == "validate":
            _call(
                stub.ValidateDefinition,
                pb.ValidateDefinitionRequest(definition=_load(args.file)),
                args.timeout,
            )
            print(f"{args.file}: valid")
        elif args.action == "list":
            token = ""
            rows: list[Any] = []
            while True:
                page = _call(
                    stub.ListDefinitions,
                    pb.ListDefinitionsRequest(
                        page_size=100,
                        page_token=token,
                        name_prefix=args.prefix or "",
                        include_archived=args.all,
                    ),
                    args.timeout,
                )
                rows.extend(page.definitions)
                token = page.next_page_token
                if not token:
                    break
            if args.output == "text":
                print(f"{'NAME':<40} {'VERSION':>7} {'STEPS':>5} ARCHIVED")
                for d in rows:
                    print(
                        f"{d.name:<40} {d.version:>7} {len(d.steps):>5} "
                        f"{'yes' if d.archived else ''}"
                    )
            else:
                _print(
                    [json_format.MessageToDict(d, preserving_proto_field_name=True) for d in rows],
                    args.output,
                )
        elif args.action == "get":
            got = _call(
                stub.GetDefinition,
                pb.GetDefinitionRequest(name=args.name, version=args.version),
                args.timeout,
            )
            _print(
                definition_to_dict(got.definition), "yaml" if args.output == "text" else args.output
            )
        elif args.action == "archive":
            archived = _call(
                stub.ArchiveDefinition, pb.ArchiveDefinitionRequest(name=args.name), args.timeout
            )
            print(f"definition {archived.definition.name} archived")
    return EXIT_OK


_RUN_EXIT = {"SUCCEEDED": EXIT_OK}
EXIT_RUN_FAILED = 4


def _run_state(run: Any) -> str:
    return str(run_pb2.Run.State.Name(run.state)).removeprefix("STATE_")


def _print_run(run: Any, output: str) -> None:
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


def _wait_run(stub: Any, run_id: str, timeout: float) -> Any:
    """Poll until the run ends; returns it."""
    while True:
        run = _call(stub.GetRun, pb.GetRunRequest(run_id=run_id), timeout).run
        if run.state in (
            run_pb2.Run.STATE_SUCCEEDED,
            run_pb2.Run.STATE_FAILED,
            run_pb2.Run.STATE_CANCELLED,
        ):
            return run
        time.sleep(0.2)


def _json_arg(text: str | None, what: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{what} must be a JSON object: {exc}", EXIT_USAGE) from None
    if not isinstance(value, dict):
        raise CliError(f"{what} must be a JSON object", EXIT_USAGE)
    return value


def cmd_runs(args: argparse.Namespace) -> int:
    channel, stub = _stub(args)
    with channel:
        if args.action == "start":
            request = pb.StartRunRequest(
                start=not args.create_only,
                request_id=args.request_id or "",
                bypass_cache=args.bypass_cache,
            )
            if args.file:
                request.plan.CopyFrom(_load(args.file))
            elif args.definition:
                request.definition.name = args.definition
                request.definition.version = args.version
            else:
                raise CliError("give a definition name or --file PLAN.yaml", EXIT_USAGE)
            request.input.update(_json_arg(args.input, "--input"))
            for label in args.label or []:
                key, _, value = label.partition("=")
                request.labels[key] = value
            run = _call(stub.StartRun, request, args.timeout).run
            if args.wait:
                run = _wait_run(stub, run.id, args.timeout)
                _print_run(run, args.output)
                return _RUN_EXIT.get(_run_state(run), EXIT_RUN_FAILED)
            if args.output == "text":
                print(run.id)
            else:
                _print(run, args.output)
        elif args.action == "get":
            _print_run(
                _call(stub.GetRun, pb.GetRunRequest(run_id=args.run_id), args.timeout).run,
                args.output,
            )
        elif args.action == "list":
            listing = pb.ListRunsRequest(
                page_size=args.limit, definition_name=args.definition or ""
            )
            for state in args.state or []:
                try:
                    listing.states.append(run_pb2.Run.State.Value("STATE_" + state.upper()))
                except ValueError:
                    raise CliError(f"unknown run state {state!r}", EXIT_USAGE) from None
            runs = _call(stub.ListRuns, listing, args.timeout).runs
            if args.output == "text":
                for run in runs:
                    created = run.create_time.ToDatetime().isoformat(timespec="seconds")
                    print(
                        f"{run.id}  {_run_state(run):<10} {created}  "
                        f"{run.definition_name or '(inline plan)'}"
                    )
            else:
                _print(
                    [json_format.MessageToDict(r, preserving_proto_field_name=True) for r in runs],
                    args.output,
                )
        elif args.action == "cancel":
            run = _call(
                stub.CancelRun,
                pb.CancelRunRequest(run_id=args.run_id, reason=args.reason or ""),
                args.timeout,
            ).run
            _print_run(run, args.output)
        elif args.action == "continue":
            resume = pb.ContinueRunRequest(run_id=args.run_id)
            resume.input.update(_json_arg(args.input, "--input"))
            _print_run(_call(stub.ContinueRun, resume, args.timeout).run, args.output)
        elif args.action == "events":
            after = args.after
            while True:
                page = _call(
                    stub.ListRunEvents,
                    pb.ListRunEventsRequest(run_id=args.run_id, after_sequence=after),
                    args.timeout,
                )
                for event in page.events:
                    if args.output == "text":
                        kind = str(event_pb2.RunEvent.Type.Name(event.type)).removeprefix("TYPE_")
                        kind = kind.lower().replace("_", ".", 1)
                        print(f"#{event.sequence:<4} {kind:<24} {event.step_id}")
                    else:
                        print(json_format.MessageToJson(event, indent=None))
                if not page.next_after_sequence:
                    break
                after = page.next_after_sequence
    return EXIT_OK


def cmd_agents(args: argparse.Namespace) -> int:
    channel, stub = _stub(args)
    with channel:
        if args.action == "list":
            agents = _call(
                stub.ListAgents,
                pb.ListAgentsRequest(page_size=500, skill=args.skill or ""),
                args.timeout,
            ).agents
            if args.output == "text":
                for agent in agents:
                    print(
                        f"{agent.name:<24} {agent.endpoint:<28} skills={','.join(agent.skills)}"
                        f" max={agent.max_concurrency}"
                    )
            else:
                _print(
                    [
                        json_format.MessageToDict(a, preserving_proto_field_name=True)
                        for a in agents
                    ],
                    args.output,
                )
        elif args.action == "register":
            agent = agent_pb2.Agent(
                name=args.name,
                endpoint=args.endpoint,
                skills=args.skill or [],
                max_concurrency=args.max_concurrency,
                default_timeout_seconds=args.default_timeout,
            )
            stored = _call(stub.RegisterAgent, pb.RegisterAgentRequest(agent=agent), args.timeout)
            print(f"agent {stored.agent.name} registered at {stored.agent.endpoint}")
        elif args.action == "deregister":
            _call(stub.DeregisterAgent, pb.DeregisterAgentRequest(name=args.name), args.timeout)
            print(f"agent {args.name} deregistered")
    return EXIT_OK


def cmd_cache(args: argparse.Namespace) -> int:
    channel, stub = _stub(args)
    with channel:
        deleted = _call(
            stub.InvalidateCache,
            pb.InvalidateCacheRequest(definition_name=args.name, definition_version=args.version),
            args.timeout,
        ).deleted
        if args.output == "text":
            which = f"version {args.version}" if args.version else "every version"
            print(f"{deleted} cached step outputs of {args.name} ({which}) deleted")
        else:
            _print({"deleted": deleted}, args.output)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    # Imported here: the client library does not depend on the server package.
    from podium.server.config import ConfigError, Settings
    from podium.server.main import serve

    try:
        settings = Settings.from_args(args)
    except ConfigError as exc:
        raise CliError(f"invalid setting: {exc}", EXIT_USAGE) from None
    return serve(settings)


def cmd_demo(args: argparse.Namespace) -> int:
    from podium.client.demo import run_demo

    return asyncio.run(
        run_demo(
            args.listen_address, topic=args.topic, language=args.language, exit_after=args.exit
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podium", description="Podium: durable orchestration of AI agents over gRPC."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve", help="run a Podium server (embedded PostgreSQL unless PODIUM_DATABASE_URL is set)"
    )
    from podium.server.config import Settings

    Settings.add_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser(
        "demo",
        help="start the example agents and a server, run the example definition, keep serving",
    )
    demo.add_argument(
        "--listen-address", default=os.environ.get("PODIUM_LISTEN_ADDRESS", DEFAULT_ADDRESS)
    )
    demo.add_argument("--topic", default="tea", help="input.topic of the demo run")
    demo.add_argument("--language", default="fr", help="input.language of the demo run")
    demo.add_argument(
        "--exit", action="store_true", help="stop after the run instead of serving on"
    )
    demo.set_defaults(func=cmd_demo)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--address",
        default=os.environ.get("PODIUM_ADDRESS", DEFAULT_ADDRESS),
        help="server address HOST:PORT [env PODIUM_ADDRESS, default %(default)s]",
    )
    common.add_argument(
        "--timeout", type=float, default=30.0, help="deadline of each call in seconds"
    )
    common.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text")

    defs = sub.add_parser("definitions", help="manage definitions").add_subparsers(
        dest="action", required=True
    )
    p = defs.add_parser(
        "apply", parents=[common], help="create a new version from a YAML/JSON file"
    )
    p.add_argument("file")
    p = defs.add_parser(
        "validate", parents=[common], help="validate a YAML/JSON file without storing it"
    )
    p.add_argument("file")
    p = defs.add_parser("list", parents=[common], help="list definitions (latest versions)")
    p.add_argument("--prefix", help="only names starting with this")
    p.add_argument("--all", action="store_true", help="include archived definitions")
    p = defs.add_parser("get", parents=[common], help="show a definition")
    p.add_argument("name")
    p.add_argument("--version", type=int, default=0, help="version (default: latest)")
    p = defs.add_parser("archive", parents=[common], help="archive a definition")
    p.add_argument("name")
    for action in defs.choices.values():
        action.set_defaults(func=cmd_definitions)

    runs = sub.add_parser("runs", help="start, inspect and control runs").add_subparsers(
        dest="action", required=True
    )
    p = runs.add_parser(
        "start", parents=[common], help="start a run of a definition or a plan file"
    )
    p.add_argument("definition", nargs="?", help="definition name")
    p.add_argument("--version", type=int, default=0, help="definition version (default: latest)")
    p.add_argument("--file", help="run an inline plan from a YAML/JSON file instead")
    p.add_argument("--input", help="run input as a JSON object")
    p.add_argument("--label", action="append", help="KEY=VALUE (repeatable)")
    p.add_argument("--request-id", help="idempotency key: a retry returns the same run")
    p.add_argument(
        "--create-only", action="store_true", help="create without starting (continue later)"
    )
    p.add_argument(
        "--bypass-cache",
        action="store_true",
        help="neither read nor fill the step-output cache for this run",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait for the end; exit 0 when it succeeded, 4 otherwise",
    )
    p = runs.add_parser("get", parents=[common], help="show a run and its steps")
    p.add_argument("run_id")
    p = runs.add_parser("list", parents=[common], help="list runs, newest first")
    p.add_argument("--state", action="append", help="created|running|succeeded|failed|cancelled")
    p.add_argument("--definition", help="only runs of this definition")
    p.add_argument("--limit", type=int, default=50)
    p = runs.add_parser("cancel", parents=[common], help="cancel a run")
    p.add_argument("run_id")
    p.add_argument("--reason")
    p = runs.add_parser("continue", parents=[common], help="start a run created with --create-only")
    p.add_argument("run_id")
    p.add_argument("--input", help="extra input merged over the run's, as a JSON object")
    p = runs.add_parser("events", parents=[common], help="print a run's event log")
    p.add_argument("run_id")
    p.add_argument("--after", type=int, default=0, help="only events after this sequence")
    for action in runs.choices.values():
        action.set_defaults(func=cmd_runs)

    agents = sub.add_parser("agents", help="manage agents").add_subparsers(
        dest="action", required=True
    )
    p = agents.add_parser("list", parents=[common], help="list agents")
    p.add_argument("--skill", help="only agents offering this skill")
    p = agents.add_parser("register", parents=[common], help="register (or update) an agent")
    p.add_argument("name")
    p.add_argument("endpoint", help="HOST:PORT of its podium.agent.v1 server")
    p.add_argument("--skill", action="append", help="a skill it offers (repeatable)")
    p.add_argument("--max-concurrency", type=int, default=0)
    p.add_argument("--default-timeout", type=float, default=0.0)
    p = agents.add_parser("deregister", parents=[common], help="remove a registered agent")
    p.add_argument("name")
    for action in agents.choices.values():
        action.set_defaults(func=cmd_agents)

    cache = sub.add_parser("cache", help="manage the step-output cache").add_subparsers(
        dest="action", required=True
    )
    p = cache.add_parser(
        "invalidate", parents=[common], help="delete the cached step outputs of a definition"
    )
    p.add_argument("name", help="definition name")
    p.add_argument("--version", type=int, default=0, help="only this version (default: all)")
    p.set_defaults(func=cmd_cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``podium`` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"podium: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
