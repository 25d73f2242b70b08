"""Other checkouts of Podium measured beside this one (``--baseline``)."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent


def baseline_python(checkout: Path) -> Path:
    """The interpreter of ``checkout``'s dev environment (``make .venv/.installed``
    there), in which ``podium`` is that checkout's code."""
    return checkout / ".venv" / "bin" / "python"


def checkout_commit(checkout: Path = ROOT) -> str:
    """``git describe`` of ``checkout`` (its commit, ``-dirty`` with local changes)."""
    described = subprocess.run(
        ["git", "-C", str(checkout), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return described.stdout.strip() or "unknown"


def baseline_checkout(text: str) -> Path:
    """``--baseline``'s argument type: a checkout with its dev environment, resolved."""
    checkout = Path(text).resolve()
    if not baseline_python(checkout).is_file():
        raise argparse.ArgumentTypeError(
            f"no {baseline_python(checkout)}; run `make .venv/.installed` in {checkout} first"
        )
    return checkout


def describe_baseline(checkout: Path) -> dict[str, Any]:
    """What a benchmark's JSON says of its ``--baseline``."""
    return {"path": str(checkout), "checkout": checkout_commit(checkout)}
