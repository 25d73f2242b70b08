"""The ``podium`` command line.

``podium serve`` runs a server; the other commands talk to one over gRPC
(``--address`` or ``PODIUM_ADDRESS``, default ``127.0.0.1:50051``).
Every remote command goes through :class:`~podium.client.PodiumClient`.

Exit codes: 0 success; 1 the server refused the request (every field violation is
printed; also an RPC the server does not implement); 2 bad usage or input file; 3 the
server is unreachable or did not answer in time; 4 a run followed with ``--wait`` or
``--watch`` (or ``runs watch``) did not succeed.
"""

from __future__ import annotations

import os

# The server starts PostgreSQL and the demo starts the server as child processes; gRPC's
# fork handlers are not needed for that and only print warnings. Set before grpc loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence

from podium.client.cli_commands import (
    DECISIONS,
    EXIT_USAGE,
    CliError,
    cmd_agents,
    cmd_approvals,
    cmd_cache,
    cmd_definitions,
    cmd_runs,
    default_actor,
    refusal,
)
from podium.client.cli_schedules import add_schedules_parser
from podium.client.client import DEFAULT_ADDRESS, PodiumClient
from podium.client.errors import PodiumError

Command = Callable[[PodiumClient, argparse.Namespace], Awaitable[int]]


def _remote(command: Command) -> Callable[[argparse.Namespace], int]:
    """Run an async command with a client of ``--address``, mapping its errors."""

    async def run(args: argparse.Namespace) -> int:
        async with PodiumClient(args.address, timeout=args.timeout) as client:
            try:
                return await command(client, args)
            except PodiumError as error:
                raise refusal(error, client, args.timeout) from None

    def call(args: argparse.Namespace) -> int:
        return asyncio.run(run(args))

    return call


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


def _follow_options(parser: argparse.ArgumentParser) -> None:
    follow = parser.add_mutually_exclusive_group()
    follow.add_argument(
        "--watch",
        action="store_true",
        help="show live progress until the run ends (step table, progress bar, agent "
        "output; JSON lines with -o json); exit 0 when it succeeded, 4 otherwise",
    )
    follow.add_argument(
        "--wait",
        action="store_true",
        help="wait for the end and print the run; exit 0 when it succeeded, 4 otherwise",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``podium`` command."""
    parser = argparse.ArgumentParser(
        prog="podium",
        description="Podium: durable orchestration of AI agents over gRPC.",
        epilog="exit codes: 0 success, 1 the server refused the request, 2 bad usage or "
        "input, 3 server unreachable, 4 a waited-for or watched run did not succeed",
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
        action.set_defaults(func=_remote(cmd_definitions))

    runs = sub.add_parser("runs", help="start, inspect and control runs").add_subparsers(
        dest="action", required=True
    )
    p = runs.add_parser(
        "start", parents=[common], help="start a run of a definition or a plan file"
    )
    p.add_argument("definition", nargs="?", help="definition name")
    p.add_argument("--version", type=int, default=0, help="definition version (default: latest)")
    p.add_argument("--file", help="run an inline plan from a YAML/JSON file instead")
    p.add_argument("--input", help="run input as a JSON object, or @FILE holding one")
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
    _follow_options(p)
    p = runs.add_parser("get", parents=[common], help="show a run and its steps")
    p.add_argument("run_id")
    p = runs.add_parser(
        "watch",
        parents=[common],
        help="show a run's live progress until it ends (exit 4 unless it succeeded)",
    )
    p.add_argument("run_id")
    p = runs.add_parser("list", parents=[common], help="list runs, newest first")
    p.add_argument(
        "--state", action="append", help="created|running|paused|succeeded|failed|cancelled"
    )
    p.add_argument("--definition", help="only runs of this definition")
    p.add_argument("--label", action="append", help="only runs with KEY=VALUE (repeatable)")
    p.add_argument("--limit", type=int, default=50)
    p = runs.add_parser("cancel", parents=[common], help="cancel a run")
    p.add_argument("run_id")
    p.add_argument("--reason")
    p = runs.add_parser(
        "continue",
        parents=[common],
        help="start a run created with --create-only, or give more input to a run waiting "
        "on a checkpoint or on an agent's question (the answer)",
    )
    p.add_argument("run_id")
    p.add_argument("--input", help="extra input merged over the run's, as a JSON object")
    _follow_options(p)
    p = runs.add_parser(
        "resume",
        parents=[common],
        help="re-run the failed, cancelled and skipped steps of a finished run",
    )
    p.add_argument("run_id")
    _follow_options(p)
    p = runs.add_parser(
        "fork",
        parents=[common],
        help="rerun from here: a new run of a finished run that re-executes the given steps "
        "and everything downstream, reusing the other outputs",
    )
    p.add_argument("run_id")
    p.add_argument(
        "--step", action="append", required=True, help="a step to re-execute (repeatable)"
    )
    p.add_argument("--input", help="replacement run input, as a JSON object (default: the same)")
    p.add_argument("--request-id", help="idempotency key: repeating the call returns the same run")
    _follow_options(p)
    p = runs.add_parser("events", parents=[common], help="print a run's event log")
    p.add_argument("run_id")
    p.add_argument("--after", type=int, default=0, help="only events after this sequence")
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep printing live events until the run ends"
    )
    for action in runs.choices.values():
        action.set_defaults(func=_remote(cmd_runs))

    approvals = sub.add_parser(
        "approvals", help="human approvals: list, show, decide"
    ).add_subparsers(dest="action", required=True)
    p = approvals.add_parser("list", parents=[common], help="list approvals (pending by default)")
    p.add_argument("--run", help="only approvals of this run")
    p.add_argument("--state", action="append", help="pending|decided|expired|cancelled")
    p.add_argument("--limit", type=int, default=50)
    p = approvals.add_parser("get", parents=[common], help="show an approval")
    p.add_argument("approval_id")
    decide = argparse.ArgumentParser(add_help=False)
    decide.add_argument("approval_id")
    decide.add_argument("--comment", help="why, recorded with the decision")
    decide.add_argument(
        "--actor",
        default=default_actor(),
        help="who decides [env PODIUM_ACTOR, default the OS user: %(default)s]",
    )
    decide.add_argument(
        "--input",
        help="JSON object: extra step input (checkpoint before) or replacement output (after)",
    )
    decide.add_argument(
        "--request-id",
        help="idempotency key: the same decision repeated with it succeeds again instead of "
        "failing with APPROVAL_NOT_PENDING",
    )
    approvals.add_parser("approve", parents=[common, decide], help="approve a checkpoint")
    approvals.add_parser("reject", parents=[common, decide], help="reject a checkpoint")
    p = approvals.add_parser(
        "decide",
        parents=[common, decide],
        help="any decision, e.g. retry|skip|fail for a failure review",
    )
    p.add_argument("decision", choices=DECISIONS)
    for action in approvals.choices.values():
        action.set_defaults(func=_remote(cmd_approvals))

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
        action.set_defaults(func=_remote(cmd_agents))

    cache = sub.add_parser("cache", help="manage the step-output cache").add_subparsers(
        dest="action", required=True
    )
    p = cache.add_parser(
        "invalidate", parents=[common], help="delete the cached step outputs of a definition"
    )
    p.add_argument("name", help="definition name")
    p.add_argument("--version", type=int, default=0, help="only this version (default: all)")
    p.set_defaults(func=_remote(cmd_cache))

    add_schedules_parser(sub, common, _remote)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``podium`` console script; returns the exit code."""
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
