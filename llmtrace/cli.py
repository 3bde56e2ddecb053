"""The ``llmtrace`` command: parse, call ``llmtrace.query`` or the store, print. Nothing else."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any, Sequence

from . import pricing, query
from .store import resolve
from .store.merge import merge

_REPORT_COLUMNS = (
    ("key", "{}"),
    ("calls", "{:,}"),
    ("errors", "{:,}"),
    ("input_tokens", "{:,}"),
    ("output_tokens", "{:,}"),
    ("cost_usd", "${:,.6f}"),
    ("p50_ms", "{:,.0f}"),
    ("p99_ms", "{:,.0f}"),
)


def _print_table(rows: list[dict[str, Any]], by: str) -> None:
    headers = [by if name == "key" else name for name, _ in _REPORT_COLUMNS]
    cells = [
        [("-" if row[name] is None else fmt.format(row[name])) for name, fmt in _REPORT_COLUMNS] for row in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    for row in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def cmd_report(args: argparse.Namespace) -> int:
    """Spend, calls, tokens and P50/P99 latency per tenant, feature, model or user."""
    rows = query.spend_by(args.by, query.TimeRange.last(query.parse_duration(args.since)), db=args.db)
    if args.format == "json":
        print(json.dumps(rows, indent=2, default=str))
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else [n for n, _ in _REPORT_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    elif not rows:
        print(f"No LLM calls in the last {args.since} in {resolve(args.db).db}")
    else:
        _print_table(rows, args.by)
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    """Merge pending segments into the database now and apply retention."""
    outcome = merge(resolve(args.db), args.retention_days)
    if outcome.busy:
        print("Another process is writing the store; try again in a moment.", file=sys.stderr)
        return 1
    print(f"merged {outcome.merged_segments} segment(s), {outcome.merged_rows:,} span(s); "
          f"retention removed {outcome.deleted_by_retention:,}; quarantined {len(outcome.quarantined)}")
    return 0


def cmd_prices(args: argparse.Namespace) -> int:
    """Show the USD-per-million-token prices llmtrace uses for a model."""
    price = pricing.price_for(args.provider, args.model)
    if price is None:
        print(f"No price known for {args.model!r} (provider {args.provider!r}).", file=sys.stderr)
        return 1
    print(f"{args.model} ({args.provider}), priced as {price.model} from {price.source}, USD per million tokens:")
    for name in ("input", "cache_read", "cache_write", "output", "reasoning"):
        rate = getattr(price, name)
        tiers = "".join(f", {p * 1e6:g} above {start:,} input tokens" for start, p in rate.tiers)
        print(f"  {name:<12}{rate.per_token * 1e6:g}{tiers}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmtrace", description="LLM cost and latency from the llmtrace store")
    commands = parser.add_subparsers(dest="command", required=True)

    report = commands.add_parser("report", help=cmd_report.__doc__)
    report.add_argument("--by", choices=["tenant", "feature", "model", "user", "provider"], default="tenant")
    report.add_argument("--since", default="7d", help="how far back: 30m, 24h, 7d (default 7d)")
    report.add_argument("--db", help="store file (default $LLMTRACE_DB or ./.llmtrace/llmtrace.duckdb)")
    report.add_argument("--format", choices=["table", "csv", "json"], default="table")
    report.set_defaults(run=cmd_report)

    compact = commands.add_parser("compact", help=cmd_compact.__doc__)
    compact.add_argument("--db")
    compact.add_argument("--retention-days", type=float, default=None)
    compact.set_defaults(run=cmd_compact)

    prices = commands.add_parser("prices", help=cmd_prices.__doc__)
    prices.add_argument("model")
    prices.add_argument("--provider", default="openai")
    prices.set_defaults(run=cmd_prices)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (query.StoreError, ValueError) as exc:
        print(f"llmtrace: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
