"""Check the import contracts of ``[tool.importlinter]`` in pyproject.toml with
import-linter, over Podium as the installed package ``podium`` sees it.

The package-dir mapping (``server/`` is ``podium.server``, ``clients/python/`` is
``podium.client``) is an import hook on an editable install, which import-linter cannot
follow. Like ``scripts/typecheck.py``, this builds a tree of symlinks with the
installed layout (in ``build/lint-imports/``) and runs ``lint-imports`` with that tree
first on ``PYTHONPATH``. Extra arguments go to ``lint-imports`` (e.g. ``--verbose``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.typecheck import ROOT, build_tree

TREE = ROOT / "build" / "lint-imports"


def main() -> int:
    build_tree(TREE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TREE), env.get("PYTHONPATH")]))
    lint_imports = Path(sys.executable).with_name("lint-imports")
    command = [str(lint_imports), str(ROOT / "pyproject.toml"), *sys.argv[1:]]
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
