"""The ``llmtrace`` command: parse, call ``llmtrace.query`` or the store, print. Nothing else."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import json
import os
import random
import sys
import time
import unicodedata
from datetime import timedelta
from typing import Any, Callable, Sequence

import duckdb

from . import budgets, config, dashboard, pricing, query
from .store import resolve
from .store.merge import merge
from .store.schema import StoreFromTheFuture

def _cost(usd: float) -> str:
    # Six decimals, and below half a millionth (a small embedding call) two significant digits: never a known cost
    # shown as $0.000000.
    return f"${usd:,.6f}" if usd == 0 or abs(usd) >= 5e-7 else budgets.usd(usd)


_REPORT_COLUMNS: tuple[tuple[str, Callable[[Any], str]], ...] = (
    ("key", "{}".format),
    ("calls", "{:,}".format),
    ("errors", "{:,}".format),
    ("blocked_calls", "{:,}".format),  # refused by a block budget: never sent
    ("input_tokens", "{:,}".format),
    ("output_tokens", "{:,}".format),
    ("cost_usd", _cost),
    ("unpriced_calls", "{:,}".format),  # not in cost_usd: a total with these beside it is a floor
    ("p50_ms", "{:,.0f}".format),
    ("p99_ms", "{:,.0f}".format),
)


def _print_table(headers: list[str], cells: list[list[str]]) -> None:
    """Left-aligned first column, the rest right-aligned, each as wide as its widest cell on a terminal (a CJK
    character takes two columns there: padded by len(), a row with a Japanese tenant shifted its columns)."""
    widths = [max(_width(h), *(_width(c[i]) for c in cells)) if cells else _width(h) for i, h in enumerate(headers)]
    for row in [headers, *cells]:
        padded = []
        for i, (cell, width) in enumerate(zip(row, widths)):
            padding = " " * (width - _width(cell))
            padded.append(cell + padding if i == 0 else padding + cell)
        print("  ".join(padded))


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def _report_table(rows: list[dict[str, Any]], by: str) -> None:
    headers = [by if name == "key" else name for name, _ in _REPORT_COLUMNS]
    _print_table(headers, [[("-" if row[name] is None else show(row[name])) for name, show in _REPORT_COLUMNS]
                           for row in rows])


def _settings(args: argparse.Namespace) -> config.Settings:
    """The settings an app instrumented in this folder would have: --db and --config first, then the
    LLMTRACE_* variables, then llmtrace.toml (so that the store and budgets read are the app's)."""
    settings = config.load({"db": getattr(args, "db", None), "config_file": getattr(args, "config", None)})
    # Every read names its store: left to ``llmtrace.query``'s default, it would read llmtrace.toml, not --config.
    return settings if settings.db is not None else dataclasses.replace(settings, db=str(resolve(None).db))


def _existing_store(db: str | None) -> str | None:
    """``db``, when something was ever recorded there: a mistyped path is an error, not an empty store (nor,
    for compact, a new one)."""
    if not query.store_exists(db):
        raise query.StoreError(
            f"no llmtrace store at {resolve(db).db}: nothing was ever recorded there (check --db, $LLMTRACE_DB "
            "or db in the config file: --config, $LLMTRACE_CONFIG or ./llmtrace.toml)"
        )
    return db


def cmd_report(args: argparse.Namespace) -> int:
    """Spend, calls, tokens and P50/P99 latency per tenant, feature, model or user."""
    since = query.TimeRange.last(query.parse_duration(args.since))
    db = _existing_store(_settings(args).db)
    rows = query.spend_by(args.by, since, db=db)
    set_aside = query.quarantine_note(db)
    if set_aside:
        print(f"llmtrace: {set_aside}", file=sys.stderr)  # on stderr: JSON and CSV stay whole on stdout
    if args.format == "json":
        print(json.dumps(rows, indent=2, default=str))
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=query.SPEND_COLUMNS)  # the same header with rows or without
        writer.writeheader()
        writer.writerows(rows)
    elif not rows:
        print(f"No LLM calls in the last {args.since} in {resolve(db).db}")
    else:
        _report_table(rows, args.by)
    return 0


# How long compact waits for the store another process is merging into (a merge takes milliseconds to seconds).
COMPACT_WAIT_S = 10.0


def cmd_compact(args: argparse.Namespace) -> int:
    """Merge pending segments into the database now and apply retention."""
    settings = _settings(args)
    days = settings.retention_days if args.retention_days is None else args.retention_days
    paths = resolve(_existing_store(settings.db))
    deadline = time.monotonic() + COMPACT_WAIT_S
    while True:
        try:
            outcome = merge(paths, days or None)  # 0 keeps spans forever, as in the app
        except (duckdb.Error, StoreFromTheFuture) as exc:
            raise query.StoreError(f"cannot merge into {paths.db}: {exc}") from None
        if not outcome.busy or time.monotonic() >= deadline:
            break
        time.sleep(0.1)  # an app's merge takes a moment: a cron job must not fail for one
    if outcome.busy:
        print(f"Another process has held {paths.db} for over {COMPACT_WAIT_S:g} s (a DuckDB shell or notebook, or an "
              "app merging a large backlog); try again once it is closed.", file=sys.stderr)  # fmt: skip
        return 1
    print(f"merged {outcome.merged_segments} segment(s), {outcome.merged_rows:,} span(s); "
          f"retention removed {outcome.deleted_by_retention:,}; quarantined {len(outcome.quarantined)}")
    return 0


def cmd_prices(args: argparse.Namespace) -> int:
    """Show the USD-per-million-token prices llmtrace uses for a model (overrides in llmtrace.toml included)."""
    settings = _settings(args)
    pricing.set_prices(settings.prices, settings.provider_prices)
    context = pricing.request_context(vars(args))
    if args.provider is None:  # the first price list that has the model
        pricing_it = pricing.providers_pricing(args.model)
        if not pricing_it:
            print(f"No price known for {args.model!r} in any provider's price list.", file=sys.stderr)
            return 1
        provider = pricing_it[0]
    else:
        provider = args.provider.lower()
    price = pricing.price_for(provider, args.model, context=context)
    if price is None:
        elsewhere = pricing.providers_pricing(args.model)
        hint = f"; it is priced for --provider {' / '.join(elsewhere)}" if elsewhere else ""
        print(f"No price known for {args.model!r} (provider {provider!r}){hint}.", file=sys.stderr)
        return 1
    # The context the rates depend on, as the span names it; one the model has no prices for is said to cost the standard.
    named = price.context.split(",") if price.context else []
    served = "".join(f", {part.replace('_', ' ').replace('=', ' ')}" for part in named)
    standard = [f"{key.replace('_', ' ')} {value}" for key, value in context if f"{key}={value}" not in named]
    if standard and price.source == pricing.SOURCE_OVERRIDE:
        served += f"; {', '.join(standard)}: an override is one price for every tier and speed"
    elif standard:
        served += f"; {', '.join(standard)}: no prices of its own, the standard ones"
    print(f"{args.model} ({provider}{served}), priced as {price.model} from {price.source}, USD per million tokens:")
    # Anthropic's 1-hour cache writes have a rate of their own (twice the input's); elsewhere it is the 5-minute one.
    own_1h = price.cache_write_1h != price.cache_write
    for name in ("input", "cache_read", "cache_write", *(("cache_write_1h",) if own_1h else ()), "output", "reasoning"):
        rate = getattr(price, name)
        tiers = "".join(f", {p * 1e6:g} above {start:,} input tokens" for start, p in rate.tiers)
        print(f"  {name:<15}{rate.per_token * 1e6:g}{tiers}")
    fees = [(what, fee) for what, fee in (("requests", price.per_request), ("web searches", price.per_web_search),
                                          ("file searches", price.per_file_search)) if fee]  # fmt: skip
    if fees:  # in a call's total cost, beside its tokens'
        print("  and USD per 1,000 " + ", ".join(f"{what}: {fee * 1000:g}" for what, fee in fees))
    if price.audio_exact is not None:
        for name in ("input_audio", "output_audio"):
            print(f"  {name:<15}{float(getattr(price.audio_exact, name + '_mtok') or 0):g}")
    elif not price.prices_audio():
        print("  audio tokens: the price list has no rates for them; a call with audio tokens is unpriced (cost unknown)")
    return 0


_ALERTS_LISTED = 200


def cmd_budgets(args: argparse.Namespace) -> int:
    """Spend against every budget in the config file this period (spent, limit, % used, projection), and
    the alerts of the last 7 days."""
    settings = _settings(args)
    path = settings.config_file
    declared = budgets.load_file(path) if path else []
    if declared:
        _budget_table(declared, _existing_store(settings.db))  # a mistyped --db must not read as "all within budget"
    else:
        print(f"No budgets in {path or 'llmtrace.toml (not found)'}; declare them with [[budgets]] tables.")
    if query.store_exists(settings.db):
        fired = query.alert_history(query.TimeRange.last(timedelta(days=7)), limit=_ALERTS_LISTED + 1, db=settings.db)
        count = f"more than {_ALERTS_LISTED}, the newest listed" if len(fired) > _ALERTS_LISTED else len(fired) or "none"
        print(f"\nAlerts (last 7 days): {count}")
        fired = fired[:_ALERTS_LISTED]
        for row in fired:
            print(f"  {row['fired_at']:%Y-%m-%d %H:%M} UTC  {row['message']}")
    else:
        print(f"\nNo llmtrace store at {resolve(settings.db).db}: nothing recorded there, no alerts (check --db, "
              "$LLMTRACE_DB or db in the config file)")
    return 0


def _budget_table(declared: list[budgets.Budget], db: str | None) -> None:
    rows = budgets.status(declared, db=db)

    def money(amount: float | None, limit: float) -> str:
        return "-" if amount is None else budgets.usd(amount, limit)

    cells = [
        [s.budget.target, s.key or "-", s.budget.period, money(s.known(s.spent_usd), s.budget.limit_usd),
         f"{s.unpriced_calls:,}", budgets.usd(s.budget.limit_usd), "-" if s.known(s.used) is None else f"{s.used:.1%}",
         money(s.known(s.projected_usd), s.budget.limit_usd),
         s.state, "rolling" if s.period_end is None else f"{s.period_end:%Y-%m-%d %H:%M}"]
        for s in rows
    ]
    _print_table(["budget", "key", "period", "spent", "unpriced", "limit", "used", "projected", "state",
                  "period ends (UTC)"], cells)  # fmt: skip
    note = budgets.unpriced_note(rows)
    if note:
        print(f"\n{note}")


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the Streamlit dashboard over the store (on 127.0.0.1 unless --host says otherwise)."""
    settings = _settings(args)
    refresh = os.environ.get(dashboard.ENV_REFRESH)
    if args.refresh is None and refresh is not None:  # the page would fall back to its default without a word
        try:
            _seconds(refresh)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"{dashboard.ENV_REFRESH}: {exc}") from None
    dashboard.check_can_serve(args.host, args.port)  # Streamlit's own refusal of a busy port says less
    print(f"llmtrace dashboard: http://{args.host}:{args.port} over {resolve(settings.db).db}", file=sys.stderr, flush=True)
    dashboard.replace_process(settings.db, args.host, args.port, args.refresh, settings.config_file)


def cmd_demo(args: argparse.Namespace) -> int:
    """Drive a simulated OpenAI/Anthropic API with the real SDKs under llmtrace, then open the dashboard."""
    from . import demo
    from .instrumentation import uninstrument
    from .simulator import SimulatedProvider

    missing = [sdk for sdk in ("openai", "anthropic") if not _importable(sdk)]
    if missing:
        print(f"llmtrace demo drives the real openai and anthropic SDKs, and {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: "
              "pip install 'llmtrace[openai,anthropic]' (or 'llmtrace[all]', the dashboard too)", file=sys.stderr)  # fmt: skip
        return 2
    if not args.no_dashboard:
        dashboard.check_can_serve(args.host, args.port)  # before the traffic, not after it
    args.db = args.db or str(resolve(None).db)  # the demo reads no llmtrace.toml (nor does its summary, then)
    with SimulatedProvider(seed=args.seed) as sim:
        demo.instrument_for_demo(args.db)
        try:
            traffic = demo.Traffic(sim, seed=args.seed)
            print(f"llmtrace demo: {args.calls} calls through the real openai and anthropic SDKs to a simulated "
                  f"API at {sim.url}", file=sys.stderr)
            run = demo.run_burst(traffic, args.calls, args.concurrency, demo.ProgressBar(args.calls))
            demo.flush()
            window = query.TimeRange.starting_at(run.started - 1)
            rows = query.spend_by("tenant", window, query.Filters(service=demo.SERVICE_NAME), db=args.db)
            print()
            _report_table(rows, "tenant")
            print(f"\n{run.calls} calls ({run.errors} failed after the SDKs' retries) stored in {resolve(args.db).db}")
            if args.no_dashboard:
                return 0
            return _serve_with_live_traffic(args, traffic)
        finally:
            uninstrument()


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules as None: an import of it fails
        return False


def _serve_with_live_traffic(args: argparse.Namespace, traffic: Any) -> int:
    from . import demo

    process = dashboard.start(args.db, args.host, args.port, config_file=demo.NO_CONFIG_FILE)
    url = f"http://{args.host}:{args.port}"
    try:
        dashboard.wait_until_up(process, url)
        print(f"\nDashboard: {url}\nLive traffic goes on (about one call a second) so you can watch it arrive; "
              "Ctrl-C stops both.", flush=True)
        dashboard.open_in_browser(url)
        pause = random.Random(args.seed)
        while process.poll() is None:
            traffic.call()
            time.sleep(pause.uniform(0.0, 0.6))
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
    finally:
        process.terminate()
        process.wait(timeout=15)
    return 0


def _add_command(commands: Any, name: str, run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """A subcommand that runs ``run``, its docstring the help line (``%`` escaped: argparse formats help)."""
    parser: argparse.ArgumentParser = commands.add_parser(name, help=(run.__doc__ or "").replace("%", "%%"))
    parser.set_defaults(run=run)
    return parser


_DB_HELP = "store file (default: the app's: $LLMTRACE_DB, else db in the config file, else ./.llmtrace/llmtrace.duckdb)"
_CONFIG_HELP = "config file (default $LLMTRACE_CONFIG or ./llmtrace.toml)"


def _whole_number(low: int, high: int | None = None, unit: str = "", note: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` (to ``high``); 1.5 or -1 is a usage error, not rounded."""
    bounds = f" from {low} to {high:,}" if high is not None else f", {low} or more"

    def parse(text: str) -> int:
        number = int(text) if text.strip().isdigit() else low - 1
        if number < low or (high is not None and number > high):
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number{unit}{bounds}{note}")
        return number

    return parse


# Whole days, as the config's retention_days.
_retention_days = _whole_number(0, config.MAX_RETENTION_DAYS, " of days", " (0 keeps spans forever)")
_positive = _whole_number(1)
_port = _whole_number(1, 65535, " (a TCP port)")


def _seconds(text: str) -> float:
    """An argparse type: a number of seconds, 0 or more."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds, 0 or more")
    return seconds


def _priced_value(key: str, standard: tuple[str, ...]) -> Callable[[str], str]:
    """A service tier or speed: the standard ones, or one some model of the price list has prices for (read when
    the option is given: a typo must not read as standard prices)."""

    def checked(text: str) -> str:
        known = set(standard) | pricing.priced_context_values(key)
        if text not in known:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(sorted(known))}")
        return text

    return checked


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmtrace", description="LLM cost and latency from the llmtrace store")
    commands = parser.add_subparsers(dest="command", required=True)

    report = _add_command(commands, "report", cmd_report)
    report.add_argument("--by", choices=["tenant", "feature", "model", "user", "provider"], default="tenant")
    report.add_argument("--since", default="7d", help="how far back: 30m, 24h, 7d, 2w (default 7d)")
    report.add_argument("--db", help=_DB_HELP)
    report.add_argument("--config", help=_CONFIG_HELP)
    report.add_argument("--format", choices=["table", "csv", "json"], default="table")

    compact = _add_command(commands, "compact", cmd_compact)
    compact.add_argument("--db", help=_DB_HELP)
    compact.add_argument("--config", help=_CONFIG_HELP)
    compact.add_argument("--retention-days", type=_retention_days, default=None,
                         help="delete spans older than this; 0 keeps them forever (default: retention_days of the config)")

    prices = _add_command(commands, "prices", cmd_prices)
    prices.add_argument("model")
    prices.add_argument("--provider", help="whose price list (openai, anthropic, aws.bedrock, ...); default: the first that has the model")
    prices.add_argument("--service-tier", type=_priced_value("service_tier", ("auto", "default", "scale")),
                        help="the tier that serves the calls (OpenAI: flex, priority, ...); default: standard")
    prices.add_argument("--speed", type=_priced_value("speed", ("standard",)),
                        help="the speed mode that serves the calls (Anthropic: fast); default: standard")
    prices.add_argument("--config", help=_CONFIG_HELP)

    budget = _add_command(commands, "budgets", cmd_budgets)
    budget.add_argument("--config", help=_CONFIG_HELP)
    budget.add_argument("--db", help=_DB_HELP)

    board = _add_command(commands, "dashboard", cmd_dashboard)
    board.add_argument("--db", help=_DB_HELP)
    board.add_argument("--config", help="config file whose budgets the Budgets page shows (default as above)")
    board.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    board.add_argument("--port", type=_port, default=dashboard.DEFAULT_PORT)
    board.add_argument("--refresh", type=_seconds, default=None,
                       help=f"seconds between automatic refreshes, 0 = off (default {dashboard.DEFAULT_REFRESH_S:g})")

    demo = _add_command(commands, "demo", cmd_demo)
    demo.add_argument("--calls", type=_positive, default=500, help="calls in the first burst (default 500)")
    demo.add_argument("--concurrency", type=_positive, default=48)
    demo.add_argument("--db")
    demo.add_argument("--no-dashboard", action="store_true", help="stop after the burst")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=_port, default=dashboard.DEFAULT_PORT)
    demo.add_argument("--seed", type=int, default=None, help="repeatable traffic")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (query.StoreError, ValueError, dashboard.DashboardUnavailable) as exc:  # ConfigError is a ValueError
        print(f"llmtrace: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left (| head): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush would fail again
        return 1


if __name__ == "__main__":
    sys.exit(main())
