"""Compare two checkouts' engine figures in one run: interleaved rounds, medians (min-max).

    .venv/bin/python bench/compare.py --before ../podium-main --after . --rounds 3
    .venv/bin/python bench/compare.py --before A --after B --rounds 2 --parts a,b,c --quick

Each round runs ``bench/engine.py`` of both checkouts, one after the other, each with
its own ``<checkout>/.venv/bin/python`` (whose editable install must map to that
checkout: checked before the first round) and with the checkout as the working
directory. The order alternates (before, after; then after, before; ...) so that a
machine getting busier or quieter during the run does not favour one side. Every
round's JSON document is read from the benchmark's stdout; the table gives, per
metric, the median over the rounds and the min-max. Only flags that every version of
``bench/engine.py`` has are passed (``--parts``, ``--quick``, ``--database-url`` and
whatever follows ``--``), so an older checkout without this tool can be the "before".

The machine is shared: read a difference as real only when it is larger than both
sides' min-max spread, and prefer 3+ rounds. Progress goes to stderr, the table to
stdout; ``--save DIR`` keeps every round's document and the table's data as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = "bench/engine.py"
SIDES = ("before", "after")


def progress(message: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _get(document: dict[str, Any], *path: str | int) -> float | None:
    value: Any = document
    for key in path:
        if isinstance(value, dict) and isinstance(key, str):
            value = value.get(key)
        elif isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
            value = value[key]
        else:
            return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


SCENARIO_FIGURES: tuple[tuple[str, tuple[str | int, ...]], ...] = (
    ("steps_per_s", ("steps_per_s",)),
    ("peak_steps_per_s_500ms_window", ("peak_steps_per_s_500ms_window",)),
    ("queued_to_agent.p50_ms", ("latency", "queued_to_agent", "p50_ms")),
    ("queued_to_agent.p99_ms", ("latency", "queued_to_agent", "p99_ms")),
    ("queued_to_completed.p50_ms", ("latency", "queued_to_completed", "p50_ms")),
    ("queued_to_completed.p99_ms", ("latency", "queued_to_completed", "p99_ms")),
    ("cpu.engine_process_ms_per_step", ("cpu", "engine_process_cpu_ms_per_step")),
    ("cpu.agent_process_ms_per_step", ("cpu", "agent_process_cpu_ms_per_step")),
    ("cpu.postgres_backends_ms_per_step", ("cpu", "postgres_backends_cpu_ms_per_step")),
    ("postgres.commits_per_step", ("postgres", "commits_per_step")),
)


def metrics(documents: Sequence[dict[str, Any]]) -> list[tuple[str, tuple[str | int, ...]]]:
    """The figures compared: a name and the figure's path in the document."""
    out: list[tuple[str, tuple[str | int, ...]]] = [
        (f"baseline.{layout}.calls_per_s", ("baseline", layout, "calls_per_s"))
        for layout in ("separate_process", "same_process")
    ]
    for name in dict.fromkeys(n for d in documents for n in d.get("engine", {})):
        out += [(f"{name}.{label}", ("engine", name, *path)) for label, path in SCENARIO_FIGURES]
        out.append(
            (
                f"{name}.ratio_vs_separate_process_baseline",
                ("ratios", "vs_separate_process_baseline", name),
            )
        )
    out += [
        ("create.create_definition_s", ("create", "create_definition_s")),
        ("create.start_run_inline_plan_s", ("create", "start_run_inline_plan_s")),
        (
            "create.start_run_saved_definition_s.first",
            ("create", "start_run_saved_definition_s", 0),
        ),
        (
            "create.start_run_saved_definition_s.cached",
            ("create", "start_run_saved_definition_s", 1),
        ),
    ]
    return out


def checkout_python(checkout: Path) -> str:
    """The checkout's venv python, after checking that it imports Podium from there."""
    python = checkout / ".venv" / "bin" / "python"
    if not python.exists():
        sys.exit(f"{python} not found: run `make .venv/.installed` in {checkout}")
    found = subprocess.run(
        [str(python), "-c", "import podium.server; print(podium.server.__file__)"],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(checkout.resolve()):
        sys.exit(f"{python} imports podium.server from {found!r}, not from {checkout}")
    return str(python)


def describe(checkout: Path) -> str:
    """``<commit> (<branch>)``, with ``+changes`` when the work tree is dirty."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(checkout), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = "+changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return (
        f"{git('rev-parse', '--short', 'HEAD')}{dirty} ({git('rev-parse', '--abbrev-ref', 'HEAD')})"
    )


def run_once(python: str, checkout: Path, args: Sequence[str], timeout: float) -> dict[str, Any]:
    """One run of the checkout's benchmark; its JSON document."""
    completed = subprocess.run(
        [python, BENCH, *args],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.splitlines()[-20:])
        raise RuntimeError(f"{checkout}: {BENCH} exited with {completed.returncode}\n{tail}")
    document: dict[str, Any] = json.loads(completed.stdout)
    return document


def spread(values: Sequence[float], rounds: int) -> str:
    """``median (min-max)``, with ``[n=K]`` when only K of the rounds had the figure
    (``peak_steps_per_s_500ms_window`` is null when a scenario took under 1 s)."""
    if not values:
        return "-"
    median = statistics.median(values)
    text = _number(median)
    if len(values) > 1:
        text += f" ({_number(min(values))}-{_number(max(values))})"
    if len(values) < rounds:
        text += f" [n={len(values)}]"
    return text


def _number(value: float) -> str:
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def table(values: dict[str, dict[str, list[float]]], rounds: int) -> str:
    """Metric | before median (min-max) | after median (min-max) | after / before, the
    last marked ``*`` when both sides have 2+ rounds and their ranges do not overlap."""
    rows = [("metric", "before median (min-max)", "after median (min-max)", "after/before")]
    for metric, sides in values.items():
        before, after = sides["before"], sides["after"]
        ratio = "-"
        if before and after and statistics.median(before):
            ratio = f"{statistics.median(after) / statistics.median(before):.2f}"
            if min(len(before), len(after)) > 1 and (
                min(after) > max(before) or max(after) < min(before)
            ):
                ratio += " *"  # the two sides' ranges do not overlap
        rows.append((metric, spread(before, rounds), spread(after, rounds), ratio))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Arguments after -- go to bench/engine.py as they are (e.g. -- --worker-slots 50).",
    )
    parser.add_argument("--before", required=True, type=Path, help="checkout measured as 'before'")
    parser.add_argument("--after", required=True, type=Path, help="checkout measured as 'after'")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each runs both; default 3)")
    parser.add_argument("--parts", help="bench/engine.py --parts (default: all)")
    parser.add_argument("--quick", action="store_true", help="bench/engine.py --quick")
    parser.add_argument("--database-url", help="bench/engine.py --database-url")
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds per benchmark run (default 1800)"
    )
    parser.add_argument("--save", type=Path, metavar="DIR", help="keep every document in DIR")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    args = parser.parse_args(argv)

    bench_args: list[str] = []
    if args.parts:
        bench_args += ["--parts", args.parts]
    if args.quick:
        bench_args.append("--quick")
    if args.database_url:
        bench_args += ["--database-url", args.database_url]
    bench_args += extra
    checkouts = {"before": args.before.resolve(), "after": args.after.resolve()}
    pythons = {side: checkout_python(path) for side, path in checkouts.items()}
    described = {side: describe(path) for side, path in checkouts.items()}
    for side in SIDES:
        progress(f"{side}: {checkouts[side]} at {described[side]}")
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)

    documents: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    loadavg: list[list[float]] = []
    started = time.perf_counter()
    for round_number in range(1, args.rounds + 1):
        order = SIDES if round_number % 2 else SIDES[::-1]
        for side in order:
            progress(f"round {round_number}/{args.rounds}: {side} ({' '.join(bench_args)})")
            t0 = time.perf_counter()
            document = run_once(pythons[side], checkouts[side], bench_args, args.timeout)
            documents[side].append(document)
            loadavg.append([round(x, 2) for x in os.getloadavg()])
            progress(
                f"round {round_number}/{args.rounds}: {side} took {time.perf_counter() - t0:.0f}s"
            )
            if args.save:
                path = args.save / f"round{round_number}-{side}.json"
                path.write_text(json.dumps(document, indent=2) + "\n")

    values: dict[str, dict[str, list[float]]] = {}
    for metric, path in metrics(documents["before"] + documents["after"]):
        row = {
            side: [v for d in documents[side] if (v := _get(d, *path)) is not None]
            for side in SIDES
        }
        if row["before"] or row["after"]:
            values[metric] = row
    print(f"before: {checkouts['before']} at {described['before']}")
    print(f"after:  {checkouts['after']} at {described['after']}")
    print(
        f"{args.rounds} round(s), alternating order, bench/engine.py {' '.join(bench_args)}; "
        f"{time.perf_counter() - started:.0f}s; load average after each run: "
        + ", ".join(str(load[0]) for load in loadavg)
    )
    print(
        "Figures: median over the rounds (min-max). Lower is better except */s and ratios;"
        " * = the two sides' ranges do not overlap (with few rounds on a busy machine,"
        " identical code gets some * too)."
    )
    print()
    print(table(values, args.rounds))
    if args.save:
        summary = {
            "checkouts": {
                side: {"path": str(checkouts[side]), "commit": described[side]} for side in SIDES
            },
            "rounds": args.rounds,
            "bench_args": bench_args,
            "loadavg_after_each_run": loadavg,
            "values": values,
        }
        (args.save / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
