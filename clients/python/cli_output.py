"""What the ``podium`` CLI prints, and how it fails: exit codes, error messages, the
text lines of each resource, and the one shape of ``-o json`` / ``-o yaml``.

The machine-readable shape is :func:`podium.client.values.message_to_data` for every
command: proto field names, enums by full name, 64-bit integers as numbers, integral
numbers within 2**53 as integers. A command prints one document (an object, or an
array for list commands), except the commands that follow events (``runs watch``,
``--watch``, ``runs events``, ``runs list --watch``): they print one line per item,
an object with a single key naming it (``{"event": {...}}``, then ``{"run": {...}}``
when a run was followed to its end); with ``-o yaml`` one YAML document per item.
"""

from __future__ import annotations

import getpass
import json
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from google.protobuf.message import Message

from podium.client.client import PodiumClient
from podium.client.definitions import DefinitionFileError, load_definition
from podium.client.errors import (
    DeadlineExceededError,
    PodiumError,
    UnavailableError,
    UnimplementedError,
)
from podium.client.values import message_to_data, plain
from podium.orchestration.v1 import agent_pb2, approval_pb2, definition_pb2, event_pb2, run_pb2

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_RUN_FAILED = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a reader that went away

Data = Message | dict[str, Any] | list[Any]


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
            # gRPC's own text ("Deadline Exceeded", "failed to connect to all
            # addresses") says nothing more than this line.
            return CliError(
                f"cannot reach a Podium server at {address} (no answer within "
                f"--timeout {timeout:g} s; retried while it was unavailable)",
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


# -- the machine-readable shape ------------------------------------------------------


def as_data(data: Data) -> Any:
    """``data`` in the one JSON shape (messages converted, lists element-wise)."""
    if isinstance(data, Message):
        return message_to_data(data)
    if isinstance(data, list):
        return [as_data(item) for item in data]
    return plain(data)


def print_data(data: Data, output: str) -> None:
    """One document: JSON (indented) or YAML."""
    data = as_data(data)
    if output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False).rstrip())
    else:
        print(json.dumps(data, indent=2))


def print_item(kind: str, data: Data, output: str) -> None:
    """One item of a stream: a JSON line ``{kind: data}``, or a YAML document."""
    item = {kind: as_data(data)}
    if output == "yaml":
        print("---\n" + yaml.safe_dump(item, sort_keys=False).rstrip(), flush=True)
    else:
        print(json.dumps(item), flush=True)


def plain_json(struct: Message) -> str:
    """A Struct as one line of JSON text (keys sorted), integral numbers as integers."""
    return json.dumps(as_data(struct), sort_keys=True)


# -- arguments -----------------------------------------------------------------------


def load_file(path: str) -> definition_pb2.Definition:
    try:
        return load_definition(path)
    except DefinitionFileError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def json_arg(text: str | None, what: str) -> dict[str, Any] | None:
    """``--input``-style arguments: a JSON object, or ``@FILE`` holding one."""
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


_RELATIVE = re.compile(r"\+(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def time_arg(text: str | None, option: str) -> datetime | None:
    """An aware datetime from ISO 8601 (UTC when it names no zone) or ``+N[smhd]``
    (from now); None for an empty value."""
    if not text:
        return None
    relative = _RELATIVE.fullmatch(text)
    if relative is not None:
        seconds = float(relative.group(1)) * _UNITS[relative.group(2)]
        return datetime.now(UTC) + timedelta(seconds=seconds)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(
            f"{option}: not an ISO 8601 date or time, nor +N[smhd]: {text!r}", EXIT_USAGE
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def labels_arg(pairs: Sequence[str] | None) -> dict[str, str]:
    labels = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--label {pair!r}: expected KEY=VALUE", EXIT_USAGE)
        labels[key] = value
    return labels


def default_actor() -> str:
    """``PODIUM_ACTOR``, else the OS user name, else empty (the server records none)."""
    try:
        return os.environ.get("PODIUM_ACTOR") or getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (some containers)
        return ""


# -- text ----------------------------------------------------------------------------


def run_state(run: run_pb2.Run) -> str:
    return str(run_pb2.Run.State.Name(run.state)).removeprefix("STATE_")


def event_kind(event: event_pb2.RunEvent) -> str:
    kind = str(event_pb2.RunEvent.Type.Name(event.type)).removeprefix("TYPE_").lower()
    return kind.replace("_", ".", 1)


def _tokens(usage: run_pb2.RunUsage) -> str:
    return (
        f"{usage.input_tokens + usage.output_tokens} tokens "
        f"({usage.input_tokens} in, {usage.output_tokens} out), {usage.cost_usd:.6f} USD"
    )


def usage_lines(run: run_pb2.Run) -> list[str]:
    """The usage (with child runs), what the cache saved, and the budget of a run."""
    total = run.total_usage if run.HasField("total_usage") else run.usage
    lines = [f"usage: {_tokens(total)}"]
    saved = run.saved_usage
    if saved.input_tokens or saved.output_tokens or saved.cost_usd:
        lines.append(f"saved by the cache: {_tokens(saved)}")
    if run.HasField("budget"):
        b = run.budget
        limits = ", ".join(
            part
            for part in (
                f"max {b.max_tokens} tokens" if b.max_tokens else "",
                f"max {b.max_cost_usd:g} USD" if b.max_cost_usd else "",
            )
            if part
        )
        action = "pause" if b.on_exceed != 2 else "fail"
        owner = "" if b.budget_run_id == run.id else f" of run {b.budget_run_id}"
        state = "EXCEEDED" if b.exceeded else "ok"
        line = (
            f"budget{owner}: {b.used_tokens} tokens, {b.used_cost_usd:.6f} USD used; "
            f"{limits or 'no limit'} (on exceed: {action}) {state}"
        )
        if b.approval_id:
            line += f"; approve {b.approval_id} with --budget-tokens/--budget-cost to continue"
        lines.append(line)
    return lines


def print_run(run: run_pb2.Run, output: str) -> None:
    """A run with its steps; in text also its rollback hints and related runs."""
    if output != "text":
        print_data(run, output)
        return
    print(f"run {run.id}  {run_state(run)}  {run.definition_name or '(inline plan)'}")
    if run.parent_run_id:
        print(f"  child of run {run.parent_run_id} (step {run.parent_step_id})")
    if run.forked_from_run_id:
        print(f"  forked from run {run.forked_from_run_id}")
    if run.concurrency_key or run.priority:
        key = f"  concurrency key {run.concurrency_key!r}" if run.concurrency_key else ""
        print(f"  priority {run.priority}{key}")
    if run.waiting_reason:
        print(f"  waiting: {run.waiting_reason}")
    for step in run.steps:
        state = str(run_pb2.StepRun.State.Name(step.state)).removeprefix("STATE_")
        target = f"child run {step.child_run_id}" if step.child_run_id else step.agent
        error = f"  {step.error.code}: {step.error.message}" if step.error.code else ""
        if step.waiting.reason == run_pb2.StepWaiting.REASON_RATE_LIMITED:
            until = step.waiting.until_time.ToDatetime().strftime("%H:%M:%S")
            error = f"  rate limited by agent {step.waiting.agent} until {until} UTC"
        elif step.waiting.reason == run_pb2.StepWaiting.REASON_ORGANIZATION_LIMIT:
            error = "  waiting: the organization's running steps are at the server's cap"
        print(
            f"  {step.step_id:<24} {state:<18} attempt {step.attempt}/{step.max_attempts}"
            f"  {target}{error}"
        )
    if run.error.code:
        print(f"error: {run.error.code}: {run.error.message}")
    for line in usage_lines(run):
        print(line)
    if run.rollback_hints:
        print("rollback hints (undo by hand, most recent first):")
        for hint in run.rollback_hints:
            print(f"  - {hint}")
    if run.HasField("output") and run.output.fields:
        print("output: " + plain_json(run.output))


def print_event(event: event_pb2.RunEvent, output: str) -> None:
    if output == "text":
        print(f"#{event.sequence:<4} {event_kind(event):<24} {event.step_id}", flush=True)
    else:
        print_item("event", event, output)


def approval_line(approval: approval_pb2.Approval) -> str:
    kind = str(approval_pb2.Approval.Kind.Name(approval.kind)).removeprefix("KIND_").lower()
    state = str(approval_pb2.Approval.State.Name(approval.state)).removeprefix("STATE_")
    return f"{approval.id}  {state:<9} {kind:<18} run {approval.run_id}  step {approval.step_id}"


def print_approval(approval: approval_pb2.Approval, output: str) -> None:
    if output != "text":
        print_data(approval, output)
        return
    print(approval_line(approval))
    if approval.prompt:
        print(f"  prompt: {approval.prompt}")
    if approval.HasField("subject") and approval.subject.fields:
        print("  subject: " + plain_json(approval.subject))
    if approval.decision:
        decision = str(approval_pb2.Decision.Name(approval.decision)).removeprefix("DECISION_")
        by = f" by {approval.actor}" if approval.actor else ""
        comment = f": {approval.comment}" if approval.comment else ""
        print(f"  decided {decision.lower()}{by}{comment}")


def _card_pending(agent: agent_pb2.Agent) -> bool:
    """A podium.agent.v1 agent whose card Podium has not read yet (lazy registration)."""
    return agent.protocol != agent.PROTOCOL_A2A and not agent.HasField("card_time")


def agent_line(agent: agent_pb2.Agent) -> str:
    protocol = str(agent_pb2.Agent.Protocol.Name(agent.protocol)).removeprefix("PROTOCOL_")
    limit = str(agent.max_concurrency) if agent.max_concurrency else "unlimited"
    rate = agent.rate_limit
    return (
        f"{agent.name:<24} {agent.endpoint:<28} skills={','.join(agent.skills)} max={limit}"
        + (f" protocol={protocol.lower()}" if agent.protocol else "")
        + (
            f" rate={rate.requests_per_period}/{rate.period_seconds:g}s"
            if rate.requests_per_period
            else ""
        )
        + (
            f" tokens={rate.tokens_per_period}/{rate.period_seconds:g}s"
            if rate.tokens_per_period
            else ""
        )
        + (" per_key" if rate.per_key else "")
        + (
            " health="
            + str(agent_pb2.AgentHealth.State.Name(agent.health.state))
            .removeprefix("STATE_")
            .lower()
            if agent.health.state
            else ""
        )
        + (" card=pending" if _card_pending(agent) else "")
    )
