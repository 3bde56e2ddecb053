"""Every read of the store, each a function named for the question it answers.

Readers see the DuckDB file plus the segments not merged yet, so a span is visible within one
flush interval. Each function takes a time range and optional filters and returns plain rows
(a list of dicts). ``by`` names a key of ``DIMENSIONS`` (tenant, user, feature, model, provider, ...); ``bucket``
one of ``BUCKETS`` ("1 minute", "1 hour", "1 day", ...). This module is the only place with read SQL; the dashboard, the CLI and the
budget checker call it and nothing below it.
"""

from __future__ import annotations

import logging
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import duckdb

from ._fork import background_work
from . import config
from .budgets import BudgetExceeded
from .store.files import StorePaths, resolve, utc_now
from .store.merge import DATA_ERRORS, is_lock_error, merge, merged_ids
from .store.schema import COLUMN_NAMES, COLUMNS, is_another_applications, segment_rows

logger = logging.getLogger("llmtrace")

# The model the app asked for, the one it knows its calls by: a failed call has no response model, and the
# answered one (a dated snapshot, "gpt-4o-mini-2024-07-18") would split each model in two, its errors apart.
_MODEL = "coalesce(request_model, response_model)"
DIMENSIONS = {
    "tenant": "tenant",
    "user": "user_id",
    "feature": "feature",
    "model": _MODEL,
    "request_model": "request_model",  # the model asked for (budgets limit it)
    "provider": "provider",
    "service": "service_name",
}
_ATTACH_WAIT_S = 5.0
# Inside the app (the budget monitor) a read is retried next round: waiting long there would hold up what waits for
# the monitor's work (instrument()'s first budget read, a fork(), exit) whenever another process holds the file.
_IN_APP_ATTACH_WAIT_S = 1.0
# A call that met HTTP 429: it failed with one, or the SDK retried after one.
_RATE_LIMITED = "http_status = 429 OR rate_limited > 0"
# A call a ``block`` budget refused: it never reached the provider, so it is neither a provider's error nor a
# latency. Reports count it as blocked. Its error_type is the exception's name, as for every failed call.
_SERVED = f"error_type IS DISTINCT FROM '{BudgetExceeded.__qualname__}'"
_ERRORS = f"count(*) FILTER (WHERE error_type IS NOT NULL AND {_SERVED})"
_BLOCKED = f"count(*) FILTER (WHERE NOT ({_SERVED}))"
_SERVED_DURATION = f"CASE WHEN {_SERVED} THEN duration_ms END"  # NULL for a refused call: no percentile sees it
# A group's spend, as spend() says: unknown (NULL) only where calls with no known price were billed; $0 where nothing
# was billed (every call failed or was refused), not the NULL of a sum over no costs.
_SPEND = "CASE WHEN bool_or(unpriced) THEN sum(cost_usd) ELSE coalesce(sum(cost_usd), 0) END"
# Time-bucket widths the over-time questions accept, with their length in seconds.
BUCKETS = {
    "1 second": 1, "5 seconds": 5, "10 seconds": 10, "30 seconds": 30, "1 minute": 60, "5 minutes": 300,
    "15 minutes": 900, "1 hour": 3600, "6 hours": 21600, "1 day": 86400, "1 week": 604800,
}  # fmt: skip


# Where a question reads: a store's path (None: the default store), or a connection ``open_store`` gave,
# so that several questions read one snapshot and the store is opened once (opening costs ~20 ms: most
# of that is DuckDB creating a database, which it does for every connection to a new in-memory one).
Store = str | os.PathLike[str] | duckdb.DuckDBPyConnection | None


def store_paths(db: str | os.PathLike[str] | None) -> StorePaths:
    """The store at ``db``. By default, the store this process writes to while instrumented; else the one an app
    instrumented here would: ``$LLMTRACE_DB``, else the ``db`` of ``llmtrace.toml`` (or of the file ``$LLMTRACE_CONFIG``
    names), else ``./.llmtrace/llmtrace.duckdb``."""
    if db is not None:
        return resolve(db)
    from .instrumentation import store_in_use  # at run time: instrumentation is the one that imports readers

    in_use = store_in_use()
    return in_use if in_use is not None else resolve(config.db_setting())


class StoreError(RuntimeError):
    """The store cannot be read; the message says why and where."""


class _Untagged:
    def __repr__(self) -> str:
        return "UNTAGGED"


# A filter's value for the calls that have none (``Filters(tenant=UNTAGGED)``: the calls no tenant was tagged on).
UNTAGGED = _Untagged()
FilterValue = str | _Untagged | None


@dataclass(frozen=True)
class Filters:
    service: FilterValue = None
    provider: FilterValue = None
    model: FilterValue = None
    tenant: FilterValue = None
    feature: FilterValue = None
    user: FilterValue = None

    def __post_init__(self) -> None:
        # Checked here: DuckDB would refuse a list or a number later, in words that blame the store.
        for name, value in vars(self).items():
            if value is not None and value is not UNTAGGED and not isinstance(value, str):
                raise TypeError(f"Filters.{name} must be one value, a string (or None for all, UNTAGGED for none), "
                                f"got {value!r}")  # fmt: skip


@dataclass(frozen=True)
class TimeRange:
    """From ``since`` (included) until ``until`` (excluded). The store's times are UTC: a naive datetime is read as
    UTC, an aware one is converted to it."""

    since: datetime
    until: datetime

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if not isinstance(value, datetime):
                raise TypeError(f"TimeRange.{name} must be a datetime, got {value!r}")
            if value.tzinfo is not None:  # bound as it is, DuckDB would compare it in the session's local time
                object.__setattr__(self, name, value.astimezone(timezone.utc).replace(tzinfo=None))
        if self.since > self.until:
            raise ValueError(f"TimeRange: since ({self.since}) is after until ({self.until})")

    @classmethod
    def last(cls, span: timedelta) -> TimeRange:
        now = utc_now()
        return cls(now - span, now + timedelta(minutes=1))

    @classmethod
    def starting_at(cls, epoch_s: float) -> TimeRange:
        """From a ``time.time()`` value until now."""
        return cls(datetime.fromtimestamp(epoch_s, timezone.utc).replace(tzinfo=None), utc_now() + timedelta(minutes=1))


def parse_duration(text: str) -> timedelta:
    """``30m``, ``24h``, ``7d``, ``2w`` -> timedelta."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    try:
        duration: timedelta | None = timedelta(**{units[text[-1]]: float(text[:-1])})
    except (KeyError, ValueError, IndexError, OverflowError):  # OverflowError: 1e12w, infd
        duration = None
    if duration is None or not timedelta(0) < duration <= _MAX_DURATION:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 24h, 7d; at most {_MAX_DURATION.days:,}d)")
    return duration


_MAX_DURATION = timedelta(days=100 * 366)  # "since" reaches back from now: past this it leaves the calendar


# --- opening -------------------------------------------------------------------------------------


@contextmanager
def open_store(db: Store = None, *, merge_first: bool = True, in_app: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection whose ``spans`` view is the database plus pending segments; pass it as ``db`` to
    ask several questions of one snapshot (given one, this yields it as it is).

    ``in_app``: the reader runs inside the user's process (the budget monitor): one thread, little memory.
    """
    if isinstance(db, duckdb.DuckDBPyConnection):
        yield db
        return
    paths = store_paths(db)
    if not in_app:
        _say_if_missing(paths)
    with background_work():  # a fork() waits for the database to be closed: DuckDB does not survive one
        if merge_first and paths.pending():
            try:
                merge(paths)
            except Exception as exc:  # reading must still work when merging cannot
                logger.warning("llmtrace: could not merge pending segments into %s: %s", paths.db, exc)
        con = duckdb.connect(":memory:")
        try:
            if in_app:
                con.execute("SET threads = 1")
                con.execute("SET memory_limit = '128MB'")
            _create_view(con, paths, _IN_APP_ATTACH_WAIT_S if in_app else _ATTACH_WAIT_S)
            yield con
        except (duckdb.IOException, *DATA_ERRORS, UnicodeDecodeError) as exc:  # a damaged database, a segment DuckDB cannot read
            raise StoreError(f"{paths.db} cannot be read: {str(exc).splitlines()[0]}") from exc
        except duckdb.Error as exc:
            if type(exc) is not duckdb.Error:
                raise  # an error of llmtrace's own (its SQL), not of the file
            # DuckDB's bare Error is its file reader's (a segment's Thrift data that does not decode): the next merge
            # sets the segment aside.
            raise StoreError(f"{paths.db} cannot be read until its next merge: {str(exc).splitlines()[0]}") from exc
        finally:
            con.close()


_said_missing: set[str] = set()


def _say_if_missing(paths: StorePaths) -> None:
    """Reading a store nothing was ever written to gives empty answers, as a store with no calls yet does. Said once
    per path, since a mistyped path reads the same way."""
    key = str(paths.db)
    if key not in _said_missing and not _written(paths):
        _said_missing.add(key)
        logger.warning("llmtrace: no store at %s (nothing was written there yet): it reads as empty", paths.db)


_LOCK_HOLDER = re.compile(r"lock is held in (.+? \(PID \d+\))")


def _attach(con: duckdb.DuckDBPyConnection, paths: StorePaths, wait_s: float) -> bool:
    if not paths.db.exists():
        return False
    deadline = time.monotonic() + wait_s
    while True:
        try:
            con.execute("ATTACH ? AS store (READ_ONLY)", [str(paths.db)])
            return True
        except duckdb.Error as exc:
            if is_lock_error(exc) and time.monotonic() < deadline:
                time.sleep(0.05)  # a writer is merging: that takes milliseconds
                continue
            if is_lock_error(exc):
                # DuckDB names the holder ("Conflicting lock is held in /usr/bin/python3.11 (PID 5683)"): pass it on.
                holder = _LOCK_HOLDER.search(str(exc))
                who = f"another process ({holder.group(1)})" if holder else "another process"
                raise StoreError(
                    f"{paths.db} is held by {who} for writing (or, read from inside an app, by that app's own "
                    "store merging, slowed down by a busy app thread); try again"
                ) from None
            raise StoreError(f"{paths.db} cannot be read: {exc}") from None


_STORE_TABLES = "SELECT table_name FROM duckdb_tables() WHERE database_name = 'store'"


def _store_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The tables of the attached database (none yet: a store not merged into)."""
    return {row[0] for row in con.execute(_STORE_TABLES).fetchall()}


def _create_view(con: duckdb.DuckDBPyConnection, paths: StorePaths, lock_wait_s: float) -> None:
    # Every part is unioned by name onto an empty table of today's columns: a database or segment
    # written by an older llmtrace lacks the newer columns, which then read as NULL.
    ddl = ", ".join(f"{name} {sql_type}" for name, sql_type, _ in COLUMNS)
    con.execute(f"CREATE TEMP TABLE _columns ({ddl})")
    parts = ["SELECT * FROM _columns"]
    pending_paths = paths.pending()
    merged: set[str] = set()
    if _attach(con, paths, lock_wait_s):
        tables = _store_tables(con)
        if is_another_applications(tables):
            raise StoreError(f"{paths.db} is not an llmtrace store (its tables: {', '.join(sorted(tables))})")
        if "spans" in tables:
            parts.append("SELECT * FROM store.spans")
            if "_segments" in tables:
                merged = merged_ids(con, "store._segments", [p.stem for p in pending_paths])
        # No table (a DuckDB shell opened the path before the first merge), or a first migration that did not commit:
        # nothing merged yet, segments only.
    pending = [str(p) for p in pending_paths if p.stem not in merged]
    if pending:
        parts.append(segment_rows(_list_literal(pending)))
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
        if value is UNTAGGED:
            clauses.append(f"{column} IS NULL")
        elif value is not None:
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


# spend_by's columns, in order (a CSV of no rows has them too).
SPEND_COLUMNS = ("key", "calls", "errors", "blocked_calls", "input_tokens", "output_tokens", "cache_read_tokens",
                 "reasoning_tokens", "cost_usd", "unpriced_calls", "p50_ms", "p99_ms")  # fmt: skip


def spend_by(
    by: str,
    time_range: TimeRange,
    filters: Filters | None = None,
    *,
    db: Store = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Calls, tokens (by bucket), spend and latency percentiles per tenant/user/feature/model/provider."""
    key = _dimension(by)
    where, params = _where(time_range, filters)
    totals = f"""{key} AS key, count(*) AS calls, {_ERRORS} AS errors, {_BLOCKED} AS blocked_calls,
                 sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
                 sum(cache_read_tokens) AS cache_read_tokens, sum(reasoning_tokens) AS reasoning_tokens,
                 {_SPEND} AS cost_usd, count(*) FILTER (WHERE unpriced) AS unpriced_calls"""
    # Percentiles are the expensive part (one sort per key gives both). For the top keys only, they are
    # computed in a second pass over those keys' rows; for every key, in the same pass as the totals.
    percentiles = f"quantile_cont({_SERVED_DURATION}, [0.5, 0.99]) AS p"
    order = "ORDER BY cost_usd DESC NULLS LAST, calls DESC"
    if limit:
        sql = f"""
            WITH totals AS (SELECT {totals} FROM spans WHERE {where} GROUP BY 1 {order} LIMIT {int(limit)}),
            latency AS (
                SELECT {key} AS key, {percentiles} FROM spans SEMI JOIN totals ON {key} IS NOT DISTINCT FROM totals.key
                WHERE {where} GROUP BY 1
            )
            SELECT totals.*, p[1] AS p50_ms, p[2] AS p99_ms
            FROM totals LEFT JOIN latency ON totals.key IS NOT DISTINCT FROM latency.key {order}"""
        params = params + params
    else:
        sql = f"""
            SELECT * EXCLUDE (p), p[1] AS p50_ms, p[2] AS p99_ms
            FROM (SELECT {totals}, {percentiles} FROM spans WHERE {where} GROUP BY 1) {order}"""
    with open_store(db) as con:
        return _rows(con, sql, params)


def spend_over_time(
    by: str, time_range: TimeRange, bucket: str, filters: Filters | None = None, *, db: Store = None
) -> list[dict[str, Any]]:
    """Spend and tokens per time bucket (one of ``BUCKETS``) and per key (for stacked charts)."""
    keys, group = _grouping(by, bucket)
    where, params = _where(time_range, filters)
    sql = f"""
        SELECT {keys}, count(*) AS calls,
               {_SPEND} AS cost_usd, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens
        FROM spans WHERE {where} GROUP BY {group} ORDER BY {group}"""
    with open_store(db) as con:
        return _rows(con, sql, params)


def latency_percentiles(
    time_range: TimeRange,
    filters: Filters | None = None,
    *,
    by: str = "model",
    bucket: str | None = None,
    db: Store = None,
) -> list[dict[str, Any]]:
    """P50/P95/P99 of duration and time to first chunk, per model (or any key of ``DIMENSIONS``), optionally per time
    bucket (calls a budget refused are not latencies: left out)."""
    keys, group = _grouping(by, bucket)
    where, params = _where(time_range, filters)
    where += f" AND {_SERVED}"
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
    db: Store = None,
    in_app: bool = False,
) -> list[dict[str, Any]]:
    """Error and 429 rates and HTTP attempts (retries), per provider (or any key of ``DIMENSIONS``), optionally per
    time bucket, of the calls that reached the provider (not those a budget refused)."""
    keys, group = _grouping(by, bucket)
    where, params = _where(time_range, filters)
    where += f" AND {_SERVED}"
    sql = f"""
        SELECT {keys}, count(*) AS calls, count(error_type) AS errors,
               count(*) FILTER (WHERE {_RATE_LIMITED}) AS rate_limited_calls,
               count(error_type) / count(*) AS error_rate,
               count(*) FILTER (WHERE {_RATE_LIMITED}) / count(*) AS rate_limited_rate,
               sum(http_attempts) AS http_attempts, sum(http_attempts) - count(*) AS retries
        FROM spans WHERE {where} GROUP BY {group} ORDER BY {group}"""
    with open_store(db, in_app=in_app) as con:
        return _rows(con, sql, params)


def top_calls(
    time_range: TimeRange,
    filters: Filters | None = None,
    *,
    order: str = "cost",
    limit: int = 20,
    db: Store = None,
) -> list[dict[str, Any]]:
    """The most expensive (``order="cost"``) or slowest (``order="duration"``) calls; the slowest of those that
    reached the provider (a call a budget refused took no time of the provider's)."""
    column = {"cost": "cost_usd", "duration": _SERVED_DURATION}.get(order)
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
    time_range: TimeRange, filters: Filters | None = None, *, db: Store = None
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
    time_range: TimeRange, filters: Filters | None = None, *, db: Store = None
) -> float | None:
    """Total USD spent in the range: 0.0 when nothing was billed, None (unknown, never $0) when the only calls billed
    have no known price."""
    where, params = _where(time_range, filters)
    with open_store(db) as con:
        row = con.execute(f"SELECT sum(cost_usd), bool_or(unpriced) FROM spans WHERE {where}", params).fetchone()
    return spend(*(row if row else (None, None)))


def spend(cost_usd: float | None, unpriced_calls: int | bool | None) -> float | None:
    """What a range spent, from its ``sum(cost_usd)`` and its calls with no known price (a count, or whether any):
    unknown (None, never $0) only when such calls were billed; $0 when nothing was billed (every call failed or was
    refused, or none was made)."""
    if cost_usd is None:
        return None if unpriced_calls else 0.0
    return float(cost_usd)


BudgetQuestion = tuple[str | None, str | None, datetime, datetime]


def budget_spend(
    questions: list[BudgetQuestion], *, db: Store = None, in_app: bool = False
) -> list[dict[str | None, float]]:
    """For each ``(dimension, key, since, until)``: USD spent per key (only ``key`` when given; the total
    under None when the dimension is None). One store opening for all of them: budgets ask together."""
    if not questions:
        return []
    with open_store(db, merge_first=False, in_app=in_app) as con:
        return [{key: float(usd or 0.0) for key, usd in _per_budget_key(con, q, "sum(cost_usd)")} for q in questions]


def budget_unpriced_calls(questions: list[BudgetQuestion], *, db: Store = None) -> list[dict[str | None, int]]:
    """For the same questions as ``budget_spend``: the calls with no known price per key, which the budgets cannot
    count (keys without any are left out)."""
    if not questions:
        return []
    with open_store(db) as con:
        return [{key: int(calls) for key, calls in _per_budget_key(con, q, "count(*) FILTER (WHERE unpriced)") if calls}
                for q in questions]  # fmt: skip


def _per_budget_key(con: duckdb.DuckDBPyConnection, question: BudgetQuestion, figure: str) -> list[tuple[Any, Any]]:
    dimension, key, since, until = question
    column = _dimension(dimension) if dimension else "NULL"
    # Calls that began in the window and had ended by its end: a block budget's refresh reads the store as of its
    # snapshot, and counts the calls of its process that ended after it itself (llmtrace.enforce).
    sql = (f"SELECT {column} AS key, {figure} FROM spans WHERE start_time >= ? AND start_time < ? "
           "AND start_time + to_milliseconds(coalesce(duration_ms, 0)) <= ?")  # fmt: skip
    params: list[Any] = [since, until, until]
    if dimension and key is not None:
        sql += f" AND {column} = ?"
        params.append(key)
    elif dimension:
        sql += f" AND {column} IS NOT NULL"
    return con.execute(sql + " GROUP BY 1", params).fetchall()


def summary(
    time_range: TimeRange, filters: Filters | None = None, *, db: Store = None
) -> dict[str, Any]:
    """Headline numbers: calls, errors, 429s, spend, unpriced calls, tokens, P50/P99 latency, first/last call.
    Spend (here and everywhere) is None, unknown, when no call has a known price: never 0 for unpriced calls."""
    where, params = _where(time_range, filters)
    sql = f"""
        SELECT * EXCLUDE (p), p[1] AS p50_ms, p[2] AS p99_ms FROM (
        SELECT count(*) AS calls, {_ERRORS} AS errors, {_BLOCKED} AS blocked_calls,
               count(*) FILTER (WHERE {_RATE_LIMITED}) AS rate_limited_calls,
               sum(cost_usd) AS cost_usd, count(*) FILTER (WHERE unpriced) AS unpriced_calls,
               coalesce(sum(input_tokens), 0) AS input_tokens, coalesce(sum(output_tokens), 0) AS output_tokens,
               quantile_cont({_SERVED_DURATION}, [0.5, 0.99]) AS p, quantile_cont(ttft_ms, 0.5) AS ttft_p50_ms,
               min(start_time) AS first_call, max(start_time) AS last_call
        FROM spans WHERE {where})"""
    with open_store(db) as con:
        return _rows(con, sql, params)[0]


def token_usage(
    time_range: TimeRange,
    filters: Filters | None = None,
    *,
    bucket: str | None = None,
    db: Store = None,
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
               sum(cost_usd) AS cost_usd, coalesce(sum(cache_savings_usd), 0) AS cache_savings_usd
        FROM spans WHERE {where} GROUP BY {group} ORDER BY 1"""
    with open_store(db) as con:
        return _rows(con, sql, params)


def latency_histogram(
    time_range: TimeRange,
    filters: Filters | None = None,
    *,
    by: str = "model",
    bins_per_decade: int = 5,
    db: Store = None,
) -> list[dict[str, Any]]:
    """Calls per latency bin, per model (or provider); bins are even on a log scale (LLM latency is heavy-tailed).
    Calls a budget refused are not latencies: left out."""
    key = _dimension(by)
    step = int(bins_per_decade)
    where, params = _where(time_range, filters)
    sql = f"""
        WITH binned AS (
            SELECT {key} AS key, floor(log10(greatest(duration_ms, 1)) * {step}) AS bin
            FROM spans WHERE {where} AND duration_ms IS NOT NULL AND {_SERVED}
        )
        SELECT key, pow(10, bin / {step}) AS bin_start_ms, pow(10, (bin + 1) / {step}) AS bin_end_ms, count(*) AS calls
        FROM binned GROUP BY key, bin ORDER BY key, bin"""
    with open_store(db) as con:
        return _rows(con, sql, params)


def dimension_values(
    time_range: TimeRange, *, limit: int = 500, db: Store = None
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
    return _written(store_paths(db))


def _written(paths: StorePaths) -> bool:
    return paths.db.exists() or bool(paths.pending())


def quarantine_note(db: str | os.PathLike[str] | None = None) -> str | None:
    """What readers must be told while unreadable segments sit in quarantine (a merge set them aside, logging it once):
    their spans are in no figure."""
    folder = store_paths(db).quarantine
    count = sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0
    if not count:
        return None
    return (f"{count:,} segment file(s) in {folder} could not be read and were set aside: their calls are not "
            "counted here (inspect them, then delete them)")


def span_count(*, db: str | os.PathLike[str] | None = None) -> dict[str, int]:
    """How many spans the store holds, distinct span ids, and segments still pending."""
    with open_store(db, merge_first=False) as con:
        total, distinct = con.execute("SELECT count(*), count(DISTINCT span_id) FROM spans").fetchone()  # type: ignore[misc]
    return {"spans": int(total), "distinct_span_ids": int(distinct), "pending_segments": len(store_paths(db).pending())}


# --- anomaly detection (the monitor asks these off the request path) -----------------------------


def spend_rates(
    by: str, recent: TimeRange, baseline: TimeRange, bucket_s: float, *, db: Store = None
) -> list[dict[str, Any]]:
    """Per key: spend and calls in ``recent``; spend, calls (priced ones apart) in ``baseline`` and how many
    ``bucket_s``-long buckets of it had calls (so a tenant active in office hours is compared with its active hours),
    and the spend of its buckets at the recent window's time of day, and on how many days (for windows of a day at
    most: a nightly batch is compared with the nights before). Buckets are counted back from the start of
    ``recent``, so each is as long and as aligned as the recent window."""
    key = _dimension(by)
    step = float(bucket_s)
    sql = f"""
        WITH recent AS (
            SELECT {key} AS key, coalesce(sum(cost_usd), 0) AS usd, count(*) AS calls FROM spans
            WHERE start_time >= ? AND start_time < ? AND {key} IS NOT NULL GROUP BY 1
        ), base AS (
            SELECT {key} AS key, coalesce(sum(cost_usd), 0) AS usd, count(*) AS calls,
                   count(cost_usd) AS priced_calls,
                   count(DISTINCT floor(since_recent / {step})) AS buckets,
                   coalesce(sum(cost_usd) FILTER (WHERE same_time), 0) AS same_time_usd,
                   count(DISTINCT floor(since_recent / 86400)) FILTER (WHERE same_time) AS same_time_days
            FROM (SELECT *, {step} <= 86400 AND (since_recent % 86400 + 86400) % 86400 < {step} AS same_time
                  FROM (SELECT *, epoch(start_time) - epoch(?::TIMESTAMP) AS since_recent
                        FROM spans WHERE start_time >= ? AND start_time < ? AND {key} IS NOT NULL))
            GROUP BY 1
        )
        SELECT recent.key, recent.usd AS recent_usd, recent.calls AS recent_calls,
               coalesce(base.usd, 0) AS baseline_usd, coalesce(base.calls, 0) AS baseline_calls,
               coalesce(base.priced_calls, 0) AS baseline_priced_calls, coalesce(base.buckets, 0) AS baseline_buckets,
               coalesce(base.same_time_usd, 0) AS same_time_usd, coalesce(base.same_time_days, 0) AS same_time_days
        FROM recent LEFT JOIN base ON recent.key = base.key ORDER BY recent_usd DESC"""
    with open_store(db, merge_first=False, in_app=True) as con:
        return _rows(con, sql, [recent.since, recent.until, recent.since, baseline.since, baseline.until])


def input_token_medians(
    by: str, recent: TimeRange, baseline: TimeRange, *, db: Store = None
) -> list[dict[str, Any]]:
    """Per key: median input tokens and calls, in ``recent`` and in ``baseline``."""
    key = _dimension(by)
    part = f"""SELECT {key} AS key, median(input_tokens) AS median_tokens, count(*) AS calls FROM spans
               WHERE start_time >= ? AND start_time < ? AND {key} IS NOT NULL AND input_tokens IS NOT NULL GROUP BY 1"""
    sql = f"""
        WITH recent AS ({part}), base AS ({part})
        SELECT recent.key, recent.median_tokens AS recent_median, recent.calls AS recent_calls,
               base.median_tokens AS baseline_median, coalesce(base.calls, 0) AS baseline_calls
        FROM recent LEFT JOIN base ON recent.key = base.key ORDER BY recent.key"""
    with open_store(db, merge_first=False, in_app=True) as con:
        return _rows(con, sql, [recent.since, recent.until, baseline.since, baseline.until])


def repeated_requests(
    time_range: TimeRange, window_s: float, min_count: int, *, db: Store = None
) -> list[dict[str, Any]]:
    """Successful calls with the same request hash, tenant and feature, ``min_count`` or more within ``window_s``."""
    sql = f"""
        WITH windowed AS (
            SELECT tenant, feature, request_hash, start_time,
                   count(*) OVER (PARTITION BY tenant, feature, request_hash ORDER BY start_time
                                  RANGE BETWEEN to_microseconds({int(float(window_s) * 1e6)}) PRECEDING AND CURRENT ROW) AS n
            FROM spans WHERE start_time >= ? AND start_time < ? AND request_hash IS NOT NULL AND error_type IS NULL
        )
        SELECT tenant, feature, request_hash, max(n) AS repeats, count(*) AS calls,
               min(start_time) AS first_call, max(start_time) AS last_call
        FROM windowed GROUP BY 1, 2, 3 HAVING max(n) >= ? ORDER BY repeats DESC"""
    with open_store(db, merge_first=False, in_app=True) as con:
        return _rows(con, sql, [time_range.since, time_range.until, int(min_count)])


def response_models(
    recent: TimeRange, baseline: TimeRange, *, db: Store = None
) -> list[dict[str, Any]]:
    """Per provider, request model and response model: calls in ``recent`` and in ``baseline``."""
    sql = """
        SELECT provider, request_model, response_model,
               count(*) FILTER (WHERE start_time >= ? AND start_time < ?) AS recent_calls,
               count(*) FILTER (WHERE start_time >= ? AND start_time < ?) AS baseline_calls
        FROM spans
        WHERE start_time >= least(?, ?) AND start_time < greatest(?, ?)
              AND request_model IS NOT NULL AND response_model IS NOT NULL
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""
    params = [recent.since, recent.until, baseline.since, baseline.until,
              recent.since, baseline.since, recent.until, baseline.until]  # fmt: skip
    with open_store(db, merge_first=False, in_app=True) as con:
        return _rows(con, sql, params)


def request_models(time_range: TimeRange, *, db: Store = None) -> list[dict[str, Any]]:
    """The models calls asked for in the range, with their provider and call count."""
    sql = """SELECT provider, request_model, count(*) AS calls FROM spans
             WHERE start_time >= ? AND start_time < ? AND request_model IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2"""
    with open_store(db, merge_first=False, in_app=True) as con:
        return _rows(con, sql, [time_range.since, time_range.until])


def last_alerts(since: datetime, *, db: Store = None) -> dict[tuple[str, str], datetime]:
    """When each (kind, subject) last alerted since ``since`` (the anomaly detectors repeat none within its window)."""
    with open_store(db, merge_first=False, in_app=True) as con:
        if "alerts" not in _store_tables(con):
            return {}
        rows = con.execute("SELECT kind, subject, max(fired_at) FROM store.alerts WHERE fired_at >= ? GROUP BY 1, 2", [since])
        return {(kind, subject): fired for kind, subject, fired in rows.fetchall()}


def alert_history(time_range: TimeRange, *, limit: int = 200, db: Store = None) -> list[dict[str, Any]]:
    """Alerts fired in the range, newest first (none for a store that has not recorded any yet)."""
    with open_store(db, merge_first=False) as con:
        if "alerts" not in _store_tables(con):
            return []
        sql = f"""SELECT fired_at, kind, subject, message, details, alert_id FROM store.alerts
                  WHERE fired_at >= ? AND fired_at < ? ORDER BY fired_at DESC LIMIT {int(limit)}"""
        return _rows(con, sql, [time_range.since, time_range.until])
