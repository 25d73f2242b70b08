"""Opaque page tokens (AIP-158).

A token is URL-safe base64 of compact JSON holding the keyset position and a hash of
the request's filters, so a token cannot be replayed with different filters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message

from podium.server.engine.errors import FieldViolation, InvalidArgument
from podium.server.engine.sizes import fitting_count

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(
    requested: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE
) -> int:
    """The effective page size: ``default`` for 0, capped at ``maximum``; negative is an error."""
    if requested < 0:
        raise InvalidArgument(
            "page_size must not be negative",
            violations=[FieldViolation(field="page_size", description="must be >= 0")],
        )
    return default if requested == 0 else min(requested, maximum)


def _filters_hash(filters: Any) -> str:
    raw = json.dumps(filters, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def encode_token(position: Any, filters: Any) -> str:
    """A token resuming after ``position`` for a request with ``filters``."""
    raw = json.dumps({"p": position, "f": _filters_hash(filters)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str, filters: Any) -> Any:
    """The position stored in ``token`` (None for an empty token).

    Raises InvalidArgument when the token is malformed or was issued for other filters.
    """
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        position, fingerprint = data["p"], data["f"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidArgument(
            "page_token is not a token issued by this server",
            reason="INVALID_PAGE_TOKEN",
            violations=[FieldViolation(field="page_token", description="malformed page token")],
        ) from None
    if fingerprint != _filters_hash(filters):
        raise InvalidArgument(
            "page_token was issued for a request with other filters",
            reason="INVALID_PAGE_TOKEN",
            violations=[
                FieldViolation(
                    field="page_token",
                    description=(
                        "page token does not match the request's filters; start from page 1"
                    ),
                )
            ],
        )
    return position


class _Keyed(Protocol):
    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> uuid.UUID: ...


_Row = TypeVar("_Row", bound=_Keyed)


def decode_keyset(token: str, filters: Any) -> tuple[datetime, uuid.UUID] | None:
    """The (created_at, id) position stored in a page token of a time-ordered list."""
    position = decode_token(token, filters)
    if position is None:
        return None
    try:
        return datetime.fromisoformat(position[0]), uuid.UUID(position[1])
    except (TypeError, ValueError, IndexError, KeyError):
        raise InvalidArgument(
            "page_token is not a token issued by this server",
            reason="INVALID_PAGE_TOKEN",
            violations=[FieldViolation(field="page_token", description="malformed page token")],
        ) from None


def keyset_page(rows: Sequence[_Row], size: int, filters: Any) -> tuple[Sequence[_Row], str]:
    """The first ``size`` of ``rows`` (fetched with ``size + 1``) and the token of the
    next page ("" on the last page), positioned after the last row's (created_at, id)."""
    if len(rows) <= size:
        return rows, ""
    page = rows[:size]
    last = page[-1]
    return page, encode_token([last.created_at.isoformat(), str(last.id)], filters)


_Proto = TypeVar("_Proto", bound=Message)


def bounded_keyset_page(
    rows: Sequence[_Row],
    size: int,
    filters: Any,
    convert: Callable[[_Row], _Proto],
    max_bytes: int,
) -> tuple[list[_Proto], str]:
    """:func:`keyset_page` bounded by bytes as well: the API form (``convert``) of the
    first ``size`` rows, stopping early before the page would take more than
    ``max_bytes`` (the next page token then resumes after the last row returned)."""
    page, token = keyset_page(rows, size, filters)
    protos = [convert(row) for row in page]
    count = fitting_count(protos, max_bytes)
    if count < len(protos):
        last = page[count - 1]
        token = encode_token([last.created_at.isoformat(), str(last.id)], filters)
    return protos[:count], token


def bounded_name_page(
    protos: Sequence[_Proto], names: Sequence[str], more: bool, filters: Any, max_bytes: int
) -> tuple[list[_Proto], str]:
    """A name-ordered page (``protos`` and their ``names``; ``more`` when rows follow)
    bounded by ``max_bytes``: it stops early before it would take more, and the token
    resumes after the last name returned ("" on the last page)."""
    count = fitting_count(protos, max_bytes)
    more = more or count < len(protos)
    token = encode_token(names[count - 1], filters) if more and count else ""
    return list(protos[:count]), token
