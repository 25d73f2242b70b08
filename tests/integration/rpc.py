"""Helpers to read rich error details from failed calls in tests."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def error_details(
    error: grpc.aio.AioRpcError,
) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.BadRequest]:
    """The ErrorInfo and BadRequest packed in a failed call's status (empty when absent)."""
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no rich status on {error.code()}: {error.details()}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            detail.Unpack(bad)
    return info, bad


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """Field violations of a failed call, as {field: description}."""
    _, bad = error_details(error)
    return {v.field: v.description for v in bad.field_violations}


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The AioRpcError raised by ``call`` (fails the test when it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value
