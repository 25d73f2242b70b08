"""Certificates for TLS tests, made by scripts/dev_certs.py into a test's tmp dir, the
settings that use them, and agent processes serving mTLS with them."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.dev_certs import issue, make_ca, write


@dataclass(frozen=True)
class Certs:
    """PEM files: ``ca`` signed ``server`` (localhost, 127.0.0.1, ::1), the clients
    ``alice``, ``podium`` and ``worker`` (with the DNS name worker.example), and the
    agent server certificates ``agent-localhost`` (localhost only, no IP) and
    ``agent-other-name`` (agents.internal only); ``other_ca`` is an unrelated CA that
    signed ``mallory`` (CN alice)."""

    directory: Path

    def cert(self, stem: str) -> Path:
        return self.directory / f"{stem}.pem"

    def key(self, stem: str) -> Path:
        return self.directory / f"{stem}.key"

    @property
    def ca(self) -> Path:
        return self.cert("ca")

    @property
    def other_ca(self) -> Path:
        return self.cert("other-ca")


def make_certs(directory: Path) -> Certs:
    ca = make_ca()
    other = make_ca("Another CA")
    write(directory, "ca", ca)
    write(directory, "other-ca", other)
    write(
        directory,
        "server",
        issue(ca, "localhost", names=("localhost",), ips=("127.0.0.1", "::1"), server=True),
    )
    write(
        directory,
        "agent-other-name",
        issue(ca, "agents.internal", names=("agents.internal",), server=True),
    )
    # No IP address: a call to 127.0.0.1 verifies it only under the name localhost.
    write(directory, "agent-localhost", issue(ca, "localhost", names=("localhost",), server=True))
    write(directory, "alice", issue(ca, "alice", client=True))
    write(directory, "podium", issue(ca, "podium", client=True))
    write(directory, "worker", issue(ca, "worker", names=("worker.example",), client=True))
    write(directory, "mallory", issue(other, "alice", client=True))
    return Certs(directory)


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


def tls_settings(certs: Certs, *, mtls: bool = False) -> dict[str, Path]:
    """Server settings serving TLS with ``server`` (and requiring client certificates of
    the CA with ``mtls``)."""
    values = {"tls_cert_file": certs.cert("server"), "tls_key_file": certs.key("server")}
    if mtls:
        values["tls_client_ca_file"] = certs.ca
    return values


def agent_mtls_settings(certs: Certs) -> dict[str, Path]:
    """Server settings calling TLS agents that trust the CA, presenting ``podium``."""
    return {
        "agent_tls_ca_file": certs.ca,
        "agent_tls_cert_file": certs.cert("podium"),
        "agent_tls_key_file": certs.key("podium"),
    }


@asynccontextmanager
async def mtls_agent_process(
    certs: Certs, *command: str, address_key: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """Run an example agent ``command`` serving mTLS with ``agent-localhost`` (a
    certificate for localhost only) and requiring clients of the CA; yields the process
    and its port (the first line it prints is JSON, the address at ``address_key``).
    Stopped with SIGTERM at the end (killed if the block failed)."""
    process = await asyncio.create_subprocess_exec(
        *command,
        "--tls-cert",
        str(certs.cert("agent-localhost")),
        "--tls-key",
        str(certs.key("agent-localhost")),
        "--tls-client-ca",
        str(certs.ca),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        yield process, int(json.loads(line)[address_key].rpartition(":")[2])
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
