"""A real PgBouncer (Debian's package) in front of the test PostgreSQL, for the tests of
``PODIUM_DATABASE_POOL_MODE``. Tests that use it skip when PgBouncer is not installed
(``make test`` installs it through ``scripts/system_deps.sh`` where it can)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.integration.pg_cluster import free_port

PGBOUNCER_PATHS = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def pgbouncer_binary() -> str:
    """The pgbouncer executable, or skip the test with the way to install it."""
    found = shutil.which("pgbouncer") or next(
        (path for path in PGBOUNCER_PATHS if os.access(path, os.X_OK)), None
    )
    if found is None:
        pytest.skip("PgBouncer is not installed (apt-get install pgbouncer)")
    return found


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


class PgBouncer:
    """One PgBouncer process in ``pool_mode`` in front of ``database_url``'s server
    (trust auth, every database), on a port that stays the same across restarts."""

    def __init__(self, database_url: str, *, pool_mode: str, pool_size: int = 20) -> None:
        self.binary = pgbouncer_binary()
        target = urlsplit(database_url)
        user = target.username or "postgres"
        self.port = free_port()
        self.url = _with_port(database_url, self.port)
        """``database_url`` through PgBouncer."""
        # PgBouncer refuses to run as root: it drops to the postgres user then, which
        # must read the configuration and write the log, hence a world-readable
        # directory of its own (pytest's tmp_path is private to root).
        self.workdir = Path(tempfile.mkdtemp(prefix="podium-pgbouncer-"))
        self.workdir.chmod(0o777)
        (self.workdir / "users.txt").write_text(f'"{user}" ""\n')
        (self.workdir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={target.hostname or '127.0.0.1'} port={target.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.workdir / 'users.txt'}\n"
            f"pool_mode = {pool_mode}\ndefault_pool_size = {pool_size}\n"
            "max_client_conn = 500\nignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.workdir / 'pgbouncer.log'}\n"
        )
        for path in self.workdir.iterdir():
            path.chmod(0o666)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start and wait until the port accepts connections."""
        command = [self.binary, str(self.workdir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            command[1:1] = ["-u", "postgres"]
        self.process = process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                log = self.workdir / "pgbouncer.log"
                error = log.read_text() if log.exists() else ""
                raise RuntimeError(f"pgbouncer exited ({process.returncode}): {error}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: every client connection is cut at once."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextmanager
def pgbouncer(database_url: str, *, pool_mode: str, pool_size: int = 20) -> Iterator[str]:
    """Run PgBouncer in ``pool_mode`` in front of ``database_url``'s server; yield the
    same URL through PgBouncer."""
    bouncer = PgBouncer(database_url, pool_mode=pool_mode, pool_size=pool_size)
    try:
        bouncer.start()
        yield bouncer.url
    finally:
        bouncer.close()
