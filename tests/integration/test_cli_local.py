"""The CLI's local commands run as a real process: ``podium completion`` and
``podium config`` (they need no server)."""

from __future__ import annotations

import os
import subprocess

import pytest

from podium.client.cli import build_parser
from podium.client.cli_config import client_settings
from tests.integration.processes import PODIUM


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts(shell: str) -> None:
    result = subprocess.run(
        [PODIUM, "completion", shell], capture_output=True, text=True, timeout=60, check=True
    )
    for word in ("definitions", "deliverables", "webhooks", "--force-new-version", "--protocol"):
        assert word in result.stdout, word
    if shell == "bash":
        checked = subprocess.run(["bash", "-n"], input=result.stdout, text=True, timeout=30)
        assert checked.returncode == 0


def test_config_tells_where_each_setting_comes_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODIUM_ADDRESS", "podium.example:443")
    monkeypatch.delenv("PODIUM_TIMEOUT", raising=False)
    monkeypatch.delenv("PODIUM_OUTPUT", raising=False)
    monkeypatch.setenv("PODIUM_ACTOR", "ana")
    monkeypatch.setenv("PODIUM_TLS_CA", "/etc/podium/ca.pem")
    for name in ("PODIUM_TLS", "PODIUM_TLS_CERT", "PODIUM_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)
    args = build_parser().parse_args(["config", "--timeout", "5", "--tls"])
    got = {name: (s.value, s.source) for name, s in client_settings(args).items()}
    assert got == {
        "address": ("podium.example:443", "env PODIUM_ADDRESS"),
        "timeout": (5.0, "flag --timeout"),
        "output": ("text", "default"),
        "tls": (True, "flag --tls"),
        "tls_ca": ("/etc/podium/ca.pem", "env PODIUM_TLS_CA"),
        "tls_cert": (None, "default"),
        "tls_key": (None, "default"),
        "actor": ("ana", "env PODIUM_ACTOR"),
    }
    result = subprocess.run(
        [PODIUM, "config", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PODIUM_TIMEOUT": "7", "PODIUM_ADDRESS": "h:1"},
    )
    assert result.returncode == 0, result.stderr
    assert '"value": 7,' in result.stdout and '"source": "env PODIUM_TIMEOUT"' in result.stdout
    bad = subprocess.run(
        [PODIUM, "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PODIUM_TIMEOUT": "soon"},
    )
    assert bad.returncode == 2 and "PODIUM_TIMEOUT" in bad.stderr
