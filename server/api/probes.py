"""What operators' tools probe: ``grpc.health.v1.Health`` (Check, Watch and List) and
server reflection under both ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-health-checking's asyncio servicer answers ``Health/List`` UNIMPLEMENTED
although the service descriptor (and so reflection) advertises it; grpcio-reflection
serves only ``v1alpha``, while current tools (grpcurl 1.9, grpcui, Postman) ask
``grpc.reflection.v1`` first. The two reflection versions are the same messages under
another package name, so one servicer answers both, decoding ``v1`` requests with the
``v1alpha`` message classes.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

__all__ = [
    "HEALTH_SERVICE_NAME",
    "REFLECTION_SERVICE_NAMES",
    "ListingHealthServicer",
    "add_health",
    "add_reflection",
]

HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name
REFLECTION_SERVICE_NAMES = (REFLECTION_V1ALPHA,)
"""The reflection services listed by ``list_services``: ``v1`` is served too but not
listed, because its descriptor is not in the pool (describing it would fail)."""


class ListingHealthServicer(HealthServicer):  # type: ignore[misc]  # untyped library
    """The library's health servicer plus ``List``: every service with a status."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, health_pb2.HealthCheckResponse.ServingStatus.ValueType] = {
            "": health_pb2.HealthCheckResponse.SERVING
        }

    async def set(
        self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        self._statuses[service] = status
        await super().set(service, status)

    async def List(
        self,
        request: health_pb2.HealthListRequest,
        context: grpc.aio.ServicerContext[
            health_pb2.HealthListRequest, health_pb2.HealthListResponse
        ],
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._statuses.items()
            }
        )


def add_health(servicer: ListingHealthServicer, server: grpc.aio.Server) -> None:
    """Serve ``grpc.health.v1.Health`` on ``server``."""
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)


def add_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection of ``service_names`` (plus the reflection service itself) under
    ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``."""
    servicer = ReflectionServicer((*service_names, *REFLECTION_SERVICE_NAMES))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                REFLECTION_V1,
                {
                    "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                        servicer.ServerReflectionInfo,
                        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                    )
                },
            ),
        )
    )
