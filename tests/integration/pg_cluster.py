"""PostgreSQL clusters of our own for the tests that stop, crash or fail over the
database: Debian's PostgreSQL 15 binaries (``initdb``, ``pg_ctl``, ``pg_basebackup``),
data in a temporary directory, a free TCP port on 127.0.0.1, trust auth. Tests that use
them skip when the binaries are missing. As root, every command runs as ``postgres``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin")
SUPERUSER = "postgres"


def bin_dir() -> Path:
    """The directory of initdb/pg_ctl/pg_basebackup, or skip the test."""
    for candidate in BIN_DIRS:
        if os.access(Path(candidate) / "pg_basebackup", os.X_OK):
            return Path(candidate)
    pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql-15)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_postgres(command: Sequence[str]) -> list[str]:
    return ["runuser", "-u", SUPERUSER, "--", *command] if os.geteuid() == 0 else list(command)


def _run(command: Sequence[str], *, timeout: float = 60) -> None:
    done = subprocess.run(
        _as_postgres(command), capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stdout}{done.stderr}")


def workdir(prefix: str) -> Path:
    """A fresh directory the postgres user owns (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(path, SUPERUSER, SUPERUSER)
    return path


@dataclass
class Cluster:
    """One PostgreSQL cluster: ``start``, ``crash`` (immediate stop), ``promote``."""

    data: Path
    port: int = field(default_factory=free_port)

    @property
    def bin(self) -> Path:
        return bin_dir()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def configure(self, **settings: str) -> None:
        lines = [f"{name} = '{value}'" for name, value in settings.items()]
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            conf.write("\n".join(lines) + "\n")

    def start(self) -> None:
        _run(
            [
                str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60",
                "-l", str(self.data / "server.log"),
                "-o", f"-p {self.port} -c listen_addresses=127.0.0.1"
                f" -c unix_socket_directories={self.data}",
                "start",
            ]
        )  # fmt: skip

    def crash(self) -> None:
        """Stop at once, as a crash would (no checkpoint, clients cut)."""
        _run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"])

    def promote(self) -> None:
        _run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "promote"])

    def stop(self) -> None:
        """Stop if running (cleanup)."""
        subprocess.run(
            _as_postgres(
                [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
            ),
            capture_output=True,
            check=False,
            timeout=60,
        )

    @classmethod
    def primary(cls, root: Path) -> Cluster:
        """A new cluster that streams to standbys (initdb, replication allowed)."""
        data = root / "primary"
        _run(
            [
                str(bin_dir() / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "--no-sync",
            ],
            timeout=120,
        )
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
        cluster = cls(data)
        cluster.configure(wal_level="replica", max_wal_senders="5", fsync="off")
        return cluster

    def standby(self, root: Path) -> Cluster:
        """A streaming standby of this (running) cluster, by pg_basebackup, not started."""
        data = root / "standby"
        _run(
            [
                str(self.bin / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.port),
                "-U", SUPERUSER, "-D", str(data), "-R", "-X", "stream",
            ],
            timeout=120,
        )  # fmt: skip
        return Cluster(data)
