"""Podium's Python client library.

- :class:`PodiumClient` (asyncio) and :class:`SyncPodiumClient` (blocking): the
  OrchestrationService API with deadlines, retries, typed errors and a resuming
  :meth:`~PodiumClient.watch_run` (modules :mod:`podium.client.client` and
  :mod:`podium.client.sync_client`; shared policies in :mod:`podium.client.common`);
- typed errors (:mod:`podium.client.errors`): :class:`PodiumError`,
  :class:`ValidationError` with its :class:`FieldViolation` list, ...;
- definitions from YAML/JSON (:mod:`podium.client.definitions`):
  :func:`load_definition`, :func:`parse_definition`;
- the agent SDK (:mod:`podium.client.agent`) and the ``podium`` CLI
  (:mod:`podium.client.cli`).

Names are imported lazily, so ``import podium.client.agent`` does not load the client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from podium.client.client import PodiumClient
    from podium.client.common import (
        DEFAULT_ADDRESS,
        DEFAULT_TIMEOUT_SECONDS,
        TERMINAL_EVENT_TYPES,
        TERMINAL_RUN_STATES,
        DefinitionSource,
        EventPage,
        Page,
        RetryPolicy,
        WatchPolicy,
        to_dict,
    )
    from podium.client.definitions import (
        DefinitionFileError,
        definition_to_dict,
        load_definition,
        parse_definition,
    )
    from podium.client.errors import (
        AlreadyExistsError,
        DeadlineExceededError,
        FailedPreconditionError,
        FieldViolation,
        NotFoundError,
        PermissionDeniedError,
        PodiumError,
        ResourceExhaustedError,
        UnauthenticatedError,
        UnavailableError,
        UnimplementedError,
        ValidationError,
    )
    from podium.client.sync_client import SyncPodiumClient
    from podium.client.tls import TlsConfigError, agent_server_credentials, tls_credentials

__all__ = [
    "AlreadyExistsError",
    "DEFAULT_ADDRESS",
    "DEFAULT_TIMEOUT_SECONDS",
    "DeadlineExceededError",
    "DefinitionFileError",
    "DefinitionSource",
    "EventPage",
    "FailedPreconditionError",
    "FieldViolation",
    "NotFoundError",
    "Page",
    "PermissionDeniedError",
    "PodiumClient",
    "PodiumError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "SyncPodiumClient",
    "TERMINAL_EVENT_TYPES",
    "TERMINAL_RUN_STATES",
    "TlsConfigError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "ValidationError",
    "WatchPolicy",
    "agent_server_credentials",
    "definition_to_dict",
    "load_definition",
    "parse_definition",
    "tls_credentials",
    "to_dict",
]

_MODULES = {
    "podium.client.client": ("PodiumClient",),
    "podium.client.common": (
        "DEFAULT_ADDRESS",
        "DEFAULT_TIMEOUT_SECONDS",
        "TERMINAL_EVENT_TYPES",
        "TERMINAL_RUN_STATES",
        "DefinitionSource",
        "EventPage",
        "Page",
        "RetryPolicy",
        "WatchPolicy",
        "to_dict",
    ),
    "podium.client.sync_client": ("SyncPodiumClient",),
    "podium.client.tls": ("TlsConfigError", "agent_server_credentials", "tls_credentials"),
    "podium.client.definitions": (
        "DefinitionFileError",
        "definition_to_dict",
        "load_definition",
        "parse_definition",
    ),
    "podium.client.errors": (
        "AlreadyExistsError",
        "DeadlineExceededError",
        "FailedPreconditionError",
        "FieldViolation",
        "NotFoundError",
        "PermissionDeniedError",
        "PodiumError",
        "ResourceExhaustedError",
        "UnauthenticatedError",
        "UnavailableError",
        "UnimplementedError",
        "ValidationError",
    ),
}
_MODULE_OF = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
