"""The ``podium`` command line.

``podium serve`` runs a server; the other commands talk to one over gRPC
(``--address`` or ``PODIUM_ADDRESS``, default ``127.0.0.1:50051``).
Every remote command goes through :class:`~podium.client.PodiumClient`.

The CLI is part of the SDK distribution ``podium-client``; ``serve`` and ``demo`` run
the server, distribution ``podium``. Without it they exit 2 saying what to install (the
other commands never need it).

Exit codes: 0 success; 1 the server refused the request (every field violation is
printed; also an RPC the server does not implement; ``definitions diff --exit-code``
found differences); 2 bad usage or input file; 3 the server is unreachable or did not
answer in time; 4 a run followed with ``--wait`` or ``--watch`` (or ``runs watch``) did
not succeed; 130 interrupted (Ctrl-C); 141 the reader of the output went away (a pipe
into ``head``), printed nothing more.

The parser is in :mod:`podium.client.cli_parser`, the commands in
:mod:`podium.client.cli_runs` and :mod:`podium.client.cli_commands`, their output in
:mod:`podium.client.cli_output`, ``config`` and ``completion`` in
:mod:`podium.client.cli_config`.
"""

from __future__ import annotations

import os

# The server starts PostgreSQL and the demo starts the server as child processes; gRPC's
# fork handlers are not needed for that and only print warnings. Set before grpc loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import importlib.metadata
import importlib.util
import sys
from collections.abc import Awaitable, Callable, Sequence

from podium.client.cli_commands import (
    cmd_agents,
    cmd_approvals,
    cmd_cache,
    cmd_definitions,
    cmd_deliverables,
    cmd_events,
    cmd_webhooks,
)
from podium.client.cli_config import COMPLETION_SHELLS, cmd_completion, cmd_config, resolve
from podium.client.cli_keys import add_keys_command
from podium.client.cli_output import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CliError,
    refusal,
)
from podium.client.cli_parser import add_remote_commands, common_options
from podium.client.cli_policy import cmd_policy
from podium.client.cli_runs import cmd_runs
from podium.client.cli_schedules import cmd_schedules
from podium.client.cli_usage import cmd_usage
from podium.client.client import DEFAULT_ADDRESS, PodiumClient
from podium.client.common import DEFAULT_CONSOLE_ADDRESS
from podium.client.errors import PodiumError

Command = Callable[[PodiumClient, argparse.Namespace], Awaitable[int]]

COMMANDS: dict[str, Command] = {
    "definitions": cmd_definitions,
    "runs": cmd_runs,
    "approvals": cmd_approvals,
    "agents": cmd_agents,
    "deliverables": cmd_deliverables,
    "webhooks": cmd_webhooks,
    "cache": cmd_cache,
    "events": cmd_events,
    "schedules": cmd_schedules,
    "usage": cmd_usage,
    "policy": cmd_policy,
}
"""The function running each group of remote commands."""


def _remote(group: str) -> Callable[[argparse.Namespace], int]:
    """Run an async command of ``group`` with a client of the effective address,
    mapping its errors."""
    command = COMMANDS[group]

    async def run(args: argparse.Namespace) -> int:
        async with PodiumClient(
            args.address,
            timeout=args.timeout,
            credentials=args.credentials,
            api_key=args.api_key,
        ) as client:
            try:
                return await command(client, args)
            except PodiumError as error:
                raise refusal(error, client, args.timeout) from None

    def call(args: argparse.Namespace) -> int:
        resolve(args)
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


def server_installed() -> bool:
    """Whether the server distribution (``podium``, package ``podium.server``) is
    installed beside this SDK."""
    return importlib.util.find_spec("podium.server") is not None


def _needs_server(args: argparse.Namespace) -> int:
    try:
        pin = "==" + importlib.metadata.version("podium-client")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        pin = ""
    raise CliError(
        f"`podium {args.command}` runs the Podium server, which is not installed "
        f"(this is the SDK, podium-client): pip install 'podium{pin}'",
        EXIT_USAGE,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from podium.client.demo import run_demo

    return asyncio.run(
        run_demo(
            args.listen_address,
            topic=args.topic,
            language=args.language,
            exit_after=args.exit,
            console_address=args.console_address,
        )
    )


def _add_server_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``serve``, ``demo`` and ``keys`` (which writes to the database): only when the
    server is installed."""
    serve = sub.add_parser(
        "serve",
        help="run a Podium server (embedded PostgreSQL unless PODIUM_DATABASE_URL is set)",
        epilog="examples:\n  podium serve\n  PODIUM_DATABASE_URL=postgresql://... podium serve "
        "--listen-address 0.0.0.0:50051",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from podium.server.config import Settings

    Settings.add_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser(
        "demo",
        help="start the example agents and a server, run the example definition, keep serving",
        epilog="examples:\n  podium demo\n  podium demo --topic coffee --language de --exit",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--listen-address", default=os.environ.get("PODIUM_LISTEN_ADDRESS", DEFAULT_ADDRESS)
    )
    demo.add_argument(
        "--console-address",
        default=os.environ.get("PODIUM_CONSOLE_ADDRESS", DEFAULT_CONSOLE_ADDRESS),
        help="HOST:PORT of the web console and HTTP/JSON gateway ('' turns it off)",
    )
    demo.add_argument("--topic", default="tea", help="input.topic of the demo run")
    demo.add_argument("--language", default="fr", help="input.language of the demo run")
    demo.add_argument(
        "--exit", action="store_true", help="stop after the run instead of serving on"
    )
    demo.set_defaults(func=cmd_demo)
    add_keys_command(sub)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``podium`` command."""
    parser = argparse.ArgumentParser(
        prog="podium",
        description="Podium: durable orchestration of AI agents over gRPC.",
        epilog="exit codes: 0 success, 1 the server refused the request, 2 bad usage or "
        "input, 3 server unreachable, 4 a waited-for or watched run did not succeed, "
        "130 interrupted, 141 output pipe closed",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    if server_installed():
        _add_server_commands(sub)
    else:
        for name in ("serve", "demo", "keys"):
            stub = sub.add_parser(name, help="needs the server: pip install podium")
            stub.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            stub.set_defaults(func=_needs_server)

    add_remote_commands(sub, _remote)

    config = sub.add_parser(
        "config",
        parents=[common_options()],
        help="show the effective client settings and where each comes from",
        epilog="examples:\n  podium config\n  PODIUM_ADDRESS=podium:50051 podium config -o json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config.set_defaults(func=cmd_config)

    completion = sub.add_parser(
        "completion",
        help="print a shell completion script",
        epilog="examples:\n"
        "  podium completion bash > ~/.local/share/bash-completion/completions/podium\n"
        "  podium completion zsh > ~/.zfunc/_podium   # with fpath+=~/.zfunc before compinit",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    completion.add_argument("shell", choices=COMPLETION_SHELLS)
    completion.set_defaults(func=cmd_completion)
    return parser


def _silence_stdout() -> None:
    """After the reader of stdout went away: send what is still buffered nowhere, so
    the interpreter's final flush does not fail again (the recipe of Python's signal
    module documentation)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``podium`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except CliError as exc:
        print(f"podium: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    return code


if __name__ == "__main__":
    sys.exit(main())
