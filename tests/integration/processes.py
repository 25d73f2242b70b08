"""Run ``podium serve`` as a real OS process in tests."""

from __future__ import annotations

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
    full_env = {**os.environ, "PODIUM_LOG_FORMAT": "json", **env}
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
