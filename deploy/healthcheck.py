"""Container health probe: ``grpc.health.v1.Health/Check`` against the local replica.

Exit 0 when the replica answers SERVING, 1 otherwise (NOT_SERVING while starting,
draining on SIGTERM or while the database is unreachable; no answer within the
timeout). Used by the image's HEALTHCHECK and by compose; Kubernetes uses its native
gRPC probes instead. The address is PODIUM_HEALTHCHECK_ADDRESS (default
127.0.0.1:50051); the first argument, when given, overrides it.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 3.0


def check(address: str, service: str = "") -> bool:
    """Whether the server at ``address`` reports ``service`` (the whole server when
    empty) SERVING."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_SECONDS
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str]) -> int:
    address = (
        argv[1]
        if len(argv) > 1
        else os.environ.get("PODIUM_HEALTHCHECK_ADDRESS", "127.0.0.1:50051")
    )
    return 0 if check(address) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
