"""Every RPC of OrchestrationService is reachable from PodiumClient (and its blocking
facade) and from the ``podium`` CLI; every command documents itself with examples."""

from __future__ import annotations

import argparse

from podium.client import PodiumClient, SyncPodiumClient
from podium.client.cli import build_parser
from podium.orchestration.v1 import orchestration_service_pb2 as pb

# RPC -> (PodiumClient method, CLI command). A new RPC fails the test until it has both.
SURFACE: dict[str, tuple[str, tuple[str, ...]]] = {
    "CreateDefinition": ("create_definition", ("definitions", "apply")),
    "GetDefinition": ("get_definition", ("definitions", "get")),
    "ListDefinitions": ("list_definitions", ("definitions", "list")),
    "ValidateDefinition": ("validate_definition", ("definitions", "validate")),
    "ArchiveDefinition": ("archive_definition", ("definitions", "archive")),
    "StartRun": ("start_run", ("runs", "start")),
    "GetRun": ("get_run", ("runs", "get")),
    "ListRuns": ("list_runs", ("runs", "list")),
    "CancelRun": ("cancel_run", ("runs", "cancel")),
    "ContinueRun": ("continue_run", ("runs", "continue")),
    "ResumeRun": ("resume_run", ("runs", "resume")),
    "ForkRun": ("fork_run", ("runs", "fork")),
    "WatchRun": ("watch_run", ("runs", "watch")),
    "WatchRuns": ("watch_runs", ("runs", "watch")),  # runs watch --all, runs list --watch
    "ListRunEvents": ("list_run_events", ("runs", "events")),
    "GetRunPayload": ("get_run_payload", ("runs", "payload")),
    "ListDeliverables": ("list_deliverables", ("deliverables", "list")),
    "ListApprovals": ("list_approvals", ("approvals", "list")),
    "GetApproval": ("get_approval", ("approvals", "get")),
    "DecideApproval": ("decide_approval", ("approvals", "decide")),
    "RegisterAgent": ("register_agent", ("agents", "register")),
    "ListAgents": ("list_agents", ("agents", "list")),
    "GetAgent": ("get_agent", ("agents", "get")),
    "DeregisterAgent": ("deregister_agent", ("agents", "deregister")),
    "InvalidateCache": ("invalidate_cache", ("cache", "invalidate")),
    "ListWebhookDeliveries": ("list_webhook_deliveries", ("webhooks", "deliveries")),
    "SendEvent": ("send_event", ("events", "send")),
    "CreateSchedule": ("create_schedule", ("schedules", "create")),
    "GetSchedule": ("get_schedule", ("schedules", "get")),
    "ListSchedules": ("list_schedules", ("schedules", "list")),
    "PauseSchedule": ("pause_schedule", ("schedules", "pause")),
    "ResumeSchedule": ("resume_schedule", ("schedules", "resume")),
    "DeleteSchedule": ("delete_schedule", ("schedules", "delete")),
    "GetUsage": ("get_usage", ("usage",)),
    "GetRoutingPolicy": ("get_routing_policy", ("policy", "get")),
    "UpdateRoutingPolicy": ("update_routing_policy", ("policy", "set")),
}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every leaf command of the CLI by its words."""
    children = subcommands(parser)
    if not children:
        return {path: parser}
    found = {}
    for name, child in children.items():
        found.update(commands(child, (*path, name)))
    return found


def test_every_rpc_has_a_client_method_and_a_cli_command() -> None:
    rpcs = [m.name for m in pb.DESCRIPTOR.services_by_name["OrchestrationService"].methods]
    assert sorted(rpcs) == sorted(SURFACE), "map each new RPC to a client method and a command"
    cli = commands(build_parser())
    for rpc in rpcs:
        method, command = SURFACE[rpc]
        assert callable(getattr(PodiumClient, method, None)), f"{rpc}: PodiumClient.{method}"
        assert getattr(SyncPodiumClient, method, None) is not None, f"{rpc}: SyncPodiumClient"
        assert command in cli, f"{rpc}: podium {' '.join(command)}"


def test_every_command_has_examples() -> None:
    for path, parser in commands(build_parser()).items():
        assert parser.epilog and "examples:" in parser.epilog, " ".join(path)
        for line in parser.epilog.splitlines()[1:]:
            assert line.strip().startswith(("podium ", "PODIUM_")), (path, line)
