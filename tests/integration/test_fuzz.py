"""A bounded fuzz of every RPC against a live server (hypothesis): random requests with
random strings (NUL characters, huge ones, any Unicode), numbers, enums, timestamps,
maps and Structs in every field, some with invalid UTF-8 patched into the wire bytes.
No answer may be INTERNAL or UNKNOWN, and a refused request must leave every table as
it was (no partial write). The methods of lf.a2a.v1.A2AService (Podium as an A2A agent)
are fuzzed with those of OrchestrationService. Requests go out as raw bytes (identity
serializers), so invalid encodings reach the server as they are."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from a2a.types import a2a_pb2
from google.protobuf import descriptor, message_factory, struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podium.orchestration.v1 import agent_pb2
from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from podium.server.app import PodiumServer
from tests.integration.conftest import bearer_channel
from tests.integration.runs_helpers import definition

SERVICE = pb.DESCRIPTOR.services_by_name["OrchestrationService"]
A2A_SERVICE = a2a_pb2.DESCRIPTOR.services_by_name["A2AService"]
"""Podium as an A2A agent (lf.a2a.v1.A2AService, on the same port)."""
METHODS = sorted(
    [*SERVICE.methods, *A2A_SERVICE.methods], key=lambda m: (m.containing_service.name, m.name)
)
FORBIDDEN = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
MARK = "\x01FUZZ\x01"  # replaced on the wire by as many bytes of invalid UTF-8

Field = descriptor.FieldDescriptor

TEXT = st.one_of(
    st.text(max_size=20),
    st.text(alphabet="abc", max_size=5).map(lambda t: t + "\x00"),
    st.text(alphabet=st.sampled_from("ab\x00\x7f/.-_ é☃\U0001f600"), max_size=30),
    st.integers(1, 30_000).map(lambda n: "x" * n),
    st.uuids().map(str),
    st.sampled_from(["", "echo", "a", "a.b", "steps.s.output", "${input.x}", "nope\x00"]),
)
# Plausible values, so that requests also get past validation into the engine and the
# database: names, ids, small numbers.
KNOWN: list[str] = []
"""Ids and names of the resources the fixture creates (a run, a definition, an agent)."""

CLEAN_TEXT = st.one_of(
    st.deferred(lambda: st.sampled_from(KNOWN)),
    st.uuids().map(str),
    st.sampled_from(["echo", "upper", "a", "s", "team", "default"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
COUNTS = """
    SELECT table_name::text,
           (xpath('/row/c/text()', query_to_xml(
               format('SELECT count(*) AS c FROM %I.%I', table_schema, table_name),
               false, true, '')))[1]::text::bigint
    FROM information_schema.tables
    WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
      -- The event hub's rows: written by a watch and its poll in the background.
      AND table_name <> 'event_listeners'
"""


def _text(data: st.DataObject, nasty: int) -> str:
    """A string: a plausible one, or (``nasty`` percent of the time) any."""
    bad = nasty >= 100 or (nasty > 0 and data.draw(st.integers(0, 99)) < nasty)
    text: str = data.draw(TEXT if bad else CLEAN_TEXT)
    return text


def _scalar(data: st.DataObject, field: Any, nasty: int) -> Any:
    kind = field.type
    clean = nasty < 100
    if kind == Field.TYPE_STRING:
        return _text(data, nasty)
    if clean and kind in (Field.TYPE_DOUBLE, Field.TYPE_FLOAT):
        return data.draw(st.floats(0, 100))
    if clean and kind == Field.TYPE_ENUM:
        return data.draw(st.integers(0, 3))
    if clean and kind not in (Field.TYPE_BOOL, Field.TYPE_BYTES):
        return data.draw(st.integers(0, 100))
    if kind == Field.TYPE_BOOL:
        return data.draw(st.booleans())
    if kind in (Field.TYPE_DOUBLE, Field.TYPE_FLOAT):
        value = data.draw(st.floats(width=32 if kind == Field.TYPE_FLOAT else 64))
        return value if kind == Field.TYPE_DOUBLE or math.isfinite(value) else 0.0
    if kind == Field.TYPE_ENUM:
        return data.draw(st.integers(-1, 6))
    if kind == Field.TYPE_BYTES:
        return data.draw(st.binary(max_size=20))
    if kind in (Field.TYPE_INT32, Field.TYPE_SINT32, Field.TYPE_SFIXED32):
        return data.draw(st.integers(-(2**31), 2**31 - 1))
    if kind in (Field.TYPE_UINT32, Field.TYPE_FIXED32):
        return data.draw(st.integers(0, 2**32 - 1))
    if kind in (Field.TYPE_UINT64, Field.TYPE_FIXED64):
        return data.draw(st.integers(0, 2**64 - 1))
    return data.draw(st.integers(-(2**63), 2**63 - 1))


def _fill(data: st.DataObject, message: Message, depth: int, nasty: int) -> None:
    """Set a random subset of ``message``'s fields to random values: plausible ones, with
    ``nasty`` percent of the strings anything (100: numbers anything too)."""
    if isinstance(message, struct_pb2.Struct):
        keys = TEXT if nasty >= 100 else CLEAN_TEXT
        values = JSON if nasty > 0 else st.none() | st.booleans() | CLEAN_TEXT
        message.update(data.draw(st.dictionaries(keys, values, max_size=4)))
        return
    if isinstance(message, timestamp_pb2.Timestamp):
        if nasty < 100:
            message.seconds = data.draw(st.integers(0, 2**32))
        else:
            message.seconds = data.draw(st.integers(-(2**40), 2**40))
            message.nanos = data.draw(st.integers(-(2**31), 2**31 - 1))
        return
    for field in message.DESCRIPTOR.fields:
        if not data.draw(st.booleans()):
            continue
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value_field = entry.fields_by_name["value"]
            target = getattr(message, field.name)
            for _ in range(data.draw(st.integers(0, 3))):
                key = _text(data, nasty)
                if value_field.type == Field.TYPE_MESSAGE:
                    if depth > 0:
                        _fill(data, target[key], depth - 1, nasty)
                else:
                    target[key] = _scalar(data, value_field, nasty)
        elif field.type == Field.TYPE_MESSAGE:
            if depth <= 0:
                continue
            if field.is_repeated:
                for _ in range(data.draw(st.integers(0, 3))):
                    _fill(data, getattr(message, field.name).add(), depth - 1, nasty)
            else:
                child = getattr(message, field.name)
                child.SetInParent()
                _fill(data, child, depth - 1, nasty)
        elif field.is_repeated:
            getattr(message, field.name).extend(
                _scalar(data, field, nasty) for _ in range(data.draw(st.integers(0, 3)))
            )
        else:
            setattr(message, field.name, _scalar(data, field, nasty))


def _wire(data: st.DataObject, message: Message) -> bytes:
    """The message's bytes, sometimes with one top-level string made invalid UTF-8."""
    strings: list[str] = [
        f.name
        for f in message.DESCRIPTOR.fields
        if f.type == Field.TYPE_STRING and not f.is_repeated and f.containing_oneof is None
    ]
    corrupt: bool = data.draw(st.booleans())
    if strings and corrupt:
        setattr(message, data.draw(st.sampled_from(strings)), MARK)
        raw = message.SerializeToString()
        if raw.count(MARK.encode()) == 1:
            return raw.replace(MARK.encode(), b"\xff\xfe" + b"\xc0" * (len(MARK) - 2))
    return message.SerializeToString()


async def _counts(conn: asyncpg.Connection[asyncpg.Record]) -> dict[str, int]:
    return {row[0]: row[1] for row in await conn.fetch(COUNTS)}


async def _call(channel: grpc.aio.Channel, method: Any, body: bytes) -> grpc.StatusCode:
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.server_streaming:
            # A valid watch streams forever: its first events, then the deadline.
            async for _ in channel.unary_stream(path, None, None)(body, timeout=0.3):
                pass
        else:
            await channel.unary_unary(path, None, None)(body, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


class Target:
    """The live server's channel, a database connection, and the answers seen."""

    def __init__(self, channel: grpc.aio.Channel, conn: asyncpg.Connection[asyncpg.Record]):
        self.channel = channel
        self.conn = conn
        self.seen: dict[str, set[str]] = {}


@pytest.fixture
async def target(
    podium_server: PodiumServer, database_url: str, admin_key: str
) -> AsyncIterator[Target]:
    # No step executes (the scheduler is stopped): only the fuzzed requests write, so a
    # refused one must leave every table as it was.
    await podium_server.engine.scheduler.stop(0)
    conn = await asyncpg.connect(database_url)
    channel = bearer_channel(podium_server.address, admin_key)
    stub = pb_grpc.OrchestrationServiceStub(channel)
    await stub.RegisterAgent(
        pb.RegisterAgentRequest(
            agent=agent_pb2.Agent(name="echo", endpoint="127.0.0.1:9"), lazy=True
        )
    )
    await stub.CreateDefinition(
        pb.CreateDefinitionRequest(definition=definition("echo", [{"id": "s", "agent": "echo"}]))
    )
    run = await stub.StartRun(pb.StartRunRequest(definition=pb.DefinitionRef(name="echo")))
    KNOWN[:] = ["echo", run.run.id]
    target = Target(channel, conn)
    try:
        yield target
    finally:
        await channel.close(None)
        await conn.close()
    # The examples covered most RPCs (a rough check that the fuzz did reach them).
    assert len(target.seen) > len(METHODS) // 2, target.seen


@pytest.mark.timeout(240)
@settings(
    max_examples=800,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_every_rpc_survives_random_requests(target: Target, data: st.DataObject) -> None:
    method = data.draw(st.sampled_from(METHODS))
    request: Message = message_factory.GetMessageClass(method.input_type)()
    # Plausible requests (deep paths), plausible ones with a few bad strings (each
    # string check), anything (and invalid UTF-8 on the wire).
    nasty = data.draw(st.sampled_from([0, 30, 100]))
    _fill(data, request, depth=3, nasty=nasty)
    body = _wire(data, request) if nasty >= 100 else request.SerializeToString()
    before = await _counts(target.conn)
    code = await _call(target.channel, method, body)
    target.seen.setdefault(method.name, set()).add(code.name)
    assert code not in FORBIDDEN, (method.name, code, request)
    if code is not grpc.StatusCode.OK and not method.server_streaming:
        assert await _counts(target.conn) == before, (method.name, code, request)
