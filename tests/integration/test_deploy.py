"""deploy/ against a real server: every metric the Grafana dashboard and the
Prometheus rules query exists in a real ``/metrics`` output (after real runs, run
retention included), and the container health probe tells SERVING from not."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import grpc
import yaml
from prometheus_client.parser import text_string_to_metric_families

from podium.client.examples.agents import ExampleAgents
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.app import PodiumServer
from tests.integration.conftest import StartServer, static_agents
from tests.integration.pg_cluster import free_port
from tests.integration.runs_helpers import Run, create_definition, start_run, wait_for_run
from tests.integration.test_observability import http_get

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

# PromQL words that are not metric names.
_PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "by", "without",
    "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "histogram_quantile", "clamp_min", "clamp_max", "abs", "offset", "topk", "bottomk",
}  # fmt: skip
_SYNTHETIC = {"up"}
"""Series Prometheus makes itself for every target."""


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers outside label matchers,
    grouping clauses and strings that are not functions, keywords or numbers."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"(?<![A-Za-z0-9_:])\d+(\.\d+)?([eE][+-]?\d+)?", "", expr)  # numbers
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group(0)
        following = expr[match.end() :].lstrip()
        if word in _PROMQL_WORDS or following.startswith("("):
            continue
        names.add(word)
    return names


def test_metric_names_reads_promql() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, agent) (rate(orchestration_step_duration_"
        'seconds_bucket{outcome=~"a|b"}[5m]))) / clamp_min(sum(up{job="podium"}), 1e-9)'
    )
    assert metric_names(expr) == {"orchestration_step_duration_seconds_bucket", "up"}


def deploy_expressions() -> dict[str, str]:
    """Every PromQL expression of the dashboard and the rules, by where it is."""
    found = {}
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "podium.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            found[f"rule {rule.get('alert') or rule.get('record')}"] = rule["expr"]
    return found


async def _scrape(server: PodiumServer) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    assert server.metrics_server is not None
    status, body = await http_get(server.metrics_server.address, "/metrics")
    assert status == 200
    samples: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples


async def test_every_metric_of_the_dashboard_and_rules_exists_in_a_real_scrape(
    start_server: StartServer, example_agents: ExampleAgents
) -> None:
    """A real server with run retention at a fraction of a second: runs are started,
    finish, and are deleted by the server's own retention pass; then each metric name
    the dashboard and the rules use must be among the scraped series."""
    server = await start_server(
        agents=static_agents(example_agents, "echo"),
        metrics_address="127.0.0.1:0",
        queue_depth_interval_seconds=0.2,
        run_retention_days=0.5 / 86400,  # half a second
        retention_interval_seconds=1.0,
    )
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.OrchestrationServiceStub(channel)
        await create_definition(
            stub,
            "deploy-flow",
            [{"id": "e", "agent": "echo", "input": {"n": "${run.input.n}"}}],
            execution={"caching": {"enabled": True}},
        )
        for n in (1, 1, 2):  # the second is a cache hit
            started = await start_run(stub, "deploy-flow", input={"n": n})
            run = await wait_for_run(stub, started.run.id)
            assert run.state == Run.STATE_SUCCEEDED

        async def deleted() -> float:
            samples = await _scrape(server)
            return samples["orchestration_retention_deleted_total"][frozenset({("kind", "runs")})]

        for _ in range(200):
            if await deleted() >= 3:
                break
            await asyncio.sleep(0.1)
        assert await deleted() >= 3
        listed = await stub.ListRuns(pb.ListRunsRequest())
        assert list(listed.runs) == []

    scraped = await _scrape(server)
    assert scraped["orchestration_cache_hits_total"][frozenset()] >= 1
    expressions = deploy_expressions()
    assert len(expressions) >= 15
    missing = {
        where: sorted(metric_names(expr) - set(scraped) - _SYNTHETIC)
        for where, expr in expressions.items()
    }
    assert {where: names for where, names in missing.items() if names} == {}
    used = set().union(*(metric_names(e) for e in expressions.values()))
    assert {"orchestration_queue_depth", "orchestration_cache_misses_total"} <= used


async def test_container_health_probe(podium_server: PodiumServer) -> None:
    probe = str(DEPLOY / "healthcheck.py")

    def run(address: str) -> int:
        return subprocess.run(
            [sys.executable, probe, address], capture_output=True, timeout=30
        ).returncode

    assert await asyncio.to_thread(run, podium_server.address) == 0
    assert await asyncio.to_thread(run, f"127.0.0.1:{free_port()}") == 1
    await podium_server.health.enter_graceful_shutdown()  # what SIGTERM does first
    assert await asyncio.to_thread(run, podium_server.address) == 1
