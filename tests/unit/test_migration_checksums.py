"""Landed migrations are never edited: migrations/checksums.txt holds their SHA-256.

A database records the SHA-256 of every migration it applied and refuses to start when
a file changed since, so editing a landed migration breaks every existing database.
This test catches the edit in CI instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from podium.server.storage.migrations import load_migrations

CHECKSUMS = Path(__file__).resolve().parents[2] / "migrations" / "checksums.txt"

_HOW = (
    "Migrations are forward-only: never edit or delete a landed migration. Instead:\n"
    "- to change a SQL function (podium_*) or a trigger: edit its file in "
    "server/storage/functions/ (applied again when it changes);\n"
    "- to change tables, indexes, constraints or data: add a new migration "
    "migrations/NNNN_name.sql, then record it: "
    "(cd migrations && sha256sum NNNN_name.sql >> checksums.txt).\n"
    "Only a migration that has not landed on main yet may be edited, with its line in "
    "checksums.txt updated."
)


def _recorded() -> dict[str, str]:
    recorded: dict[str, str] = {}
    for line in CHECKSUMS.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        checksum, name = line.split()
        recorded[name] = checksum
    return recorded


def test_every_migration_matches_its_recorded_checksum() -> None:
    recorded = _recorded()
    files = {f"{m.name}.sql": m.checksum for m in load_migrations()}
    problems = [
        f"{name}: changed (recorded {checksum[:12]}, file {files[name][:12]})"
        for name, checksum in sorted(recorded.items())
        if name in files and files[name] != checksum
    ]
    problems += [f"{name}: deleted" for name in sorted(recorded) if name not in files]
    problems += [
        f"{name}: not in migrations/checksums.txt" for name in sorted(files) if name not in recorded
    ]
    if problems:
        pytest.fail("\n".join(["migrations/checksums.txt disagrees:", *problems, "", _HOW]))
