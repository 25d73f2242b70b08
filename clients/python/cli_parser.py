"""The argument parser of every ``podium`` command, with an example epilog on each.

The functions that run the commands are bound by :mod:`podium.client.cli` (``COMMANDS``
maps a group name to its function), so this module only describes the command line.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from typing import TypeAlias

from podium.client.cli_output import default_actor
from podium.client.client_policy import POLICY_LISTS
from podium.client.client_schedules import CATCH_UP_POLICIES, OVERLAP_POLICIES
from podium.client.common import DEFAULT_ADDRESS, DEFAULT_TIMEOUT_SECONDS

DECISIONS = ("approve", "reject", "retry", "skip", "fail")
RUN_STATES = "created|running|paused|succeeded|failed|cancelled"

Group: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Parents: TypeAlias = list[argparse.ArgumentParser]

Bind = Callable[[str], Callable[[argparse.Namespace], int]]
"""Gives the function running the commands of a group (``runs``, ``agents``...)."""


def _examples(*lines: str) -> str:
    return "examples:\n" + textwrap.indent("\n".join(lines), "  ")


def _add(
    group: Group,
    name: str,
    help: str,
    examples: tuple[str, ...],
    parents: Parents,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(
        name,
        parents=parents,
        help=help,
        description=help,
        epilog=_examples(*examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


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


def common_options() -> argparse.ArgumentParser:
    """``--address``, ``--timeout``, ``--api-key``, ``-o`` and ``--tls*`` of every remote command.
    Their defaults are None: :func:`podium.client.cli_config.client_settings` resolves them (flag,
    environment, default) and tells where each came from."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--address",
        help=f"server address HOST:PORT [env PODIUM_ADDRESS, default {DEFAULT_ADDRESS}]",
    )
    common.add_argument(
        "--timeout",
        type=float,
        help="deadline of each call in seconds "
        f"[env PODIUM_TIMEOUT, default {DEFAULT_TIMEOUT_SECONDS:g}]",
    )
    common.add_argument(
        "--api-key",
        help="API key sent as 'authorization: Bearer <key>' [env PODIUM_API_KEY]",
    )
    common.add_argument(
        "-o",
        "--output",
        choices=("text", "json", "yaml"),
        help="output format [env PODIUM_OUTPUT, default text]",
    )
    common.add_argument(
        "--tls",
        action="store_const",
        const=True,
        help="connect over TLS, trusting the system's CA roots unless --tls-ca [env "
        "PODIUM_TLS=true; implied by any --tls-* file]",
    )
    common.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="PEM CA bundle the server's certificate chains to [env PODIUM_TLS_CA]",
    )
    common.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="PEM client certificate for mTLS, with --tls-key [env PODIUM_TLS_CERT]",
    )
    common.add_argument(
        "--tls-key", metavar="FILE", help="PEM key of --tls-cert [env PODIUM_TLS_KEY]"
    )
    return common


def _definitions(sub: Group, c: Parents, bind: Bind) -> None:
    defs = sub.add_parser("definitions", help="manage definitions").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = _add(
        defs,
        "apply",
        "store a definition from a YAML/JSON file; an unchanged file keeps its version",
        (
            "podium definitions apply flow.yaml",
            "podium definitions apply flow.yaml --force-new-version",
        ),
        c,
    )
    p.add_argument("file")
    p.add_argument(
        "--force-new-version",
        action="store_true",
        help="store a new version even when the latest has the same content",
    )
    p = _add(
        defs,
        "diff",
        "show what applying a file would change against the latest stored version",
        ("podium definitions diff flow.yaml", "podium definitions diff flow.yaml --exit-code"),
        c,
    )
    p.add_argument("file")
    p.add_argument(
        "--exit-code", action="store_true", help="exit 1 when there are differences (as git diff)"
    )
    p = _add(
        defs,
        "validate",
        "validate a YAML/JSON file without storing it",
        ("podium definitions validate flow.yaml",),
        c,
    )
    p.add_argument("file")
    p = _add(
        defs,
        "list",
        "list definitions (latest versions)",
        ("podium definitions list", "podium definitions list --prefix research --all -o json"),
        c,
    )
    p.add_argument("--prefix", help="only names starting with this")
    p.add_argument("--all", action="store_true", help="include archived definitions")
    p = _add(
        defs,
        "get",
        "show a definition (YAML by default)",
        (
            "podium definitions get research-brief",
            "podium definitions get research-brief --version 2",
        ),
        c,
    )
    p.add_argument("name")
    p.add_argument("--version", type=int, default=0, help="version (default: latest)")
    p = _add(defs, "archive", "archive a definition", ("podium definitions archive old-flow",), c)
    p.add_argument("name")
    for action in defs.choices.values():
        action.set_defaults(func=bind("definitions"))


def _runs(sub: Group, c: Parents, bind: Bind) -> None:
    runs = sub.add_parser("runs", help="start, inspect and control runs").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = _add(
        runs,
        "start",
        "start a run of a definition or a plan file",
        (
            'podium runs start research-brief --input \'{"topic": "tea"}\' --watch',
            "podium runs start --file plan.yaml --input @input.json --wait -o json",
            "podium runs start research-brief --label team=ops --metadata '{\"ticket\": 42}'",
            "podium runs start nightly-report --start-at 2026-12-24T06:00:00+01:00",
        ),
        c,
    )
    p.add_argument("definition", nargs="?", help="definition name")
    p.add_argument("--version", type=int, default=0, help="definition version (default: latest)")
    p.add_argument("--file", help="run an inline plan from a YAML/JSON file instead")
    p.add_argument("--input", help="run input as a JSON object, or @FILE holding one")
    p.add_argument("--label", action="append", help="KEY=VALUE (repeatable)")
    p.add_argument("--metadata", help="free-form run metadata as a JSON object, or @FILE")
    p.add_argument("--webhook-url", help="a URL receiving this run's events")
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
        "--priority",
        type=int,
        choices=range(10),
        metavar="0-9",
        help="claimed before lower priorities (default: the definition's, else 0)",
    )
    p.add_argument(
        "--start-at",
        metavar="TIME",
        help="start later: ISO 8601 (UTC unless it names a zone) or +N[smhd] from now; the "
        "run waits in CREATED until then",
    )
    _follow_options(p)
    p = _add(
        runs,
        "get",
        "show a run and its steps (child runs, rollback hints)",
        ("podium runs get RUN_ID", "podium runs get RUN_ID -o json --view basic"),
        c,
    )
    p.add_argument("run_id")
    p.add_argument(
        "--view",
        choices=("full", "basic"),
        default="full",
        help="full (default): everything, payloads too large for one response read "
        "separately; basic: no inputs, outputs, metadata or plan",
    )
    p = _add(
        runs,
        "watch",
        "show a run's live progress until it ends (exit 4 unless it succeeded), or with "
        "--all the events of every matching run until interrupted",
        (
            "podium runs watch RUN_ID",
            "podium runs watch --all --definition research-brief",
            "podium runs watch --all --state failed --since 600 -o json",
        ),
        c,
    )
    p.add_argument("run_id", nargs="?")
    p.add_argument("--all", action="store_true", help="every run's events (WatchRuns)")
    p.add_argument("--definition", help="with --all: only runs of this definition")
    p.add_argument("--state", action="append", help=f"with --all: only runs now {RUN_STATES}")
    p.add_argument("--label", action="append", help="with --all: only runs with KEY=VALUE")
    p.add_argument(
        "--since", type=float, help="with --all: replay events of the last SECONDS first"
    )
    p = _add(
        runs,
        "list",
        "list runs, newest first; --watch keeps the table current",
        (
            "podium runs list --state failed --limit 20",
            "podium runs list --definition research-brief --label team=ops -o json",
            "podium runs list --watch",
        ),
        c,
    )
    p.add_argument("--state", action="append", help=RUN_STATES)
    p.add_argument("--definition", help="only runs of this definition")
    p.add_argument("--label", action="append", help="only runs with KEY=VALUE (repeatable)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument(
        "--view",
        choices=("basic", "full"),
        default="basic",
        help="basic (default): no input, output, metadata or plan; full: with them",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="keep the list current from live events until interrupted",
    )
    p = _add(
        runs, "cancel", "cancel a run", ("podium runs cancel RUN_ID --reason 'wrong input'",), c
    )
    p.add_argument("run_id")
    p.add_argument("--reason")
    p = _add(
        runs,
        "continue",
        "start a run created with --create-only, or give more input to a run waiting "
        "on a checkpoint or on an agent's question (the answer)",
        (
            "podium runs continue RUN_ID",
            'podium runs continue RUN_ID --input \'{"answer": "yes"}\' --watch',
        ),
        c,
    )
    p.add_argument("run_id")
    p.add_argument("--input", help="extra input merged over the run's, as a JSON object")
    _follow_options(p)
    p = _add(
        runs,
        "resume",
        "re-run the failed, cancelled and skipped steps of a finished run",
        ("podium runs resume RUN_ID --watch",),
        c,
    )
    p.add_argument("run_id")
    _follow_options(p)
    p = _add(
        runs,
        "fork",
        "rerun from here: a new run of a finished run that re-executes the given steps "
        "and everything downstream, reusing the other outputs",
        (
            "podium runs fork RUN_ID --step summarize --watch",
            'podium runs fork RUN_ID --step research --input \'{"topic": "coffee"}\'',
        ),
        c,
    )
    p.add_argument("run_id")
    p.add_argument(
        "--step",
        action="append",
        default=[],
        help="a step to re-execute (repeatable); with --input alone, the steps whose input "
        "changes re-execute",
    )
    p.add_argument("--input", help="replacement run input, as a JSON object (default: the same)")
    p.add_argument("--request-id", help="idempotency key: repeating the call returns the same run")
    _follow_options(p)
    p = _add(
        runs,
        "events",
        "print a run's event log (JSON lines with -o json)",
        ("podium runs events RUN_ID", "podium runs events RUN_ID --after 10 -f -o json"),
        c,
    )
    p.add_argument("run_id")
    p.add_argument("--after", type=int, default=0, help="only events after this sequence")
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep printing live events until the run ends"
    )
    p = _add(
        runs,
        "payload",
        "print one payload of a run or step whole (read in ranges, however large)",
        (
            "podium runs payload RUN_ID --field input",
            "podium runs payload RUN_ID --step summarize --field output -o yaml",
        ),
        c,
    )
    p.add_argument("run_id")
    p.add_argument("--step", default="", help="a step of the run (default: the run itself)")
    p.add_argument(
        "--field",
        choices=("input", "output", "metadata", "plan"),
        default="output",
        help="which payload (default: output; metadata and plan of runs only)",
    )
    p = _add(
        runs,
        "export",
        "print a run's whole history as JSON lines (to archive it before run retention): "
        '{"run": ...}, then {"event": ...} per event, {"deliverable": ...} per deliverable, '
        "then the same for each child run",
        ("podium runs export RUN_ID > run.jsonl",),
        c,
    )
    p.add_argument("run_id")
    p.add_argument(
        "--no-data", action="store_true", help="leave out the bytes of inline deliverables"
    )
    for action in runs.choices.values():
        action.set_defaults(func=bind("runs"))


def _approvals(sub: Group, c: Parents, bind: Bind) -> None:
    approvals = sub.add_parser(
        "approvals", help="human approvals: list, show, decide"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _add(
        approvals,
        "list",
        "list approvals (pending by default)",
        ("podium approvals list", "podium approvals list --run RUN_ID --state decided -o json"),
        c,
    )
    p.add_argument("--run", help="only approvals of this run")
    p.add_argument("--state", action="append", help="pending|decided|expired|cancelled")
    p.add_argument("--limit", type=int, default=50)
    p = _add(approvals, "get", "show an approval", ("podium approvals get APPROVAL_ID",), c)
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
    decide.add_argument(
        "--budget-tokens",
        type=int,
        help="a budget approval: the run budget's new max tokens (0: no limit)",
    )
    decide.add_argument(
        "--budget-cost",
        type=float,
        metavar="USD",
        help="a budget approval: the run budget's new max cost in US dollars (0: no limit)",
    )
    _add(
        approvals,
        "approve",
        "approve a checkpoint",
        (
            "podium approvals approve APPROVAL_ID --comment 'looks right'",
            "podium approvals approve APPROVAL_ID --budget-tokens 200000 --budget-cost 5",
        ),
        [*c, decide],
    )
    _add(
        approvals,
        "reject",
        "reject a checkpoint",
        ("podium approvals reject APPROVAL_ID --comment 'wrong source'",),
        [*c, decide],
    )
    p = _add(
        approvals,
        "decide",
        "any decision, e.g. retry|skip|fail for a failure review",
        ("podium approvals decide APPROVAL_ID retry", "podium approvals decide APPROVAL_ID skip"),
        [*c, decide],
    )
    p.add_argument("decision", choices=DECISIONS)
    for action in approvals.choices.values():
        action.set_defaults(func=bind("approvals"))


def _others(sub: Group, c: Parents, bind: Bind) -> None:
    agents = sub.add_parser("agents", help="manage agents").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = _add(
        agents,
        "list",
        "list agents (max=unlimited: no concurrency limit)",
        ("podium agents list", "podium agents list --skill summarize -o json"),
        c,
    )
    p.add_argument("--skill", help="only agents offering this skill")
    p = _add(
        agents,
        "get",
        "one agent, with its health",
        ("podium agents get summarizer", "podium agents get summarizer -o json"),
        c,
    )
    p.add_argument("name")
    p = _add(
        agents,
        "register",
        "register (or update) an agent",
        (
            "podium agents register summarizer 127.0.0.1:50061",
            "podium agents register summarizer 127.0.0.1:50061 --skill summarize --lazy",
            "podium agents register helper 127.0.0.1:50070 --protocol a2a --max-concurrency 4",
            "podium agents register planner https://planner.example.com/.well-known/agent-card.json"
            " --protocol a2a",
            "podium agents register llm 127.0.0.1:50071 --rate-limit 60/60s --tokens-limit 9000/1m",
        ),
        c,
    )
    p.add_argument("name")
    p.add_argument(
        "endpoint",
        help="HOST:PORT of its gRPC server; an A2A agent (--protocol a2a) also by its agent "
        "card's http(s) URL",
    )
    p.add_argument(
        "--skill",
        action="append",
        help="a skill it offers (repeatable); default: a native agent's card's",
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=0,
        help="a native agent's: at most its card's, 0: its card's; an A2A agent's: 0: no limit",
    )
    p.add_argument(
        "--default-timeout",
        type=float,
        default=0.0,
        help="seconds; 0: a native agent's card's, else the server's",
    )
    p.add_argument(
        "--lazy",
        action="store_true",
        help="register a native agent even if it does not answer yet; its card is read when "
        "it does",
    )
    p.add_argument(
        "--rate-limit",
        metavar="COUNT/PERIOD",
        help="at most COUNT requests per PERIOD (sliding window), e.g. 60/60s, 1000/1h",
    )
    p.add_argument(
        "--tokens-limit",
        metavar="COUNT/PERIOD",
        help="at most COUNT reported tokens per PERIOD (the period of --rate-limit if both)",
    )
    p.add_argument(
        "--rate-per-key",
        action="store_true",
        help="apply the rate limit to each concurrency key value separately",
    )
    p.add_argument(
        "--protocol",
        default="podium_v1",
        help="podium_v1 (podium.agent.v1, the default) or a2a (an A2A agent, gRPC binding)",
    )
    p = _add(
        agents, "deregister", "remove a registered agent", ("podium agents deregister old",), c
    )
    p.add_argument("name")
    for action in agents.choices.values():
        action.set_defaults(func=bind("agents"))

    deliverables = sub.add_parser(
        "deliverables", help="artifacts produced by a run's steps"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _add(
        deliverables,
        "list",
        "list a run's deliverables",
        (
            "podium deliverables list RUN_ID",
            "podium deliverables list RUN_ID --step render -o json",
        ),
        c,
    )
    p.add_argument("run_id")
    p.add_argument("--step", help="only deliverables of this step")
    p = _add(
        deliverables,
        "download",
        "write a deliverable's content to a file",
        (
            "podium deliverables download RUN_ID report.md",
            "podium deliverables download RUN_ID DELIVERABLE_ID --to out/",
        ),
        c,
    )
    p.add_argument("run_id")
    p.add_argument("deliverable", help="its id, or its name (the latest of that name)")
    p.add_argument("--step", help="only look among this step's deliverables")
    p.add_argument("--to", help="file or directory to write (default: its name, here)")
    for action in deliverables.choices.values():
        action.set_defaults(func=bind("deliverables"))

    webhooks = sub.add_parser("webhooks", help="webhook delivery status").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = _add(
        webhooks,
        "deliveries",
        "list webhook deliveries, newest first",
        (
            "podium webhooks deliveries --run RUN_ID",
            "podium webhooks deliveries --state dead -o json",
        ),
        c,
    )
    p.add_argument("--run", help="only deliveries of this run")
    p.add_argument("--state", action="append", help="pending|delivered|dead")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=bind("webhooks"))

    p = _add(
        sub,
        "usage",
        "model usage of the organization (tokens, cost, cache savings), grouped",
        (
            "podium usage",
            "podium usage --days 7 --by day --by agent",
            "podium usage --definition research-brief --by model --json",
        ),
        c,
    )
    p.add_argument("--days", type=float, default=30, help="the last N days (default 30)")
    p.add_argument("--since", help="start, ISO 8601 (e.g. 2026-12-01); overrides --days")
    p.add_argument("--until", help="end (exclusive), ISO 8601 (default: now)")
    p.add_argument("--definition", default="", help="only runs of this definition")
    p.add_argument("--agent", default="", help="only this agent")
    p.add_argument("--model", default="", help="only this model")
    p.add_argument(
        "--by",
        action="append",
        choices=("day", "definition", "agent", "model"),
        help="group by (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="JSON output (same as -o json)")
    p.set_defaults(func=bind("usage"))

    cache = sub.add_parser("cache", help="manage the step-output cache").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = _add(
        cache,
        "invalidate",
        "delete the cached step outputs of a definition",
        (
            "podium cache invalidate research-brief",
            "podium cache invalidate research-brief --version 3",
        ),
        c,
    )
    p.add_argument("name", help="definition name")
    p.add_argument("--version", type=int, default=0, help="only this version (default: all)")
    p.set_defaults(func=bind("cache"))

    events = sub.add_parser("events", help="send external events").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = _add(
        events,
        "send",
        "send an event to the wait_for_event steps waiting for its name and key",
        (
            "podium events send ticket.replied --key T-42 --id mail-981",
            "podium events send ticket.replied --key T-42 --id mail-982 --payload @reply.json",
        ),
        c,
    )
    p.add_argument("name", help="event name")
    p.add_argument("--id", required=True, help="event id: the idempotency key of the event")
    p.add_argument("--key", default="", help="correlation key (default: empty)")
    p.add_argument("--payload", help="payload as a JSON object, or @FILE holding one")
    p.set_defaults(func=bind("events"))
    _schedules(sub, c, bind)
    _policy(sub, c, bind)


def _policy(sub: Group, c: Parents, bind: Bind) -> None:
    policy = sub.add_parser(
        "policy", help="the organization's routing policy: allowed agents and skills, approvals"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    _add(policy, "get", "show the routing policy", ("podium policy get -o json",), c)
    p = _add(
        policy,
        "set",
        "replace the lists given (the others are kept); admins only",
        (
            "podium policy set --deny-agent legacy-writer --deny-skill shell",
            "podium policy set --allow-agent echo --allow-agent summarizer",
            "podium policy set --require-approval payments --clear denied_skills",
        ),
        c,
    )
    for flag, what in (
        ("--allow-agent", "the agents steps may call (empty list: all)"),
        ("--deny-agent", "agents steps may not call"),
        ("--allow-skill", "the skills steps may target (empty list: all)"),
        ("--deny-skill", "skills steps may not target"),
        ("--require-approval", "agents whose steps wait for an approval before dispatch"),
    ):
        p.add_argument(flag, action="append", metavar="NAME", help=f"{what}; repeatable")
    p.add_argument(
        "--clear",
        action="append",
        choices=POLICY_LISTS,
        help="empty this list (repeatable)",
    )
    for action_parser in policy.choices.values():
        action_parser.set_defaults(func=bind("policy"))


def _schedules(sub: Group, c: Parents, bind: Bind) -> None:
    schedules = sub.add_parser(
        "schedules", help="run definitions on a cron expression or an interval"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _add(
        schedules,
        "create",
        "create a schedule",
        (
            'podium schedules create daily-report --cron "0 9 * * MON-FRI" --time-zone '
            "Europe/Paris",
            "podium schedules create heartbeat --every 300 --overlap skip --catch-up run_once",
        ),
        c,
    )
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
    p = _add(
        schedules,
        "list",
        "list schedules",
        ("podium schedules list", "podium schedules list --definition daily-report -o json"),
        c,
    )
    p.add_argument("--definition", default="", help="only schedules of this definition")
    for action, text in (
        ("get", "show a schedule and its next fire times"),
        ("pause", "pause a schedule"),
        ("resume", "resume a paused schedule (from its next tick)"),
        ("delete", "delete a schedule (its runs are kept)"),
    ):
        _add(schedules, action, text, (f"podium schedules {action} SCHEDULE_ID",), c).add_argument(
            "schedule_id"
        )
    for action_parser in schedules.choices.values():
        action_parser.set_defaults(func=bind("schedules"))


def add_remote_commands(parser_group: Group, bind: Bind) -> None:
    """Add the command groups that talk to a server."""
    common = [common_options()]
    _definitions(parser_group, common, bind)
    _runs(parser_group, common, bind)
    _approvals(parser_group, common, bind)
    _others(parser_group, common, bind)
