"""The ``podium`` CLI on human approvals, ContinueRun and ResumeRun: a real server, the
real example agents (and the scripted A2A agent), the real console script.

A watched run (``runs start --watch``) is read line by line while it runs: the view
prints a line when a step starts waiting on a human, which is when the test decides.
No timing assertions: every wait is for a line or a state, with a generous deadline.
"""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from podium.client import PodiumClient
from podium.client.examples.agents import ExampleAgents
from podium.client.run_view import RunView
from podium.orchestration.v1 import event_pb2
from tests.integration import client_helpers
from tests.integration.a2a_agents import serve_a2a
from tests.integration.client_helpers import (
    UUID,
    Follow,
    normalized,
    podium,
    podium_json,
    podium_plain,
)
from tests.integration.conftest import StartServer, static_agents
from tests.integration.runs_helpers import wait_until

follow = client_helpers.follow  # the fixture, used by name

RunEvent = event_pb2.RunEvent

GATED = """\
name: gated
steps:
  - {id: draft, agent: echo, input: {topic: '${run.input.topic}'}}
  - id: publish
    agent: echo
    depends_on: [draft]
    input: {text: '${steps.draft.output.echo.topic}', tone: '${run.input.tone}'}
    checkpoint: before
"""


async def serve(start_server: StartServer, agents: str, tmp_path: Path, *files: str) -> list[str]:
    """A server with ``agents``; the definitions ``files`` applied. Returns the
    ``--address`` arguments."""
    server = await start_server(agents=agents)
    address = ["--address", server.address]
    for i, text in enumerate(files):
        path = tmp_path / f"definition-{i}.yaml"
        path.write_text(text)
        applied = await podium("definitions", "apply", str(path), *address)
        assert applied.returncode == 0, applied.stderr
    return address


def approval_id_in(line: str) -> str:
    """The approval id a notice line of the watch view names (after "approval" or
    "failure review")."""
    ids = UUID.findall(line)
    assert ids, line
    return str(ids[0])


async def pending_approvals(address: list[str], run_id: str) -> list[dict[str, object]]:
    """``approvals list --run RUN -o json``, polled until the run has one."""
    found: list[dict[str, object]] = []

    async def check() -> bool:
        found[:] = await podium_json("approvals", "list", "--run", run_id, *address)
        return bool(found)

    await wait_until(check, f"a pending approval of run {run_id}", within=60)
    return found


async def test_cli_approve_a_checkpoint_then_the_watched_run_succeeds(
    start_server: StartServer, example_agents: ExampleAgents, tmp_path: Path, follow: Follow
) -> None:
    """The watch shows the step waiting with its approval id; meanwhile the approval is
    listed, shown, the run given more input (ContinueRun) and approved; the watch then
    follows the run to its success and exits 0."""
    address = await serve(start_server, static_agents(example_agents, "echo"), tmp_path, GATED)
    watch = await follow(
        "runs", "start", "gated", "--input", '{"topic": "tea", "tone": "plain"}', "--watch",
        *address,
    )  # fmt: skip
    line = await watch.until("awaiting approval")
    approval_id = approval_id_in(line)
    assert line.startswith("publish │ awaiting approval (before): Approve step publish before")
    assert f"podium approvals approve|reject {approval_id}" in line

    shown = await podium_json("approvals", "get", approval_id, *address)
    run_id = shown["run_id"]
    listed = await podium_json("approvals", "list", "--run", run_id, *address)
    assert [a["id"] for a in listed] == [approval_id]
    assert (listed[0]["kind"], listed[0]["state"], listed[0]["step_id"]) == (
        "KIND_CHECKPOINT_BEFORE",
        "STATE_PENDING",
        "publish",
    )
    assert listed[0]["subject"] == {"input": {"text": "tea", "tone": "plain"}}
    text = await podium("approvals", "get", approval_id, *address)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0].split()[:3] == [approval_id, "PENDING", "checkpoint_before"]
    assert "  prompt: Approve step publish before it runs?" in text.stdout

    # More input for the waiting run: the checkpointed step resolves with it once approved.
    continued = await podium("runs", "continue", run_id, "--input", '{"tone": "dry"}', *address)
    assert continued.returncode == 0, continued.stderr
    assert await watch.until("run │ continued") == "run │ continued with input tone"

    approved = await podium(
        "approvals", "approve", approval_id, "--comment", "ship it", "--actor", "ed", *address
    )
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.splitlines()[0].split()[:2] == [approval_id, "DECIDED"]
    assert "  decided approve by ed: ship it" in approved.stdout

    code, stdout, stderr = await watch.finish()
    assert code == 0, stdout + stderr
    assert f"publish │ approval {approval_id} decided approve by ed: ship it" in stdout
    assert normalized(stdout).endswith(
        "run <run id>  gated v1  SUCCEEDED\n"
        "STEP     STATE      ATTEMPT  DURATION  AGENT  DETAIL\n"
        "draft    SUCCEEDED  1/1      #.#s      echo\n"
        "publish  SUCCEEDED  1/1      #.#s      echo\n"
        "━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━ 2/2 steps\n"
        "run SUCCEEDED\n"
        'output: {\n  "publish": {\n    "echo": {\n      "text": "tea",\n'
        '      "tone": "dry"\n    }\n  }\n}\n'
    )

    assert await podium_json("approvals", "list", "--run", run_id, *address) == []
    (decided,) = await podium_json(
        "approvals", "list", "--run", run_id, "--state", "decided", *address
    )
    assert (decided["id"], decided["decision"], decided["actor"], decided["comment"]) == (
        approval_id,
        "DECISION_APPROVE",
        "ed",
        "ship it",
    )


async def test_cli_reject_a_checkpoint_exits_4(
    start_server: StartServer, example_agents: ExampleAgents, tmp_path: Path, follow: Follow
) -> None:
    address = await serve(start_server, static_agents(example_agents, "echo"), tmp_path, GATED)
    watch = await follow(
        "runs", "start", "gated", "--input", '{"topic": "tea", "tone": "x"}', "--watch", *address
    )
    approval_id = approval_id_in(await watch.until("awaiting approval"))
    rejected = await podium(
        "approvals", "reject", approval_id, "--comment", "not now", "--actor", "ed", *address
    )
    assert rejected.returncode == 0, rejected.stderr
    assert "  decided reject by ed: not now" in rejected.stdout

    code, stdout, stderr = await watch.finish()
    assert code == 4, stdout + stderr
    assert f"publish │ approval {approval_id} decided reject by ed: not now" in stdout
    assert "run FAILED" in stdout
    assert "error (step publish): CHECKPOINT_REJECTED" in stdout


async def test_cli_decide_twice_exits_1_failed_precondition(
    start_server: StartServer, example_agents: ExampleAgents, tmp_path: Path
) -> None:
    address = await serve(start_server, static_agents(example_agents, "echo"), tmp_path, GATED)
    run = await podium_json(
        "runs", "start", "gated", "--input", '{"topic": "t", "tone": "x"}', *address
    )
    (approval,) = await pending_approvals(address, run["id"])
    approval_id = str(approval["id"])
    # A retried command with the same --request-id is answered again, not refused.
    for _ in range(2):
        first = await podium(
            "approvals", "approve", approval_id, "--actor", "ann", "--request-id", "k1", *address
        )
        assert first.returncode == 0, first.stderr
        assert "  decided approve by ann" in first.stdout
    for decision in (
        ["approve", approval_id],
        ["reject", approval_id],
        ["decide", approval_id, "skip"],
    ):
        again = await podium("approvals", *decision, "--actor", "bob", *address)
        assert again.returncode == 1, (decision, again.stderr)
        assert "FAILED_PRECONDITION" in again.stderr
        assert "[APPROVAL_NOT_PENDING]" in again.stderr
        assert "Traceback" not in again.stderr
    # The first decision stands.
    shown = await podium_json("approvals", "get", approval_id, *address)
    assert (shown["decision"], shown["actor"]) == ("DECISION_APPROVE", "ann")


FAILURE_REVIEW_PLAN = """\
name: reviewed
steps:
  - id: fetch
    agent: flaky
    input: {failures: 1}
    on_failure: {max_attempts: 1, notify_human: true}
  - {id: report, agent: echo, depends_on: [fetch], input: {got: '${steps.fetch.output}'}}
"""


@pytest.mark.parametrize(
    ("decision", "exit_code", "fetch_row", "output"),
    [
        ("retry", 0, "fetch   SUCCEEDED  2/2", {"report": {"echo": {"got": {"attempt": 2}}}}),
        ("skip", 0, "fetch   SKIPPED    1/1", {"report": {"echo": {"got": None}}}),
        ("fail", 4, "fetch   FAILED     1/1", None),
    ],
)
async def test_cli_decide_retry_skip_fail_on_a_failure_review(
    start_server: StartServer,
    example_agents: ExampleAgents,
    tmp_path: Path,
    follow: Follow,
    decision: str,
    exit_code: int,
    fetch_row: str,
    output: dict[str, object] | None,
) -> None:
    """on_failure.notify_human: the watch names the error and the review; a checkpoint
    decision on it is refused; retry, skip or fail decides the run."""
    address = await serve(
        start_server, static_agents(example_agents, "flaky", "echo"), tmp_path, FAILURE_REVIEW_PLAN
    )
    watch = await follow("runs", "start", "reviewed", "--watch", *address)
    line = await watch.until("failure review")
    approval_id = approval_id_in(line)
    assert line.startswith("fetch │ FLAKY: attempt 1 of step 'fetch' fails on purpose")
    assert f"podium approvals decide {approval_id} retry|skip|fail" in line
    shown = await podium_json("approvals", "get", approval_id, *address)
    assert shown["kind"] == "KIND_FAILURE_REVIEW"
    assert shown["subject"]["error"]["code"] == "FLAKY"

    wrong = await podium("approvals", "approve", approval_id, "--actor", "ops", *address)
    assert wrong.returncode == 1
    assert "INVALID_ARGUMENT" in wrong.stderr and "decision" in wrong.stderr

    decided = await podium("approvals", "decide", approval_id, decision, "--actor", "ops", *address)
    assert decided.returncode == 0, decided.stderr
    assert f"  decided {decision} by ops" in decided.stdout

    code, stdout, stderr = await watch.finish()
    assert code == exit_code, stdout + stderr
    assert f"fetch │ approval {approval_id} decided {decision} by ops" in stdout
    assert fetch_row in stdout
    run = await podium_json("runs", "get", shown["run_id"], *address)
    if output is None:
        assert run["state"] == "STATE_FAILED" and run["error"]["code"] == "FLAKY"
    else:
        assert run["state"] == "STATE_SUCCEEDED" and run["output"] == output


RESUMABLE_PLAN = """\
name: resumable
steps:
  - {id: ok, agent: echo, input: {v: 1}}
  - {id: bad, agent: flaky, depends_on: [ok], input: {failures: 1}}
  - {id: after, agent: echo, depends_on: [bad], input: {b: '${steps.bad.output.attempt}'}}
"""

# `runs resume --watch` replays the log from the start: the first attempt's failure, the
# resume, then the new attempt to its end.
RESUME_SNAPSHOT = """\
run │ resumed (run attempt 2, was failed)
run <run id>  resumable v1  SUCCEEDED
STEP   STATE      ATTEMPT  DURATION  AGENT  DETAIL
ok     SUCCEEDED  1/1      #.#s      echo
bad    SUCCEEDED  2/2      #.#s      flaky
after  SUCCEEDED  1/1      #.#s      echo
━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━ 3/3 steps
run SUCCEEDED
output: {
  "after": {
    "echo": {
      "b": 2
    }
  }
}
"""


async def test_cli_resume_a_failed_run_with_watch_exits_0(
    start_server: StartServer, example_agents: ExampleAgents, tmp_path: Path
) -> None:
    address = await serve(
        start_server, static_agents(example_agents, "flaky", "echo"), tmp_path, RESUMABLE_PLAN
    )
    failed = await podium("runs", "start", "resumable", "--wait", "-o", "json", *address)
    assert failed.returncode == 4, failed.stderr
    run = json.loads(failed.stdout)
    assert (run["state"], run["error"]["code"]) == ("STATE_FAILED", "FLAKY")

    resumed = await podium_plain("runs", "resume", run["id"], "--watch", *address)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert normalized(resumed.stdout) == RESUME_SNAPSHOT

    # Watching it again replays the same picture; its JSON lines hold both attempts.
    again = await podium_plain("runs", "watch", run["id"], *address)
    assert again.returncode == 0 and normalized(again.stdout) == RESUME_SNAPSHOT
    lines = await podium("runs", "watch", run["id"], "-o", "json", *address)
    types = [json.loads(line).get("event", {}).get("type") for line in lines.stdout.splitlines()]
    assert types.count("TYPE_RUN_FAILED") == 1
    assert types.index("TYPE_RUN_FAILED") < types.index("TYPE_RUN_RESUMED")
    assert types[-2:] == ["TYPE_RUN_COMPLETED", None]  # then the {"run": ...} line


async def test_cli_resume_a_running_run_exits_1_run_not_resumable(
    start_server: StartServer, example_agents: ExampleAgents, tmp_path: Path
) -> None:
    address = await serve(start_server, static_agents(example_agents, "sleeper"), tmp_path)
    plan = tmp_path / "slow.yaml"
    plan.write_text("name: slow\nsteps:\n  - {id: nap, agent: sleeper, input: {seconds: 60}}\n")
    run = await podium_json("runs", "start", "--file", str(plan), *address)
    assert run["state"] == "STATE_RUNNING"
    for follow_flag in ([], ["--watch"]):
        refused = await podium("runs", "resume", run["id"], *follow_flag, *address)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "FAILED_PRECONDITION" in refused.stderr
        assert "[RUN_NOT_RESUMABLE]" in refused.stderr
        assert "Traceback" not in refused.stderr
    cancelled = await podium("runs", "cancel", run["id"], *address)
    assert cancelled.returncode == 0, cancelled.stderr


async def test_watch_renders_an_a2a_question_and_its_answer(
    start_server: StartServer, tmp_path: Path, follow: Follow
) -> None:
    """An A2A agent asks a question (INPUT_REQUIRED): the watch prints it with the
    command that answers it; `runs continue --input` answers; the run succeeds."""
    agent = await serve_a2a()
    try:
        address = await serve(start_server, f"scripted={agent.endpoint};protocol=a2a", tmp_path)
        plan = tmp_path / "ask.yaml"
        plan.write_text("name: ask\nsteps:\n  - {id: ask, agent: scripted, input: {mode: input}}\n")
        watch = await follow("runs", "start", "--file", str(plan), "--watch", *address)
        line = await watch.until("input required")
        run_id, approval_id = UUID.findall(line)[-1], approval_id_in(line)
        assert line.startswith(f"ask │ input required: which city?  [approval {approval_id};")
        assert f"podium runs continue {run_id} --input JSON" in line

        listed = await podium("approvals", "list", "--run", run_id, *address)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split()[:3] == [approval_id, "PENDING", "input_required"]

        answered = await podium(
            "runs", "continue", run_id, "--input", '{"city": "Paris"}', *address
        )
        assert answered.returncode == 0, answered.stderr
        code, stdout, stderr = await watch.finish()
    finally:
        await agent.stop()
    assert code == 0, stdout + stderr
    assert "run │ continued with input city" in stdout
    assert f"ask │ approval {approval_id} decided approve by ContinueRun" in stdout
    assert '"city": "Paris"' in stdout and "run SUCCEEDED" in stdout


async def test_the_view_puts_resumed_steps_back_to_pending(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """Mid-replay, right after run.resumed, the view shows the re-run steps pending
    (ResumeRun writes no step event for them), not their old failed/cancelled states."""
    server = await start_server(agents=static_agents(example_agents, "flaky", "echo"))
    async with PodiumClient(server.address) as client:
        await client.create_definition(
            {
                "name": "r",
                "steps": [
                    {"id": "ok", "agent": "echo"},
                    {"id": "bad", "agent": "flaky", "depends_on": ["ok"], "input": {"failures": 1}},
                    {"id": "after", "agent": "echo", "depends_on": ["bad"]},
                ],
            }
        )
        run = await client.wait_run((await client.start_run("r")).id)
        await client.resume_run(run.id)
        run = await client.wait_run(run.id)
        events = (await client.list_run_events(run.id, page_size=1000)).items
    out = StringIO()
    console = Console(file=out, width=100, no_color=True, force_terminal=False)
    view = RunView(run, console)
    for event in events:
        view.apply(event)
        if event.type == RunEvent.TYPE_RUN_FAILED:
            failed = render(console, view, out)
        if event.type == RunEvent.TYPE_RUN_RESUMED:
            break
    resumed = render(console, view, out)
    assert rows(failed) == {"ok": "SUCCEEDED", "bad": "FAILED", "after": "CANCELLED"}
    assert rows(resumed) == {"ok": "SUCCEEDED", "bad": "PENDING", "after": "PENDING"}
    assert "1/3 steps" in resumed and "RUNNING" in resumed.splitlines()[0]


def render(console: Console, view: RunView, out: StringIO) -> str:
    out.seek(0)
    out.truncate()
    console.print(view)
    return out.getvalue()


def rows(rendered: str) -> dict[str, str]:
    """{step: state} of a rendered view's table."""
    return {
        parts[0]: parts[1]
        for parts in (line.split() for line in rendered.splitlines())
        if len(parts) >= 2 and parts[0] in ("ok", "bad", "after")
    }


async def test_cli_fork_reruns_from_a_step(
    start_server: StartServer, example_agents: ExampleAgents, tmp_path: Path
) -> None:
    """`runs fork RUN --step STEP --input ... --wait`: a new run re-executes the step and
    what follows it with the new input; the upstream output, whose input did not change,
    is copied. Neither a step nor an input, or an unknown step, is refused (exit 1)."""
    address = await serve(start_server, static_agents(example_agents, "echo"), tmp_path, FORK_PLAN)
    first = await podium_json(
        "runs", "start", "forkable", "--input", '{"v": 1}', "--wait", *address
    )
    assert first["state"] == "STATE_SUCCEEDED"
    forked = await podium(
        "runs", "fork", first["id"], "--step", "twice", "--input", '{"v": 2}', "--wait",
        "-o", "json", *address,
    )  # fmt: skip
    assert forked.returncode == 0, forked.stdout + forked.stderr
    run = json.loads(forked.stdout)
    assert run["forked_from_run_id"] == first["id"]
    steps = {s["step_id"]: s for s in run["steps"]}
    assert steps["once"]["output"] == {"echo": {"k": "fixed"}}  # copied from the first run
    assert steps["twice"]["output"] == {"echo": {"v": 2}}
    nothing = await podium("runs", "fork", first["id"], *address)
    assert nothing.returncode == 1 and "step_ids" in nothing.stderr
    unknown = await podium("runs", "fork", first["id"], "--step", "nope", *address)
    assert unknown.returncode == 1 and "step_ids[0]" in unknown.stderr


FORK_PLAN = """\
name: forkable
steps:
  - {id: once, agent: echo, input: {k: fixed}}
  - {id: twice, agent: echo, depends_on: [once], input: {v: '${run.input.v}'}}
"""
