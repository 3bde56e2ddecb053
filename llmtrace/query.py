"""Every read of the store, each a function named for the question it answers.

Readers see the DuckDB file plus the segments not merged yet, so a span is visible within one
flush interval. Each function takes a time range and optional filters and returns plain rows
(a list of dicts). This module is the only place with read SQL; the dashboard, the CLI and the
budget checker call it and nothing below it.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import duckdb

from .store.files import StorePaths, resolve
from .store.merge import is_lock_error, merge, merged_ids
from .store.schema import COLUMN_NAMES, COLUMNS

logger = logging.getLogger("llmtrace")

_MODEL = "coalesce(response_model, request_model)"
DIMENSIONS = {
    "tenant": "tenant",
    "user": "user_id",
    "feature": "feature",
    "model": _MODEL,
    "provider": "provider",
    "service": "service_name",
}
_ATTACH_WAIT_S = 5.0
# Time-bucket widths the over-time questions accept, with their length in seconds.
BUCKETS = {
    "1 second": 1, "5 seconds": 5, "10 seconds": 10, "30 seconds": 30, "1 minute": 60, "5 minutes": 300,
    "15 minutes": 900, "1 hour": 3600, "6 hours": 21600, "1 day": 86400, "1 week": 604800,
}  # fmt: skip


class StoreError(RuntimeError):
    """The store cannot be read; the message says why and where."""


@dataclass(frozen=True)
class Filters:
    service: str | None = None
    provider: str | None = None
    model: str | None = None
    tenant: str | None = None
    feature: str | None = None
    user: str | None = None


@dataclass(frozen=True)
class TimeRange:
    since: datetime
    until: datetime

    @classmethod
    def last(cls, span: timedelta) -> TimeRange:
        now = _utcnow()
        return cls(now - span, now + timedelta(minutes=1))

    @classmethod
    def starting_at(cls, epoch_s: float) -> TimeRange:
        """From a ``time.time()`` value until now."""
        return cls(datetime.fromtimestamp(epoch_s, timezone.utc).replace(tzinfo=None), _utcnow() + timedelta(minutes=1))


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def parse_duration(text: str) -> timedelta:
    """``30m``, ``24h``, ``7d``, ``2w`` -> timedelta."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    try:
        return timedelta(**{units[text[-1]]: float(text[:-1])})
    except (KeyError, ValueError, IndexError):
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 24h, 7d)") from None


# --- opening -------------------------------------------------------------------------------------


@contextmanager
def open_store(db: str | os.PathLike[str] | None = None, *, merge_first: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection whose ``spans`` view is the database plus pending segments."""
    paths = resolve(db)
    if merge_first and paths.pending():
        try:
            merge(paths)
        except Exception as exc:  # reading must still work when merging cannot
            logger.warning("llmtrace: could not merge pending segments into %s: %s", paths.db, exc)
    con = duckdb.connect(":memory:")
    try:
        _create_view(con, paths)
        yield con
    finally:
        con.close()


def _attach(con: duckdb.DuckDBPyConnection, paths: StorePaths) -> bool:
    if not paths.db.exists():
        return False
    deadline = time.monotonic() + _ATTACH_WAIT_S
    while True:
        try:
            con.execute("ATTACH ? AS store (READ_ONLY)", [str(paths.db)])
            return True
        except duckdb.Error as exc:
            if is_lock_error(exc) and time.monotonic() < deadline:
                time.sleep(0.05)  # a writer is merging: that takes milliseconds
                continue
            if is_lock_error(exc):
                raise StoreError(f"{paths.db} is held by another process for writing; try again") from None
            raise StoreError(f"{paths.db} cannot be read: {exc}") from None


def _create_view(con: duckdb.DuckDBPyConnection, paths: StorePaths) -> None:
    # Every part is unioned by name onto an empty table of today's columns: a database or segment
    # written by an older llmtrace lacks the newer columns, which then read as NULL.
    ddl = ", ".join(f"{name} {sql_type}" for name, sql_type, _ in COLUMNS)
    con.execute(f"CREATE TEMP TABLE _columns ({ddl})")
    parts = ["SELECT * FROM _columns"]
    pending_paths = paths.pending()
    merged: set[str] = set()
    if _attach(con, paths):
        parts.append("SELECT * FROM store.spans")
        merged = merged_ids(con, "store._segments", [p.stem for p in pending_paths])
    pending = [str(p) for p in pending_paths if p.stem not in merged]
    if pending:
        parts.append(f"SELECT * FROM read_parquet({_list_literal(pending)}, union_by_name = true)")
    union = " UNION ALL BY NAME ".join(parts)
    con.execute(f"CREATE TEMP VIEW spans AS SELECT {', '.join(COLUMN_NAMES)} FROM ({union})")


def _list_literal(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


# --- filtering -----------------------------------------------------------------------------------


def _where(time_range: TimeRange, filters: Filters | None) -> tuple[str, list[Any]]:
    clauses = ["start_time >= ?", "start_time < ?"]
    params: list[Any] = [time_range.since, time_range.until]
    f = filters or Filters()
    for value, column in (
        (f.service, "service_name"),
        (f.provider, "provider"),
        (f.model, _MODEL),
        (f.tenant, "tenant"),
        (f.feature, "feature"),
        (f.user, "user_id"),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    return " AND ".join(clauses), params


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cursor = con.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _dimension(by: str) -> str:
    try:
        return DIMENSIONS[by]
    except KeyError:
        raise ValueError(f"cannot group by {by!r}; choose one of {', '.join(DIMENSIONS)}") from None


def _grouping(by: str, bucket: str | None) -> tuple[str, str]:
    """SELECT prefix and GROUP BY list for a per-key query, optionally per time bucket too."""
    key = _dimension(by)
    if bucket:
        return f"{_bucket(bucket)} AS bucket, {key} AS key", "1, 2"
    return f"{key} AS key", "1"


def _bucket(bucket: str | None) -> str:
    # time_bucket needs an INTERVAL literal; only known widths are accepted, never free text.
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {', '.join(BUCKETS)}")
    return f"time_bucket(INTERVAL '{bucket}', start_time)"


# --- questions -----------------------------------------------------------------------------------


def spend_by(
    by: str,
    time_range: TimeRange,
    filters: Filters | None = None,
    *,
    db: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Calls, tokens (by bucket), spend and latency percentiles per tenant/user/feature/model/provider."""
    key = _dimension(by)
    where, params = _where(time_range, filters)
    # Percentiles are the expensive part: with a limit they are computed for the top keys only.
    sql = f"""
        WITH totals AS (
            SELECT {key} AS key, count(*) AS calls, count(error_type) AS errors,
                   sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
                   sum(cache_read_tokens) AS cache_read_tokens, sum(reasoning_tokens) AS reasoning_tokens,
                   sum(cost_usd) AS cost_usd, count(*) FILTER (WHERE unpriced) AS unpriced_calls
            FROM spans WHERE {where}
            GROUP BY 1 ORDER BY cost_usd DESC NULLS LAST, calls DESC
            {"LIMIT " + str(int(limit)) if limit else ""}
        ), latency AS (
            SELECT {key} AS key, quantile_cont(duration_ms, 0.5) AS p50_ms, quantile_cont(duration_ms, 0.99) AS p99_ms
            FROM spans WHERE {where} {f"AND {key} IN (SELECT key FROM totals)" if limit else ""}
            GROUP BY 1
        )
        SELECT totals.*, latency.p50_ms, latency.p99_ms
        FROM totals LEFT JOIN latency ON totals.key IS NOT DISTINCT FROM latency.key
        ORDER BY cost_usd DESC NULLS LAST, calls DESC"""
    with open_store(db) as con:
        return _rows(con, sql, params + params)


def spend_over_time(
    by: str, time_range: TimeRange, bucket: str, filters: Filters | None = None, *, db: str | os.PathLike[str] | None = None
) -> list[dict[str, Any]]:
    """Spend and tokens per time bucket and per key (for stacked charts)."""
    keys, group = _grouping(by, bucket)
    where, params = _where(time_range, filters)
    sql = f"""
        SELECT {keys}, count(*) AS calls,
               sum(cost_usd) AS cost_usd, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens
        FROM spans WHERE {where} GROUP BY {group} ORDER BY {group}"""
    with open_store(db) as con:
        return _rows(con, sql, params)


def latency_percentiles(
    time_range: TimeRange,
    filters: Filters | None = None,
    *,
    by: str = "model",
    bucket: str | None = None,
    db: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """P50/P95/P99 of duration and time to first chunk, per model (or provider), optionally over time."""
    keys, group = _grouping(by, bucket)
    where, params = _where(time_range, filters)
    sql = f"""
        SELECT {keys}, count(*) AS calls,
               quantile_cont(duration_ms, [0.5, 0.95, 0.99]) AS duration_ms,
               quantile_cont(ttft_ms, [0.5, 0.95, 0.99]) AS ttft_ms
        FROM spans WHERE {where} GROUP BY {group} ORDER BY {group}"""
    with open_store(db) as con:
        rows = _rows(con, sql, params)
    for row in rows:
        for name in ("duration_ms", "ttft_ms"):
            values = row.pop(name) or [None, None, None]
            prefix = "ttft" if name == "ttft_ms" else "latency"
            row[f"{prefix}_p50_ms"], row[f"{prefix}_p95_ms"], row[f"{prefix}_p99_ms"] = values
    return rows


def error_rates(
    time_range: TimeRange,
    filters: Filters | None = None,
    *,
    by: str = "provider",
    bucket: str | None = None,
    db: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Error and 429 rates and HTTP attempts (retries), per provider/model, optionally over time."""
    keys, group = _grouping(by, bucket)
    where, params = _where(time_range, filters)
    sql = f"""
        SELECT {keys}, count(*) AS calls, count(error_type) AS errors,
               count(*) FILTER (WHERE http_status = 429 OR rate_limited > 0) AS rate_limited_calls,
               count(error_type) / count(*) AS error_rate,
               count(*) FILTER (WHERE http_status = 429 OR rate_limited > 0) / count(*) AS rate_limited_rate,
               sum(http_attempts) AS http_attempts, sum(http_attempts) - count(*) AS retries
        FROM spans WHERE {where} GROUP BY {group} ORDER BY {group}"""
    with open_store(db) as con:
        return _rows(con, sql, params)


def top_calls(
    time_range: TimeRange,
    filters: Filters | None = None,
    *,
    order: str = "cost",
    limit: int = 20,
    db: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """The most expensive (``order="cost"``) or slowest (``order="duration"``) calls."""
    column = {"cost": "cost_usd", "duration": "duration_ms"}.get(order)
    if column is None:
        raise ValueError("order must be 'cost' or 'duration'")
    where, params = _where(time_range, filters)
    sql = f"""
        SELECT trace_id, span_id, start_time, service_name, provider, {_MODEL} AS model, tenant, feature,
               user_id, input_tokens, output_tokens, cost_usd, duration_ms, ttft_ms, error_type, http_attempts
        FROM spans WHERE {where} AND {column} IS NOT NULL
        ORDER BY {column} DESC LIMIT {int(limit)}"""
    with open_store(db) as con:
        return _rows(con, sql, params)


def unpriced_calls(
    time_range: TimeRange, filters: Filters | None = None, *, db: str | os.PathLike[str] | None = None
) -> list[dict[str, Any]]:
    """Calls whose model had no price, per provider and model."""
    where, params = _where(time_range, filters)
    sql = f"""
        SELECT provider, {_MODEL} AS model, count(*) AS calls, sum(input_tokens) AS input_tokens,
               sum(output_tokens) AS output_tokens
        FROM spans WHERE {where} AND unpriced GROUP BY 1, 2 ORDER BY calls DESC"""
    with open_store(db) as con:
        return _rows(con, sql, params)


def spent(
    time_range: TimeRange, filters: Filters | None = None, *, db: str | os.PathLike[str] | None = None
) -> float:
    """Total USD spent in the range (what budgets compare against their limit)."""
    where, params = _where(time_range, filters)
    with open_store(db) as con:
        row = con.execute(f"SELECT coalesce(sum(cost_usd), 0) FROM spans WHERE {where}", params).fetchone()
    return float(row[0]) if row else 0.0


def summary(
    time_range: TimeRange, filters: Filters | None = None, *, db: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Headline numbers: calls, errors, 429s, spend, unpriced calls, tokens, P50/P99 latency, first/last call."""
    where, params = _where(time_range, filters)
    sql = f"""
        SELECT count(*) AS calls, count(error_type) AS errors,
               count(*) FILTER (WHERE http_status = 429 OR rate_limited > 0) AS rate_limited_calls,
               coalesce(sum(cost_usd), 0) AS cost_usd, count(*) FILTER (WHERE unpriced) AS unpriced_calls,
               coalesce(sum(input_tokens), 0) AS input_tokens, coalesce(sum(output_tokens), 0) AS output_tokens,
               quantile_cont(duration_ms, 0.5) AS p50_ms, quantile_cont(duration_ms, 0.99) AS p99_ms,
               quantile_cont(ttft_ms, 0.5) AS ttft_p50_ms,
               min(start_time) AS first_call, max(start_time) AS last_call
        FROM spans WHERE {where}"""
    with open_store(db) as con:
        return _rows(con, sql, params)[0]


def token_usage(
    time_range: TimeRange,
    filters: Filters | None = None,
    *,
    bucket: str | None = None,
    db: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Tokens in their five disjoint buckets, spend and what prompt caching saved, optionally over time."""
    keys, group = (f"{_bucket(bucket)} AS bucket", "1") if bucket else ("NULL AS bucket", "ALL")
    where, params = _where(time_range, filters)
    sql = f"""
        SELECT {keys}, count(*) AS calls,
               coalesce(sum(uncached_input_tokens), 0) AS uncached_input_tokens,
               coalesce(sum(cache_read_tokens), 0) AS cache_read_tokens,
               coalesce(sum(cache_write_tokens), 0) AS cache_write_tokens,
               coalesce(sum(visible_output_tokens), 0) AS visible_output_tokens,
               coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens,
               coalesce(sum(cost_usd), 0) AS cost_usd, coalesce(sum(cache_savings_usd), 0) AS cache_savings_usd
        FROM spans WHERE {where} GROUP BY {group} ORDER BY 1"""
    with open_store(db) as con:
        return _rows(con, sql, params)


def latency_histogram(
    time_range: TimeRange,
    filters: Filters | None = None,
    *,
    by: str = "model",
    bins_per_decade: int = 5,
    db: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Calls per latency bin, per model (or provider); bins are even on a log scale (LLM latency is heavy-tailed)."""
    key = _dimension(by)
    step = int(bins_per_decade)
    where, params = _where(time_range, filters)
    sql = f"""
        WITH binned AS (
            SELECT {key} AS key, floor(log10(greatest(duration_ms, 1)) * {step}) AS bin
            FROM spans WHERE {where} AND duration_ms IS NOT NULL
        )
        SELECT key, pow(10, bin / {step}) AS bin_start_ms, pow(10, (bin + 1) / {step}) AS bin_end_ms, count(*) AS calls
        FROM binned GROUP BY key, bin ORDER BY key, bin"""
    with open_store(db) as con:
        return _rows(con, sql, params)


def dimension_values(
    time_range: TimeRange, *, limit: int = 500, db: str | os.PathLike[str] | None = None
) -> dict[str, list[str]]:
    """The values each filter can take in the range (service, provider, model, tenant, feature), most calls first."""
    where, params = _where(time_range, None)
    names = ("service", "provider", "model", "tenant", "feature")
    selects = " UNION ALL ".join(
        f"(SELECT '{name}' AS dimension, {DIMENSIONS[name]} AS value, count(*) AS calls FROM spans "
        f"WHERE {where} AND {DIMENSIONS[name]} IS NOT NULL GROUP BY 2 ORDER BY 3 DESC, 2 LIMIT {int(limit)})"
        for name in names
    )
    values: dict[str, list[str]] = {name: [] for name in names}
    with open_store(db) as con:
        for dimension, value, _ in con.execute(selects, params * len(names)).fetchall():
            values[dimension].append(value)
    return values


def store_exists(db: str | os.PathLike[str] | None = None) -> bool:
    """Whether anything was ever written at this store (the database file or pending segments)."""
    paths = resolve(db)
    return paths.db.exists() or bool(paths.pending())


def span_count(*, db: str | os.PathLike[str] | None = None) -> dict[str, int]:
    """How many spans the store holds, distinct span ids, and segments still pending."""
    with open_store(db, merge_first=False) as con:
        total, distinct = con.execute("SELECT count(*), count(DISTINCT span_id) FROM spans").fetchone()  # type: ignore[misc]
    return {"spans": int(total), "distinct_span_ids": int(distinct), "pending_segments": len(resolve(db).pending())}
