"""cProfile summaries: top entries by cumulative and own time, own time per category."""

from __future__ import annotations

import cProfile
import io
import pstats
from pathlib import Path
from typing import Any

BENCH_DIR = str(Path(__file__).resolve().parent.parent) + "/"
REPOSITORY_ROOT = str(Path(BENCH_DIR).parent) + "/"


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3", REPOSITORY_ROOT):
        index = path.find(marker)
        if index >= 0:
            return path[index + len(marker) :]
    return path


def _label(key: tuple[str, int, str]) -> str:
    file, line, func = key
    if file == "~":
        return func
    return f"{_short(file)}:{line}({func})"


_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("idle (epoll wait)", ("select.epoll", "poll' of 'select")),
    ("socket send/recv syscalls", ("_socket.socket",)),
    ("protobuf", ("google/protobuf", "google._upb", "_upb._message", "upb")),
    ("json", ("/json/", "_json")),
    ("asyncpg", ("asyncpg",)),
    ("grpc", ("grpc", "cygrpc")),
    ("podium engine/storage/api", ("server/",)),
    ("bench driver", (BENCH_DIR,)),
    ("asyncio", ("asyncio/", "_asyncio", "selectors.py", "_contextvars", "events.py")),
    ("uuid/datetime", ("uuid.py", "datetime", "_strptime")),
)


def _category(key: tuple[str, int, str]) -> str:
    text = f"{key[0]} {key[2]}"
    for name, needles in _CATEGORIES:
        if any(n in text for n in needles):
            return name
    return "other"


def profile_summary(profiler: cProfile.Profile, limit: int = 15) -> dict[str, Any]:
    """Top entries by cumulative and by own time, and own time per category."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    entries: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    total = sum(e[2] for e in entries.values())

    def row(key: tuple[str, int, str]) -> dict[str, Any]:
        cc, nc, tt, ct, _ = entries[key]
        return {
            "function": _label(key),
            "ncalls": nc,
            "tottime_s": round(tt, 3),
            "cumtime_s": round(ct, 3),
        }

    plumbing = ("asyncio/", "selectors.py", BENCH_DIR, "_contextvars")
    by_cum = sorted(
        (k for k in entries if not any(p in f"{k[0]} {k[2]}" for p in plumbing)),
        key=lambda k: entries[k][3],
        reverse=True,
    )
    by_tot = sorted(entries, key=lambda k: entries[k][2], reverse=True)
    categories: dict[str, float] = {}
    for key, entry in entries.items():
        cat = _category(key)
        categories[cat] = categories.get(cat, 0.0) + entry[2]
    busy = total - categories.get("idle (epoll wait)", 0.0)
    return {
        "total_profiled_s": round(total, 3),
        "busy_s": round(busy, 3),
        "own_time_by_category": {
            k: {"s": round(v, 3), "share_of_busy": round(v / busy, 3) if busy else 0}
            for k, v in sorted(categories.items(), key=lambda kv: -kv[1])
            if k != "idle (epoll wait)"
        }
        | {"idle (epoll wait)": {"s": round(categories.get("idle (epoll wait)", 0.0), 3)}},
        "top_cumulative_excluding_asyncio_plumbing": [row(k) for k in by_cum[:limit]],
        "top_tottime": [row(k) for k in by_tot[:limit]],
    }
