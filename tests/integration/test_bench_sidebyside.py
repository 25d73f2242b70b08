"""The side-by-side benchmark's driver (``bench/sidebyside.py``) runs end to end: a tiny
W1 (one run of 2 steps) on Podium (server and agent in child processes) and on the raw
queue ceiling, which need nothing beyond the dev environment; DBOS and LangGraph (the
bench-only extras of ``make bench``) only where they are installed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.pg_cluster import free_port

ROOT = Path(__file__).resolve().parent.parent.parent


def run_driver(server_url: str, systems: str, *extra: str) -> dict[str, Any]:
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "sidebyside.py"),
            "--database-url",
            server_url,
            "--db-prefix",
            "test_bench_",
            "--port-base",
            str(free_port()),
            "--rounds",
            "1",
            "--workloads",
            "w1",
            "--w1-steps",
            "2",
            "--systems",
            systems,
            "--settle-seconds",
            "0.2",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    document: dict[str, Any] = json.loads(completed.stdout)
    return document


def check_w1(document: dict[str, Any], system: str) -> None:
    figures = document["rounds"][0][system]["w1"]
    assert figures["p50_ms"] > 0
    assert figures["steps_per_s"] > 0
    # A number (with --settle-seconds 0.2 not a settled one: statistics arrive late).
    assert isinstance(figures["commits_per_step"], int | float)
    assert "postgres" in figures["cpu_ms_per_step"]
    assert document["summary"][system]["w1.p50_ms"]["median"] == figures["p50_ms"]
    assert system in document["table"].splitlines()[0]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_driver_runs_w1_on_podium_and_the_queue_ceiling(pg_server_url: str) -> None:
    document = run_driver(pg_server_url, "podium,queue")
    assert document["machine"]["postgres_settings"]["fsync"] in ("on", "off")
    for system in ("podium", "queue"):
        check_w1(document, system)
    assert document["rounds"][0]["podium"]["w1"]["cpu_ms_per_step"].keys() >= {
        "driver",
        "server",
        "agent",
    }


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(
    not (importlib.util.find_spec("dbos") and importlib.util.find_spec("langgraph")),
    reason="the bench extras (DBOS, LangGraph) are not installed: `make bench` installs them",
)
def test_driver_runs_w1_on_the_peers(pg_server_url: str) -> None:
    document = run_driver(pg_server_url, "dbos,langgraph")
    for system in ("dbos", "langgraph"):
        check_w1(document, system)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(
    Path(sys.executable).parent != ROOT / ".venv" / "bin",
    reason="--baseline takes a checkout's .venv: the tests do not run from this one's",
)
def test_driver_measures_a_baseline_checkout_beside_this_one(pg_server_url: str) -> None:
    """``--baseline PATH`` adds ``podium-baseline``: Podium's server run by PATH's
    interpreter (here this checkout's own), in the same rounds as ``podium``."""
    document = run_driver(pg_server_url, "podium", "--baseline", str(ROOT))
    assert document["systems"] == ["podium", "podium-baseline"]
    assert document["baseline"]["path"] == str(ROOT)
    assert document["baseline"]["checkout"] == document["checkout"] != "unknown"
    for system in ("podium", "podium-baseline"):
        check_w1(document, system)


def test_a_baseline_without_a_dev_environment_is_refused(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sidebyside.py"), "--baseline", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert completed.returncode == 2
    assert f"--baseline: no {tmp_path}/.venv/bin/python" in completed.stderr
    assert "make .venv/.installed" in completed.stderr
