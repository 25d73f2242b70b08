"""The hot-path benchmark (``bench/hotpath.py``) runs end to end against a server of its
own: a database URL turns authentication on, so its server must be one the benchmark
can call without a key (``bench/harness/server.py``'s ``podium_settings``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.pg_cluster import free_port

ROOT = Path(__file__).resolve().parent.parent.parent


def _bench(script: str, *args: str, timeout: float) -> dict[str, Any]:
    """Run ``bench/<script>`` with ``args`` on its own databases; its JSON document."""
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PODIUM_BENCH_DB_PREFIX": "test_bench_"},
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    document: dict[str, Any] = json.loads(completed.stdout)
    return document


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_hotpath_measures_a_chain(pg_server_url: str) -> None:
    """A chain beside another share's runs queued behind their agent's limit (--held)."""
    document = _bench(
        "hotpath.py",
        "--database-url",
        pg_server_url,
        "--runs",
        "1",
        "--parts",
        "chain",
        "--held",
        "2",
        timeout=240,
    )
    chain = document["results"]["chain"]
    assert chain["steps"] == 10 and document["held"] == 2
    assert chain["round_trips_per_step"] > 0


@pytest.mark.timeout(120)
def test_sqlcost_times_every_hot_path_statement(pg_server_url: str) -> None:
    """``bench/sqlcost.py`` runs against the checkout's functions: every statement it
    times exists with the signature it calls (a figure of None would mean it did not)."""
    document = _bench(
        "sqlcost.py",
        "--database-url",
        pg_server_url,
        "--calls",
        "3",
        "--warmup",
        "1",
        timeout=100,
    )
    for figure in ("claim_us", "lease_us", "complete_us", "create_run_us"):
        assert document[figure] > 0, figure
    assert all(value > 0 for value in document["writes_us"].values())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_timeline_cuts_sequential_runs_into_segments(pg_server_url: str) -> None:
    """``bench/timeline.py`` reads the caller's, PostgreSQL's and the agent's clocks of
    real runs: every segment of every step is there, and a step's parts fit in it."""
    runs = 2
    document = _bench(
        "timeline.py",
        "--database-url",
        pg_server_url,
        "--runs",
        str(runs),
        "--rounds",
        "1",
        "--port",
        str(free_port()),
        timeout=240,
    )
    segments = document["segments"]["podium"]
    counts = {name: figures["n"] for name, figures in segments.items()}
    assert counts == {
        "start_to_run_created": runs,
        "first_claim": runs,
        "dispatch": 10 * runs,
        "agent_to_completed": 10 * runs,
        "next_claim": 9 * runs,
        "completed_to_caller": runs,
        "step": 8 * runs,
        "run": runs,
    }
    # The three clocks agree: every segment ends after it starts (the agent receives a
    # call after the lease's statement and before the completion's).
    assert all(figures["min_ms"] > 0 for figures in segments.values()), segments
