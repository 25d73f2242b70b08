"""``podium policy get|set``: the organization's routing policy (the parser is in
:mod:`podium.client.cli_parser`)."""

from __future__ import annotations

import argparse
from datetime import UTC

from podium.client.cli_output import EXIT_OK, EXIT_USAGE, CliError, print_data
from podium.client.client import PodiumClient
from podium.client.client_policy import POLICY_LISTS
from podium.orchestration.v1 import policy_pb2

__all__ = ["POLICY_FLAGS", "cmd_policy"]

POLICY_FLAGS = {
    "allowed_agents": "allow_agent",
    "denied_agents": "deny_agent",
    "allowed_skills": "allow_skill",
    "denied_skills": "deny_skill",
    "approval_agents": "require_approval",
}
"""Each list of the policy -> the ``podium policy set`` option (dest) that sets it."""


def _print_policy(policy: policy_pb2.RoutingPolicy, output: str) -> None:
    if output != "text":
        print_data(policy, output)
        return
    for name in POLICY_LISTS:
        values = list(getattr(policy, name))
        print(f"{name + ':':<17} {', '.join(values) if values else '-'}")
    updated = (
        policy.update_time.ToDatetime(tzinfo=UTC).isoformat()
        if policy.HasField("update_time")
        else "never"
    )
    print(f"{'revision:':<17} {policy.revision} (updated {updated})")


async def cmd_policy(client: PodiumClient, args: argparse.Namespace) -> int:
    if args.action == "get":
        _print_policy(await client.get_routing_policy(), args.output)
        return EXIT_OK
    lists: dict[str, list[str]] = {}
    for name, dest in POLICY_FLAGS.items():
        values = getattr(args, dest)
        if values is not None:
            lists[name] = list(values)
    for name in args.clear or ():
        if name in lists:
            raise CliError(f"--clear {name} conflicts with the values given for it", EXIT_USAGE)
        lists[name] = []
    if not lists:
        raise CliError("give at least one list to set, or --clear LIST", EXIT_USAGE)
    policy = await client.update_routing_policy(
        allowed_agents=lists.get("allowed_agents"),
        denied_agents=lists.get("denied_agents"),
        allowed_skills=lists.get("allowed_skills"),
        denied_skills=lists.get("denied_skills"),
        approval_agents=lists.get("approval_agents"),
    )
    _print_policy(policy, args.output)
    return EXIT_OK
