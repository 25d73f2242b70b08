"""Run ``podium serve`` as a real OS process in tests: :func:`start_serve` reads its JSON
logs from a pipe, :func:`start_podium` (for long runs, crashes and signals) sends them to a
file, so no pipe fills up."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PODIUM = str(Path(sys.executable).parent / "podium")


@dataclass
class ServeProcess:
    """A ``podium serve`` child process and the log lines it printed."""

    process: subprocess.Popen[str]
    logs: list[dict[str, Any]] = field(default_factory=list)
    address: str = ""
    startup_seconds: float = 0.0

    def read_until(self, message: str, timeout: float) -> dict[str, Any]:
        """Read JSON log lines from stderr until one has ``message``; fail on exit or timeout."""
        assert self.process.stderr is not None
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(self.process.stderr, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    continue
                line = self.process.stderr.readline()
                if not line:
                    raise AssertionError(
                        f"podium serve exited ({self.process.wait()}) "
                        f"before {message!r}: {self.logs}"
                    )
                try:
                    entry = json.loads(line)
                except ValueError:
                    entry = {"message": line.rstrip()}
                self.logs.append(entry)
                if entry.get("message") == message:
                    return dict(entry)
        finally:
            sel.close()
        raise AssertionError(f"no {message!r} within {timeout}s: {self.logs}")

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then wait for the exit code (drains stderr)."""
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=timeout)
        for line in err.splitlines():
            try:
                self.logs.append(json.loads(line))
            except ValueError:
                self.logs.append({"message": line})
        return self.process.returncode


def start_serve(env: dict[str, str], *args: str, timeout: float = 120) -> ServeProcess:
    """Start ``podium serve`` with ``env`` (over os.environ) and wait until it serves."""
    # Agents of the tests listen on loopback: the outbound guard must admit it.
    full_env = {
        **os.environ,
        "PODIUM_LOG_FORMAT": "json",
        "PODIUM_AGENT_ALLOWED_NETWORKS": "loopback",
        # Tests of these servers call them without keys; auth tests pass PODIUM_AUTH.
        "PODIUM_AUTH": "disabled",
        **env,
    }
    process = subprocess.Popen(
        [PODIUM, "serve", "--listen-address", "127.0.0.1:0", *args],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    serve = ServeProcess(process)
    try:
        ready = serve.read_until("Podium serving", timeout)
    except BaseException:
        process.kill()
        process.wait()
        raise
    serve.address = ready["address"]
    serve.startup_seconds = float(ready["startup_seconds"])
    return serve


PROCESS_DEADLINE = 60.0
"""Generous deadline of every wait on a process: waits poll, and never assert on timing."""


@dataclass
class PodiumProcess:
    """A ``podium serve`` child process logging JSON lines to ``log_path``."""

    process: subprocess.Popen[bytes]
    log_path: Path
    address: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def logs(self) -> list[dict[str, Any]]:
        """Every log line printed so far (non-JSON lines as ``{"message": line}``)."""
        entries = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                entries.append({"message": line})
        return entries

    def messages(self) -> list[str]:
        return [str(entry.get("message")) for entry in self.logs()]

    def kill(self) -> int:
        """SIGKILL and reap; returns the exit code (``-9``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        return self.process.wait(timeout=PROCESS_DEADLINE)

    def cleanup(self) -> None:
        """Kill the process if it still runs (for ``finally`` blocks)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=PROCESS_DEADLINE)


def spawn_podium(env: dict[str, str], log_path: Path) -> PodiumProcess:
    """Start ``podium serve`` on a free port with ``env`` over ``os.environ``."""
    full_env = {
        **os.environ,
        "PODIUM_LOG_FORMAT": "json",
        "PODIUM_AGENT_ALLOWED_NETWORKS": "loopback",
        # Tests of these servers call them without keys; auth tests pass PODIUM_AUTH.
        "PODIUM_AUTH": "disabled",
        **env,
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [PODIUM, "serve", "--listen-address", "127.0.0.1:0"],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    return PodiumProcess(process, log_path)


async def start_podium(env: dict[str, str], log_path: Path) -> PodiumProcess:
    """Start ``podium serve`` and wait until it logs "Podium serving"."""
    serve = await asyncio.to_thread(spawn_podium, env, log_path)
    try:
        deadline = time.monotonic() + PROCESS_DEADLINE
        while True:
            ready = [e for e in serve.logs() if e.get("message") == "Podium serving"]
            if ready:
                serve.address = str(ready[0]["address"])
                return serve
            if serve.process.poll() is not None:
                raise AssertionError(f"podium serve exited early: {serve.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"podium serve not serving in {PROCESS_DEADLINE}s: {serve.logs()}"
                )
            await asyncio.sleep(0.05)
    except BaseException:
        await asyncio.to_thread(serve.cleanup)
        raise


async def wait_exit(serve: PodiumProcess, within: float = PROCESS_DEADLINE) -> int:
    """The exit code of ``serve`` once it exits (fails after ``within`` seconds)."""
    return await asyncio.to_thread(serve.process.wait, within)
