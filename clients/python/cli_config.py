"""The client settings of the ``podium`` CLI, where each comes from (``podium
config``), and shell completion scripts (``podium completion``)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

import grpc

from podium.client.cli_output import EXIT_OK, EXIT_USAGE, CliError, default_actor, print_data
from podium.client.common import DEFAULT_ADDRESS, DEFAULT_TIMEOUT_SECONDS
from podium.client.tls import TlsConfigError, tls_credentials

COMPLETION_SHELLS = ("bash", "zsh")


@dataclass(frozen=True)
class Setting:
    """One effective client setting: its value and where it came from (``flag``,
    ``env NAME`` or ``default``)."""

    name: str
    value: Any
    source: str


def _pick(flag_value: Any, flag: str, env: str, default: Any, convert: Any = str) -> Setting:
    name = flag.removeprefix("--").replace("-", "_")
    if flag_value is not None:
        return Setting(name, flag_value, f"flag {flag}")
    text = os.environ.get(env)
    if text:
        try:
            return Setting(name, convert(text), f"env {env}")
        except ValueError:
            raise CliError(f"{env}={text!r} is not a valid {name}", EXIT_USAGE) from None
    return Setting(name, default, "default")


def _output(text: str) -> str:
    if text not in ("text", "json", "yaml"):
        raise ValueError(text)
    return text


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def client_settings(args: argparse.Namespace) -> dict[str, Setting]:
    """The effective ``address``, ``timeout``, ``output``, ``api_key`` and TLS files of a command
    (flag, then environment, then default) and the ``actor`` approvals record."""
    settings = [
        _pick(getattr(args, "address", None), "--address", "PODIUM_ADDRESS", DEFAULT_ADDRESS),
        _pick(
            getattr(args, "timeout", None),
            "--timeout",
            "PODIUM_TIMEOUT",
            DEFAULT_TIMEOUT_SECONDS,
            float,
        ),
        _pick(getattr(args, "output", None), "--output", "PODIUM_OUTPUT", "text", _output),
        _pick(getattr(args, "tls", None), "--tls", "PODIUM_TLS", False, _bool),
        _pick(getattr(args, "tls_ca", None), "--tls-ca", "PODIUM_TLS_CA", None),
        _pick(getattr(args, "tls_cert", None), "--tls-cert", "PODIUM_TLS_CERT", None),
        _pick(getattr(args, "tls_key", None), "--tls-key", "PODIUM_TLS_KEY", None),
    ]
    key = _pick(getattr(args, "api_key", None), "--api-key", "PODIUM_API_KEY", "")
    if key.value:  # shown by `podium config` only when one is given
        settings.append(key)
    actor = os.environ.get("PODIUM_ACTOR")
    settings.append(
        Setting("actor", actor, "env PODIUM_ACTOR")
        if actor
        else Setting("actor", default_actor(), "OS user")
    )
    return {s.name: s for s in settings}


def resolve(args: argparse.Namespace) -> None:
    """Set ``args.address``, ``args.timeout``, ``args.output`` and ``args.credentials``
    (None: plaintext) to their effective values."""
    settings = client_settings(args)
    args.address = settings["address"].value
    args.timeout = settings["timeout"].value
    args.output = settings["output"].value
    args.credentials = credentials(settings)
    args.api_key = settings["api_key"].value if "api_key" in settings else ""


def credentials(settings: dict[str, Setting]) -> grpc.ChannelCredentials | None:
    """TLS credentials when ``tls`` is on or a TLS file is given; None (plaintext)
    otherwise. A CA file, else the system's CA roots; a client certificate for mTLS."""
    ca, cert, key = (settings[name].value for name in ("tls_ca", "tls_cert", "tls_key"))
    if not (settings["tls"].value or ca or cert or key):
        return None
    if bool(cert) != bool(key):
        given = "tls_cert" if cert else "tls_key"
        raise CliError(
            "--tls-cert and --tls-key (env PODIUM_TLS_CERT, PODIUM_TLS_KEY) go together; "
            f"only --{given.replace('_', '-')} is set ({settings[given].source})",
            EXIT_USAGE,
        )
    try:
        return tls_credentials(ca or None, cert or None, key or None)
    except TlsConfigError as exc:
        raise CliError(f"TLS: {exc}", EXIT_USAGE) from None


def cmd_config(args: argparse.Namespace) -> int:
    settings = client_settings(args)
    output = settings["output"].value
    if "api_key" in settings:
        # Never print a key: its public prefix is enough to recognise it.
        key = settings["api_key"]
        settings["api_key"] = Setting(key.name, redact_key(key.value), key.source)
    if output != "text":
        print_data(
            {s.name: {"value": s.value, "source": s.source} for s in settings.values()}, output
        )
        return EXIT_OK
    for s in settings.values():
        value = f"{s.value:g}" if isinstance(s.value, float) else str(s.value)
        value = "unset" if s.value is None else value
        print(f"{s.name:<8} {value:<24} ({s.source})")
    return EXIT_OK


def redact_key(key: str) -> str:
    """``pdm_<prefix>_***`` for a key, ``***`` for anything else, "" for none."""
    if not key:
        return ""
    parts = key.split("_")
    return f"pdm_{parts[1]}_***" if len(parts) >= 3 and parts[0] == "pdm" else "***"


def cmd_completion(args: argparse.Namespace) -> int:
    # Imported here: only this command needs it.
    import shtab

    from podium.client.cli import build_parser

    print(shtab.complete(build_parser(), shell=args.shell), end="")
    return EXIT_OK
