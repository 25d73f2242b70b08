"""tests/unit do no I/O outside the process: no network (even loopback), no database, no
child process, no gRPC server. An autouse fixture makes each of these fail at once with
a message naming the rule; such a test belongs in tests/integration. (Name lookups of
literal addresses and gRPC channels, which connect only when used, stay allowed.)"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
import grpc.aio
import pytest


def _refuse(what: str) -> Callable[..., NoReturn]:
    def refused(*args: Any, **kwargs: Any) -> NoReturn:
        raise AssertionError(
            f"tests/unit do no I/O, but this test tried {what}: move it to tests/integration"
        )

    return refused


@pytest.fixture(autouse=True)
def no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse socket connect and bind, child processes and gRPC servers."""
    for method in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, method, _refuse(f"socket.{method}"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("a child process"))
    monkeypatch.setattr(grpc, "server", _refuse("a gRPC server"))
    monkeypatch.setattr(grpc.aio, "server", _refuse("a gRPC server"))
