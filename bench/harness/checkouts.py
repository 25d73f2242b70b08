"""Other checkouts of Podium measured beside this one (``--baseline``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

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
