"""Agent entries: the validation rules shared by RegisterAgent and the server
configuration, and the parser of static agents (``PODIUM_AGENTS``).

``PODIUM_AGENTS`` takes one of two forms; see :func:`parse_static_agents`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from podium.server.agents.a2a_http import card_location, is_card_url
from podium.server.agents.endpoints import endpoint_form_problem
from podium.server.agents.rate_limits import parse_rate, rate_limit_problems
from podium.server.outbound_http import UrlRefused

__all__ = [
    "MAX_CONCURRENCY",
    "MAX_ENDPOINT",
    "MAX_LABELS",
    "MAX_LABEL_KEY",
    "MAX_LABEL_VALUE",
    "MAX_NAME",
    "MAX_SKILLS",
    "MAX_TIMEOUT_SECONDS",
    "PROTOCOLS",
    "StaticAgent",
    "agent_problems",
    "normalize_protocol",
    "parse_static_agents",
    "skill_id_problem",
]

MAX_NAME = 128
MAX_ENDPOINT = 512
MAX_SKILLS = 100
MAX_LABELS = 64
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256
MAX_CONCURRENCY = 2**31 - 1  # int32 in the proto and the table
MAX_TIMEOUT_SECONDS = 86_400.0  # the longest step timeout a definition may ask for

PROTOCOLS = ("podium_v1", "a2a")
"""Stored values of ``agents.protocol`` (``Agent.Protocol`` without its prefix)."""

# Names of agents and skills follow the rule of definition names.
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_LABEL_KEY = re.compile(r"[a-z0-9_./-]+")

_PROTOCOL_ALIASES = {
    "": "podium_v1",
    "podium_v1": "podium_v1",
    "podium.agent.v1": "podium_v1",
    "protocol_podium_v1": "podium_v1",
    "a2a": "a2a",
    "protocol_a2a": "a2a",
}


@dataclass(frozen=True)
class StaticAgent:
    """An agent declared in the server configuration (``PODIUM_AGENTS``).

    Attributes:
        name: unique per organization, the rule of definition names.
        endpoint: ``HOST:PORT`` or a gRPC target such as ``dns:///summarizer:443``
            (the forms of :func:`podium.server.agents.endpoints.parse_endpoint`).
        skills: skill ids offered, in declaration order.
        max_concurrency: most tasks sent at once; 0 means unlimited.
        default_timeout_seconds: step timeout for this agent; 0 uses the server default.
        labels: free-form key/value pairs.
        protocol: ``podium_v1`` or ``a2a``.
        requests_per_period, tokens_per_period, rate_period_seconds: the rate limit
            (:mod:`.rate_limits`); all 0 means none.
        card_read: whether skills, max concurrency and timeout were merged with the
            agent's card (``agents/discovery.py``, at start); False as parsed.
    """

    name: str
    endpoint: str
    skills: tuple[str, ...] = ()
    max_concurrency: int = 0
    default_timeout_seconds: float = 0.0
    labels: Mapping[str, str] = field(default_factory=dict)
    protocol: str = "podium_v1"
    requests_per_period: int = 0
    tokens_per_period: int = 0
    rate_period_seconds: float = 0.0
    rate_per_key: bool = False
    card_read: bool = False


# --------------------------------------------------------------------------- rules


def _name_rule(what: str) -> str:
    return (
        f"{what} must be 1 to {MAX_NAME} characters of lowercase letters, digits, "
        "'_', '.' and '-', starting with a letter or digit"
    )


def _endpoint_problem(endpoint: str, protocol: str) -> str | None:
    if not endpoint:
        return "an endpoint is required: HOST:PORT or a gRPC target"
    if len(endpoint) > MAX_ENDPOINT:
        return f"must be at most {MAX_ENDPOINT} characters (got {len(endpoint)})"
    if is_card_url(endpoint):
        if protocol != "a2a":
            return (
                "an http(s) URL is an A2A agent card's URL: only A2A agents (protocol a2a) "
                f"are registered by URL; got '{endpoint}'"
            )
        try:
            card_location(endpoint)
        except UrlRefused as exc:
            return f"{exc}; got '{endpoint}'"
        return None
    problem = endpoint_form_problem(endpoint)
    if problem is not None:
        return f"{problem}; got '{endpoint}'"
    return None


def _label_key(key: str) -> str:
    # The field path convention of engine validation: `quoted` keys unless identifiers.
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return key
    return "`" + key.replace("`", "``") + "`"


def skill_id_problem(skill: str) -> str | None:
    """Why ``skill`` is not a valid skill id, or None."""
    if not skill or len(skill) > MAX_NAME or not _NAME.fullmatch(skill):
        return f"{_name_rule('skill ids')}; got '{skill[:MAX_NAME]}'"
    return None


def agent_problems(
    *,
    name: str,
    endpoint: str,
    skills: Sequence[str],
    max_concurrency: float,
    default_timeout_seconds: float,
    labels: Mapping[str, str],
    requests_per_period: float = 0,
    tokens_per_period: float = 0,
    rate_period_seconds: float = 0.0,
    protocol: str = "podium_v1",
) -> list[tuple[str, str]]:
    """Every problem of an agent entry, as ``(field path, description)`` pairs.

    The endpoint is a gRPC target, or for an A2A agent (``protocol`` ``a2a``) also an
    http(s) URL of its agent card (:mod:`.a2a_http`).

    Paths are relative to the agent (``name``, ``skills[1]``, ``labels.team``); an empty
    list means the entry is valid. Used for RegisterAgent and for ``PODIUM_AGENTS``.
    """
    problems: list[tuple[str, str]] = []
    if not name:
        problems.append(("name", "an agent name is required"))
    elif len(name) > MAX_NAME or not _NAME.fullmatch(name):
        problems.append(("name", f"{_name_rule('agent names')}; got '{name[:MAX_NAME]}'"))
    endpoint_problem = _endpoint_problem(endpoint, protocol)
    if endpoint_problem is not None:
        problems.append(("endpoint", endpoint_problem))
    if len(skills) > MAX_SKILLS:
        problems.append(("skills", f"at most {MAX_SKILLS} skills (got {len(skills)})"))
    seen: set[str] = set()
    for index, skill in enumerate(skills[:MAX_SKILLS]):
        path = f"skills[{index}]"
        problem = skill_id_problem(skill)
        if problem is not None:
            problems.append((path, problem))
        elif skill in seen:
            problems.append((path, f"duplicate skill '{skill}'"))
        seen.add(skill)
    if isinstance(max_concurrency, float) and not max_concurrency.is_integer():
        problems.append(("max_concurrency", f"must be a whole number (got {max_concurrency})"))
    elif not 0 <= max_concurrency <= MAX_CONCURRENCY:
        problems.append(
            (
                "max_concurrency",
                f"must be between 0 and {MAX_CONCURRENCY} (0 means unlimited); "
                f"got {max_concurrency}",
            )
        )
    if not math.isfinite(default_timeout_seconds):
        problems.append(
            ("default_timeout_seconds", f"must be a finite number (got {default_timeout_seconds})")
        )
    elif not 0 <= default_timeout_seconds <= MAX_TIMEOUT_SECONDS:
        problems.append(
            (
                "default_timeout_seconds",
                f"must be between 0 and {MAX_TIMEOUT_SECONDS:g} seconds (0 uses the server "
                f"default); got {default_timeout_seconds:g}",
            )
        )
    problems.extend(
        rate_limit_problems(requests_per_period, tokens_per_period, rate_period_seconds)
    )
    if len(labels) > MAX_LABELS:
        problems.append(("labels", f"at most {MAX_LABELS} labels (got {len(labels)})"))
    for key in sorted(labels):
        path = f"labels.{_label_key(key)}"
        if not key or len(key) > MAX_LABEL_KEY or not _LABEL_KEY.fullmatch(key):
            problems.append(
                (
                    path,
                    f"label keys must be 1 to {MAX_LABEL_KEY} characters of lowercase "
                    f"letters, digits, '_', '.', '-' and '/'; got '{key[:MAX_LABEL_KEY]}'",
                )
            )
        value = labels[key]
        if len(value) > MAX_LABEL_VALUE:
            problems.append(
                (
                    path,
                    f"label values must be at most {MAX_LABEL_VALUE} characters (got {len(value)})",
                )
            )
    return problems


def normalize_protocol(value: str) -> str | None:
    """The stored protocol (``podium_v1`` / ``a2a``) for a spelling such as ``A2A``,
    ``PROTOCOL_A2A`` or ``podium.agent.v1`` (empty means ``podium_v1``); None if unknown."""
    return _PROTOCOL_ALIASES.get(value.strip().lower())


# --------------------------------------------------------------------------- parsing

_COMPACT_OPTIONS = {
    "skills": "skills",
    "max": "max_concurrency",
    "max_concurrency": "max_concurrency",
    "timeout": "default_timeout_seconds",
    "default_timeout_seconds": "default_timeout_seconds",
    "protocol": "protocol",
    "rate": "rate",
    "tokens": "tokens",
    "rate_per_key": "rate_per_key",
}

_FILE_FIELDS = frozenset(
    {
        "name",
        "endpoint",
        "skills",
        "max_concurrency",
        "default_timeout_seconds",
        "labels",
        "protocol",
        "rate_limit",
    }
)
_RATE_FIELDS = frozenset({"requests_per_period", "tokens_per_period", "period_seconds", "per_key"})


def parse_static_agents(raw: str) -> list[StaticAgent]:
    """Parse the ``PODIUM_AGENTS`` setting into agents declared by configuration.

    Two forms are accepted:

    **Compact**: entries separated by ``,``; each entry is ``name=endpoint`` followed by
    optional ``;key=value`` options::

        summarizer=127.0.0.1:50061,search=dns:///search:443;skills=search|fetch;max=4;timeout=30

    Options: ``skills`` (``|``-separated skill ids), ``max`` (or ``max_concurrency``;
    0 = unlimited), ``timeout`` (or ``default_timeout_seconds``; 0 = server default) and
    ``protocol`` (``podium_v1``, the default, or ``a2a``), ``rate`` (requests per period,
    ``COUNT/PERIOD`` such as ``60/60s``; periods in ``s``, ``m`` or ``h``) and ``tokens``
    (tokens per period, the same form and the same period), ``rate_per_key`` (``true``:
    the limit applies to each concurrency key value separately). Spaces around entries, keys
    and values are ignored. An endpoint cannot contain ``,`` or ``;`` in this form.

    **File**: ``@/path/to/agents.yaml``, or any value ending in ``.yaml``, ``.yml`` or
    ``.json``: a list of agent objects using the ``podium.orchestration.v1.Agent`` field
    names (or a mapping with that list under ``agents``)::

        - name: summarizer
          endpoint: 127.0.0.1:50061
          skills: [summarize]
          max_concurrency: 4
          default_timeout_seconds: 30
          labels: {team: research}
          protocol: podium_v1        # or a2a; PROTOCOL_* spellings are accepted too
          rate_limit: {requests_per_period: 60, tokens_per_period: 100000, period_seconds: 60}
          # rate_limit may also say per_key: true (one window per concurrency key value)

    An empty value means no static agents.

    Raises:
        ValueError: the value, the file or an entry is malformed; the message names the
            entry (``entry 2 ('search'): ...``) and the problem, without the variable
            name, which the caller adds (``PODIUM_AGENTS: entry 2 ('search'): ...``).
    """
    text = raw.strip()
    if not text:
        return []
    if text.startswith("@") or text.lower().endswith((".yaml", ".yml", ".json")):
        return _parse_file(text.removeprefix("@").strip())
    return _parse_compact(text)


def _entry_label(index: int, name: str | None) -> str:
    return f"entry {index}" + (f" ({name!r})" if name else "")


def _check(agent: StaticAgent, label: str) -> StaticAgent:
    problems = agent_problems(
        name=agent.name,
        endpoint=agent.endpoint,
        skills=agent.skills,
        max_concurrency=agent.max_concurrency,
        default_timeout_seconds=agent.default_timeout_seconds,
        labels=agent.labels,
        requests_per_period=agent.requests_per_period,
        tokens_per_period=agent.tokens_per_period,
        rate_period_seconds=agent.rate_period_seconds,
        protocol=agent.protocol,
    )
    if problems:
        details = "; ".join(f"{path}: {description}" for path, description in problems)
        raise ValueError(f"{label}: {details}")
    return agent


def _check_unique(agents: list[StaticAgent]) -> list[StaticAgent]:
    seen: dict[str, int] = {}
    for index, agent in enumerate(agents, start=1):
        if agent.name in seen:
            raise ValueError(
                f"{_entry_label(index, agent.name)}: duplicate agent name "
                f"(already declared by entry {seen[agent.name]})"
            )
        seen[agent.name] = index
    return agents


def _parse_compact(text: str) -> list[StaticAgent]:
    agents: list[StaticAgent] = []
    for index, entry in enumerate(text.split(","), start=1):
        entry = entry.strip()
        if not entry:
            raise ValueError(
                f"{_entry_label(index, None)} is empty (stray ',' in "
                "'name=host:port,name2=host:port')"
            )
        head, *options = (part.strip() for part in entry.split(";"))
        name, sep, endpoint = (part.strip() for part in head.partition("="))
        label = _entry_label(index, name)
        if not sep or not name:
            raise ValueError(f"{label}: expected name=HOST:PORT, got {head!r}")
        values: dict[str, Any] = {}
        for option in options:
            if not option:
                continue
            key, sep, value = (part.strip() for part in option.partition("="))
            canonical = _COMPACT_OPTIONS.get(key.lower())
            if not sep or canonical is None:
                known = ", ".join(sorted(_COMPACT_OPTIONS))
                raise ValueError(
                    f"{label}: unknown option {option!r}; expected key=value with key one of "
                    f"{known}"
                )
            if canonical in values:
                raise ValueError(f"{label}: option {key!r} is given twice")
            values[canonical] = _compact_value(label, key, canonical, value)
        _compact_rates(label, values)
        agents.append(_check(StaticAgent(name=name, endpoint=endpoint, **values), label))
    return _check_unique(agents)


def _compact_value(label: str, key: str, canonical: str, value: str) -> Any:
    if canonical == "skills":
        return tuple(skill.strip() for skill in value.split("|")) if value else ()
    if canonical == "max_concurrency":
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{label}: {key}={value!r} must be a whole number >= 0") from None
    if canonical == "rate_per_key":
        if value.lower() not in ("true", "false"):
            raise ValueError(f"{label}: {key}={value!r} must be true or false")
        return value.lower() == "true"
    if canonical in ("rate", "tokens"):
        try:
            return parse_rate(value)
        except ValueError as exc:
            raise ValueError(f"{label}: {key}: {exc}") from None
    if canonical == "default_timeout_seconds":
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{label}: {key}={value!r} must be a number of seconds >= 0") from None
    protocol = normalize_protocol(value)
    if protocol is None:
        raise ValueError(f"{label}: {key}={value!r}: expected one of {', '.join(PROTOCOLS)}")
    return protocol


def _compact_rates(label: str, values: dict[str, Any]) -> None:
    """Turn the ``rate`` / ``tokens`` options of ``values`` into the agent's fields."""
    periods = set()
    if "rate" in values:
        values["requests_per_period"], period = values.pop("rate")
        periods.add(period)
    if "tokens" in values:
        values["tokens_per_period"], period = values.pop("tokens")
        periods.add(period)
    if len(periods) > 1:
        raise ValueError(f"{label}: rate and tokens must have the same period")
    if periods:
        values["rate_period_seconds"] = periods.pop()


def _file_rate(label: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or any(key not in _RATE_FIELDS for key in raw):
        raise ValueError(
            f"{label}: rate_limit must be an object with {', '.join(sorted(_RATE_FIELDS))}"
        )
    values = {
        "requests_per_period": raw.get("requests_per_period", 0),
        "tokens_per_period": raw.get("tokens_per_period", 0),
        "rate_period_seconds": raw.get("period_seconds", 0),
    }
    for key, value in values.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"{label}: rate_limit: {key} must be a number")
    values["rate_period_seconds"] = float(values["rate_period_seconds"])
    per_key = raw.get("per_key", False)
    if not isinstance(per_key, bool):
        raise ValueError(f"{label}: rate_limit: per_key must be true or false")
    values["rate_per_key"] = per_key
    return values


def _parse_file(location: str) -> list[StaticAgent]:
    path = Path(location).expanduser()
    try:
        content = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    try:
        data: Any = (
            json.loads(content) if path.suffix.lower() == ".json" else yaml.safe_load(content)
        )
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{str(path)!r} is not valid JSON/YAML: {exc}") from None
    if data is None:
        return []
    if isinstance(data, dict) and set(data) == {"agents"}:
        data = data["agents"]
    if not isinstance(data, list):
        raise ValueError(
            f"{str(path)!r} must hold a list of agents (or a mapping with an 'agents' list)"
        )
    agents = [_file_entry(index, item) for index, item in enumerate(data, start=1)]
    return _check_unique(agents)


def _file_entry(index: int, item: Any) -> StaticAgent:
    if not isinstance(item, dict):
        raise ValueError(
            f"{_entry_label(index, None)}: expected an object with name and endpoint, "
            f"got {type(item).__name__}"
        )
    name = item.get("name", "")
    label = _entry_label(index, name if isinstance(name, str) else None)
    unknown = sorted(str(key) for key in item if key not in _FILE_FIELDS)
    if unknown:
        raise ValueError(
            f"{label}: unknown field(s) {', '.join(unknown)}; expected "
            f"{', '.join(sorted(_FILE_FIELDS))}"
        )
    skills = item.get("skills") or []
    labels = item.get("labels") or {}
    max_concurrency = item.get("max_concurrency", 0)
    timeout = item.get("default_timeout_seconds", 0)
    protocol_raw = item.get("protocol", "")
    checks: list[tuple[bool, str]] = [
        (isinstance(name, str), "name must be a string"),
        (isinstance(item.get("endpoint", ""), str), "endpoint must be a string"),
        (
            isinstance(skills, list) and all(isinstance(s, str) for s in skills),
            "skills must be a list of strings",
        ),
        (
            isinstance(labels, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()),
            "labels must map strings to strings",
        ),
        (
            isinstance(max_concurrency, int) and not isinstance(max_concurrency, bool),
            "max_concurrency must be a whole number >= 0",
        ),
        (
            isinstance(timeout, int | float) and not isinstance(timeout, bool),
            "default_timeout_seconds must be a number of seconds >= 0",
        ),
        (isinstance(protocol_raw, str), "protocol must be a string"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"{label}: {message}")
    protocol = normalize_protocol(protocol_raw)
    if protocol is None:
        raise ValueError(
            f"{label}: protocol {protocol_raw!r}: expected one of {', '.join(PROTOCOLS)}"
        )
    agent = StaticAgent(
        name=name,
        endpoint=item.get("endpoint", ""),
        skills=tuple(skills),
        max_concurrency=max_concurrency,
        default_timeout_seconds=float(timeout),
        labels=dict(labels),
        protocol=protocol,
        **_file_rate(label, item.get("rate_limit")),
    )
    return _check(agent, label)
