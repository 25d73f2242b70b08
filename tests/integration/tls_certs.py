"""Certificates for TLS tests, made by scripts/dev_certs.py into a test's tmp dir."""

from __future__ import annotations

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
