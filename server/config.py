"""Every Podium setting, in one place.

Each setting has an environment variable and a matching command-line flag of
``podium serve`` (the flag wins). Values are parsed and validated once at start:
a bad value stops the server with a message naming the variable, never a traceback.

The seed system's ``ORCHESTRATION_*`` variables keep their names and meaning.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs

from podium.server.addresses import LOOPBACK, AllowList, parse_allow_list
from podium.server.tls import KeyPair, TlsFileError, load_ca_bundle, load_key_pair

DEFAULT_ORGANIZATION_ID = "default"
"""Organization of every resource while authentication is off."""


class ConfigError(ValueError):
    """A setting has a bad value; the message names the variable and the fix."""


def _parse_address(name: str, raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"{name}={raw!r}: expected HOST:PORT, e.g. 127.0.0.1:50051 (port 0 picks a free one)"
        )
    return raw


def _parse_optional_address(name: str, raw: str) -> str | None:
    return None if raw == "" else _parse_address(name, raw)


def _parse_int(minimum: int, maximum: int | None = None) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected an integer") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise ConfigError(f"{name}={raw!r}: must be {bound}")
        return value

    return parse


def _parse_optional_int(minimum: int) -> Callable[[str, str], int | None]:
    parse = _parse_int(minimum)

    def parse_optional(name: str, raw: str) -> int | None:
        return None if raw.strip() in ("", "null", "none") else parse(name, raw)

    return parse_optional


def _parse_float(minimum: float) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected a number") from None
        if not math.isfinite(value) or value < minimum:
            raise ConfigError(f"{name}={raw!r}: must be a finite number >= {minimum}")
        return value

    return parse


def _parse_database_url(name: str, raw: str) -> str | None:
    if raw == "":
        return None
    if urlsplit(raw).scheme not in ("postgres", "postgresql"):
        raise ConfigError(
            f"{name}: expected a postgresql:// URL, e.g. postgresql://user@host:5432/podium "
            "(leave it unset to use the embedded PostgreSQL)"
        )
    return raw


def _parse_http_url(name: str, raw: str) -> str | None:
    if raw == "":
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={raw!r}: expected an http:// or https:// URL")
    return raw


def _parse_choice(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.lower()
        if value not in choices:
            raise ConfigError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
        return value

    return parse


def _parse_agent_group(name: str, raw: str) -> str:
    value = raw.strip()
    if value and not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,127}", value):
        raise ConfigError(
            f"{name}={raw!r}: expected 1 to 128 lowercase letters, digits, '_', '.' and "
            "'-', starting with a letter or digit"
        )
    return value


def _parse_path(name: str, raw: str) -> Path:
    if not raw:
        raise ConfigError(f"{name}: must not be empty")
    return Path(raw).expanduser()


_START_RATE = re.compile(r"(\d+)/(\d+(?:\.\d+)?)([smhd]?)")
_RATE_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _parse_start_rate(name: str, raw: str) -> tuple[int, float] | None:
    """``N/PERIOD`` (PERIOD: seconds, or a number with s, m, h or d) -> (N, seconds)."""
    if raw == "":
        return None
    match = _START_RATE.fullmatch(raw.strip())
    if match is None:
        raise ConfigError(f"{name}={raw!r}: expected N/PERIOD, e.g. 100/1s or 6000/1m")
    count = int(match.group(1))
    seconds = float(match.group(2)) * _RATE_UNITS[match.group(3)]
    if count < 1 or not 1 <= seconds <= 86400:
        raise ConfigError(f"{name}={raw!r}: N must be at least 1, PERIOD 1 s to 1 d")
    return count, seconds


def _parse_optional_path(name: str, raw: str) -> Path | None:
    return None if raw.strip() == "" else Path(raw).expanduser()


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={raw!r}: expected true or false")


@dataclass(frozen=True)
class SecretValue:
    """A secret setting. It prints as ``***`` (start-up log, ``repr``); read ``value``."""

    value: str = field(repr=False)

    def __str__(self) -> str:
        return "***"


def _parse_webhook_secret(name: str, raw: str) -> SecretValue | None:
    """A Standard Webhooks secret: ``whsec_`` (optional) then base64 of >= 16 bytes."""
    if raw == "":
        return None
    encoded = raw.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) < 16:
        raise ConfigError(
            f"{name}: expected whsec_<base64 of at least 16 random bytes> (the value is not "
            'shown); generate one with: python -c "import base64, os; '
            "print('whsec_' + base64.b64encode(os.urandom(32)).decode())\""
        )
    return SecretValue(raw)


def _parse_agent_allow_list(name: str, raw: str) -> AllowList | None:
    if raw.strip() == "":
        return None
    if raw.strip().lower() == "none":
        return AllowList()
    try:
        return parse_allow_list(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _parse_token(name: str, raw: str) -> SecretValue | None:
    if raw == "":
        return None
    if len(raw) < 16 or not all(33 <= ord(ch) < 127 for ch in raw):
        raise ConfigError(
            f"{name}: expected at least 16 printable ASCII characters without spaces (the "
            'value is not shown); generate one with: python -c "import secrets; '
            'print(secrets.token_urlsafe(32))"'
        )
    return SecretValue(raw)


_ROLES = ("admin", "operator", "viewer", "agent")


def _parse_mtls_identities(name: str, raw: str) -> tuple[tuple[str, str, str], ...]:
    """``CN=ORG:ROLE,CN=ORG:ROLE`` -> ((CN, ORG, ROLE), ...)."""
    identities: dict[str, tuple[str, str]] = {}
    for entry in filter(None, (part.strip() for part in raw.split(","))):
        common_name, eq, grant = entry.rpartition("=")
        organization, colon, role = grant.partition(":")
        if not eq or not common_name or not colon or not organization or role not in _ROLES:
            raise ConfigError(
                f"{name}: {entry!r}: expected CN=ORGANIZATION:ROLE with ROLE one of "
                f"{', '.join(_ROLES)}, e.g. worker-1=acme:agent"
            )
        if common_name in identities:
            raise ConfigError(f"{name}: {common_name!r} is listed twice")
        identities[common_name] = (organization, role)
    return tuple((cn, org, role) for cn, (org, role) in identities.items())


def _setting(
    env: str,
    parse: Callable[[str, str], Any],
    help: str,
    default: Any = None,
    *,
    doc_default: str | None = None,
) -> Any:
    """A setting: its variable, parser and help (also the text of docs/configuration.md,
    generated by scripts/gen_config_docs.py). ``doc_default`` shows the default in the
    docs when the value depends on the machine or reads badly as it is."""
    if isinstance(default, (list, dict, set)):  # pragma: no cover - guard for authors
        raise TypeError("mutable default")
    metadata = {"env": env, "parse": parse, "help": help}
    if doc_default is not None:
        metadata["doc_default"] = doc_default
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    """Validated server settings. Build with :meth:`from_env` or :meth:`from_args`."""

    database_url: str | None = _setting(
        "PODIUM_DATABASE_URL",
        _parse_database_url,
        "PostgreSQL URL; unset starts an embedded PostgreSQL in the data directory.",
    )
    database_direct_url: str | None = _setting(
        "PODIUM_DATABASE_DIRECT_URL",
        _parse_database_url,
        "PostgreSQL URL that bypasses a connection pooler, for what needs a session of "
        "its own: LISTEN and the migrator's lock. Unset: PODIUM_DATABASE_URL. Required "
        "with PODIUM_DATABASE_POOL_MODE=transaction.",
    )
    database_pool_mode: str = _setting(
        "PODIUM_DATABASE_POOL_MODE",
        _parse_choice("session", "transaction"),
        "How PODIUM_DATABASE_URL pools server connections: session (a direct connection, "
        "or a pooler in session mode) or transaction (e.g. PgBouncer pool_mode=transaction:"
        " no named prepared statements on PODIUM_DATABASE_URL).",
        "session",
    )
    listen_address: str = _setting(
        "PODIUM_LISTEN_ADDRESS",
        _parse_address,
        "gRPC listen address HOST:PORT (port 0 picks a free port).",
        "127.0.0.1:50051",
    )
    data_dir: Path = _setting(
        "PODIUM_DATA_DIR",
        _parse_path,
        "Directory for the embedded PostgreSQL and other local state.",
        platformdirs.user_data_path("podium"),
        doc_default="the user data directory (~/.local/share/podium on Linux)",
    )
    metrics_address: str | None = _setting(
        "PODIUM_METRICS_ADDRESS",
        _parse_optional_address,
        "HOST:PORT of the Prometheus /metrics endpoint; unset disables it.",
    )
    metrics_token: SecretValue | None = _setting(
        "PODIUM_METRICS_TOKEN",
        _parse_token,
        "Bearer token the /metrics endpoint requires (Authorization: Bearer <token>); "
        "unset serves metrics to anyone who reaches PODIUM_METRICS_ADDRESS.",
    )
    tls_cert_file: Path | None = _setting(
        "PODIUM_TLS_CERT_FILE",
        _parse_optional_path,
        "PEM certificate chain of the gRPC port; with PODIUM_TLS_KEY_FILE the port serves "
        "TLS only. Unset: plaintext. Replaced files are served to new connections without "
        "a restart (a set that does not load is logged, the previous one kept).",
    )
    tls_key_file: Path | None = _setting(
        "PODIUM_TLS_KEY_FILE",
        _parse_optional_path,
        "PEM private key (unencrypted) of PODIUM_TLS_CERT_FILE; its contents are never logged.",
    )
    tls_client_ca_file: Path | None = _setting(
        "PODIUM_TLS_CLIENT_CA_FILE",
        _parse_optional_path,
        "PEM CA bundle that turns on mTLS: every client must present a certificate "
        "chaining to it (the handshake fails otherwise). Needs PODIUM_TLS_CERT_FILE.",
    )
    console_address: str | None = _setting(
        "PODIUM_CONSOLE_ADDRESS",
        _parse_optional_address,
        "HOST:PORT of the web console and the HTTP/JSON gateway (POST /v1/<RPC>, "
        "Server-Sent Events for WatchRun), which forwards every request to this server's "
        "gRPC address; unset disables it (`podium demo` serves it on 127.0.0.1:50052).",
    )
    a2a_http_address: str | None = _setting(
        "PODIUM_A2A_HTTP_ADDRESS",
        _parse_optional_address,
        "HOST:PORT of Podium as an A2A agent over JSON-RPC (POST /, the agent card at "
        "/.well-known/agent-card.json), forwarding every call to lf.a2a.v1.A2AService on "
        "this server's gRPC address (always served there); unset disables it.",
    )
    console_max_body_bytes: int = _setting(
        "PODIUM_CONSOLE_MAX_BODY_BYTES",
        _parse_int(1024, 64 * 1024 * 1024),
        "Largest JSON request body the HTTP gateway and A2A's JSON-RPC binding accept "
        "(413 past it).",
        1024 * 1024,
        doc_default="1048576 (1 MiB)",
    )
    queue_depth_interval_seconds: float = _setting(
        "PODIUM_QUEUE_DEPTH_INTERVAL_SECONDS",
        _parse_float(0.1),
        "How often the orchestration_queue_depth gauge is sampled (one bounded count "
        "query); only while the metrics endpoint is enabled.",
        5.0,
    )
    health_check_interval_seconds: float = _setting(
        "PODIUM_HEALTH_CHECK_INTERVAL_SECONDS",
        _parse_float(0.05),
        "How often the database is pinged; Health reports NOT_SERVING while it fails.",
        5.0,
    )
    log_level: str = _setting(
        "PODIUM_LOG_LEVEL",
        _parse_choice("debug", "info", "warning", "error"),
        "Log level: debug, info, warning or error.",
        "info",
    )
    log_format: str = _setting(
        "PODIUM_LOG_FORMAT",
        _parse_choice("auto", "json", "text"),
        "Log format: auto, json or text; auto is JSON when stderr is not a terminal.",
        "auto",
    )
    event_loop: str = _setting(
        "PODIUM_EVENT_LOOP",
        _parse_choice("uvloop", "asyncio"),
        "The server's event loop: uvloop (faster: shorter step hand-offs, less CPU per "
        "step) or asyncio (the standard library's); uvloop falls back to asyncio where it "
        "is not installed (Windows).",
        "uvloop",
    )
    shutdown_grace_seconds: float = _setting(
        "PODIUM_SHUTDOWN_GRACE_SECONDS",
        _parse_float(0),
        "Seconds in-flight RPCs get to finish on SIGTERM before they are cancelled.",
        10.0,
    )
    max_message_bytes: int = _setting(
        "PODIUM_MAX_MESSAGE_BYTES",
        _parse_int(1024, 64 * 1024 * 1024),
        "Maximum gRPC message size, received and sent. Responses are built to fit it: "
        "a run, event or approval too large leaves out its largest payloads (read them "
        "with GetRunPayload) and pages stop early (operations.md, Message size limits).",
        4 * 1024 * 1024,
        doc_default="4194304 (4 MiB)",
    )
    max_streams_per_connection: int = _setting(
        "PODIUM_MAX_STREAMS_PER_CONNECTION",
        _parse_int(1, 100_000),
        "WatchRun, WatchRuns and A2A task streams (SendStreamingMessage, SubscribeToTask) "
        "one client connection may hold open at once; "
        "one more is refused with RESOURCE_EXHAUSTED (reason TOO_MANY_STREAMS). Open "
        "more connections for more streams.",
        2000,
    )
    max_pending_calls: int = _setting(
        "PODIUM_MAX_PENDING_CALLS",
        _parse_int(100, 1_000_000),
        "Calls a replica has received but not yet started, across connections (a burst "
        "of new streams waits here for the event loop). gRPC's own default drops calls "
        "at random past 1,000 (the client sees CANCELLED, nothing is logged); past this "
        "value, new calls are dropped that way.",
        10_000,
    )
    db_pool_min_size: int = _setting(
        "PODIUM_DB_POOL_MIN_SIZE", _parse_int(0, 1000), "Minimum database connections.", 1
    )
    db_pool_max_size: int = _setting(
        "PODIUM_DB_POOL_MAX_SIZE", _parse_int(1, 1000), "Maximum database connections.", 10
    )
    organization_id: str = _setting(
        "PODIUM_DEFAULT_ORGANIZATION",
        lambda name, raw: raw or DEFAULT_ORGANIZATION_ID,
        "Organization of every request while authentication is off.",
        DEFAULT_ORGANIZATION_ID,
    )
    auth: str = _setting(
        "PODIUM_AUTH",
        _parse_choice("auto", "required", "disabled"),
        "API key authentication: required (every OrchestrationService call needs "
        "'authorization: Bearer <key>'), disabled (every caller acts as an admin of "
        "PODIUM_DEFAULT_ORGANIZATION) or auto: required when PODIUM_DATABASE_URL is set, "
        "disabled on the embedded PostgreSQL (podium demo, podium serve without a URL).",
        "auto",
    )
    auth_cache_seconds: float = _setting(
        "PODIUM_AUTH_CACHE_SECONDS",
        _parse_float(0),
        "How long a replica caches the answer for an API key; a revoked key stops "
        "working within this time.",
        30.0,
    )
    routing_policy_cache_seconds: float = _setting(
        "PODIUM_ROUTING_POLICY_CACHE_SECONDS",
        _parse_float(0),
        "How long a replica caches an organization's routing policy (StartRun and the "
        "check before each dispatch); the replica that takes an UpdateRoutingPolicy sees "
        "it at once, the others within this time.",
        5.0,
    )
    mtls_identities: tuple[tuple[str, str, str], ...] = _setting(
        "PODIUM_MTLS_IDENTITIES",
        _parse_mtls_identities,
        "Client certificate identities accepted without an API key: comma-separated "
        "CN=ORGANIZATION:ROLE entries, used when a call carries no bearer key and the "
        "peer presented a verified certificate with that common name (TLS transport).",
        (),
        doc_default="",
    )
    default_max_parallel: int | None = _setting(
        "ORCHESTRATION_DEFAULT_MAX_PARALLEL",
        _parse_optional_int(1),
        "Per-run parallelism when a definition sets none; unset falls back to "
        "ORCHESTRATION_MAX_CONCURRENCY, then to sequential (1).",
    )
    max_concurrency: int | None = _setting(
        "ORCHESTRATION_MAX_CONCURRENCY",
        _parse_optional_int(1),
        "Global cap on steps executing at once per server; unset means no cap.",
    )
    progress_webhook_url: str | None = _setting(
        "ORCHESTRATION_PROGRESS_WEBHOOK_URL",
        _parse_http_url,
        "Webhook receiving every run's lifecycle events.",
    )
    start_run_rate: tuple[int, float] | None = _setting(
        "PODIUM_START_RUN_RATE",
        _parse_start_rate,
        "At most N StartRun calls per organization per period, e.g. 100/1s or 6000/1m "
        "(fixed windows counted in the database, across replicas); past it StartRun is "
        "RESOURCE_EXHAUSTED with RetryInfo. Unset: no limit.",
    )
    quota_daily_tokens: int = _setting(
        "PODIUM_QUOTA_DAILY_TOKENS",
        _parse_int(0),
        "Tokens (input + output) an organization may use per UTC day; once reached, "
        "StartRun is refused with RESOURCE_EXHAUSTED (0: no quota).",
        0,
    )
    quota_monthly_tokens: int = _setting(
        "PODIUM_QUOTA_MONTHLY_TOKENS",
        _parse_int(0),
        "Tokens (input + output) an organization may use per UTC calendar month (0: no quota).",
        0,
    )
    quota_daily_cost_usd: float = _setting(
        "PODIUM_QUOTA_DAILY_COST_USD",
        _parse_float(0),
        "Cost in US dollars an organization may use per UTC day (0: no quota).",
        0.0,
    )
    quota_monthly_cost_usd: float = _setting(
        "PODIUM_QUOTA_MONTHLY_COST_USD",
        _parse_float(0),
        "Cost in US dollars an organization may use per UTC calendar month (0: no quota).",
        0.0,
    )
    cache_max_definitions: int = _setting(
        "ORCHESTRATION_CACHE_MAX_DEFINITIONS",
        _parse_int(0),
        "Definitions kept in the in-process cache, and as many StartRun run templates "
        "(a saved version's plan and step rows, encoded; 0 disables both).",
        200,
    )
    cache_max_step_outputs: int = _setting(
        "ORCHESTRATION_CACHE_MAX_STEP_OUTPUTS",
        _parse_int(0),
        "Step outputs kept in the in-process cache in front of the step_cache table.",
        2000,
    )
    cache_default_ttl_seconds: float = _setting(
        "ORCHESTRATION_CACHE_DEFAULT_TTL_SECONDS",
        _parse_float(0),
        "Time to live of a cached step output when neither the step nor the definition "
        "sets one (0: no expiry).",
        3600.0,
    )
    default_step_timeout_seconds: float = _setting(
        "ORCHESTRATION_DEFAULT_STEP_TIMEOUT_SECONDS",
        _parse_float(0.001),
        "Step timeout when neither the step, the definition nor the agent sets one.",
        300.0,
    )
    agent_wait_seconds: float = _setting(
        "PODIUM_AGENT_WAIT_SECONDS",
        _parse_float(0),
        "How long a step attempt waits for an agent that is down (unreachable, NOT_SERVING, "
        "or gone under a running call) to come back before it fails with "
        "AGENT_UNAVAILABLE, within the attempt's timeout (an agent restart then costs no "
        "attempt); the step reports the wait as progress. 0: fail at once.",
        60.0,
    )
    a2a_card_refresh_seconds: float = _setting(
        "PODIUM_A2A_CARD_REFRESH_SECONDS",
        _parse_float(1),
        "How old the agent card of an A2A agent registered by its card's URL may get "
        "before a call reads it again (and picks its binding again); a failed re-read "
        "keeps the last card.",
        300.0,
    )
    max_orchestration_depth: int = _setting(
        "ORCHESTRATION_MAX_DEPTH",
        _parse_int(1, 100),
        "Deepest nesting of sub-orchestrations (a child run of a child run ...); a step "
        "that would start a deeper one fails with MAX_DEPTH_EXCEEDED.",
        5,
    )
    agent_callback_address: str | None = _setting(
        "PODIUM_AGENT_CALLBACK_ADDRESS",
        _parse_optional_address,
        "HOST:PORT at which agents reach this server's gRPC API, sent with every agent "
        "call (ExecuteTaskRequest.podium_address). Unset: the listen address, unless its "
        "host is a wildcard (then none is sent).",
    )
    max_runs_per_step: int = _setting(
        "ORCHESTRATION_MAX_RUNS_PER_STEP",
        _parse_int(1, 100_000),
        "Most runs an agent may start with one step attempt's credential; StartRun "
        "answers RESOURCE_EXHAUSTED (STEP_RUN_LIMIT) past it.",
        100,
    )
    max_plan_steps: int = _setting(
        "ORCHESTRATION_MAX_PLAN_STEPS",
        _parse_int(1, 100_000),
        "Most steps in the definition a `plan` step's planner returns; a larger plan fails "
        "the step with PLAN_TOO_LARGE (not retried).",
        100,
    )
    for_each_max_items: int = _setting(
        "ORCHESTRATION_FOR_EACH_MAX_ITEMS",
        _parse_int(1, 1_000_000),
        "Most items a `for_each` step fans out to; a longer list fails the step with "
        "FOR_EACH_TOO_MANY_ITEMS (not retried).",
        10_000,
    )
    agents: str = _setting(
        "PODIUM_AGENTS",
        lambda name, raw: raw,
        "Static agents: name=host:port;skills=a|b;max=4;timeout=30;protocol=a2a entries "
        "separated by commas (options optional), or @/path/agents.yaml "
        "(see server/agents/static.py).",
        "",
    )
    agent_group: str = _setting(
        "PODIUM_AGENT_GROUP",
        _parse_agent_group,
        "Name of the group of replicas that declares PODIUM_AGENTS together: the group's "
        "static agents are those its last started replica declared, kept while any "
        "replica of the group runs. Unset: each replica declares its own, and a static "
        "agent is removed when no running replica declares it.",
        "",
    )
    agent_allowed_networks: AllowList | None = _setting(
        "PODIUM_AGENT_ALLOWED_NETWORKS",
        _parse_agent_allow_list,
        "Non-public agent endpoints Podium may connect to (RegisterAgent, PODIUM_AGENTS, "
        "every call): comma-separated networks (10.0.0.0/8, ::1), host names "
        "(agents.internal), domains (.svc.cluster.local) or loopback; none admits none. "
        "Loopback, link-local (cloud metadata), private, unspecified and reserved "
        "addresses are refused otherwise. Unset: loopback on the embedded PostgreSQL (a "
        "local development server), none with PODIUM_DATABASE_URL.",
        doc_default="unset",
    )
    agent_dns_cache_seconds: float = _setting(
        "PODIUM_AGENT_DNS_CACHE_SECONDS",
        _parse_float(0),
        "How long the admitted addresses of an agent's host name are kept before it is "
        "resolved again (a name re-bound elsewhere is followed within this; a call that "
        "finds nothing listening resolves it again at once). 0: resolve before every "
        "call. Calls always connect to checked addresses.",
        5.0,
    )
    agent_tls_ca_file: Path | None = _setting(
        "PODIUM_AGENT_TLS_CA_FILE",
        _parse_optional_path,
        "PEM CA bundle trusted for agents reached over TLS (endpoints grpcs://HOST:PORT); "
        "unset trusts the system's CA roots.",
    )
    agent_tls_cert_file: Path | None = _setting(
        "PODIUM_AGENT_TLS_CERT_FILE",
        _parse_optional_path,
        "PEM client certificate Podium presents to TLS agents (mTLS); with "
        "PODIUM_AGENT_TLS_KEY_FILE.",
    )
    agent_tls_key_file: Path | None = _setting(
        "PODIUM_AGENT_TLS_KEY_FILE",
        _parse_optional_path,
        "PEM private key (unencrypted) of PODIUM_AGENT_TLS_CERT_FILE.",
    )
    worker_slots: int = _setting(
        "PODIUM_WORKER_SLOTS",
        _parse_int(1, 10_000),
        "Steps one replica executes at once when ORCHESTRATION_MAX_CONCURRENCY is unset.",
        100,
    )
    lease_seconds: float = _setting(
        "PODIUM_LEASE_SECONDS",
        _parse_float(0.5),
        "Lease of a running step; renewed every third of it, re-queued after it expires.",
        30.0,
    )
    poll_interval_seconds: float = _setting(
        "PODIUM_POLL_INTERVAL_SECONDS",
        _parse_float(0.05),
        "Fallback timer of the scheduler when no notification arrives.",
        1.0,
    )
    schedule_misfire_grace_seconds: float = _setting(
        "PODIUM_SCHEDULE_MISFIRE_GRACE_SECONDS",
        _parse_float(0.0),
        "A schedule's tick claimed later than this after its fire time (a downtime) is "
        "missed: its catch-up policy decides whether it still starts a run.",
        60.0,
    )
    claim_batch_size: int = _setting(
        "PODIUM_CLAIM_BATCH_SIZE",
        _parse_int(1, 1000),
        "Steps claimed per scheduler round trip.",
        32,
    )
    max_running_steps_per_org: int = _setting(
        "PODIUM_MAX_RUNNING_STEPS_PER_ORG",
        _parse_int(0),
        "At most this many steps of one organization execute at once, across every "
        "replica (counted in the claim; a sub-orchestration step waiting for its child "
        "run does not count). Steps past it stay queued. 0: no cap.",
        0,
    )
    allow_private_webhooks: bool = _setting(
        "ORCHESTRATION_ALLOW_PRIVATE_WEBHOOKS",
        _parse_bool,
        "Allow webhook targets on loopback, link-local or private addresses.",
        False,
    )
    webhook_secret: SecretValue | None = _setting(
        "PODIUM_WEBHOOK_SECRET",
        _parse_webhook_secret,
        "Standard Webhooks signing secret (whsec_<base64>); webhooks are refused without it.",
    )
    webhook_max_attempts: int = _setting(
        "PODIUM_WEBHOOK_MAX_ATTEMPTS",
        _parse_int(1, 100),
        "Tries of one webhook delivery before it is marked dead.",
        8,
    )
    webhook_backoff_initial_seconds: float = _setting(
        "PODIUM_WEBHOOK_BACKOFF_INITIAL_SECONDS",
        _parse_float(0.01),
        "Delay before the second try of a webhook delivery; each next one is 4 times "
        "longer (capped), with jitter.",
        5.0,
    )
    webhook_backoff_max_seconds: float = _setting(
        "PODIUM_WEBHOOK_BACKOFF_MAX_SECONDS",
        _parse_float(0.01),
        "Longest delay between two tries of a webhook delivery.",
        3600.0,
    )
    webhook_timeout_seconds: float = _setting(
        "PODIUM_WEBHOOK_TIMEOUT_SECONDS",
        _parse_float(0.1),
        "Time a webhook receiver gets to accept the connection and answer a delivery.",
        10.0,
    )
    webhook_concurrency: int = _setting(
        "PODIUM_WEBHOOK_CONCURRENCY",
        _parse_int(1, 1000),
        "Webhook deliveries one replica sends at once.",
        16,
    )
    event_retention_hours: float = _setting(
        "PODIUM_EVENT_RETENTION_HOURS",
        _parse_float(0),
        "Events of runs that ended longer ago than this, and finished webhook deliveries "
        "as old, are deleted in the background; 0 keeps everything.",
        168.0,
    )
    run_retention_days: float = _setting(
        "PODIUM_RUN_RETENTION_DAYS",
        _parse_float(0),
        "Top-level runs that ended longer ago than this are deleted in the background "
        "with their child runs, steps, attempts, events, conversations and deliverables "
        "(a tree with a run not ended is kept whole); 0 keeps every run. Fractions are "
        "allowed. Archive first with `podium runs export`.",
        0.0,
    )
    run_retention_batch_size: int = _setting(
        "PODIUM_RUN_RETENTION_BATCH_SIZE",
        _parse_int(1, 10_000),
        "Top-level runs one run-retention transaction scans and deletes at most.",
        100,
    )
    retention_interval_seconds: float = _setting(
        "PODIUM_RETENTION_INTERVAL_SECONDS",
        _parse_float(1),
        "How often each replica runs the retention pass (runs, events, webhook "
        "deliveries; one replica at a time).",
        600.0,
    )
    external_event_retention_seconds: float = _setting(
        "PODIUM_EXTERNAL_EVENT_RETENTION_SECONDS",
        _parse_float(1),
        "How long an event sent with SendEvent is kept: a wait_for_event step that starts "
        "waiting within this time after the event was sent still receives it, and the "
        "event id stays known for idempotency (a resend within it delivers nothing).",
        86400.0,
    )

    def __post_init__(self) -> None:
        if isinstance(self.agent_allowed_networks, str):  # an override given as text
            allowed = _parse_agent_allow_list(
                "PODIUM_AGENT_ALLOWED_NETWORKS", self.agent_allowed_networks
            )
            object.__setattr__(self, "agent_allowed_networks", allowed)
        if self.database_pool_mode == "transaction" and self.database_direct_url is None:
            raise ConfigError(
                "PODIUM_DATABASE_POOL_MODE=transaction needs PODIUM_DATABASE_DIRECT_URL: "
                "LISTEN and the migrator's lock need a session that a transaction pooler "
                "does not keep (point it at PostgreSQL itself)"
            )
        if self.database_direct_url is not None and self.database_url is None:
            raise ConfigError(
                "PODIUM_DATABASE_DIRECT_URL is set without PODIUM_DATABASE_URL "
                "(the embedded PostgreSQL needs neither)"
            )
        for path_field in _PATH_FIELDS:
            value = getattr(self, path_field)
            if isinstance(value, str):  # an override given as text
                object.__setattr__(self, path_field, _parse_optional_path(path_field, value))
        # Every TLS file is read and checked now: a bad one stops the start before the
        # server binds its port or touches the database.
        self.server_tls()
        self.agent_tls()
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ConfigError(
                "PODIUM_DB_POOL_MIN_SIZE must not exceed PODIUM_DB_POOL_MAX_SIZE "
                f"({self.db_pool_min_size} > {self.db_pool_max_size})"
            )

    def server_tls(self) -> tuple[KeyPair, bytes | None] | None:
        """The gRPC port's certificate and key and the client CA (mTLS), read from
        their files now; None without PODIUM_TLS_CERT_FILE (plaintext).

        Raises:
            ConfigError: half a pair, a client CA without a certificate, or a file that
                cannot be used (missing, unreadable, not PEM, key not the certificate's).
        """
        cert, key, client_ca = self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file
        if cert is None or key is None:
            if cert is not None or key is not None:
                missing = "PODIUM_TLS_KEY_FILE" if key is None else "PODIUM_TLS_CERT_FILE"
                raise ConfigError(
                    f"{missing} is required with "
                    f"{'PODIUM_TLS_CERT_FILE' if key is None else 'PODIUM_TLS_KEY_FILE'}"
                )
            if client_ca is not None:
                raise ConfigError(
                    "PODIUM_TLS_CLIENT_CA_FILE (mTLS) needs PODIUM_TLS_CERT_FILE and "
                    "PODIUM_TLS_KEY_FILE: client certificates are only asked for over TLS"
                )
            return None
        try:
            pair = load_key_pair(cert, key)
            ca = (
                None
                if client_ca is None
                else load_ca_bundle("PODIUM_TLS_CLIENT_CA_FILE", client_ca)
            )
        except TlsFileError as exc:
            raise ConfigError(str(exc)) from None
        return pair, ca

    def server_tls_files(self) -> list[Path]:
        """The files of :meth:`server_tls` (watched for replacement while serving)."""
        files = (self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file)
        return [path for path in files if path is not None]

    def agent_tls(self) -> tuple[bytes | None, KeyPair | None]:
        """What Podium trusts of TLS agents (None: the system's roots) and the client
        certificate it presents to them (None: none), read from their files now.

        Raises:
            ConfigError: half a pair, or a file that cannot be used.
        """
        cert, key = self.agent_tls_cert_file, self.agent_tls_key_file
        if (cert is None) != (key is None):
            missing = "PODIUM_AGENT_TLS_KEY_FILE" if key is None else "PODIUM_AGENT_TLS_CERT_FILE"
            raise ConfigError(f"{missing} is required: the agent client certificate is a pair")
        try:
            ca = (
                None
                if self.agent_tls_ca_file is None
                else load_ca_bundle("PODIUM_AGENT_TLS_CA_FILE", self.agent_tls_ca_file)
            )
            pair = (
                None
                if cert is None or key is None
                else load_key_pair(
                    cert,
                    key,
                    cert_setting="PODIUM_AGENT_TLS_CERT_FILE",
                    key_setting="PODIUM_AGENT_TLS_KEY_FILE",
                )
            )
        except TlsFileError as exc:
            raise ConfigError(str(exc)) from None
        return ca, pair

    @property
    def auth_required(self) -> bool:
        """Whether OrchestrationService calls need a key: PODIUM_AUTH, or when ``auto``
        whether a database URL is set (the embedded PostgreSQL is for demos)."""
        if self.auth == "auto":
            return self.database_url is not None
        return self.auth == "required"

    @property
    def agent_allow_list(self) -> AllowList:
        """The non-public agent targets admitted: PODIUM_AGENT_ALLOWED_NETWORKS, or when
        unset loopback on the embedded PostgreSQL and nothing with a database URL."""
        if self.agent_allowed_networks is not None:
            return self.agent_allowed_networks
        return LOOPBACK if self.database_url is None else AllowList()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every setting from ``env`` (default ``os.environ``); ``overrides`` win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            if name in env:
                values[f.name] = f.metadata["parse"](name, env[name])
        values.update(overrides)
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one ``--flag`` per setting (e.g. ``--listen-address``) to ``parser``."""
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            parser.add_argument(
                flag,
                dest=f"setting_{f.name}",
                metavar=f.metadata["env"],
                default=None,
                help=f"{f.metadata['help']} [env {f.metadata['env']}]",
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from the environment, overridden by flags added with :meth:`add_arguments`."""
        overrides: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = getattr(args, f"setting_{f.name}", None)
            if raw is not None:
                overrides[f.name] = f.metadata["parse"]("--" + f.name.replace("_", "-"), raw)
        return cls.from_env(env, **overrides)

    def describe(self) -> dict[str, str]:
        """Settings for the start-up log, with credentials removed from URLs."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and "://" in value:
                value = redact_url(value)
            out[f.metadata["env"]] = "" if value is None else str(value)
        return out


_PATH_FIELDS = (
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
    "agent_tls_ca_file",
    "agent_tls_cert_file",
    "agent_tls_key_file",
)


def redact_url(url: str) -> str:
    """``url`` without its password (and query, which may carry tokens)."""
    parts = urlsplit(url)
    # By hand, not with parts.password/port: a multi-host URL (host1:5432,host2:5432)
    # has no single port.
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if ":" not in userinfo and not parts.query:
        return url
    user = userinfo.partition(":")[0]
    netloc = f"{user}:***@{hosts}" if ":" in userinfo else f"{userinfo}{at}{hosts}"
    return parts._replace(netloc=netloc, query="").geturl()


def settings_help() -> Sequence[tuple[str, str, str]]:
    """(env var, default, help) for every setting (docs/configuration.md is rendered by
    scripts/gen_config_docs.py, which also shows the flag and the type)."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.metadata.get("doc_default", "" if f.default is None else str(f.default))
        rows.append((f.metadata["env"], default, f.metadata["help"]))
    return rows
