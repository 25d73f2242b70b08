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

PGBOUNCER_PATHS = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def pgbouncer_binary() -> str:
    """The pgbouncer executable, or skip the test with the way to install it."""
    found = shutil.which("pgbouncer") or next(
        (path for path in PGBOUNCER_PATHS if os.access(path, os.X_OK)), None
    )
    if found is None:
        pytest.skip("PgBouncer is not installed (apt-get install pgbouncer)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


@contextmanager
def pgbouncer(database_url: str, *, pool_mode: str, pool_size: int = 20) -> Iterator[str]:
    """Run PgBouncer in ``pool_mode`` in front of ``database_url``'s server (trust
    auth, every database); yield the same URL through PgBouncer."""
    binary = pgbouncer_binary()
    target = urlsplit(database_url)
    user = target.username or "postgres"
    port = _free_port()
    # PgBouncer refuses to run as root: it drops to the postgres user then, which must
    # read the configuration and write the log, hence a world-readable directory of its
    # own (pytest's tmp_path is private to root).
    workdir = Path(tempfile.mkdtemp(prefix="podium-pgbouncer-"))
    workdir.chmod(0o777)
    (workdir / "users.txt").write_text(f'"{user}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={target.hostname or '127.0.0.1'} port={target.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {workdir / 'users.txt'}\n"
        f"pool_mode = {pool_mode}\ndefault_pool_size = {pool_size}\n"
        "max_client_conn = 500\nignore_startup_parameters = extra_float_digits\n"
        f"logfile = {workdir / 'pgbouncer.log'}\n"
    )
    for path in workdir.iterdir():
        path.chmod(0o666)
    command = [binary, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "postgres"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                log = workdir / "pgbouncer.log"
                error = log.read_text() if log.exists() else ""
                raise RuntimeError(f"pgbouncer exited ({process.returncode}): {error}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield _with_port(database_url, port)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
