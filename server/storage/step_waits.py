"""The ``sleep`` and ``wait_for_event`` parts of a step's spec (:class:`.steps.StepSpec`),
in protobuf JSON form with proto field names, as ``engine/timers.py`` reads them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = ["OnTimeout", "SleepSpec", "WaitForEventSpec"]

Json = dict[str, Any]


def _put(out: Json, key: str, value: Any) -> None:
    if value is not None:
        out[key] = value


@dataclass(frozen=True, slots=True)
class SleepSpec:
    """``sleep``: a durable timer, ``seconds`` after the step starts or ``until`` an RFC
    3339 time (protobuf JSON of a Timestamp); exactly one is set."""

    seconds: float | None = None
    until: str | None = None

    def to_json(self) -> Json:
        out: Json = {}
        _put(out, "seconds", self.seconds)
        _put(out, "until", self.until)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SleepSpec:
        return cls(data.get("seconds"), data.get("until"))


class OnTimeout(StrEnum):
    """``WaitForEventStep.OnTimeout`` by its proto enum name, as protobuf JSON spells it."""

    UNSPECIFIED = "ON_TIMEOUT_UNSPECIFIED"
    FAIL = "ON_TIMEOUT_FAIL"
    CONTINUE = "ON_TIMEOUT_CONTINUE"
    SKIP = "ON_TIMEOUT_SKIP"


_ON_TIMEOUTS = {t.value: t for t in OnTimeout}


@dataclass(frozen=True, slots=True)
class WaitForEventSpec:
    """``wait_for_event``: the event ``name``, the correlation ``key`` template (``${...}``
    unresolved), ``timeout_seconds`` (absent: no limit) and ``on_timeout``."""

    name: str = ""
    key: str | None = None
    timeout_seconds: float | None = None
    on_timeout: OnTimeout | None = None

    def to_json(self) -> Json:
        out: Json = {"name": self.name}
        _put(out, "key", self.key)
        _put(out, "timeout_seconds", self.timeout_seconds)
        _put(out, "on_timeout", None if self.on_timeout is None else self.on_timeout.value)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WaitForEventSpec:
        return cls(
            name=data.get("name", ""),
            key=data.get("key"),
            timeout_seconds=data.get("timeout_seconds"),
            on_timeout=_ON_TIMEOUTS.get(str(data.get("on_timeout"))),
        )
