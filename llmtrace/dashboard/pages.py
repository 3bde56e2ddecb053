"""The dashboard's pages. Each reads only through ``llmtrace.query`` and draws with ``charts``."""

from __future__ import annotations

import calendar
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import pandas as pd
import streamlit as st

from .. import budgets as budget_config
from .. import config, query
from . import ENV_TRACE_URL
from . import charts as C

# How many keys a stacked chart shows before lumping the rest into "other".
_TOP_KEYS = 8
_TENANT_ROWS = 50  # the Spend page's table of tenants, biggest spenders first


@dataclass(frozen=True)
class View:
    """What every page shows: the time range, the sidebar's filters, the chart bucket and the store."""

    time_range: query.TimeRange
    filters: query.Filters
    bucket: str
    label: str  # "the last 24 hours"
    db: query.Store  # the page's one open snapshot of the store
    summary: dict[str, Any]  # query.summary() of the range and filters: headline numbers, first and last call


def _when_empty(view: View, rows: Any) -> bool:
    if rows:
        return False
    st.info(f"No LLM calls in {view.label} for these filters.")
    return True


def _warn_unpriced(view: View) -> None:
    unpriced = view.summary["unpriced_calls"]
    if not unpriced:
        return
    models = query.unpriced_calls(view.time_range, view.filters, db=view.db)
    names = ", ".join(f"{r['model']} ({r['provider']}, {r['calls']:,} calls)" for r in models[:5])
    st.warning(
        f"{unpriced:,} calls have no cost: no price is known for {names}. Their spend is missing from "
        "every total here. Give them a price with `[prices.\"model\"]` in llmtrace.toml, or "
        "`llmtrace.pricing.set_price(...)`."
    )


_SERVED_HELP = "Of the calls sent: calls a budget refused are not counted."


def _note_blocked(view: View) -> None:
    blocked = view.summary["blocked_calls"]
    if blocked:
        st.info(f"{blocked:,} call(s) in {view.label} were refused by a block budget (`BudgetExceeded`) and never sent: "
                "error and 429 rates and latencies leave them out. The Budgets page says which budget is spent.")


def _served(summary: dict[str, Any]) -> int:
    """Calls that reached the provider: rates of errors and 429s are of these, as everywhere."""
    return int(summary["calls"]) - int(summary["blocked_calls"])


def _chart(chart: Any) -> None:
    st.altair_chart(chart, width="stretch")


def _table(data: pd.DataFrame, column_config: dict[str, Any]) -> None:
    # An empty cell is "—", not the "None" Streamlit shows (a model never streamed has no time to first token).
    st.dataframe(data, hide_index=True, width="stretch", column_config=column_config, placeholder="—")


def _usd(label: str, values: Any) -> Any:
    # A cheap call's cost ($0.000042), and a spend beside a budget of $0.0005, must not read "$0.0000" (a table column
    # has one format for all its numbers).
    return st.column_config.NumberColumn(label, format=C.money_column(values))


def _ms(label: str) -> Any:
    return st.column_config.NumberColumn(label, format="%,.0f ms")


def _count(label: str) -> Any:
    return st.column_config.NumberColumn(label, format="localized")


# --- Overview ------------------------------------------------------------------------------------


def overview(view: View) -> None:
    now = query.TimeRange.last(timedelta(0)).until - timedelta(minutes=1)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month_start = day_start.replace(day=1)
    today = query.spent(query.TimeRange(day_start, now + timedelta(minutes=1)), view.filters, db=view.db)
    month = query.spent(query.TimeRange(month_start, now + timedelta(minutes=1)), view.filters, db=view.db)
    days_in_month = calendar.monthrange(now.year, now.month)[1]
    elapsed_days = (now - month_start).total_seconds() / 86400
    projection = month / elapsed_days * days_in_month if month is not None and elapsed_days > 0 else None

    s = view.summary
    head = st.columns(4)
    head[0].metric("Spend today (UTC)", C.money(today))
    head[1].metric("Month to date", C.money(month))
    head[2].metric("Projected month end", C.money(projection),
                   help="Month-to-date spend divided by the days elapsed, times the days in the month.")
    head[3].metric(f"Unpriced calls, {view.label}", f"{s['unpriced_calls']:,}")

    st.subheader(f"Traffic in {view.label}")
    traffic = st.columns(5)
    traffic[0].metric("Calls", f"{s['calls']:,}")
    traffic[1].metric("Spend", C.money(query.spend(s["cost_usd"], s["unpriced_calls"])))
    traffic[2].metric("Error rate", C.percent(s["errors"], _served(s)), help=_SERVED_HELP)
    traffic[3].metric("P50 latency", C.duration(s["p50_ms"]))
    traffic[4].metric("P99 latency", C.duration(s["p99_ms"]))
    _warn_unpriced(view)
    if _when_empty(view, s["calls"]):
        return
    _note_blocked(view)
    left, right = st.columns(2)
    for column, by, title in ((left, "tenant", "Tenant"), (right, "feature", "Feature")):
        rows = query.spend_by(by, view.time_range, view.filters, db=view.db, limit=10)
        column.markdown(f"**Top {title.lower()}s by spend**")
        # A key whose calls all lack a price has no spend to draw: a bar of length 0 would read as $0.
        priced = [row for row in rows if row["cost_usd"] is not None]
        unknown = [C.label(row["key"]) for row in rows if row["cost_usd"] is None]
        top = max((row["cost_usd"] for row in priced), default=0)
        if top > 0:
            axis = C.money_axis(top)
            column.altair_chart(C.ranked_bars(C.frame(priced), "cost_usd", "Spend (USD)", title, axis, C.MONEY_TOOLTIP),
                                width="stretch")
        elif priced:  # bars of length 0: words instead
            column.caption(f"Nothing was billed in {view.label}.")
        if unknown:
            column.caption(f"Not drawn, their calls having no known price: {', '.join(unknown)}.")


# --- Latency -------------------------------------------------------------------------------------


def latency(view: View) -> None:
    rows = query.latency_percentiles(view.time_range, view.filters, by="model", db=view.db)
    if _when_empty(view, view.summary["calls"]):
        return
    if not rows:  # calls a budget refused, never sent: no latency to show
        _note_blocked(view)
        return
    table = pd.DataFrame(rows)
    table["ratio"] = table["latency_p99_ms"] / table["latency_p50_ms"]
    st.markdown("**Latency by model** — P99/P50 shows how heavy the tail is (LLM APIs typically run 1:8 to 1:15).")
    _table(
        table[["key", "calls", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "ratio", "ttft_p50_ms", "ttft_p95_ms",
               "ttft_p99_ms"]],
        column_config={
            "key": "Model", "calls": _count("Calls"),
            "latency_p50_ms": _ms("P50"),
            "latency_p95_ms": _ms("P95"),
            "latency_p99_ms": _ms("P99"),
            "ratio": st.column_config.NumberColumn("P99 / P50", format="%.1f×"),
            "ttft_p50_ms": _ms("First token P50"),
            "ttft_p95_ms": _ms("First token P95"),
            "ttft_p99_ms": _ms("First token P99"),
        },
    )
    # A percentile of several models cannot be made from theirs: the busiest models are drawn, not an "other".
    busiest = set(table.nlargest(_TOP_KEYS, "calls")["key"])
    over_time = C.frame(query.latency_percentiles(view.time_range, view.filters, by="model", bucket=view.bucket, db=view.db))
    if len(table) > len(busiest):
        over_time = over_time[over_time["key"].isin({C.label(k) for k in busiest})]
        st.caption(f"Over time: the {len(busiest)} models with the most calls, of {len(table)} (pick a model in the "
                   "sidebar for any other).")
    histogram = C.frame(query.latency_histogram(view.time_range, view.filters, db=view.db), top=_TOP_KEYS, weight="calls")
    # One model, one colour, in every chart of the page (the first-token chart leaves out models never streamed); the
    # histogram's "other" (the models beyond its busiest) comes last, in its chart only.
    keys = sorted((set(over_time.get("key", ())) | set(histogram.get("key", ()))) - {C.OTHER})
    pct = st.segmented_control("Percentile", ["P50", "P95", "P99"], default="P99", key="latency_pct") or "P99"
    column = f"latency_{pct.lower()}_ms"
    st.markdown(f"**{pct} latency per model over time**")
    _chart(C.lines_over_time(over_time, view.bucket, column, f"{pct} latency (ms)", "Model", keys=keys))
    ttft = over_time.dropna(subset=[f"ttft_{pct.lower()}_ms"]) if not over_time.empty else over_time
    st.markdown(f"**{pct} time to first token per model over time** (streamed calls)")
    if ttft.empty:
        st.info("No streamed calls in this range.")
    else:
        _chart(C.lines_over_time(ttft, view.bucket, f"ttft_{pct.lower()}_ms", f"{pct} time to first token (ms)", "Model",
                                 keys=keys))  # fmt: skip
    st.markdown("**How latency is spread** (calls per latency band)")
    lumped = [C.OTHER] if C.OTHER in set(histogram.get("key", ())) else []
    _chart(C.latency_histogram(histogram, "Model", keys=keys + lumped))


# --- Spend ---------------------------------------------------------------------------------------


def spend(view: View) -> None:
    totals = query.token_usage(view.time_range, view.filters, db=view.db)[0]
    _warn_unpriced(view)
    if _when_empty(view, totals["calls"]):
        return
    input_tokens = totals["uncached_input_tokens"] + totals["cache_read_tokens"] + totals["cache_write_tokens"]
    cols = st.columns(4)
    cols[0].metric("Spend", C.money(query.spend(view.summary["cost_usd"], view.summary["unpriced_calls"])))
    cols[1].metric("Saved by prompt caching", C.money(totals["cache_savings_usd"]),
                   help="What cached input tokens would have cost at the full input price, less the price of cache "
                        "reads, less the premium paid for cache writes.")
    cols[2].metric("Input read from cache", C.percent(totals["cache_read_tokens"], input_tokens))
    cols[3].metric("Reasoning share of output", C.percent(
        totals["reasoning_tokens"], totals["visible_output_tokens"] + totals["reasoning_tokens"]))
    for by, title in (("tenant", "Tenant"), ("feature", "Feature"), ("model", "Model")):
        # A key none of whose calls in a bucket is priced has no spend to draw (as a NULL it hid the bucket's other bars).
        rows = [row for row in query.spend_over_time(by, view.time_range, view.bucket, view.filters, db=view.db)
                if row["cost_usd"] is not None]
        st.markdown(f"**Spend per {title.lower()} over time**")
        if not rows:  # an empty chart with a lone $0.00 tick would read as no spend
            st.caption(f"No call in {view.label} has a known price.")
            continue
        if not any(row["cost_usd"] for row in rows):  # every call failed or was refused: bars of length 0
            st.caption(f"Nothing was billed in {view.label}.")
            continue
        bars = C.frame(rows, top=_TOP_KEYS)
        axis = C.money_axis(bars.groupby("bucket")["cost_usd"].sum().max())  # the tallest stack
        _chart(C.stacked_bars_over_time(bars, view.bucket, "cost_usd", "Spend (USD)", title, axis, C.MONEY_TOOLTIP))
    st.markdown("**Tokens by kind over time** — cached input is billed at a discount, cache writes at a premium")
    usage = query.token_usage(view.time_range, view.filters, bucket=view.bucket, db=view.db)
    if any(row[kind] for row in usage for kind in C.TOKEN_BUCKETS):
        _chart(C.token_buckets_over_time(usage, view.bucket))
    else:  # every call failed or was refused: an axis of nothing reads "NaN"
        st.caption(f"No tokens recorded in {view.label}.")
    st.markdown("**Spend per tenant**")
    rows = query.spend_by("tenant", view.time_range, view.filters, db=view.db, limit=_TENANT_ROWS)
    if len(rows) == _TENANT_ROWS:
        unlisted = totals["calls"] - sum(r["calls"] for r in rows)
        if unlisted:
            st.caption(f"The {_TENANT_ROWS} biggest spenders. Not listed: {unlisted:,} calls of other tenants, "
                       f"{_spend_of_the_rest(view, totals, rows, unlisted)} (pick a tenant in the sidebar to see it).")
    _table(
        C.frame(rows)[["key", "calls", "input_tokens", "cache_read_tokens", "output_tokens", "reasoning_tokens",
                       "cost_usd", "p50_ms", "p99_ms"]],
        column_config={
            "key": "Tenant", "calls": _count("Calls"),
            "input_tokens": _count("Input tokens"),
            "cache_read_tokens": _count("Cached input"),
            "output_tokens": _count("Output tokens"),
            "reasoning_tokens": _count("Reasoning"),
            "cost_usd": _usd("Spend", [r["cost_usd"] for r in rows]),
            "p50_ms": _ms("P50"),
            "p99_ms": _ms("P99"),
        },
    )


def _spend_of_the_rest(view: View, totals: dict[str, Any], rows: list[dict[str, Any]], calls: int) -> str:
    """What the ``calls`` of the keys not in ``rows`` spent: the whole range's spend less the listed keys'."""
    unpriced = view.summary["unpriced_calls"] - sum(r["unpriced_calls"] for r in rows)
    if unpriced == calls:  # none of them has a known price (a sum of nothing known is not $0)
        return "spend unknown"
    total = totals["cost_usd"] or 0.0
    rest = total - sum(r["cost_usd"] or 0.0 for r in rows)
    rest = rest if rest > 1e-12 * total else 0.0  # what two sums of the same costs differ by in their last bits
    return C.money(rest) + (f", and {unpriced:,} of them without a known price" if unpriced else "")


# --- Reliability ---------------------------------------------------------------------------------


def reliability(view: View) -> None:
    s = view.summary
    if _when_empty(view, s["calls"]):
        return
    _note_blocked(view)
    if not _served(s):
        return  # every call was refused: no provider was asked, so there is no rate to show
    by_model = query.error_rates(view.time_range, view.filters, by="model", db=view.db)
    retries = sum(r["retries"] or 0 for r in by_model)
    cols = st.columns(4)
    cols[0].metric("Error rate", C.percent(s["errors"], _served(s)),
                   help="Calls that failed after the SDK's own retries. " + _SERVED_HELP)
    cols[1].metric("Rate-limited calls", C.percent(s["rate_limited_calls"], _served(s)),
                   help="Calls that got at least one HTTP 429, retried or not. " + _SERVED_HELP)
    cols[2].metric("Retries", f"{retries:,}", help="HTTP attempts beyond the first, made by the SDKs' retry logic.")
    cols[3].metric("Failed calls", f"{s['errors']:,}")
    over_time = C.frame(query.error_rates(view.time_range, view.filters, by="provider", bucket=view.bucket, db=view.db),
                        weight="calls")
    left, right = st.columns(2)
    for column, value, title, heading in (
        (left, "error_rate", "Error rate", "Error rate per provider over time"),
        (right, "rate_limited_rate", "Rate-limited calls", "429 (rate-limited) rate per provider over time"),
    ):
        column.markdown(f"**{heading}**")
        axis = C.rate_axis(over_time[value].max() if value in over_time else None)
        column.altair_chart(C.lines_over_time(over_time, view.bucket, value, title, "Provider", axis), width="stretch")
    st.markdown("**By model**")
    table = C.frame(by_model, weight="calls")
    table["attempts_per_call"] = table["http_attempts"] / table["calls"]
    _table(
        table[["key", "calls", "errors", "error_rate", "rate_limited_calls", "rate_limited_rate", "retries",
               "attempts_per_call"]],
        column_config={
            "key": "Model", "calls": _count("Calls"),
            "errors": "Errors", "error_rate": st.column_config.NumberColumn("Error rate", format="percent"),
            "rate_limited_calls": "Calls with a 429",
            "rate_limited_rate": st.column_config.NumberColumn("429 rate", format="percent"),
            "retries": "Retries", "attempts_per_call": st.column_config.NumberColumn("HTTP attempts per call", format="%.2f"),
        },
    )


# --- Calls ---------------------------------------------------------------------------------------


def calls(view: View) -> None:
    template = os.environ.get(ENV_TRACE_URL, "")
    if not template:
        st.caption(f"Set `{ENV_TRACE_URL}` (e.g. `http://localhost:16686/trace/{{trace_id}}` for Jaeger) to link each "
                   "call to its trace.")
    if _when_empty(view, view.summary["calls"]):
        return
    for order, title in (("cost", "Most expensive calls"), ("duration", "Slowest calls")):
        rows = query.top_calls(view.time_range, view.filters, order=order, limit=20, db=view.db)
        st.markdown(f"**{title}**")
        if not rows:
            st.info(f"No call in {view.label} has a known cost." if order == "cost" else f"No call in {view.label} "
                    "has a recorded duration.")
            continue
        table = C.frame(rows, key="tenant")
        table["trace"] = [_trace_link(template, t, span) if template else t for t, span in zip(table["trace_id"], table["span_id"])]
        _table(
            table[["start_time", "model", "tenant", "feature", "user_id", "input_tokens", "output_tokens", "cost_usd",
                   "duration_ms", "ttft_ms", "http_attempts", "error_type", "trace"]],
            column_config={
                "start_time": st.column_config.DatetimeColumn("When (UTC)", format="YYYY-MM-DD HH:mm:ss"),
                "model": "Model", "tenant": "Tenant", "feature": "Feature", "user_id": "User",
                "input_tokens": _count("Input tokens"),
                "output_tokens": _count("Output tokens"),
                "cost_usd": _usd("Cost", table["cost_usd"]),
                "duration_ms": _ms("Latency"),
                "ttft_ms": _ms("First token"),
                "http_attempts": "HTTP attempts", "error_type": "Error",
                "trace": st.column_config.LinkColumn("Trace", display_text="open trace") if template else "Trace id",
            },
        )


def _trace_link(template: str, trace_id: str, span_id: str) -> str:
    # Replaced, not str.format: a Grafana Explore link holds JSON, whose braces format() would take for fields.
    return template.replace("{trace_id}", trace_id).replace("{span_id}", span_id)


# --- Budgets -------------------------------------------------------------------------------------


def budgets(view: View) -> None:
    path = config.config_path()
    try:
        declared = budget_config.load_file(path) if path else []
    except config.ConfigError as exc:
        st.error(f"The budgets cannot be read: {exc}")
        declared = None
    if declared == []:
        _how_to_declare_budgets()
    elif declared:
        _budget_status(view, declared, path)
    _alert_history(view)


_NAMED_OVER = 10  # budgets the warning names, most used first; the table lists every one


def _budget_status(view: View, declared: list[budget_config.Budget], path: Any) -> None:
    st.caption(f"From `{path}`. Each budget counts over its own period; the sidebar's filters do not apply here.")
    rows = budget_config.status(declared, db=view.db)
    note = budget_config.unpriced_note(rows)
    if note:
        st.info(note)
    table = pd.DataFrame([
        {"budget": s.budget.target, "key": s.key or "", "period": s.budget.period, "spent": s.known(s.spent_usd),
         "unpriced": s.unpriced_calls, "limit": s.budget.limit_usd, "used": s.known(s.used),
         "projected": s.known(s.projected_usd), "state": s.state,
         "action": s.budget.action, "ends": s.period_end}
        for s in rows
    ])
    over = table[table["state"].isin(["warning", "exceeded"])].sort_values("used", ascending=False)
    if not over.empty:
        named = [f"{b} ({k})" if k else b for b, k in zip(over["budget"], over["key"])]
        more = f", and {len(named) - _NAMED_OVER:,} more" if len(named) > _NAMED_OVER else ""
        st.warning(f"{len(over):,} budget(s) past their warning threshold or limit: " + ", ".join(named[:_NAMED_OVER]) + more)
    _table(
        table,
        column_config={
            "budget": "Budget", "key": "Key", "period": "Period", "state": "State", "action": "Action",
            "spent": _usd("Spent", table["spent"]),
            "unpriced": _count("Calls without a price"),
            "limit": _usd("Limit", table["limit"]),
            # The bar stops at 100 %; the figure beside it says how far past the limit (as `llmtrace budgets` does).
            "used": st.column_config.ProgressColumn("Used", format="percent", min_value=0.0, max_value=1.0),
            "projected": _usd("Projected by period end", table["projected"]),
            "ends": st.column_config.DatetimeColumn("Period ends (UTC)", format="YYYY-MM-DD HH:mm"),
        },
    )


def _alert_history(view: View) -> None:
    st.subheader("Alerts")
    rows = query.alert_history(view.time_range, db=view.db)
    if not rows:
        st.caption(f"No alert fired in {view.label}. Budgets alert at their warning threshold and limit; anomaly "
                   "detectors watch for spend spikes, prompt growth, duplicate calls, model drift and error rates.")
        return
    table = pd.DataFrame([{k: row[k] for k in ("fired_at", "kind", "subject", "message")} for row in rows])
    _table(
        table,
        column_config={
            "fired_at": st.column_config.DatetimeColumn("Fired (UTC)", format="YYYY-MM-DD HH:mm:ss"),
            "kind": "Kind", "subject": "About", "message": st.column_config.TextColumn("Alert", width="large"),
        },
    )


def _how_to_declare_budgets() -> None:
    st.info("No budgets are configured.")
    st.markdown(
        "Budgets put a limit on spend per tenant, user, feature, model or in total, per day, week or month, "
        "with an alert as the limit nears and, if you ask for it, a hard stop. Declare them in `llmtrace.toml` "
        "(or the file `LLMTRACE_CONFIG` names; `llmtrace dashboard --config PATH`):"
    )
    st.code(
        '[[budgets]]\nscope = "tenant"      # global | tenant | user | feature | model\nkey = "*"             # one tenant, '
        'or "*" for each separately\nperiod = "day"        # day | week | month | 24h | 7d\nlimit_usd = 50.0\n'
        'warn_at = 0.8\naction = "alert"      # alert | block',
        language="toml",
    )


PAGES: dict[str, Callable[[View], None]] = {
    "Overview": overview,
    "Latency": latency,
    "Spend": spend,
    "Reliability": reliability,
    "Calls": calls,
    "Budgets": budgets,
}

