"""The outbound guard of agent endpoints and the operator allow-list, with a fake
resolver (no DNS, no connection)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from podium.server.addresses import AllowList, parse_allow_list
from podium.server.agents.endpoints import (
    EndpointGuard,
    EndpointRefused,
    HostPort,
    Resolver,
    connect_target,
    parse_endpoint,
)
from podium.server.config import ConfigError, Settings


def resolver(table: dict[str, list[str]]) -> Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"no such host {host}")
        return table[host]

    return resolve


NAMES = {
    "public.example": ["8.8.8.8"],
    "two.example": ["8.8.8.8", "10.0.0.7"],
    "inside.example": ["10.1.2.3"],
    "metadata.google.internal": ["169.254.169.254"],
    "localhost": ["127.0.0.1", "::1"],
}

# Every endpoint of the security probe that Podium connected to without a guard.
PROBE = [
    "169.254.169.254:80",
    "10.0.0.1:22",
    "127.0.0.1:5432",
    "[::1]:5432",
    "0.0.0.0:22",
    "[::ffff:169.254.169.254]:80",
    "unix:///var/run/docker.sock",
    "dns:///metadata.google.internal:80",
    "2130706433:80",
    "[fd00:ec2::254]:80",
    "inside.example:50061",
    "two.example:50061",  # one public address is not enough: every one is checked
    "localhost:50061",
]


@pytest.mark.parametrize("endpoint", PROBE)
async def test_non_public_endpoints_are_refused(endpoint: str) -> None:
    guard = EndpointGuard(AllowList(), resolver=resolver(NAMES))
    with pytest.raises(EndpointRefused) as refused:
        await guard.resolve(endpoint)
    assert not refused.value.transient


async def test_public_endpoints_resolve_to_their_checked_addresses() -> None:
    guard = EndpointGuard(AllowList(), resolver=resolver(NAMES))
    assert await guard.resolve("public.example:443") == (
        HostPort("public.example", 443),
        ["8.8.8.8"],
    )
    assert await guard.resolve("dns:///public.example:443") == (
        HostPort("public.example", 443),
        ["8.8.8.8"],
    )
    assert (await guard.resolve("8.8.4.4:1"))[1] == ["8.8.4.4"]
    assert (await guard.resolve("ipv6:[2001:4860:4860::8888]:1"))[1] == ["2001:4860:4860::8888"]


async def test_an_unresolvable_name_is_transient() -> None:
    guard = EndpointGuard(AllowList(), resolver=resolver(NAMES))
    with pytest.raises(EndpointRefused) as refused:
        await guard.resolve("nowhere.example:1")
    assert refused.value.transient


async def test_the_allow_list_admits_networks_hosts_and_domains() -> None:
    allow = parse_allow_list("loopback, 10.0.0.0/8, metadata.google.internal, .example")
    guard = EndpointGuard(allow, resolver=resolver(NAMES))
    assert (await guard.resolve("127.0.0.1:5432"))[1] == ["127.0.0.1"]
    assert (await guard.resolve("[::1]:1"))[1] == ["::1"]
    assert (await guard.resolve("[::ffff:127.0.0.1]:1"))[1] == ["::ffff:7f00:1"]
    assert (await guard.resolve("localhost:1"))[1] == ["127.0.0.1", "::1"]
    assert (await guard.resolve("10.0.0.1:22"))[1] == ["10.0.0.1"]
    assert (await guard.resolve("inside.example:1"))[1] == ["10.1.2.3"]  # by domain
    assert (await guard.resolve("metadata.google.internal:80"))[1] == ["169.254.169.254"]
    # Not admitted: another private network, the metadata address by number.
    for endpoint in ("192.168.1.1:80", "169.254.169.254:80", "[fd00::1]:80"):
        with pytest.raises(EndpointRefused):
            await guard.resolve(endpoint)


def test_parse_endpoint_forms() -> None:
    assert parse_endpoint("a.example:1") == HostPort("a.example", 1)
    assert parse_endpoint("dns:a.example:2") == HostPort("a.example", 2)
    assert parse_endpoint("ipv4:1.2.3.4:3") == HostPort("1.2.3.4", 3)
    assert parse_endpoint("[::1]:4").literal == ipaddress.ip_address("::1")
    for bad in (
        "a.example",
        "unix:/x",
        "dns://1.1.1.1/a:1",
        "ipv4:1.1.1.1:1,2.2.2.2:1",
        "017700000001:1",
        "[zz]:1",
        "a:0",
    ):
        with pytest.raises(EndpointRefused):
            parse_endpoint(bad)


def test_grpcs_endpoints_ask_for_tls() -> None:
    assert parse_endpoint("grpcs://agents.example:443") == HostPort("agents.example", 443, tls=True)
    assert parse_endpoint("GRPCS://[2001:db8::1]:443/").tls
    assert parse_endpoint("grpc://a.example:1") == HostPort("a.example", 1, tls=False)
    assert not parse_endpoint("a.example:1").tls
    for bad in ("grpcs://a.example", "grpcs://dns:///a.example:1", "grpcs://unix:/x", "grpcs://"):
        with pytest.raises(EndpointRefused):
            parse_endpoint(bad)


async def test_grpcs_endpoints_pass_the_same_guard() -> None:
    guard = EndpointGuard(resolver=resolver(NAMES))
    with pytest.raises(EndpointRefused, match="private"):
        await guard.resolve("grpcs://inside.example:443")
    target, addresses = await guard.resolve("grpcs://public.example:443")
    assert (target, addresses) == (HostPort("public.example", 443, tls=True), ["8.8.8.8"])


def test_connect_targets_name_one_address() -> None:
    assert connect_target("1.2.3.4", 80) == "ipv4:1.2.3.4:80"
    assert connect_target("::1", 80) == "ipv6:[::1]:80"


def test_allow_list_setting() -> None:
    assert str(parse_allow_list("loopback")) == "127.0.0.0/8,::1/128"
    with pytest.raises(ValueError, match="neither a network"):
        parse_allow_list("10.0.0.0/33")
    with pytest.raises(ConfigError, match="PODIUM_AGENT_ALLOWED_NETWORKS"):
        Settings.from_env({"PODIUM_AGENT_ALLOWED_NETWORKS": "not a host!"})
    # Unset: loopback for a local server on the embedded PostgreSQL, nothing otherwise.
    assert Settings.from_env({}).agent_allow_list == parse_allow_list("loopback")
    with_db = Settings.from_env({"PODIUM_DATABASE_URL": "postgresql://h/db"})
    assert not with_db.agent_allow_list
    explicit = Settings.from_env(
        {"PODIUM_AGENT_ALLOWED_NETWORKS": "none", "PODIUM_DATABASE_URL": "postgresql://h/db"}
    )
    assert not explicit.agent_allow_list
    assert Settings.from_env({}, agent_allowed_networks="10.0.0.0/8").agent_allow_list == (
        parse_allow_list("10.0.0.0/8")
    )


# -- the cache of names


class Counting:
    """A resolver over a table that counts its lookups and can hold them."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups = 0
        self.release: asyncio.Event | None = None

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups += 1
        if self.release is not None:
            await self.release.wait()
        if host not in self.table:
            raise OSError(f"no such host {host}")
        return list(self.table[host])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_name_is_looked_up_again_only_once_its_answer_expired() -> None:
    names = Counting({"public.example": ["8.8.8.8"]})
    clock = Clock()
    guard = EndpointGuard(AllowList(), resolver=names, cache_seconds=5, clock=clock)
    for _ in range(3):
        assert (await guard.resolve("public.example:443"))[1] == ["8.8.8.8"]
    assert (await guard.resolve("PUBLIC.example:443"))[1] == ["8.8.8.8"]  # the same name
    assert names.lookups == 1
    assert (await guard.resolve("public.example:444"))[1] == ["8.8.8.8"]  # another port
    assert names.lookups == 2
    # Re-bound: followed once the answer expired, and checked as always.
    names.table["public.example"] = ["10.0.0.7"]
    clock.now += 4.9
    assert (await guard.resolve("public.example:443"))[1] == ["8.8.8.8"]
    clock.now += 0.2
    with pytest.raises(EndpointRefused, match="10.0.0.7"):
        await guard.resolve("public.example:443")
    assert names.lookups == 3
    # A refusal is not kept: the next call asks again.
    with pytest.raises(EndpointRefused):
        await guard.resolve("public.example:443")
    assert names.lookups == 4


async def test_failed_lookups_are_not_kept_and_forget_drops_an_answer() -> None:
    names = Counting({})
    guard = EndpointGuard(AllowList(), resolver=names, cache_seconds=60, clock=Clock())
    for _ in range(2):
        with pytest.raises(EndpointRefused) as refused:
            await guard.resolve("later.example:1")
        assert refused.value.transient
    assert names.lookups == 2
    names.table["later.example"] = ["8.8.8.8"]
    assert (await guard.resolve("later.example:1"))[1] == ["8.8.8.8"]
    assert (await guard.resolve("later.example:1"))[1] == ["8.8.8.8"]
    assert names.lookups == 3
    # A call found nothing listening at 8.8.8.8: the agent may have moved.
    names.table["later.example"] = ["8.8.4.4"]
    guard.forget("later.example:1")
    guard.forget("unix:///not/an/agent")  # not an endpoint: nothing to forget
    assert (await guard.resolve("later.example:1"))[1] == ["8.8.4.4"]
    assert names.lookups == 4


async def test_concurrent_misses_share_one_lookup_and_a_cancelled_caller_not_the_others() -> None:
    names = Counting({"public.example": ["8.8.8.8"]})
    names.release = asyncio.Event()
    guard = EndpointGuard(AllowList(), resolver=names, cache_seconds=5, clock=Clock())
    callers = [asyncio.create_task(guard.resolve("public.example:443")) for _ in range(20)]
    await asyncio.sleep(0.01)
    callers[0].cancel()
    names.release.set()
    results = await asyncio.gather(*callers[1:])
    assert all(addresses == ["8.8.8.8"] for _, addresses in results)
    assert names.lookups == 1
    assert callers[0].cancelled()


async def test_without_a_cache_every_call_looks_the_name_up() -> None:
    names = Counting({"public.example": ["8.8.8.8"]})
    guard = EndpointGuard(AllowList(), resolver=names)
    for _ in range(3):
        await guard.resolve("public.example:443")
    assert names.lookups == 3
    assert Settings.from_env({}).agent_dns_cache_seconds == 5.0
    assert Settings.from_env({"PODIUM_AGENT_DNS_CACHE_SECONDS": "0"}).agent_dns_cache_seconds == 0
    with pytest.raises(ConfigError, match="PODIUM_AGENT_DNS_CACHE_SECONDS"):
        Settings.from_env({"PODIUM_AGENT_DNS_CACHE_SECONDS": "-1"})
