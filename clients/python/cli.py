"""The ``podium`` command line.

``podium serve`` runs a server; the other commands talk to one over gRPC
(``--address`` or ``PODIUM_ADDRESS``, default ``127.0.0.1:50051``).
Exit codes: 0 success, 1 the server refused the request, 2 bad usage or input,
3 the server is unreachable.
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
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from podium.client.definitions import DefinitionFileError, definition_to_dict, load_definition
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
