"""The import rule of docs/ARCHITECTURE.md, enforced on the source tree.

api -> engine -> storage | agents | events | telemetry; nothing imports api except the
composition root (server/app.py); lower layers never import the engine; the API reaches
storage only through the engine; the client library never imports the server except
the ``podium serve`` command.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"podium.server": ROOT / "server", "podium.client": ROOT / "clients" / "python"}

# (importer prefix, forbidden prefix, allowed importers with the reason)
RULES: list[tuple[str, str, dict[str, str]]] = [
    (
        "podium",
        "podium.server.api",
        {"podium.server.app": "composition root registers the servicers"},
    ),
    ("podium.server.storage", "podium.server.engine", {}),
    ("podium.server.agents", "podium.server.engine", {}),
    ("podium.server.events", "podium.server.engine", {}),
    ("podium.server.telemetry", "podium.server.engine", {}),
    ("podium.server.api", "podium.server.storage", {}),
    ("podium.server.config", "podium.server.", {}),
    ("podium.client", "podium.server", {"podium.client.cli": "`podium serve` starts the server"}),
]


def _modules() -> dict[str, Path]:
    found = {}
    for package, directory in PACKAGES.items():
        for path in directory.rglob("*.py"):
            parts = list(path.relative_to(directory).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            out.add(prefix)
            out.update(f"{prefix}.{alias.name}" for alias in node.names)
    return out


def _within(module: str, prefix: str) -> bool:
    return (
        module == prefix
        or module.startswith(prefix.rstrip(".") + ".")
        or (prefix.endswith(".") and module.startswith(prefix))
    )


def test_the_tree_is_scanned() -> None:
    modules = _modules()
    assert "podium.server.api.orchestration" in modules
    assert "podium.server.engine.definitions" in modules
    assert "podium.client.cli" in modules


@pytest.mark.parametrize(("importer", "forbidden", "allowed"), RULES)
def test_import_rule(importer: str, forbidden: str, allowed: dict[str, str]) -> None:
    violations = []
    for module, path in sorted(_modules().items()):
        if not _within(module, importer) or module in allowed or _within(module, forbidden):
            continue
        for imported in sorted(_imports(module, path)):
            if _within(imported, forbidden):
                violations.append(f"{module} imports {imported}")
    assert violations == [], "layering broken:\n" + "\n".join(violations)
