"""``podium usage``: the organization's model usage (GetUsage) as a table or JSON."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from podium.client.cli_output import EXIT_OK, EXIT_USAGE, CliError, print_data, time_arg
from podium.client.client import PodiumClient
from podium.orchestration.v1 import orchestration_service_pb2 as pb

__all__ = ["cmd_usage", "usage_table"]

_COLUMNS = ("day", "definition", "agent", "model")


def usage_table(rows: list[pb.UsageRow], by: list[str]) -> list[str]:
    """The lines of the text table: the grouping columns, then the totals."""
    keys = [c for c in _COLUMNS if c in by]
    header = [*(k.upper() for k in keys), "INPUT", "OUTPUT", "COST_USD", "ATTEMPTS", "CACHE_HITS"]
    header.append("SAVED_TOKENS")
    table = [header]
    for row in rows:
        values = {
            "day": row.day,
            "definition": row.definition_name or "(inline)",
            "agent": row.agent,
            "model": row.model or "-",
        }
        table.append(
            [
                *(values[k] for k in keys),
                str(row.usage.input_tokens),
                str(row.usage.output_tokens),
                f"{row.usage.cost_usd:.6f}",
                str(row.step_attempts),
                str(row.cache_hits),
                str(row.saved.input_tokens + row.saved.output_tokens),
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in table
    ]


async def cmd_usage(client: PodiumClient, args: argparse.Namespace) -> int:
    end = time_arg(args.until, "--until")
    start = time_arg(args.since, "--since")
    if start is None:
        if not 0 < args.days <= 366:
            raise CliError("--days: between 0 and 366", EXIT_USAGE)
        start = (end or datetime.now(UTC)) - timedelta(days=args.days)
    by = list(dict.fromkeys(args.by or ()))
    rows = await client.get_usage(
        start_time=start,
        end_time=end,
        definition_name=args.definition,
        agent=args.agent,
        model=args.model,
        group_by=by,
    )
    output = "json" if args.json else args.output
    if output == "text":
        if not rows:
            print("no usage in this range")
        for line in usage_table(rows, by):
            print(line)
    else:
        print_data(pb.GetUsageResponse(rows=rows), output)
    return EXIT_OK
