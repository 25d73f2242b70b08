"""docs/configuration.md is generated from Settings: it must match the code.

Runs the freshness check of scripts/gen_config_docs.py (reads server/config.py through
the import and the committed page; writes nothing).
"""

from __future__ import annotations

from scripts import gen_config_docs


def test_configuration_page_is_fresh() -> None:
    diff = gen_config_docs.stale_diff()
    assert diff == "", (
        "docs/configuration.md is stale: run "
        "'.venv/bin/python scripts/gen_config_docs.py' and commit it\n" + diff
    )


def test_every_setting_has_a_row() -> None:
    import dataclasses

    from podium.server.config import Settings

    page = gen_config_docs.render()
    for f in dataclasses.fields(Settings):
        assert f"| `{f.metadata['env']}` |" in page
