"""Run mypy (strict) over Podium as the installed package ``podium`` sees it.

``pyproject.toml`` maps ``server/`` to ``podium.server``, ``clients/python/`` to
``podium.client`` and ``generated/podium`` to ``podium``. mypy cannot follow the
editable-install import hook, so this script builds a tree of symlinks with the
installed layout in ``build/typecheck/`` and points ``mypy_path`` at it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"

LINKS = {
    "podium/agent": "generated/podium/agent",
    "podium/orchestration": "generated/podium/orchestration",
    "podium/__init__.py": "generated/podium/__init__.py",
    "podium/py.typed": "generated/podium/py.typed",
    "podium/server": "server",
    "podium/client": "clients/python",
    "podium/migrations": "migrations",
}


def build_tree(tree: Path = TREE) -> None:
    """(Re)create the symlink tree in ``tree``."""
    if tree.exists():
        shutil.rmtree(tree)
    for link, target in LINKS.items():
        path = tree / link
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(ROOT / target)


def main() -> int:
    build_tree()
    args = [
        "--config-file",
        str(ROOT / "pyproject.toml"),
        "-p",
        "podium.server",
        "-p",
        "podium.client",
        "-p",
        "tests",
        "-p",
        "scripts",
        *sys.argv[1:],
    ]
    stdout, stderr, status = api.run(args)
    sys.stdout.write(stdout)
    sys.stderr.write(stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
