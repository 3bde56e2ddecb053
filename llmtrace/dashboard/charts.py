"""Altair charts and number formats for the dashboard: readable titles, units on every axis."""

from __future__ import annotations

import math
from typing import Any

import altair as alt
import pandas as pd

from ..budgets import usd
from ..query import BUCKETS

UNTAGGED = "(untagged)"
OTHER = "(others)"
# The sidebar's "no filter" choice, shown as "All", and its choice of the calls without the tag, shown as "(untagged)":
# values no tag has, so that a tenant named "All" is one tenant.
NO_FILTER = "\ue000all"
NO_TAG = "\ue000untagged"
_HEIGHT = 280


def label(key: Any) -> str:
    """A key as charts and tables name it: none at all "(untagged)"; a tag that reads as one of the dashboard's own
    labels in quotes, never merged with (or taken for) the calls those stand for."""
    if key is None or (isinstance(key, float) and math.isnan(key)):
        return UNTAGGED
    text = str(key)
    return f'"{text}"' if text in (UNTAGGED, OTHER) else text


def money(value: float | None) -> str:
    if value is None:  # no known price (never shown as $0), or nothing to project from
        return "unknown"
    if value < 0:  # cache writes that cost more than the reads saved: "-$0.0012", not "$-0.0012"
        return "-" + money(-value)
    if abs(value) >= 100:
        return f"${value:,.0f}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    # Below a cent, two significant digits: a known cost never reads "$0.0000" ($0.000042 for a cheap call's).
    return f"${value:,.4f}" if abs(value) >= 0.01 else usd(value)


def money_axis(top: float | None) -> str:
    """The d3 format of a USD axis whose largest value is ``top``: cents, and below ten cents as many decimals as its
    ticks (about a fifth of ``top``) need, so that sub-cent spend does not read $0.00 at every tick."""
    if not top or not math.isfinite(top) or top <= 0:
        return "$,.2f"
    return f"$,.{max(2, math.ceil(-math.log10(top)) + 1)}f"


# A hovered amount of USD: to the millionth of a dollar (a cheap call costs a few ten-thousandths), no trailing zeros.
MONEY_TOOLTIP = "$,.6~f"


def money_column(values: Any) -> str:
    """The printf format of a table column of USD: to the millionth of a dollar, or as many decimals as its smallest
    amount needs (a short embedding costs $0.00000016): one format for the whole column, and no known cost reads as
    $0.000000."""
    smallest = min((abs(v) for v in values if v and math.isfinite(v)), default=1.0)
    return f"$%,.{min(12, max(6, math.ceil(-math.log10(smallest)) + 1))}f"


def rate_axis(top: float | None) -> str:
    """The d3 format of an axis of rates whose largest value is ``top``: whole percents, or as many decimals as its
    ticks (about a fifth of ``top``) need: an error rate of 0.3% does not read 0% at every tick."""
    if not top or not math.isfinite(top) or top <= 0:
        return ".0%"
    return f".{max(0, math.ceil(-math.log10(top * 100 / 5)))}%"


def duration(ms: float | None) -> str:
    if ms is None:
        return "–"
    return f"{ms:,.0f} ms" if ms < 1000 else f"{ms / 1000:,.2f} s"


def percent(part: float, whole: float) -> str:
    if not whole:
        return "–"
    share = part / whole
    if 0 < share < 0.001:  # one failure in 3,000 calls is 0.033%, not 0.0%
        return f"{share * 100:.2g}%"
    return f"{share:.1%}"


def frame(rows: list[dict[str, Any]], key: str = "key", top: int | None = None, weight: str = "cost_usd") -> pd.DataFrame:
    """Rows as a frame; keys named by ``label``, and beyond the ``top`` heaviest keys, "(others)"."""
    data = pd.DataFrame(rows)
    if data.empty or key not in data:
        return data
    data[key] = data[key].map(label)
    if top is not None and data[key].nunique() > top:
        keep = data.groupby(key)[weight].sum().nlargest(top).index
        data[key] = data[key].where(data[key].isin(keep), OTHER)
    return data


def _time_axis(bucket: str) -> alt.X:
    """Labels as fine as the bucket and no finer: ticks at most one a bucket."""
    seconds = BUCKETS[bucket]
    fmt = "%H:%M:%S" if seconds < 60 else "%H:%M" if seconds < 86400 else "%b %d"
    return alt.X("bucket:T", title="Time (UTC)", axis=alt.Axis(format=fmt, labelAngle=0, tickMinStep=seconds * 1000))


def stacked_bars_over_time(
    data: pd.DataFrame, bucket: str, value: str, value_title: str, key_title: str, fmt: str, tooltip_fmt: str | None = None
) -> alt.Chart:
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=_time_axis(bucket),
            y=alt.Y(f"sum({value}):Q", title=value_title, axis=alt.Axis(format=fmt)),
            color=alt.Color("key:N", title=key_title, scale=alt.Scale(scheme="tableau10")),
            tooltip=[alt.Tooltip("bucket:T", title="From", format="%Y-%m-%d %H:%M:%S"), alt.Tooltip("key:N", title=key_title),
                     alt.Tooltip(f"sum({value}):Q", title=value_title, format=tooltip_fmt or fmt)],
        )
        .properties(height=_HEIGHT)
    )


def with_gaps(data: pd.DataFrame, bucket: str) -> pd.DataFrame:
    """Each key's rows plus an empty one (no value, no calls) for every bucket between its first and last that had
    no calls: a line breaks there (Vega-Lite breaks paths at nulls) instead of drawing a trend across a time in which
    nothing was measured."""
    if data.empty:
        return data
    step = pd.Timedelta(seconds=BUCKETS[bucket])
    parts = []
    for key, rows in data.groupby("key", sort=False):
        grid = pd.date_range(rows["bucket"].min(), rows["bucket"].max(), freq=step)
        missing = grid.difference(pd.DatetimeIndex(rows["bucket"]))
        parts.append(rows)
        if len(missing):
            parts.append(pd.DataFrame({"bucket": missing, "key": key}))
    return pd.concat(parts, ignore_index=True).sort_values(["key", "bucket"], ignore_index=True)


def _colors(keys: list[str] | None) -> alt.Scale:
    """The key's colour; ``keys``: every key the page draws, so that one model has one colour in all its charts (each
    chart would otherwise colour its own keys in order, and a chart missing one shifts every colour after it)."""
    return alt.Scale(scheme="tableau10", domain=keys) if keys else alt.Scale(scheme="tableau10")


def lines_over_time(
    data: pd.DataFrame, bucket: str, value: str, value_title: str, key_title: str, fmt: str = ",.0f",
    keys: list[str] | None = None,
) -> alt.Chart:  # fmt: skip
    return (
        alt.Chart(with_gaps(data, bucket))
        .mark_line(point=True)
        .encode(
            x=_time_axis(bucket),
            y=alt.Y(f"{value}:Q", title=value_title, axis=alt.Axis(format=fmt)),
            color=alt.Color("key:N", title=key_title, scale=_colors(keys)),
            tooltip=[alt.Tooltip("bucket:T", title="From", format="%Y-%m-%d %H:%M:%S"), alt.Tooltip("key:N", title=key_title),
                     alt.Tooltip(f"{value}:Q", title=value_title, format=fmt), alt.Tooltip("calls:Q", title="Calls")],
        )
        .properties(height=_HEIGHT)
    )


def ranked_bars(
    data: pd.DataFrame, value: str, value_title: str, key_title: str, fmt: str, tooltip_fmt: str | None = None
) -> alt.Chart:
    return (
        alt.Chart(data)
        .mark_bar(color="#4c78a8")
        .encode(
            x=alt.X(f"{value}:Q", title=value_title, axis=alt.Axis(format=fmt)),
            y=alt.Y("key:N", title=key_title, sort="-x", axis=alt.Axis(labelOverlap=False, labelLimit=220)),
            tooltip=[alt.Tooltip("key:N", title=key_title), alt.Tooltip(f"{value}:Q", title=value_title, format=tooltip_fmt or fmt),
                     alt.Tooltip("calls:Q", title="Calls", format=",")],
        )
        .properties(height=max(160, 36 * len(data)))
    )


def latency_histogram(data: pd.DataFrame, key_title: str, keys: list[str] | None = None) -> alt.Chart:
    return (
        alt.Chart(data)
        .mark_bar(stroke="white", strokeWidth=0.5)
        .encode(
            x=alt.X("bin_start_ms:Q", title="Latency (ms, log scale)", scale=alt.Scale(type="log")),
            x2="bin_end_ms:Q",
            y=alt.Y("sum(calls):Q", title="Calls", stack=True, axis=alt.Axis(tickMinStep=1, format=",d")),  # whole calls
            color=alt.Color("key:N", title=key_title, scale=_colors(keys)),
            tooltip=[alt.Tooltip("key:N", title=key_title), alt.Tooltip("bin_start_ms:Q", title="From (ms)", format=",.0f"),
                     alt.Tooltip("bin_end_ms:Q", title="To (ms)", format=",.0f"), alt.Tooltip("sum(calls):Q", title="Calls")],
        )
        .properties(height=_HEIGHT)
    )


TOKEN_BUCKETS = {
    "uncached_input_tokens": "Input, uncached",
    "cache_read_tokens": "Input, read from cache",
    "cache_write_tokens": "Input, written to cache",
    "visible_output_tokens": "Output, visible",
    "reasoning_tokens": "Output, reasoning",
}


def token_buckets_over_time(rows: list[dict[str, Any]], bucket: str) -> alt.Chart:
    data = pd.DataFrame(rows).melt(id_vars=["bucket"], value_vars=list(TOKEN_BUCKETS), var_name="kind", value_name="tokens")
    data["kind"] = data["kind"].map(TOKEN_BUCKETS)
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=_time_axis(bucket),
            y=alt.Y("sum(tokens):Q", title="Tokens", axis=alt.Axis(format="~s")),
            color=alt.Color("kind:N", title="Tokens", sort=list(TOKEN_BUCKETS.values()),
                            scale=alt.Scale(domain=list(TOKEN_BUCKETS.values()),
                                            range=["#4c78a8", "#9ecae9", "#f58518", "#54a24b", "#b279a2"])),
            tooltip=[alt.Tooltip("bucket:T", title="From", format="%Y-%m-%d %H:%M:%S"), alt.Tooltip("kind:N", title="Tokens"),
                     alt.Tooltip("sum(tokens):Q", title="Count", format=",")],
        )
        .properties(height=_HEIGHT)
    )
