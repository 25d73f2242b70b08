"""Bench-only instrumentation of a running engine (the server code is unchanged): the
repository calls of the scheduler and engine-side timestamps per step attempt. They
wrap attributes of the running instances; when those are renamed the benchmark still
runs, with those figures missing."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class CallStats:
    """Count, rows and time of one repository method (the engine's DB round trips)."""

    calls: int = 0
    empty: int = 0
    rows: int = 0
    seconds: float = 0.0
    max_seconds: float = 0.0

    def record(self, rows: int, seconds: float) -> None:
        self.calls += 1
        self.rows += rows
        self.empty += rows == 0
        self.seconds += seconds
        self.max_seconds = max(self.max_seconds, seconds)

    def summary(self, steps: int) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "empty_calls": self.empty,
            "rows": self.rows,
            "rows_per_call": round(self.rows / self.calls, 2) if self.calls else 0,
            "mean_ms": round(1000 * self.seconds / self.calls, 3) if self.calls else 0,
            "max_ms": round(1000 * self.max_seconds, 3),
            "total_s": round(self.seconds, 3),
            "calls_per_step": round(self.calls / steps, 4) if steps else 0,
        }


class RepositoryProbe:
    """Times the engine's transactional calls by wrapping the scheduler's repository
    instance (bench-only instrumentation; the server code is unchanged)."""

    def __init__(self, repository: Any) -> None:
        self.stats: dict[str, CallStats] = {}
        self.available = repository is not None
        if repository is None:
            return
        for name, count_rows in (
            ("claim", len),
            ("complete", None),
            ("create", None),
            ("get_with_steps", None),
            ("list_events", len),
            ("get", None),
        ):
            original = getattr(repository, name, None)
            if original is not None:
                setattr(repository, name, self._wrap(name, original, count_rows))

    def _wrap(
        self,
        name: str,
        original: Callable[..., Awaitable[Any]],
        count_rows: Callable[[Any], int] | None,
    ) -> Callable[..., Awaitable[Any]]:
        stats = self.stats.setdefault(name, CallStats())

        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = await original(*args, **kwargs)
            if name == "complete":
                rows = len(args[0]) if args else len(kwargs.get("outcomes", ()))
            elif count_rows is not None:
                rows = count_rows(result)
            else:
                rows = 1
            stats.record(rows, time.perf_counter() - started)
            return result

        return wrapped

    def snapshot(self) -> dict[str, CallStats]:
        return {name: CallStats(**asdict(s)) for name, s in self.stats.items()}

    @staticmethod
    def delta(before: dict[str, CallStats], after: dict[str, CallStats]) -> dict[str, CallStats]:
        out = {}
        for name, a in after.items():
            b = before.get(name, CallStats())
            out[name] = CallStats(
                calls=a.calls - b.calls,
                empty=a.empty - b.empty,
                rows=a.rows - b.rows,
                seconds=a.seconds - b.seconds,
                max_seconds=a.max_seconds,  # max over the whole benchmark so far
            )
        return out


StepKey = tuple[str, str, int]


class TimelineProbe:
    """Engine-side timestamps per step attempt (``time.time()``, the clock of the event
    times and the agent's receipts): when the claim that leased it returned, when the
    scheduler called the agent and when that call returned. Wraps the scheduler's
    repository ``claim`` and the engine's ``AgentClient.execute`` (bench only)."""

    def __init__(self, scheduler: Any, agent_client: Any) -> None:
        self.claim_returned: dict[StepKey, float] = {}
        self.call_started: dict[StepKey, float] = {}
        self.call_returned: dict[StepKey, float] = {}
        repository = getattr(scheduler, "_repository", None)
        claim = getattr(repository, "claim", None)
        if claim is not None:

            async def timed_claim(*args: Any, **kwargs: Any) -> Any:
                rows = await claim(*args, **kwargs)
                now = time.time()
                for row in rows:
                    self.claim_returned[(str(row.run_id), row.step_id, row.attempt)] = now
                return rows

            setattr(repository, "claim", timed_claim)  # noqa: B010
        execute = getattr(agent_client, "execute", None)
        if execute is not None:

            async def timed_execute(endpoint: str, request: Any, **kwargs: Any) -> Any:
                key = (request.run_id, request.step_id, request.attempt)
                self.call_started[key] = time.time()
                try:
                    return await execute(endpoint, request, **kwargs)
                finally:
                    self.call_returned[key] = time.time()

            setattr(agent_client, "execute", timed_execute)  # noqa: B010

    def take(self) -> tuple[dict[StepKey, float], dict[StepKey, float], dict[StepKey, float]]:
        """The timestamps recorded since the last call (and forget them)."""
        out = (self.claim_returned, self.call_started, self.call_returned)
        self.claim_returned, self.call_started, self.call_returned = {}, {}, {}
        return out
