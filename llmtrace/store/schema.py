"""The ``spans`` table: its columns (a public contract: users query the file directly), how a
finished span becomes a row, and the numbered migrations that build and upgrade the database.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import duckdb
import pyarrow as pa

from .. import attributes as A

_STR, _I32, _I64, _F64, _BOOL = pa.string(), pa.int32(), pa.int64(), pa.float64(), pa.bool_()

# Columns that come from the span itself: (column, DuckDB type, Arrow type).
_SPAN_COLUMNS = (
    ("trace_id", "VARCHAR", _STR),
    ("span_id", "VARCHAR", _STR),
    ("parent_span_id", "VARCHAR", _STR),
    ("service_name", "VARCHAR", _STR),
    ("span_name", "VARCHAR", _STR),
    ("start_time", "TIMESTAMP", pa.timestamp("us")),
    ("duration_ms", "DOUBLE", _F64),
    ("ttft_ms", "DOUBLE", _F64),
    ("status", "VARCHAR", _STR),
)
# Columns that are plain copies of one span attribute: (attribute, column, DuckDB type, Arrow type).
_ATTRIBUTE_COLUMNS = (
    (A.ERROR_TYPE, "error_type", "VARCHAR", _STR),
    (A.HTTP_STATUS_CODE, "http_status", "INTEGER", _I32),
    (A.HTTP_ATTEMPTS, "http_attempts", "INTEGER", _I32),
    (A.HTTP_RATE_LIMITED, "rate_limited", "INTEGER", _I32),
    (A.PROVIDER_NAME, "provider", "VARCHAR", _STR),
    (A.OPERATION_NAME, "operation", "VARCHAR", _STR),
    (A.REQUEST_MODEL, "request_model", "VARCHAR", _STR),
    (A.RESPONSE_MODEL, "response_model", "VARCHAR", _STR),
    (A.USER_ID, "user_id", "VARCHAR", _STR),
    (A.TENANT, "tenant", "VARCHAR", _STR),
    (A.FEATURE, "feature", "VARCHAR", _STR),
    (A.CONVERSATION_ID, "session_id", "VARCHAR", _STR),
    (A.USAGE_UNCACHED_INPUT_TOKENS, "uncached_input_tokens", "BIGINT", _I64),
    (A.USAGE_CACHE_READ_INPUT_TOKENS, "cache_read_tokens", "BIGINT", _I64),
    (A.USAGE_CACHE_CREATION_INPUT_TOKENS, "cache_write_tokens", "BIGINT", _I64),
    (A.USAGE_VISIBLE_OUTPUT_TOKENS, "visible_output_tokens", "BIGINT", _I64),
    (A.USAGE_REASONING_OUTPUT_TOKENS, "reasoning_tokens", "BIGINT", _I64),
    (A.USAGE_INPUT_TOKENS, "input_tokens", "BIGINT", _I64),
    (A.USAGE_OUTPUT_TOKENS, "output_tokens", "BIGINT", _I64),
    (A.USAGE_SOURCE, "usage_source", "VARCHAR", _STR),
    (A.COST_USD, "cost_usd", "DOUBLE", _F64),
    (A.COST_SOURCE, "cost_source", "VARCHAR", _STR),
    (A.COST_UNPRICED, "unpriced", "BOOLEAN", _BOOL),
    (A.REQUEST_STREAM, "stream", "BOOLEAN", _BOOL),
)
# Every other attribute, as JSON.
_JSON_COLUMN = ("attributes", "JSON", _STR)

COLUMNS: tuple[tuple[str, str, pa.DataType], ...] = (
    *_SPAN_COLUMNS,
    *((column, sql_type, arrow_type) for _, column, sql_type, arrow_type in _ATTRIBUTE_COLUMNS),
    _JSON_COLUMN,
)
COLUMN_NAMES = tuple(name for name, _, _ in COLUMNS)
ARROW_SCHEMA = pa.schema([(name, arrow_type) for name, _, arrow_type in COLUMNS])

_ATTRIBUTE_KEYS = tuple(attribute for attribute, _, _, _ in _ATTRIBUTE_COLUMNS)
# One encoder for every row: json.dumps(..., default=...) would build a new one per call.
_JSON = json.JSONEncoder(default=list, separators=(",", ":"), ensure_ascii=False)
_COPIED = frozenset(_ATTRIBUTE_KEYS) | {A.RESPONSE_TIME_TO_FIRST_CHUNK}


def _plain_attributes(span: Any) -> dict[str, Any]:
    # The SDK keeps attributes in a BoundedAttributes whose per-key access is Python-level; its
    # inner dict is read directly when present (one C-level copy instead of ~40 method calls).
    inner = getattr(getattr(span, "_attributes", None), "_dict", None)
    return dict(inner) if type(inner) is dict else dict(span.attributes or {})


def row_of(span: Any) -> tuple[Any, ...]:
    """A finished span as a row in COLUMNS order (runs on the writer thread, not the request path)."""
    attrs = _plain_attributes(span)
    ctx = span.context
    parent = span.parent
    start_ns = span.start_time or 0
    end_ns = span.end_time or start_ns
    ttfc = attrs.get(A.RESPONSE_TIME_TO_FIRST_CHUNK)
    extra = {k: v for k, v in attrs.items() if k not in _COPIED}
    return (
        format(ctx.trace_id, "032x"),
        format(ctx.span_id, "016x"),
        format(parent.span_id, "016x") if parent is not None else None,
        span.resource.attributes.get("service.name") if span.resource is not None else None,
        span.name,
        start_ns // 1000,
        (end_ns - start_ns) / 1e6,
        ttfc * 1000 if isinstance(ttfc, (int, float)) else None,
        span.status.status_code.name,
        *[attrs.get(key) for key in _ATTRIBUTE_KEYS],
        _JSON.encode(extra) if extra else "{}",
    )


def rows_to_table(rows: list[tuple[Any, ...]]) -> pa.Table:
    """Rows -> an Arrow table (columnar: the bulk path DuckDB ingests at hundreds of thousands of rows/s)."""
    columns = list(zip(*rows)) if rows else [()] * len(COLUMNS)
    arrays = []
    for (name, _, arrow_type), values in zip(COLUMNS, columns):
        if name == "start_time":
            arrays.append(pa.array(values, type=pa.int64()).cast(arrow_type))
        else:
            arrays.append(pa.array(values, type=arrow_type))
    return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)


# --- migrations (append-only: never edit one that has shipped) -------------------------------------

Migration = Callable[[duckdb.DuckDBPyConnection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(func: Migration) -> Migration:
    MIGRATIONS.append((func.__name__, func))
    return func


@migration
def m001_spans(con: duckdb.DuckDBPyConnection) -> None:
    columns = ",\n    ".join(f"{name} {sql_type}" for name, sql_type, _ in COLUMNS)
    con.execute(f"CREATE TABLE spans (\n    {columns}\n)")
    con.execute("CREATE TABLE _segments (segment_id VARCHAR PRIMARY KEY, rows BIGINT, merged_at TIMESTAMP)")


class StoreFromTheFuture(RuntimeError):
    """The database was written by a newer llmtrace: this version will not touch it."""


def migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Apply every migration this database lacks, each in its own transaction."""
    con.execute("CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    applied = {row[0] for row in con.execute("SELECT name FROM _migrations").fetchall()}
    known = {name for name, _ in MIGRATIONS}
    if applied - known:
        raise StoreFromTheFuture(
            f"the store has migrations this llmtrace does not know ({', '.join(sorted(applied - known))}); "
            "upgrade llmtrace to write to it"
        )
    for name, func in MIGRATIONS:
        if name in applied:
            continue
        con.execute("BEGIN")
        func(con)
        con.execute("INSERT INTO _migrations VALUES (?, now())", [name])
        con.execute("COMMIT")
