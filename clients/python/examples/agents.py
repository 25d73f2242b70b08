"""Built-in example agents: real gRPC AgentService servers for tests and demos.

Each factory returns an :class:`ExampleAgent`, an :class:`~podium.client.agent.Agent`
whose :attr:`ExampleAgent.stats` records what it saw: calls, tasks (ids, attempt,
conversation id), in-flight and maximum simultaneous handlers, cancellations.

========================  ==============  ===================================================
factory                   skill           behaviour
========================  ==============  ===================================================
:func:`echo_agent`        ``echo``        ``{"echo": input}``, after ``input.delay`` seconds;
                                          reports ``input.usage`` as its usage
:func:`summarize_agent`   ``summarize``   first words + word count of ``input.text``
:func:`sleeper_agent`     ``sleep``       sleeps ``input.seconds`` (default 1), cancellable
:func:`flaky_agent`       ``flaky``       fails the first N attempts of each step run
:func:`noop_agent`        ``noop``        ``{}`` at once (benchmarks)
:func:`search_agent`      ``search``      deterministic fake results for ``input.query``
:func:`translate_agent`   ``translate``   ``"[fr] " + input.text`` (tag of ``input.target``)
========================  ==============  ===================================================

``search_agent`` (named ``web-search``), ``summarize_agent`` and ``translate_agent`` make
``examples/research-brief.yaml`` runnable end to end.

:func:`serve_examples` starts them all on free ports. As a process::

    python -m podium.client.examples.agents [--host 127.0.0.1] [--port-file PATH]
        [--only echo,sleeper] [--flaky-failures 2]
        [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]

prints one JSON line ``{"echo": "127.0.0.1:41234", ...}`` to stdout once every agent
serves, writes the same JSON to ``--port-file`` (atomically; removed on exit), and
serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import sys
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import grpc

from podium.client.agent import (
    Agent,
    AgentServer,
    Handler,
    Skill,
    Task,
    TaskFailed,
    event_loop_factory,
    wait_for_shutdown_signal,
)
from podium.client.tls import agent_server_credentials

__all__ = [
    "EXAMPLE_FACTORIES",
    "AgentStats",
    "ConcurrencyProbe",
    "ExampleAgent",
    "ExampleAgents",
    "FlakyAgent",
    "SeenTask",
    "echo_agent",
    "flaky_agent",
    "main",
    "noop_agent",
    "report_usage",
    "search_agent",
    "serve_examples",
    "sleeper_agent",
    "summarize_agent",
    "translate_agent",
]

log = logging.getLogger("podium.agent.examples")

VERSION: Final = "1.0.0"
MAX_SECONDS: Final = 3600.0
"""Longest delay or sleep an example agent accepts."""
_MAX_SEEN: Final = 10_000


# -- Instrumentation -------------------------------------------------------------------


class ConcurrencyProbe:
    """Counts how many holders are inside at once: ``with probe: ...``.

    :attr:`current` is the number inside now, :attr:`max_seen` the most ever inside at
    once, :attr:`entered` the total number of entries.
    """

    __slots__ = ("current", "entered", "max_seen")

    def __init__(self) -> None:
        self.current = 0
        self.max_seen = 0
        self.entered = 0

    def __enter__(self) -> Self:
        self.current += 1
        self.entered += 1
        if self.current > self.max_seen:
            self.max_seen = self.current
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.current -= 1

    def reset(self) -> None:
        """Forget the maximum and the entries (holders inside stay counted)."""
        self.max_seen = self.current
        self.entered = 0

    def __repr__(self) -> str:
        return f"ConcurrencyProbe(current={self.current}, max_seen={self.max_seen})"


@dataclass(frozen=True, slots=True)
class SeenTask:
    """The identifying fields of one received ExecuteTask request."""

    task_id: str
    run_id: str
    step_id: str
    attempt: int
    conversation_id: str
    organization_id: str
    skill: str


@dataclass(eq=False)
class AgentStats:
    """What an example agent saw; :meth:`reset` between tests sharing an agent."""

    calls: int = 0
    """Handler invocations."""
    cancellations: int = 0
    """Handlers cancelled by the caller, a deadline or shutdown."""
    probe: ConcurrencyProbe = field(default_factory=ConcurrencyProbe)
    """Handlers running now and the most at once."""
    tasks: deque[SeenTask] = field(default_factory=lambda: deque(maxlen=_MAX_SEEN))
    """The last received requests (up to 10 000), oldest first."""

    @property
    def in_flight(self) -> int:
        """Handlers running now."""
        return self.probe.current

    @property
    def max_in_flight(self) -> int:
        """The most handlers that ran at once."""
        return self.probe.max_seen

    @property
    def conversation_ids(self) -> list[str]:
        """Conversation ids of the received requests, in arrival order."""
        return [seen.conversation_id for seen in self.tasks]

    def reset(self) -> None:
        """Zero the counters and forget the seen tasks."""
        self.calls = 0
        self.cancellations = 0
        self.probe.reset()
        self.tasks.clear()


class ExampleAgent(Agent):
    """An :class:`Agent` whose handler is wrapped to record :attr:`stats`."""

    def __init__(self, name: str, handler: Handler, **options: Any) -> None:
        self.stats = AgentStats()
        """What this agent saw."""
        stats = self.stats

        async def instrumented(task: Task) -> dict[str, Any]:
            stats.calls += 1
            request = task.request
            stats.tasks.append(
                SeenTask(
                    task_id=request.task_id,
                    run_id=request.run_id,
                    step_id=request.step_id,
                    attempt=request.attempt,
                    conversation_id=request.conversation_id,
                    organization_id=request.organization_id,
                    skill=request.skill,
                )
            )
            with stats.probe:
                return await handler(task)

        super().__init__(name, handler=instrumented, on_cancel=self._saw_cancel, **options)

    def _saw_cancel(self, task: Task) -> None:
        self.stats.cancellations += 1

    def reset(self) -> None:
        """Reset :attr:`stats` (and any per-agent state of subclasses)."""
        self.stats.reset()


# -- Input helpers ---------------------------------------------------------------------


def _invalid(message: str) -> TaskFailed:
    return TaskFailed("INVALID_INPUT", message, retryable=False)


def _seconds(task: Task, key: str, default: float) -> float:
    value = task.input.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise _invalid(f"input.{key} must be a number of seconds")
    if not 0 <= value <= MAX_SECONDS:
        raise _invalid(f"input.{key} must be between 0 and {MAX_SECONDS:g}")
    return float(value)


def _string(task: Task, key: str, default: str | None = None) -> str:
    value = task.input.get(key, default)
    if not isinstance(value, str):
        raise _invalid(f"input.{key} must be a string")
    return value


def _texts(value: Any) -> list[str]:
    """The texts of ``input.text``: a string, or a list of strings or objects (an
    object's text field, else the texts of its ``results``, else its JSON)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise _invalid("input.text must be a string or a list")
    texts = []
    for item in value:
        if isinstance(item, dict):
            found = next(
                (
                    item[key]
                    for key in ("text", "summary", "snippet", "content", "title")
                    if isinstance(item.get(key), str)
                ),
                None,
            )
            if found is None and isinstance(item.get("results"), list):
                texts.extend(_texts(item["results"]))  # a search's output
                continue
            texts.append(found if found is not None else json.dumps(item, sort_keys=True))
        else:
            texts.append(item if isinstance(item, str) else json.dumps(item))
    return texts


def report_usage(task: Task) -> None:
    """Report ``input.usage`` (``{"input_tokens", "output_tokens", "cost_usd", "model"}``,
    each optional; model default ``echo-model``) as the task's usage, when given."""
    usage = task.input.get("usage")
    if not isinstance(usage, dict):
        return
    try:
        task.usage(
            model=str(usage.get("model", "echo-model")),
            input_tokens=int(usage.get("input_tokens", 0)),
            output_tokens=int(usage.get("output_tokens", 0)),
            cost_usd=float(usage.get("cost_usd", 0.0)),
        )
    except (TypeError, ValueError) as exc:
        raise _invalid(f"input.usage: {exc}") from exc


# -- The agents ------------------------------------------------------------------------


def echo_agent(name: str = "echo", *, max_concurrency: int | None = None) -> ExampleAgent:
    """Returns ``{"echo": input}``, after sleeping ``input.delay`` seconds when given.
    ``input.usage`` (``{"input_tokens", "output_tokens", "cost_usd", "model"}``, each
    optional) is reported as the task's usage (tests of accounting and budgets)."""

    async def echo(task: Task) -> dict[str, Any]:
        delay = _seconds(task, "delay", 0.0)
        if delay:
            await asyncio.sleep(delay)
        report_usage(task)
        return {"echo": task.input}

    return ExampleAgent(
        name,
        echo,
        version=VERSION,
        description="Returns its input as {echo: input}; input.delay sleeps first.",
        skills=[Skill("echo", name="Echo", description="Return the input", tags=["test"])],
        max_concurrency=max_concurrency,
    )


def summarize_agent(name: str = "summarizer", *, max_words: int = 20) -> ExampleAgent:
    """A deterministic "summary" of ``input.text``: its first words and its word count.

    ``input.text`` is a string or a list of strings or objects (their ``text``,
    ``summary``, ``snippet``, ``content`` or ``title``, else the texts of their
    ``results`` list: a search's output); ``input.max_words`` overrides
    ``max_words``. Streams progress, the summary in two chunks and a ``summary.md``
    artifact, and records usage (``podium-demo``, words in and out, no cost). Output:
    ``{"summary": str, "word_count": int, "sources": int}``.
    """

    async def summarize(task: Task) -> dict[str, Any]:
        if "text" not in task.input:
            raise _invalid("input.text is required")
        await task.progress("reading", 0.1)
        texts = _texts(task.input["text"])
        limit = task.input.get("max_words", max_words)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise _invalid("input.max_words must be a positive integer")
        words = " ".join(texts).split()
        await task.progress("summarizing", 0.5)
        kept = words[:limit]
        summary = " ".join(kept) + (" ..." if len(words) > limit else "")
        half = len(kept) // 2
        first = " ".join(kept[:half]) + " " if half else ""
        for chunk in (first, summary[len(first) :]):
            if chunk:
                await task.output_chunk(chunk)
        await task.artifact("summary.md", f"# Summary\n\n{summary}\n", media_type="text/markdown")
        task.usage(model="podium-demo", input_tokens=len(words), output_tokens=len(kept))
        await task.progress("done", 1.0)
        return {"summary": summary, "word_count": len(words), "sources": len(texts)}

    return ExampleAgent(
        name,
        summarize,
        version=VERSION,
        description="Summarizes input.text deterministically: first words and word count.",
        skills=[
            Skill("summarize", name="Summarize", description="Summarize a text", tags=["text"])
        ],
    )


def sleeper_agent(name: str = "sleeper", *, max_concurrency: int | None = None) -> ExampleAgent:
    """Sleeps ``input.seconds`` (default 1) in ten steps, reporting progress after each.

    Reports ``("sleeping", 0.0)`` at once, so a caller can cancel a started task;
    returns ``{"slept": seconds}``.
    """

    async def sleep(task: Task) -> dict[str, Any]:
        seconds = _seconds(task, "seconds", 1.0)
        await task.progress("sleeping", 0.0)
        for step in range(1, 11):
            await asyncio.sleep(seconds / 10)
            await task.progress("sleeping", step / 10)
        return {"slept": seconds}

    return ExampleAgent(
        name,
        sleep,
        version=VERSION,
        description="Sleeps input.seconds (default 1), reporting progress; cancellable.",
        skills=[Skill("sleep", name="Sleep", description="Wait, then succeed", tags=["test"])],
        max_concurrency=max_concurrency,
    )


class FlakyAgent(ExampleAgent):
    """The agent of :func:`flaky_agent`: remembers the attempts seen per step run."""

    def __init__(self, name: str, failures: int) -> None:
        if failures < 0:
            raise ValueError("failures cannot be negative")
        self.failures = failures
        """Attempts that fail, per step run, unless ``input.failures`` says otherwise."""
        self.attempts: OrderedDict[tuple[str, str], int] = OrderedDict()
        """Calls seen per ``(run_id, step_id)`` (the most recent 10 000 step runs)."""
        super().__init__(
            name,
            self._flaky,
            version=VERSION,
            description=(
                f"Fails the first {failures} attempts of each step run (retryable, or not with"
                " input.fatal), then returns {attempt: n}."
            ),
            skills=[Skill("flaky", name="Flaky", description="Fail, then succeed", tags=["test"])],
        )

    async def _flaky(self, task: Task) -> dict[str, Any]:
        key = (task.run_id, task.step_id)
        seen = self.attempts.pop(key, 0) + 1
        self.attempts[key] = seen
        if len(self.attempts) > _MAX_SEEN:
            self.attempts.popitem(last=False)
        # The request's attempt number makes it right across agent restarts too.
        attempt = max(seen, task.attempt)
        failures = task.input.get("failures", self.failures)
        if isinstance(failures, bool) or not isinstance(failures, int) or failures < 0:
            raise _invalid("input.failures must be a non-negative integer")
        report_usage(task)  # with the failure too: a failed model call costs as well
        if attempt <= failures:
            fatal = task.input.get("fatal") is True
            raise TaskFailed(
                "FLAKY",
                f"attempt {attempt} of step {task.step_id!r} fails on purpose"
                f" ({failures} failing attempts)",
                retryable=not fatal,
            )
        return {"attempt": attempt}

    def reset(self) -> None:
        """Reset the stats and forget the attempts seen."""
        super().reset()
        self.attempts.clear()


def flaky_agent(name: str = "flaky", failures: int = 2) -> FlakyAgent:
    """Fails the first ``failures`` attempts of each step run, then returns ``{"attempt": n}``.

    Attempts are counted per ``(run_id, step_id)``; the attempt number is the larger of
    that count and the request's ``attempt``. Failures are ``TaskFailed("FLAKY", ...)``,
    retryable unless ``input.fatal`` is true; ``input.failures`` overrides ``failures``.
    Every attempt reports ``input.usage`` like :func:`echo_agent`.
    """
    return FlakyAgent(name, failures)


def noop_agent(name: str = "noop", *, max_concurrency: int | None = None) -> ExampleAgent:
    """Returns ``{}`` at once: the cost of the SDK and gRPC alone (benchmarks)."""

    async def noop(task: Task) -> dict[str, Any]:
        return {}

    return ExampleAgent(
        name,
        noop,
        version=VERSION,
        description="Returns {} immediately.",
        skills=[Skill("noop", name="No-op", description="Do nothing", tags=["test"])],
        max_concurrency=max_concurrency,
    )


def search_agent(name: str = "web-search") -> ExampleAgent:
    """Deterministic fake web search: ``input.query`` and ``input.limit`` (default 3, max 10).

    Output: ``{"query": str, "results": [{"title", "url", "snippet"}, ...]}``.
    """

    async def search(task: Task) -> dict[str, Any]:
        query = _string(task, "query").strip()
        if not query:
            raise _invalid("input.query must not be empty")
        limit = task.input.get("limit", 3)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10:
            raise _invalid("input.limit must be an integer between 1 and 10")
        slug = "-".join(query.lower().split())
        results = [
            {
                "title": f"{query}: result {i}",
                "url": f"https://example.com/{slug}/{i}",
                "snippet": f"Result {i} about {query}, with facts worth summarizing.",
            }
            for i in range(1, limit + 1)
        ]
        await task.progress(f"found {limit} results", 1.0)
        return {"query": query, "results": results}

    return ExampleAgent(
        name,
        search,
        version=VERSION,
        description="Deterministic fake web search for demos.",
        skills=[Skill("search", name="Search", description="Search the web", tags=["demo"])],
    )


def translate_agent(name: str = "translator") -> ExampleAgent:
    """Fake translation: ``{"text": "[<target>] <input.text>", "target": target}``.

    ``input.target`` defaults to ``"fr"``; the translated text is also streamed as one
    output chunk.
    """

    async def translate(task: Task) -> dict[str, Any]:
        text = _string(task, "text")
        target = _string(task, "target", "fr")
        translated = f"[{target}] {text}"
        await task.output_chunk(translated)
        return {"text": translated, "target": target}

    return ExampleAgent(
        name,
        translate,
        version=VERSION,
        description="Fake translation for demos: prefixes the text with the target language.",
        skills=[
            Skill("translate", name="Translate", description="Translate a text", tags=["demo"])
        ],
    )


EXAMPLE_FACTORIES: Final[dict[str, Callable[[], ExampleAgent]]] = {
    "echo": echo_agent,
    "summarizer": summarize_agent,
    "sleeper": sleeper_agent,
    "flaky": flaky_agent,
    "noop": noop_agent,
    "web-search": search_agent,
    "translator": translate_agent,
}
"""Every example agent by its default name."""


# -- Serving them all ------------------------------------------------------------------


@dataclass(eq=False)
class ExampleAgents:
    """Running example agents: ``agents`` and ``servers`` by agent name."""

    agents: dict[str, ExampleAgent]
    """The agents, by name."""
    servers: dict[str, AgentServer]
    """Their servers, by agent name."""

    @property
    def addresses(self) -> dict[str, str]:
        """``host:port`` of each agent, by name."""
        return {name: server.address for name, server in self.servers.items()}

    def __getitem__(self, name: str) -> ExampleAgent:
        return self.agents[name]

    def reset(self) -> None:
        """Reset every agent's stats and state."""
        for agent in self.agents.values():
            agent.reset()

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop every server (in-flight calls get ``grace`` seconds)."""
        await asyncio.gather(*(server.stop(grace) for server in self.servers.values()))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def serve_examples(
    host: str = "127.0.0.1",
    *,
    names: Iterable[str] | None = None,
    flaky_failures: int = 2,
    credentials: grpc.ServerCredentials | None = None,
) -> ExampleAgents:
    """Start the example agents (all, or those in ``names``) on free ports of ``host``;
    with ``credentials``, over TLS (see :meth:`podium.client.agent.Agent.serve`)."""
    selected = list(EXAMPLE_FACTORIES) if names is None else list(names)
    unknown = sorted(set(selected) - set(EXAMPLE_FACTORIES))
    if unknown:
        raise ValueError(f"unknown example agents: {', '.join(unknown)}")
    agents = {
        name: flaky_agent(failures=flaky_failures) if name == "flaky" else EXAMPLE_FACTORIES[name]()
        for name in selected
    }
    bind_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    servers: dict[str, AgentServer] = {}
    try:
        for name, agent in agents.items():
            servers[name] = await agent.serve(f"{bind_host}:0", credentials=credentials)
    except BaseException:
        await asyncio.gather(*(server.stop(None) for server in servers.values()))
        raise
    return ExampleAgents(agents, servers)


# -- Command line ----------------------------------------------------------------------


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


async def _serve_until_signal(args: argparse.Namespace) -> None:
    names = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
    credentials = (
        None
        if args.tls_cert is None
        else agent_server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
    )
    examples = await serve_examples(
        args.host, names=names, flaky_failures=args.flaky_failures, credentials=credentials
    )
    port_file: Path | None = args.port_file
    try:
        addresses = json.dumps(examples.addresses, sort_keys=True)
        if port_file is not None:
            _write_atomically(port_file, addresses + "\n")
        print(addresses, flush=True)
        await wait_for_shutdown_signal()
        log.info("stopping example agents")
    finally:
        if port_file is not None:
            with contextlib.suppress(OSError):
                port_file.unlink()  # noqa: ASYNC240 (a tiny local file, once, at exit)
        await examples.stop(args.grace)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example agents until SIGTERM/SIGINT; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m podium.client.examples.agents",
        description="Serve Podium's example agents on free ports until SIGTERM/SIGINT.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    parser.add_argument(
        "--port-file", type=Path, help="write the JSON {name: address} here once serving"
    )
    parser.add_argument(
        "--only", help=f"comma-separated agents to start (of {', '.join(EXAMPLE_FACTORIES)})"
    )
    parser.add_argument(
        "--flaky-failures", type=int, default=2, help="failing attempts of the flaky agent"
    )
    parser.add_argument(
        "--grace", type=float, default=1.0, help="seconds in-flight tasks get on shutdown"
    )
    parser.add_argument("--tls-cert", type=Path, help="serve TLS with this PEM certificate")
    parser.add_argument("--tls-key", type=Path, help="the PEM key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca", type=Path, help="with --tls-cert: require client certificates of this CA"
    )
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    if args.flaky_failures < 0:
        parser.error("--flaky-failures cannot be negative")
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        # On uvloop when it is installed, as Agent.run does.
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(_serve_until_signal(args))
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
