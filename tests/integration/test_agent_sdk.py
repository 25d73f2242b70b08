"""The agent SDK (``podium.client.agent``) and the example agents, over real gRPC.

Every test starts real servers on 127.0.0.1 (port 0) and calls them with the generated
stub over ``grpc.aio``; no database is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from podium.agent.v1 import agent_pb2, agent_pb2_grpc
from podium.client.agent import (
    PROTOCOL_VERSION,
    SERVICE_NAME,
    Agent,
    AgentServer,
    Skill,
    Task,
    TaskFailed,
    dict_to_struct,
    struct_to_dict,
)
from podium.client.examples.agents import (
    ConcurrencyProbe,
    echo_agent,
    flaky_agent,
    noop_agent,
    search_agent,
    serve_examples,
    sleeper_agent,
    summarize_agent,
    translate_agent,
)

if TYPE_CHECKING:
    from podium.agent.v1.agent_pb2_grpc import AgentServiceAsyncStub

Response = agent_pb2.ExecuteTaskResponse


# -- helpers ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(agent: Agent) -> AsyncIterator[tuple[AgentServer, AgentServiceAsyncStub]]:
    """Serve ``agent`` on a free port and yield the server and a stub connected to it."""
    server = await agent.serve("127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield server, agent_pb2_grpc.AgentServiceStub(channel)
    finally:
        await server.stop(None)


def request(
    *, run_id: str = "run-1", step_id: str = "step", attempt: int = 1, **input_: Any
) -> agent_pb2.ExecuteTaskRequest:
    """An ExecuteTaskRequest with ``input_`` as its input."""
    req = agent_pb2.ExecuteTaskRequest(
        task_id=f"{run_id}/{step_id}/{attempt}",
        run_id=run_id,
        step_id=step_id,
        attempt=attempt,
        conversation_id=f"conv-{run_id}-{step_id}",
        organization_id="default",
    )
    req.input.update(input_)
    return req


async def collect(
    stub: AgentServiceAsyncStub, req: agent_pb2.ExecuteTaskRequest, deadline: float = 5
) -> list[Response]:
    """Every message of one ExecuteTask stream (the call's deadline in seconds)."""
    return [response async for response in stub.ExecuteTask(req, timeout=deadline)]


def kinds(responses: list[Response]) -> list[str | None]:
    return [response.WhichOneof("event") for response in responses]


def only_result(responses: list[Response]) -> agent_pb2.TaskResult:
    """The result, after checking it is the one and only result and the last message."""
    assert kinds(responses).count("result") == 1
    assert kinds(responses)[-1] == "result"
    return responses[-1].result


def output_of(responses: list[Response]) -> dict[str, Any]:
    result = only_result(responses)
    assert result.WhichOneof("outcome") == "output", result
    return struct_to_dict(result.output)


def error_of(responses: list[Response]) -> agent_pb2.TaskError:
    result = only_result(responses)
    assert result.WhichOneof("outcome") == "error", result
    return result.error


async def eventually(predicate: Callable[[], bool], within: float = 5) -> None:
    """Wait until ``predicate()`` holds, for ``within`` seconds at most."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def agent_with(handler: Callable[[Task], Awaitable[dict[str, Any]]], **options: Any) -> Agent:
    return Agent("test", handler=handler, **options)


# -- the stream ------------------------------------------------------------------------


async def test_stream_order_and_exactly_one_result() -> None:
    async def work(task: Task) -> dict[str, Any]:
        await task.progress("reading", 0.1)
        await task.output_chunk("Hello, ")
        await task.output_chunk("world")
        await task.artifact("summary.md", b"# Sum", media_type="text/markdown")
        await task.artifact("notes.txt", "caf\u00e9", metadata={"pages": 2})
        await task.artifact("big.bin", uri="s3://bucket/big.bin")
        await task.progress("done", 1.0)
        task.usage(model="demo", input_tokens=10, output_tokens=5, cost_usd=0.5)
        task.usage(input_tokens=1, output_tokens=2, cost_usd=0.25)
        return {"summary": "Hello, world"}

    async with serving(agent_with(work)) as (_, stub):
        responses = await collect(stub, request())

    assert kinds(responses) == [
        "progress",
        "output_chunk",
        "output_chunk",
        "artifact",
        "artifact",
        "artifact",
        "progress",
        "result",
    ]
    assert (responses[0].progress.message, responses[0].progress.fraction) == ("reading", 0.1)
    assert [r.output_chunk.text for r in responses[1:3]] == ["Hello, ", "world"]
    md, txt, big = (r.artifact for r in responses[3:6])
    assert (md.name, md.media_type, md.data) == ("summary.md", "text/markdown", b"# Sum")
    assert (txt.media_type, txt.data) == ("text/plain; charset=utf-8", "caf\u00e9".encode())
    assert struct_to_dict(txt.metadata) == {"pages": 2}
    assert (big.uri, big.data, big.media_type) == (
        "s3://bucket/big.bin",
        b"",
        "application/octet-stream",
    )
    assert output_of(responses) == {"summary": "Hello, world"}
    usage = responses[-1].result.usage
    assert (usage.model, usage.input_tokens, usage.output_tokens, usage.cost_usd) == (
        "demo",
        11,
        7,
        0.75,
    )


async def test_progress_fraction_is_normalized() -> None:
    async def work(task: Task) -> dict[str, Any]:
        await task.progress("unknown")
        await task.progress("negative", -3)
        await task.progress("over", 1.5)
        await task.progress("nan", float("nan"))
        return {}

    async with serving(agent_with(work)) as (_, stub):
        responses = await collect(stub, request())
    assert [r.progress.fraction for r in responses[:4]] == [-1.0, -1.0, 1.0, -1.0]


async def test_input_and_output_types_round_trip() -> None:
    seen: dict[str, Any] = {}

    async def work(task: Task) -> dict[str, Any]:
        seen["input"] = task.input
        return {"echo": task.input, "big": 2**40, "ratio": 0.5}

    value: dict[str, Any] = {"n": 3, "f": 2.5, "neg": -7, "s": "x", "b": True, "none": None}
    value["nested"] = {"list": [1, 2.0, "x", False, None, {"deep": 10}]}
    async with serving(agent_with(work)) as (_, stub):
        output = output_of(await collect(stub, request(**value)))

    expected = {**value, "nested": {"list": [1, 2, "x", False, None, {"deep": 10}]}}
    assert seen["input"] == expected
    assert type(seen["input"]["n"]) is int
    assert type(seen["input"]["nested"]["list"][1]) is int
    assert type(seen["input"]["f"]) is float
    assert type(seen["input"]["b"]) is bool
    assert output == {"echo": expected, "big": 2**40, "ratio": 0.5}
    assert type(output["echo"]["n"]) is int and type(output["big"]) is int


async def test_task_exposes_the_request_fields() -> None:
    seen: dict[str, Any] = {}

    async def work(task: Task) -> dict[str, Any]:
        seen.update(
            task_id=task.task_id,
            run_id=task.run_id,
            step_id=task.step_id,
            attempt=task.attempt,
            conversation_id=task.conversation_id,
            organization_id=task.organization_id,
            labels=task.labels,
            definition=(task.definition_name, task.definition_version),
            skill=task.skill,
            deadline=task.deadline,
            cancelled=task.cancelled,
            traceparent=task.metadata.get("traceparent"),
        )
        return {}

    req = request(run_id="r-9", step_id="summarize", attempt=2)
    req.labels.update({"team": "research"})
    req.definition_name, req.definition_version, req.skill = "brief", 3, "summarize"
    async with serving(agent_with(work)) as (_, stub):
        only_result([r async for r in stub.ExecuteTask(req, metadata=[("traceparent", "00-ab")])])
        no_deadline = dict(seen)
        await collect(stub, req, deadline=30)

    assert no_deadline == {
        "task_id": "r-9/summarize/2",
        "run_id": "r-9",
        "step_id": "summarize",
        "attempt": 2,
        "conversation_id": "conv-r-9-summarize",
        "organization_id": "default",
        "labels": {"team": "research"},
        "definition": ("brief", 3),
        "skill": "summarize",
        "deadline": None,
        "cancelled": False,
        "traceparent": "00-ab",
    }
    assert 25 < seen["deadline"] <= 31  # gRPC rounds the propagated deadline up


async def test_concurrent_helper_calls_are_serialized() -> None:
    # gRPC hangs on concurrent writes to one call: the SDK must serialize them.
    async def work(task: Task) -> dict[str, Any]:
        await asyncio.gather(*(task.output_chunk(str(i)) for i in range(50)))
        return {"n": 50}

    async with serving(agent_with(work)) as (_, stub):
        responses = await collect(stub, request())
    assert sorted(int(r.output_chunk.text) for r in responses[:-1]) == list(range(50))
    assert output_of(responses) == {"n": 50}


async def test_a_chatty_handler_streams_everything_in_order() -> None:
    async def work(task: Task) -> dict[str, Any]:
        for i in range(2000):
            await task.output_chunk(f"{i} " + "x" * 1000)
        return {}

    async with serving(agent_with(work)) as (_, stub):
        responses = await collect(stub, request(), deadline=30)
    texts = [r.output_chunk.text.split()[0] for r in responses[:-1]]
    assert texts == [str(i) for i in range(2000)]
    assert output_of(responses) == {}


async def test_helpers_fail_once_the_task_has_ended() -> None:
    tasks: list[Task] = []

    async def work(task: Task) -> dict[str, Any]:
        tasks.append(task)
        return {}

    async with serving(agent_with(work)) as (_, stub):
        output_of(await collect(stub, request()))
    with pytest.raises(RuntimeError, match="ended"):
        await tasks[0].progress("late")


async def test_an_oversized_artifact_is_refused_before_sending() -> None:
    async def work(task: Task) -> dict[str, Any]:
        await task.artifact("huge.bin", b"x" * 5000)
        return {}

    async with serving(agent_with(work, max_message_bytes=4096)) as (_, stub):
        error = error_of(await collect(stub, request()))
    assert error.code == "AGENT_EXCEPTION"
    assert "message limit" in error.message


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("retryable", [True, False])
async def test_task_failed_becomes_an_error_result(retryable: bool) -> None:
    async def work(task: Task) -> dict[str, Any]:
        await task.output_chunk("partial")
        task.usage(model="m", input_tokens=3)
        raise TaskFailed("UPSTREAM_REFUSED", "the upstream said no", retryable=retryable)

    async with serving(agent_with(work)) as (_, stub):
        responses = await collect(stub, request())
    assert kinds(responses) == ["output_chunk", "result"]
    error = error_of(responses)
    assert (error.code, error.message, error.retryable) == (
        "UPSTREAM_REFUSED",
        "the upstream said no",
        retryable,
    )
    assert responses[-1].result.usage.input_tokens == 3


def test_task_failed_codes_are_upper_snake() -> None:
    assert TaskFailed("RATE_LIMITED_2", "m").retryable is True
    for bad in ("", "lower", "Mixed_Case", "TRAILING_", "_LEADING", "SPACE D"):
        with pytest.raises(ValueError, match="UPPER_SNAKE"):
            TaskFailed(bad, "m")


async def test_an_unexpected_exception_is_agent_exception_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def work(task: Task) -> dict[str, Any]:
        raise KeyError("missing-key")

    async with serving(agent_with(work)) as (_, stub):
        with caplog.at_level(logging.ERROR, logger="podium.agent"):
            error = error_of(await collect(stub, request()))

    assert (error.code, error.message, error.retryable) == (
        "AGENT_EXCEPTION",
        "'missing-key'",
        True,
    )
    assert "Traceback" not in error.message and "work" not in error.message
    [record] = [r for r in caplog.records if r.name == "podium.agent"]
    assert record.exc_info is not None and record.exc_info[0] is KeyError


async def test_a_long_exception_message_is_truncated() -> None:
    async def work(task: Task) -> dict[str, Any]:
        raise RuntimeError("x" * 10_000)

    async def empty(task: Task) -> dict[str, Any]:
        raise RuntimeError()

    async with serving(agent_with(work)) as (_, stub):
        assert error_of(await collect(stub, request())).message == "x" * 500
    async with serving(agent_with(empty)) as (_, stub):
        assert error_of(await collect(stub, request())).message == "RuntimeError"


@pytest.mark.parametrize(
    ("output", "detail"),
    [(["not", "a", "dict"], "returned list"), (None, "NoneType"), ({"when": object()}, "JSON")],
)
async def test_an_invalid_output_is_a_non_retryable_error(output: Any, detail: str) -> None:
    async def work(task: Task) -> Any:
        return output

    async with serving(agent_with(work)) as (_, stub):
        error = error_of(await collect(stub, request()))
    assert (error.code, error.retryable) == ("INVALID_OUTPUT", False)
    assert detail in error.message


# -- cancellation and deadlines --------------------------------------------------------


async def test_client_cancellation_reaches_the_handler() -> None:
    started = asyncio.Event()
    handler_saw: list[str] = []
    hook_saw: list[tuple[str, bool]] = []

    async def work(task: Task) -> dict[str, Any]:
        await task.progress("started", 0.0)
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            handler_saw.append("cancelled")
            raise
        return {}

    agent = agent_with(work, on_cancel=lambda task: hook_saw.append((task.task_id, task.cancelled)))
    async with serving(agent) as (_, stub):
        call = stub.ExecuteTask(request(), timeout=30)
        first = await call.read()
        assert isinstance(first, Response) and first.WhichOneof("event") == "progress"
        await started.wait()
        assert agent.in_flight == 1
        call.cancel()
        await eventually(lambda: agent.cancelled_tasks == 1)
        assert call.cancelled()

    assert handler_saw == ["cancelled"]
    assert hook_saw == [("run-1/step/1", True)]
    assert agent.in_flight == 0


async def test_a_handler_swallowing_the_cancellation_is_still_counted() -> None:
    async def work(task: Task) -> dict[str, Any]:
        await task.progress("started")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            assert task.cancelled
            with pytest.raises(asyncio.CancelledError):
                await task.progress("after the cancellation")
        return {"ignored": True}

    agent = agent_with(work)
    async with serving(agent) as (_, stub):
        call = stub.ExecuteTask(request(), timeout=30)
        await call.read()
        call.cancel()
        await eventually(lambda: agent.cancelled_tasks == 1)
    assert agent.in_flight == 0


async def test_the_deadline_reaches_the_handler() -> None:
    deadlines: list[float | None] = []
    cancelled = asyncio.Event()

    async def work(task: Task) -> dict[str, Any]:
        deadlines.append(task.deadline)
        await asyncio.sleep(30)
        return {}

    agent = agent_with(work, on_cancel=lambda task: cancelled.set())
    async with serving(agent) as (_, stub):
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(stub, request(), deadline=0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(cancelled.wait(), 5)
        assert time.monotonic() - started < 5

    [deadline] = deadlines
    assert deadline is not None and 0 < deadline <= 0.6
    assert agent.cancelled_tasks == 1 and agent.in_flight == 0


# -- concurrency -----------------------------------------------------------------------


async def test_max_concurrency_is_enforced_and_extra_calls_wait() -> None:
    probe = ConcurrencyProbe()

    async def work(task: Task) -> dict[str, Any]:
        with probe:
            await asyncio.sleep(0.05)
        return {"i": task.input["i"]}

    agent = agent_with(work, max_concurrency=3)
    async with serving(agent) as (_, stub):
        outputs = await asyncio.gather(
            *(collect(stub, request(step_id=f"s{i}", i=i)) for i in range(10))
        )
    assert [output_of(responses) for responses in outputs] == [{"i": i} for i in range(10)]
    assert probe.max_seen == 3
    assert probe.entered == 10 and probe.current == 0


async def test_a_call_cancelled_while_waiting_for_a_slot_never_runs() -> None:
    calls: list[str] = []

    async def work(task: Task) -> dict[str, Any]:
        calls.append(task.step_id)
        await asyncio.sleep(30)
        return {}

    agent = agent_with(work, max_concurrency=1)
    async with serving(agent) as (_, stub):
        running = stub.ExecuteTask(request(step_id="first"), timeout=30)
        await eventually(lambda: calls == ["first"])
        waiting = stub.ExecuteTask(request(step_id="second"), timeout=30)
        await asyncio.sleep(0.1)
        waiting.cancel()
        running.cancel()
        await eventually(lambda: agent.cancelled_tasks == 1 and agent.in_flight == 0)
        # The slot is free again.
        calls.clear()
        late = stub.ExecuteTask(request(step_id="third"), timeout=30)
        await eventually(lambda: calls == ["third"])
        late.cancel()
        await eventually(lambda: agent.cancelled_tasks == 2)


# -- card, health, reflection, configuration -------------------------------------------


async def test_get_agent_card() -> None:
    async def work(task: Task) -> dict[str, Any]:
        return {}

    agent = Agent(
        "summarizer",
        version="1.2",
        description="Summarizes",
        skills=[Skill("summarize", name="Summarize", description="d", tags=["text", "en"])],
        max_concurrency=8,
        handler=work,
    )
    async with serving(agent) as (_, stub):
        card = (await stub.GetAgentCard(agent_pb2.GetAgentCardRequest(), timeout=5)).card
    assert card == agent.card()
    assert (card.name, card.version, card.description, card.max_concurrency) == (
        "summarizer",
        "1.2",
        "Summarizes",
        8,
    )
    assert card.protocol_version == PROTOCOL_VERSION == "podium.agent.v1"
    [skill] = card.skills
    assert (skill.id, skill.name, skill.description, list(skill.tags)) == (
        "summarize",
        "Summarize",
        "d",
        ["text", "en"],
    )
    assert Agent("unlimited", handler=work).card().max_concurrency == 0


async def test_health_is_serving_and_reflection_lists_the_services() -> None:
    server = await noop_agent().serve("127.0.0.1:0")
    try:
        assert server.address == f"127.0.0.1:{server.port}" and server.port > 0
        async with grpc.aio.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", SERVICE_NAME):
                response = await health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5
                )
                assert response.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            services = {s.name async for r in call for s in r.list_services_response.service}
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= services
    finally:
        await server.stop(None)


async def test_a_taken_port_is_an_error() -> None:
    agent = noop_agent()
    server = await agent.serve("127.0.0.1:0")
    try:
        with pytest.raises(OSError, match="cannot listen"):
            await agent.serve(server.address)
    finally:
        await server.stop(None)


async def test_configuration_errors() -> None:
    async def work(task: Task) -> dict[str, Any]:
        return {}

    def sync(task: Task) -> dict[str, Any]:
        return {}

    agent = Agent("a")
    with pytest.raises(RuntimeError, match="no task function"):
        await agent.serve()
    assert agent.task(work) is work and agent.handler is work
    with pytest.raises(ValueError, match="already"):
        agent.task(work)
    with pytest.raises(TypeError, match="async"):
        Agent("b").task(sync)  # type: ignore[type-var]
    with pytest.raises(ValueError):
        Agent("")
    with pytest.raises(ValueError):
        Agent("c", max_concurrency=-1)


def test_struct_helpers() -> None:
    data = {"a": 1, "b": [1.5, {"c": None}], "d": "x", "e": True}
    assert struct_to_dict(dict_to_struct(data)) == data
    with pytest.raises(ValueError):
        dict_to_struct({"x": object()})


# -- the example agents ----------------------------------------------------------------


async def test_echo_agent_echoes_after_the_delay_and_records_requests() -> None:
    agent = echo_agent()
    async with serving(agent) as (_, stub):
        started = time.monotonic()
        output = output_of(await collect(stub, request(run_id="r1", delay=0.2, n=1)))
        assert time.monotonic() - started >= 0.2
        assert output_of(await collect(stub, request(run_id="r2"))) == {"echo": {}}
        error = error_of(await collect(stub, request(delay="soon")))
    assert output == {"echo": {"delay": 0.2, "n": 1}}
    assert (error.code, error.retryable) == ("INVALID_INPUT", False)
    assert agent.stats.calls == 3
    assert agent.stats.conversation_ids == ["conv-r1-step", "conv-r2-step", "conv-run-1-step"]
    assert agent.stats.tasks[0].run_id == "r1" and agent.stats.tasks[0].attempt == 1
    agent.reset()
    assert agent.stats.calls == 0 and not agent.stats.tasks


async def test_echo_agent_concurrency_is_observed() -> None:
    agent = echo_agent(max_concurrency=3)
    async with serving(agent) as (_, stub):
        await asyncio.gather(*(collect(stub, request(delay=0.05)) for _ in range(10)))
    assert agent.stats.max_in_flight == 3 and agent.stats.in_flight == 0


async def test_summarize_agent_is_deterministic_and_streams() -> None:
    agent = summarize_agent()
    text = " ".join(f"w{i}" for i in range(30))
    async with serving(agent) as (_, stub):
        first = await collect(stub, request(text=text, max_words=4))
        second = await collect(stub, request(text=text, max_words=4))
        listed = output_of(
            await collect(stub, request(text=["one two", {"snippet": "three"}, {"n": 4}, 5]))
        )
        missing = error_of(await collect(stub, request()))

    assert first == second
    assert kinds(first) == [
        "progress",
        "progress",
        "output_chunk",
        "output_chunk",
        "artifact",
        "progress",
        "result",
    ]
    output = output_of(first)
    assert output == {"summary": "w0 w1 w2 w3 ...", "word_count": 30, "sources": 1}
    assert (
        "".join(r.output_chunk.text for r in first if r.HasField("output_chunk"))
        == (output["summary"])
    )
    assert first[4].artifact.name == "summary.md"
    assert first[-1].result.usage.input_tokens == 30
    assert listed == {"summary": 'one two three {"n": 4} 5', "word_count": 6, "sources": 4}
    assert missing.code == "INVALID_INPUT"


async def test_sleeper_agent_sleeps_and_is_cancellable() -> None:
    agent = sleeper_agent()
    async with serving(agent) as (_, stub):
        responses = await collect(stub, request(seconds=0.1))
        call = stub.ExecuteTask(request(seconds=30), timeout=30)
        first = await call.read()
        call.cancel()
        await eventually(lambda: agent.stats.cancellations == 1)
    assert output_of(responses) == {"slept": 0.1}
    assert [r.progress.fraction for r in responses[:-1]] == [i / 10 for i in range(11)]
    assert isinstance(first, Response) and first.progress.message == "sleeping"
    assert agent.stats.in_flight == 0 and agent.cancelled_tasks == 1


async def test_flaky_agent_fails_twice_per_step_run_then_succeeds() -> None:
    agent = flaky_agent()
    async with serving(agent) as (_, stub):
        errors = [error_of(await collect(stub, request(attempt=n))) for n in (1, 2)]
        success = output_of(await collect(stub, request(attempt=3)))
        # Another step starts over; the attempt number counts even after a restart.
        other = error_of(await collect(stub, request(step_id="other")))
        restarted = output_of(await collect(stub, request(step_id="third", attempt=3)))
        fatal = error_of(await collect(stub, request(run_id="r2", fatal=True)))
        none = output_of(await collect(stub, request(run_id="r3", failures=0)))

    assert [(e.code, e.retryable) for e in errors] == [("FLAKY", True), ("FLAKY", True)]
    assert "attempt 1" in errors[0].message
    assert success == {"attempt": 3}
    assert other.code == "FLAKY"
    assert restarted == {"attempt": 3}
    assert (fatal.code, fatal.retryable) == ("FLAKY", False)
    assert none == {"attempt": 1}
    assert agent.attempts[("run-1", "step")] == 3
    agent.reset()
    assert not agent.attempts


async def test_noop_search_and_translate_agents() -> None:
    async with serving(noop_agent()) as (_, stub):
        responses = await collect(stub, request(anything=1))
    assert kinds(responses) == ["result"] and output_of(responses) == {}

    async with serving(search_agent()) as (_, stub):
        results = output_of(await collect(stub, request(query="Quantum dots", limit=2)))
    assert results["query"] == "Quantum dots"
    assert [r["url"] for r in results["results"]] == [
        "https://example.com/quantum-dots/1",
        "https://example.com/quantum-dots/2",
    ]

    async with serving(translate_agent()) as (_, stub):
        responses = await collect(stub, request(text="hello"))
    assert output_of(responses) == {"text": "[fr] hello", "target": "fr"}
    assert responses[0].output_chunk.text == "[fr] hello"


async def test_serve_examples_starts_every_agent() -> None:
    examples = await serve_examples()
    try:
        assert set(examples.addresses) == {
            "echo",
            "summarizer",
            "sleeper",
            "flaky",
            "noop",
            "web-search",
            "translator",
        }
        for name, address in examples.addresses.items():
            async with grpc.aio.insecure_channel(address) as channel:
                stub = agent_pb2_grpc.AgentServiceStub(channel)
                card = (await stub.GetAgentCard(agent_pb2.GetAgentCardRequest(), timeout=5)).card
                assert card.name == name and card.skills
        async with grpc.aio.insecure_channel(examples.addresses["echo"]) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            assert output_of(await collect(stub, request(x=1))) == {"echo": {"x": 1}}
        assert examples["echo"].stats.calls == 1
    finally:
        await examples.stop()
    with pytest.raises(ValueError, match="unknown"):
        await serve_examples(names=["nope"])


@pytest.mark.slow
async def test_the_examples_run_as_a_separate_process(tmp_path: Path) -> None:
    port_file = tmp_path / "agents.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "podium.client.examples.agents",
        "--port-file",
        str(port_file),
        "--only",
        "echo,flaky",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        addresses = json.loads(line)
        assert set(addresses) == {"echo", "flaky"}
        assert json.loads(port_file.read_text()) == addresses
        async with grpc.aio.insecure_channel(addresses["echo"]) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            assert output_of(await collect(stub, request(x=2))) == {"echo": {"x": 2}}
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, stderr.decode()
        assert not port_file.exists()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
