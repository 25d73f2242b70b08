"""The agent registry: repository (real PostgreSQL), engine service, static agents."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from podium.orchestration.v1 import agent_pb2
from podium.server.addresses import parse_allow_list
from podium.server.agents.endpoints import EndpointGuard
from podium.server.agents.static import StaticAgent, parse_static_agents
from podium.server.engine.agents import AgentService, agent_to_violations, record_to_agent
from podium.server.engine.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from podium.server.storage.agents import (
    AgentsRepository,
    StaticAgentConflict,
    StaticAgentsSync,
)
from podium.server.storage.database import Database
from podium.server.storage.errors import StorageError

Agent = agent_pb2.Agent
ORG = "default"


@pytest.fixture
def repo(db: Database) -> AgentsRepository:
    return AgentsRepository(db)


async def _everything_is_local(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


@pytest.fixture
def service(repo: AgentsRepository) -> AgentService:
    # Made-up host names resolve to loopback, which the guard admits here.
    guard = EndpointGuard(parse_allow_list("loopback"), resolver=_everything_is_local)
    return AgentService(repo, guard)


# --------------------------------------------------------------------------- repository


async def test_upsert_inserts_then_updates_keeping_create_time(repo: AgentsRepository) -> None:
    first = await repo.upsert(
        ORG,
        "summarizer",
        endpoint="127.0.0.1:50061",
        skills=["summarize", "translate"],
        max_concurrency=4,
        default_timeout_seconds=30,
        labels={"team": "research"},
    )
    assert (first.organization_id, first.name, first.endpoint) == (
        ORG,
        "summarizer",
        "127.0.0.1:50061",
    )
    assert first.skills == ("summarize", "translate")
    assert (first.max_concurrency, first.default_timeout_seconds) == (4, 30.0)
    assert first.labels == {"team": "research"}
    assert (first.protocol, first.source) == ("podium_v1", "registered")
    assert first.create_time == first.update_time

    await asyncio.sleep(0.01)
    second = await repo.upsert(ORG, "summarizer", endpoint="dns:///summarizer:443", protocol="a2a")
    assert second.endpoint == "dns:///summarizer:443"
    assert second.skills == () and second.labels == {} and second.max_concurrency == 0
    assert second.protocol == "a2a"
    assert second.create_time == first.create_time
    assert second.update_time > first.update_time
    assert await repo.get(ORG, "summarizer") == second
    assert await repo.get(ORG, "missing") is None


async def test_list_pages_by_name_and_filters_by_skill(repo: AgentsRepository) -> None:
    for name, skills in [("d", ["x"]), ("a", ["x", "y"]), ("c", []), ("b", ["y"]), ("e", ["x"])]:
        await repo.upsert(ORG, name, endpoint="h:1", skills=skills)
    page = await repo.list(ORG, limit=2)
    assert [r.name for r in page] == ["a", "b"]
    page = await repo.list(ORG, after_name="b", limit=10)
    assert [r.name for r in page] == ["c", "d", "e"]
    assert [r.name for r in await repo.list(ORG, limit=10, skill="x")] == ["a", "d", "e"]
    assert [r.name for r in await repo.list(ORG, after_name="a", limit=1, skill="x")] == ["d"]
    assert await repo.list(ORG, limit=10, skill="none") == []
    assert await repo.list("other-org", limit=10) == []


async def test_delete(repo: AgentsRepository) -> None:
    await repo.upsert(ORG, "gone", endpoint="h:1")
    assert await repo.delete(ORG, "gone") is True
    assert await repo.delete(ORG, "gone") is False
    assert await repo.get(ORG, "gone") is None


async def declare(
    repo: AgentsRepository,
    replica: str,
    agents: list[StaticAgent],
    *,
    group: str = "",
    lease_seconds: float = 60.0,
    rejoin: bool = False,
) -> StaticAgentsSync:
    return await repo.declare_static(
        ORG, agents, replica=replica, group=group, lease_seconds=lease_seconds, rejoin=rejoin
    )


async def names(repo: AgentsRepository) -> list[tuple[str, str, str]]:
    return [(r.name, r.endpoint, r.source) for r in await repo.list(ORG, limit=100)]


async def test_declare_static_upserts_takes_over_and_removes(repo: AgentsRepository) -> None:
    await repo.upsert(ORG, "shared", endpoint="registered:1", skills=["a"])
    await repo.upsert(ORG, "mine", endpoint="registered:2")
    sync = await declare(
        repo,
        "r1",
        [
            StaticAgent("zeta", "z:1"),
            StaticAgent("shared", "static:1", skills=("b",), max_concurrency=2),
            StaticAgent("old", "o:1"),
        ],
    )
    assert [r.name for r in sync.agents] == ["old", "shared", "zeta"]
    assert all(r.source == "static" for r in sync.agents)
    assert sync.took_over == ["shared"] and sync.removed == []
    shared = await repo.get(ORG, "shared")
    assert shared is not None
    assert (shared.endpoint, shared.skills, shared.source) == ("static:1", ("b",), "static")

    # r1 restarted as r2 with another configuration: r2's declaration is the newest, and
    # what only r1 declared goes when r1 stops.
    sync = await declare(repo, "r2", [StaticAgent("zeta", "z:2", protocol="a2a")])
    assert [(r.name, r.endpoint, r.protocol) for r in sync.agents] == [("zeta", "z:2", "a2a")]
    assert sync.removed == [] and sync.took_over == []
    assert [n for n, _, _ in await names(repo)] == ["mine", "old", "shared", "zeta"]
    assert await repo.withdraw_replica("r1") == [(ORG, "old"), (ORG, "shared")]
    assert await names(repo) == [("mine", "registered:2", "registered"), ("zeta", "z:2", "static")]

    assert await repo.withdraw_replica("r2") == [(ORG, "zeta")]
    assert await names(repo) == [("mine", "registered:2", "registered")]


async def test_an_agent_stays_while_any_live_replica_declares_it(repo: AgentsRepository) -> None:
    """Two replicas declare one name differently: the newest declaration is stored;
    when its replica stops the other's comes back, and the agent goes with the last."""
    await declare(repo, "r1", [StaticAgent("echo", "a:1")])
    await declare(repo, "r2", [StaticAgent("echo", "b:2", max_concurrency=3)])
    assert await names(repo) == [("echo", "b:2", "static")]
    assert await repo.withdraw_replica("r2") == []
    assert await names(repo) == [("echo", "a:1", "static")]
    stored = await repo.get(ORG, "echo")
    assert stored is not None and stored.max_concurrency == 0
    assert await repo.withdraw_replica("r1") == [(ORG, "echo")]
    assert await names(repo) == []


async def test_a_dead_replicas_agents_go_when_its_row_expires(repo: AgentsRepository) -> None:
    await declare(
        repo,
        "dead",
        [StaticAgent("only-dead", "d:1"), StaticAgent("both", "b:1")],
        lease_seconds=0.5,
    )
    await declare(repo, "live", [StaticAgent("both", "b:1")])
    renewal = await repo.renew_replica("live", 60)
    assert renewal.renewed and renewal.removed == []
    await asyncio.sleep(0.6)  # "dead" never renews
    renewal = await repo.renew_replica("live", 60)
    assert renewal.renewed and renewal.removed == [(ORG, "only-dead")]
    assert [n for n, _, _ in await names(repo)] == ["both"]
    # The dead replica's row is gone: renewing it says so, and it must declare again.
    assert not (await repo.renew_replica("dead", 60)).renewed


async def test_a_groups_agents_are_its_last_replicas_set(repo: AgentsRepository) -> None:
    await declare(repo, "a", [StaticAgent("x", "x:1"), StaticAgent("y", "y:1")], group="blue")
    # A newer replica of the group declares another set: it is the group's now.
    sync = await declare(repo, "b", [StaticAgent("x", "x:2")], group="blue")
    assert sync.removed == [(ORG, "y")]
    assert await names(repo) == [("x", "x:2", "static")]
    # A replica of the group that rejoins after its row lapsed keeps the group's set.
    await declare(repo, "a", [StaticAgent("z", "z:1")], group="blue", rejoin=True)
    assert await names(repo) == [("x", "x:2", "static")]
    # The group's agents stay while any replica of the group runs.
    assert await repo.withdraw_replica("b") == []
    assert await repo.withdraw_replica("a") == [(ORG, "x")]
    assert await names(repo) == []


async def test_static_agents_nobody_declares_are_replaced_at_start(
    repo: AgentsRepository,
) -> None:
    """Static agents stored by a version before replicas declared them belong to no one:
    the first replica to start keeps those it declares and removes the others."""
    await repo.upsert(ORG, "legacy", endpoint="l:1", source="static")
    await repo.upsert(ORG, "kept", endpoint="k:1", source="static")
    sync = await declare(repo, "r1", [StaticAgent("kept", "k:2")])
    assert sync.removed == [(ORG, "legacy")]
    assert await names(repo) == [("kept", "k:2", "static")]


async def test_declare_static_is_one_transaction(repo: AgentsRepository) -> None:
    await declare(repo, "r1", [StaticAgent("keep", "k:1")])
    with pytest.raises(StorageError, match="max_concurrency"):  # the CHECK constraint
        await declare(
            repo, "r2", [StaticAgent("new", "n:1"), StaticAgent("z-bad", "b:1", max_concurrency=-1)]
        )
    assert [r.name for r in await repo.list(ORG, limit=10)] == ["keep"]
    assert not (await repo.renew_replica("r2", 60)).renewed  # its row was not written


async def test_concurrent_declarations_serialize(repo: AgentsRepository) -> None:
    configs = [[StaticAgent(f"agent-{i}-{j}", f"h:{j + 1}") for j in range(5)] for i in range(4)]
    await asyncio.gather(*(declare(repo, f"r{i}", config) for i, config in enumerate(configs)))
    assert [r.name for r in await repo.list(ORG, limit=100)] == sorted(
        agent.name for config in configs for agent in config
    )


async def test_registered_agents_never_replace_or_delete_static_ones(
    repo: AgentsRepository,
) -> None:
    await declare(repo, "r1", [StaticAgent("fixed", "f:1")])
    with pytest.raises(StaticAgentConflict, match="PODIUM_AGENTS") as info:
        await repo.upsert(ORG, "fixed", endpoint="elsewhere:1")
    assert info.value.name == "fixed"
    with pytest.raises(StaticAgentConflict, match="cannot be deregistered"):
        await repo.delete(ORG, "fixed")
    stored = await repo.get(ORG, "fixed")
    assert stored is not None and (stored.endpoint, stored.source) == ("f:1", "static")


# --------------------------------------------------------------------------- service


def agent(**fields: Any) -> Agent:
    base: dict[str, Any] = {"name": "summarizer", "endpoint": "127.0.0.1:50061"}
    base.update(fields)
    return Agent(**base)


async def test_register_returns_the_stored_agent(service: AgentService) -> None:
    registered = await service.register(
        ORG,
        agent(
            skills=["summarize"],
            max_concurrency=3,
            default_timeout_seconds=12.5,
            labels={"team": "research"},
            protocol=Agent.Protocol.PROTOCOL_A2A,
            # Output-only fields are ignored.
            source=Agent.Source.SOURCE_STATIC,
            organization_id="someone-else",
            active_tasks=9,
        ),
    )
    assert registered.name == "summarizer" and registered.endpoint == "127.0.0.1:50061"
    assert list(registered.skills) == ["summarize"]
    assert (registered.max_concurrency, registered.default_timeout_seconds) == (3, 12.5)
    assert dict(registered.labels) == {"team": "research"}
    assert registered.protocol == Agent.Protocol.PROTOCOL_A2A
    assert registered.source == Agent.Source.SOURCE_REGISTERED
    assert registered.organization_id == ORG
    assert registered.active_tasks == 0
    assert registered.create_time.seconds > 0
    assert registered.update_time == registered.create_time
    assert await service.get(ORG, "summarizer") == registered

    default_protocol = await service.register(ORG, agent(name="plain"))
    assert default_protocol.protocol == Agent.Protocol.PROTOCOL_PODIUM_V1


async def test_register_reports_every_problem(service: AgentService) -> None:
    bad = Agent(
        name="Bad Name",
        endpoint="no-port",
        skills=["ok", "Not OK", "ok"],
        max_concurrency=-1,
        default_timeout_seconds=float("nan"),
        labels={"team": "x" * 300, "Bad Key": "v"},
        protocol=7,  # type: ignore[arg-type]
    )
    with pytest.raises(InvalidArgument) as info:
        await service.register(ORG, bad)
    error = info.value
    assert error.reason == "INVALID_AGENT"
    fields = [v.field for v in error.violations]
    assert fields == [
        "agent.name",
        "agent.endpoint",
        "agent.skills[1]",
        "agent.skills[2]",
        "agent.max_concurrency",
        "agent.default_timeout_seconds",
        "agent.labels.`Bad Key`",
        "agent.labels.team",
        "agent.protocol",
    ]
    descriptions = {v.field: v.description for v in error.violations}
    assert "duplicate skill 'ok'" in descriptions["agent.skills[2]"]
    assert "HOST:PORT" in descriptions["agent.endpoint"]
    assert "PROTOCOL_PODIUM_V1" in descriptions["agent.protocol"]
    assert await service.repository.get(ORG, "Bad Name") is None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": ""}, "agent.name"),
        ({"name": "a" * 129}, "agent.name"),
        ({"endpoint": ""}, "agent.endpoint"),
        ({"endpoint": "host:0"}, "agent.endpoint"),
        ({"endpoint": "host:70000"}, "agent.endpoint"),
        ({"endpoint": "http://host:80"}, "agent.endpoint"),
        ({"endpoint": "h" * 600 + ":1"}, "agent.endpoint"),
        ({"skills": [""]}, "agent.skills[0]"),
        ({"skills": [f"s{i}" for i in range(101)]}, "agent.skills"),
        ({"default_timeout_seconds": -1}, "agent.default_timeout_seconds"),
        ({"default_timeout_seconds": 1e9}, "agent.default_timeout_seconds"),
        ({"labels": {f"k{i}": "v" for i in range(65)}}, "agent.labels"),
    ],
)
def test_single_violations(fields: dict[str, Any], field: str) -> None:
    assert [v.field for v in agent_to_violations(agent(**fields))] == [field]


@pytest.mark.parametrize(
    "endpoint",
    [
        "127.0.0.1:50061",
        "localhost:1",
        "summarizer.svc.cluster.local:443",
        "[::1]:50061",
        "dns:///summarizer:443",
        "ipv4:10.0.0.1:50061",
        "ipv6:[::1]:50061",
    ],
)
def test_accepted_endpoints(endpoint: str) -> None:
    assert agent_to_violations(agent(endpoint=endpoint)) == []


@pytest.mark.parametrize(
    "endpoint",
    [
        "dns://8.8.8.8/summarizer:443",  # its own DNS server
        "ipv4:10.0.0.1:50061,10.0.0.2:50061",  # a list
        "unix:///run/agent.sock",
        "unix:relative.sock",
        "unix-abstract:agent",
        "vsock:3:50061",
        "xds:///agents",
        "2130706433:80",  # 127.0.0.1 as one decimal number
        "0x7f000001:80",
        "0177.0.0.1:80",
    ],
)
def test_refused_endpoint_forms(endpoint: str) -> None:
    assert [v.field for v in agent_to_violations(agent(endpoint=endpoint))] == ["agent.endpoint"]


async def test_list_pages_with_tokens_bound_to_the_skill(service: AgentService) -> None:
    for i in range(5):
        await service.register(ORG, agent(name=f"agent-{i}", skills=["even" if i % 2 else "odd"]))
    page, token = await service.list(ORG, page_size=2)
    assert [a.name for a in page] == ["agent-0", "agent-1"] and token
    page, token = await service.list(ORG, page_size=2, page_token=token)
    assert [a.name for a in page] == ["agent-2", "agent-3"] and token
    page, token = await service.list(ORG, page_size=2, page_token=token)
    assert [a.name for a in page] == ["agent-4"] and token == ""

    page, token = await service.list(ORG, page_size=2, skill="odd")
    assert [a.name for a in page] == ["agent-0", "agent-2"] and token
    with pytest.raises(InvalidArgument) as info:
        await service.list(ORG, page_size=2, page_token=token, skill="even")
    assert info.value.reason == "INVALID_PAGE_TOKEN"
    page, token = await service.list(ORG, page_size=2, page_token=token, skill="odd")
    assert [a.name for a in page] == ["agent-4"] and token == ""

    page, token = await service.list(ORG)
    assert len(page) == 5 and token == ""
    with pytest.raises(InvalidArgument):
        await service.list(ORG, page_size=-1)
    with pytest.raises(InvalidArgument):
        await service.list(ORG, page_token="garbage!")


async def test_deregister(service: AgentService) -> None:
    await service.register(ORG, agent())
    await service.deregister(ORG, "summarizer")
    with pytest.raises(NotFound) as not_found:
        await service.deregister(ORG, "summarizer")
    assert not_found.value.reason == "AGENT_NOT_FOUND"
    with pytest.raises(NotFound):
        await service.get(ORG, "summarizer")
    with pytest.raises(InvalidArgument):
        await service.deregister(ORG, "")


async def test_static_agents_win_over_registered_ones(service: AgentService) -> None:
    await service.register(ORG, agent(name="taken", endpoint="registered:1"))
    sync = await service.repository.declare_static(
        ORG,
        parse_static_agents("taken=static:1;skills=s;max=2,other=o:1;timeout=5"),
        replica="r1",
        lease_seconds=60,
    )
    loaded = [record_to_agent(record) for record in sync.agents]
    assert [(a.name, a.endpoint, a.source) for a in loaded] == [
        ("other", "o:1", Agent.Source.SOURCE_STATIC),
        ("taken", "static:1", Agent.Source.SOURCE_STATIC),
    ]
    assert loaded[0].default_timeout_seconds == 5 and loaded[1].max_concurrency == 2

    with pytest.raises(AlreadyExists) as exists:
        await service.register(ORG, agent(name="taken"))
    assert exists.value.reason == "STATIC_AGENT"
    assert "PODIUM_AGENTS" in exists.value.message
    with pytest.raises(FailedPrecondition) as precondition:
        await service.deregister(ORG, "taken")
    assert precondition.value.reason == "STATIC_AGENT"
    assert "remove it from the configuration" in precondition.value.message

    listed, _ = await service.list(ORG)
    assert [(a.name, a.source) for a in listed] == [
        ("other", Agent.Source.SOURCE_STATIC),
        ("taken", Agent.Source.SOURCE_STATIC),
    ]
    # Its only replica stopped: gone, the name is free again.
    await service.repository.withdraw_replica("r1")
    assert (await service.register(ORG, agent(name="taken"))).source == (
        Agent.Source.SOURCE_REGISTERED
    )


async def test_record_to_agent_timestamps(repo: AgentsRepository) -> None:
    record = await repo.upsert(ORG, "t", endpoint="h:1")
    proto = record_to_agent(record)
    assert proto.create_time.ToDatetime().replace(tzinfo=record.create_time.tzinfo) == (
        record.create_time
    )


# --------------------------------------------------------------------------- PODIUM_AGENTS


def test_compact_form() -> None:
    agents = parse_static_agents(
        " summarizer=127.0.0.1:50061 , search = dns:///search:443 ; skills = search|fetch ;"
        " max=4 ; timeout=30 ; protocol=A2A "
    )
    assert agents == [
        StaticAgent("summarizer", "127.0.0.1:50061"),
        StaticAgent(
            "search",
            "dns:///search:443",
            skills=("search", "fetch"),
            max_concurrency=4,
            default_timeout_seconds=30.0,
            protocol="a2a",
        ),
    ]
    assert parse_static_agents("") == [] and parse_static_agents("   ") == []
    assert parse_static_agents("a=h:1;max_concurrency=2;default_timeout_seconds=1.5") == [
        StaticAgent("a", "h:1", max_concurrency=2, default_timeout_seconds=1.5)
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("summarizer", "entry 1 ('summarizer'): expected name=HOST:PORT"),
        ("=h:1", "entry 1: expected name=HOST:PORT"),
        ("a=h:1,,b=h:2", "entry 2 is empty"),
        ("a=h:1,B=h:2", "entry 2 ('B'): name: agent names must be"),
        ("a=nohost", "entry 1 ('a'): endpoint: expected HOST:PORT"),
        ("a=", "entry 1 ('a'): endpoint: an endpoint is required"),
        ("a=h:1;max=-1", "max_concurrency: must be between 0"),
        ("a=h:1;max=two", "max='two' must be a whole number"),
        ("a=h:1;timeout=soon", "timeout='soon' must be a number of seconds"),
        ("a=h:1;timeout=-1", "default_timeout_seconds: must be between 0"),
        ("a=h:1;colour=red", "unknown option 'colour=red'"),
        ("a=h:1;max", "unknown option 'max'"),
        ("a=h:1;max=1;max=2", "option 'max' is given twice"),
        ("a=h:1;protocol=http", "protocol='http': expected one of podium_v1, a2a"),
        ("a=h:1;skills=x|X", "skills[1]: skill ids must be"),
        ("a=h:1,a=h:2", "entry 2 ('a'): duplicate agent name (already declared by entry 1)"),
    ],
)
def test_compact_form_errors(raw: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_static_agents(raw)
    assert message in str(info.value)
    assert str(info.value).startswith("entry ")


def test_file_forms(tmp_path: Path) -> None:
    yaml_file = tmp_path / "agents.yaml"
    yaml_file.write_text(
        """
- name: summarizer
  endpoint: 127.0.0.1:50061
  skills: [summarize]
  max_concurrency: 4
  default_timeout_seconds: 30
  labels: {team: research}
  protocol: PROTOCOL_A2A
- name: search
  endpoint: dns:///search:443
"""
    )
    expected = [
        StaticAgent(
            "summarizer",
            "127.0.0.1:50061",
            skills=("summarize",),
            max_concurrency=4,
            default_timeout_seconds=30.0,
            labels={"team": "research"},
            protocol="a2a",
        ),
        StaticAgent("search", "dns:///search:443"),
    ]
    assert parse_static_agents(str(yaml_file)) == expected
    assert parse_static_agents(f"@{yaml_file}") == expected

    other = tmp_path / "agents.conf"
    other.write_text("agents:\n  - {name: x, endpoint: 'h:1'}\n")
    assert parse_static_agents(f"@{other}") == [StaticAgent("x", "h:1")]

    json_file = tmp_path / "agents.json"
    json_file.write_text(json.dumps([{"name": "j", "endpoint": "h:2", "skills": ["a", "b"]}]))
    assert parse_static_agents(str(json_file)) == [StaticAgent("j", "h:2", skills=("a", "b"))]

    empty = tmp_path / "empty.yml"
    empty.write_text("")
    assert parse_static_agents(str(empty)) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{name: x}", "must hold a list of agents"),
        ("- just-a-string", "entry 1: expected an object with name and endpoint"),
        ("- {name: x, endpoint: 'h:1', colour: red}", "entry 1 ('x'): unknown field(s) colour"),
        ("- {name: x, endpoint: 'h:1', active_tasks: 1}", "unknown field(s) active_tasks"),
        ("- {endpoint: 'h:1'}", "entry 1: name: an agent name is required"),
        ("- {name: x}", "entry 1 ('x'): endpoint: an endpoint is required"),
        ("- {name: x, endpoint: 'h:1', skills: a}", "skills must be a list of strings"),
        ("- {name: x, endpoint: 'h:1', max_concurrency: 1.5}", "max_concurrency must be a whole"),
        ("- {name: x, endpoint: 'h:1', max_concurrency: true}", "max_concurrency must be a whole"),
        ("- {name: x, endpoint: 'h:1', default_timeout_seconds: '3'}", "must be a number"),
        ("- {name: x, endpoint: 'h:1', labels: {a: 1}}", "labels must map strings to strings"),
        ("- {name: x, endpoint: 'h:1', protocol: grpc}", "protocol 'grpc': expected one of"),
        (
            "- {name: x, endpoint: 'h:1'}\n- {name: x, endpoint: 'h:2'}",
            "entry 2 ('x'): duplicate agent name",
        ),
        ("- [unclosed", "is not valid JSON/YAML"),
    ],
)
def test_file_form_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        parse_static_agents(str(path))
    assert message in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read .*nope.yaml"):
        parse_static_agents(str(tmp_path / "nope.yaml"))
