"""SQL functions live in server/storage/functions/*.sql only, each in exactly one file.

The catalog side (a migrated database holds exactly these functions, with these
bodies) is checked by tests/integration/test_migrations.py.
"""

from __future__ import annotations

import re
from collections import Counter

from podium.server.storage.migrations import load_function_files, load_migrations

_CREATE_FUNCTION = re.compile(
    r"^CREATE\s+(OR\s+REPLACE\s+)?(FUNCTION|PROCEDURE)\s+([a-z0-9_]+)", re.MULTILINE | re.I
)
_CREATE_TRIGGER = re.compile(r"^CREATE\s+(OR\s+REPLACE\s+)?TRIGGER\s+([a-z0-9_]+)", re.M | re.I)


def test_each_function_is_defined_in_exactly_one_file_with_create_or_replace() -> None:
    files = load_function_files()
    assert files, "no function files found"
    defined: Counter[str] = Counter()
    for function_file in files:
        for match in _CREATE_FUNCTION.finditer(function_file.sql):
            assert match.group(1), (
                f"{function_file.name}.sql: {match.group(3)} must use CREATE OR REPLACE "
                "(function files are applied again whenever they change)"
            )
            defined[match.group(3)] += 1
        for match in _CREATE_TRIGGER.finditer(function_file.sql):
            assert match.group(1), (
                f"{function_file.name}.sql: trigger {match.group(2)} must use CREATE OR REPLACE"
            )
    twice = sorted(name for name, count in defined.items() if count > 1)
    assert not twice, f"functions defined more than once in server/storage/functions: {twice}"


def test_migrations_define_no_function_or_trigger() -> None:
    for migration in load_migrations():
        found = [m.group(3) for m in _CREATE_FUNCTION.finditer(migration.sql)]
        found += [m.group(2) for m in _CREATE_TRIGGER.finditer(migration.sql)]
        assert not found, (
            f"migrations/{migration.name}.sql creates {found}: functions and their triggers "
            "belong in server/storage/functions/*.sql (a migration only drops them)"
        )
