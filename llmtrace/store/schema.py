"""The ``spans`` table: its columns (a public contract: users query the file directly), how a
finished span becomes a row, and the numbered migrations that build and upgrade the database.
"""

from __future__ import annotations

import json
import operator
from typing import Any, Callable

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

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
    # Present on most spans: typed columns keep the JSON column (the costly part of a row) short.
    (A.COST_INPUT_USD, "cost_input_usd", "DOUBLE", _F64),
    (A.COST_OUTPUT_USD, "cost_output_usd", "DOUBLE", _F64),
    (A.COST_PRICED_MODEL, "priced_model", "VARCHAR", _STR),
    (A.RESPONSE_ID, "response_id", "VARCHAR", _STR),
    (A.RESPONSE_FINISH_REASONS, "finish_reasons", "VARCHAR[]", pa.list_(_STR)),
    (A.SERVER_ADDRESS, "server_address", "VARCHAR", _STR),
    (A.SERVER_PORT, "server_port", "INTEGER", _I32),
    (A.REQUEST_MAX_TOKENS, "request_max_tokens", "BIGINT", _I64),
    (A.REQUEST_TEMPERATURE, "request_temperature", "DOUBLE", _F64),
    (A.REQUEST_TOP_P, "request_top_p", "DOUBLE", _F64),
    (A.COST_CACHE_SAVINGS_USD, "cache_savings_usd", "DOUBLE", _F64),  # m002
    (A.REQUEST_HASH, "request_hash", "VARCHAR", _STR),  # m003
    # On every OpenAI span: as JSON they took a row's conversion from ~3.8 to ~7.9 us, half the store's ingest rate.
    (A.OPENAI_API_TYPE, "api_type", "VARCHAR", _STR),  # m006
    (A.OPENAI_RESPONSE_SERVICE_TIER, "service_tier", "VARCHAR", _STR),  # m006
    (A.OPENAI_RESPONSE_SYSTEM_FINGERPRINT, "system_fingerprint", "VARCHAR", _STR),  # m006
    (A.OPENAI_REQUEST_SERVICE_TIER, "requested_service_tier", "VARCHAR", _STR),  # m006
    (A.OUTPUT_TYPE, "output_type", "VARCHAR", _STR),  # m006: on every call that asks for JSON
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
# The attribute columns, then the time to first chunk (it becomes ttft_ms): one struct Arrow reads each span's dict into.
_ATTRIBUTES_STRUCT = pa.struct(
    [*((attribute, arrow_type) for attribute, _, _, arrow_type in _ATTRIBUTE_COLUMNS), (A.RESPONSE_TIME_TO_FIRST_CHUNK, _F64)]
)
# Spans Arrow reads in one call, holding the GIL: ~8 ms. Smaller slices cost the conversion more (2048: +4 %, 4096: +1 %),
# and only a process ending more than ~2,000 calls a second between two flushes fills more than one.
_GIL_SLICE = 4096
_CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError)
# One encoder for every row: json.dumps(..., default=...) would build a new one per call.
_JSON = json.JSONEncoder(default=list, separators=(",", ":"), ensure_ascii=False)
_COPIED = frozenset(_ATTRIBUTE_KEYS) | {A.RESPONSE_TIME_TO_FIRST_CHUNK}
_STATUS_NAMES = {code: code.name for code in StatusCode}  # a dict lookup: faster than the enum's .name
# Flags a span carries only when they are true: a call that did not ask to stream, or whose cost is known (or was
# never billed), reads as false, so that `WHERE NOT stream` and `WHERE NOT unpriced` find it.
_FALSE_WHEN_ABSENT = tuple(_ATTRIBUTE_KEYS.index(key) for key in (A.REQUEST_STREAM, A.COST_UNPRICED))
# A segment an older llmtrace wrote (pending at the upgrade) has NULL there: read as false, as m004/m005 made old rows.
_SEGMENT_FLAGS = ", ".join(
    f"coalesce({column}, false) AS {column}" for column in (_ATTRIBUTE_COLUMNS[i][1] for i in _FALSE_WHEN_ABSENT)
)
# A ReadableSpan's fields, read in C (map + attrgetter) from the instance, not through its Python properties: those
# cost ~0.5 µs a span on the one thread that holds the GIL. The store only ever gets ReadableSpans (the SDK's Span
# is one), and the tests run against the oldest and newest SDKs this reads.
_SPAN_FIELDS = tuple(
    operator.attrgetter(name)
    for name in ("_attributes", "_context", "_parent", "_start_time", "_end_time", "_name", "_status", "_resource")
)
_TRACE_ID, _SPAN_ID = operator.itemgetter(0), operator.itemgetter(1)  # a SpanContext is a tuple
_STATUS_CODE = operator.attrgetter("_status_code")


def segment_rows(files: str) -> str:
    """The SQL that reads segments (``files``: a list literal, or ``?``) as rows of today's table, for merges and
    readers alike: by name, a column an older segment lacks reads as NULL."""
    return f"SELECT * REPLACE ({_SEGMENT_FLAGS}) FROM read_parquet({files}, union_by_name = true)"


def spans_to_table(spans: list[ReadableSpan]) -> pa.Table:
    """Finished spans -> an Arrow table in COLUMNS order (runs on the writer thread, which holds the GIL meanwhile).

    Each column in one pass, in C where it can be (map, Arrow's conversion and compute): Python code runs per
    span only for the hex ids and spans whose attributes are not a plain dict.
    """
    if not spans:
        return ARROW_SCHEMA.empty_table()
    raw_attributes, contexts, parents, starts, ends, names, statuses, resources = (list(map(f, spans)) for f in _SPAN_FIELDS)
    # The SDK's Span keeps a BoundedAttributes, whose per-key access is Python-level: the dict inside it is read
    # directly (read only, never changed). llmtrace's own spans keep a plain dict.
    attrs = [a if type(a) is dict else _plain_dict(a) for a in raw_attributes]
    start = pc.fill_null(pa.array(starts, _I64), 0)  # ns
    duration_ns = pc.subtract(pc.coalesce(pa.array(ends, _I64), start), start)
    *attribute_arrays, ttfc = _attribute_arrays(attrs)
    json_column = _json_column(attrs, [*attribute_arrays, ttfc])
    for index in _FALSE_WHEN_ABSENT:
        attribute_arrays[index] = pc.fill_null(attribute_arrays[index], False)
    arrays = [
        # Hex ids: to_bytes().hex() takes half the time of "%032x" (which is a third faster than format()).
        pa.array([i.to_bytes(16, "big").hex() for i in map(_TRACE_ID, contexts)], _STR),
        pa.array([i.to_bytes(8, "big").hex() for i in map(_SPAN_ID, contexts)], _STR),
        pa.array([p[1].to_bytes(8, "big").hex() if p is not None else None for p in parents], _STR),
        _array(_service_names(resources), _STR),
        _array(names, _STR),
        pc.cast(pc.divide(start, 1000), pa.timestamp("us")),  # ns -> the column's microseconds
        pc.divide(pc.cast(duration_ns, _F64, safe=False), 1e6),  # not safe past 2^53 ns (104 days): to the ns, not lost
        pc.multiply(ttfc, 1000.0),
        pa.array(list(map(_STATUS_NAMES.__getitem__, map(_STATUS_CODE, statuses))), _STR),
        *attribute_arrays,
        _array(json_column, _JSON_COLUMN[2]),
    ]
    return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)


def _attribute_arrays(attrs: list[dict[str, Any]]) -> list[Any]:
    """The _ATTRIBUTES_STRUCT fields' arrays. Arrow reads the dicts as one struct (a C++ pass over every row: ~2 us a
    span against ~6 for a Python comprehension per column), then splits it.

    A slice at a time: that pass holds the GIL throughout, and a whole segment's (10,000 spans) took ~20 ms, for which
    every thread of the app stood still (Python switches threads only between bytecodes)."""
    try:
        slices = [pa.array(attrs[i : i + _GIL_SLICE], type=_ATTRIBUTES_STRUCT) for i in range(0, len(attrs), _GIL_SLICE)]
        return pa.chunked_array(slices, _ATTRIBUTES_STRUCT).flatten()  # columns of those slices, not copied
    except _CONVERSION_ERRORS:  # a value of the wrong type somewhere: column by column, that cell NULL
        return [_array([a.get(field.name) for a in attrs], field.type) for field in _ATTRIBUTES_STRUCT]


def _json_column(attrs: list[dict[str, Any]], copied: list[Any]) -> list[str]:
    """Each span's attributes that have no column of their own, as JSON: "{}" for most spans, all of whose attributes
    have one. Which spans have others is counted in Arrow, not key by key per span: those with more attributes than
    values found for the columns (never fewer: a value the columns refused is NULL there, and its span is encoded)."""
    found = None
    for array in copied:
        valid = pc.cast(pc.is_valid(array), _I32)
        found = valid if found is None else pc.add(found, valid)
    others = pc.indices_nonzero(pc.not_equal(pa.array(list(map(len, attrs)), _I32), found)).to_pylist()
    column = ["{}"] * len(attrs)
    for i in others:
        column[i] = _JSON.encode({k: v for k, v in attrs[i].items() if k not in _COPIED})
    return column


def _plain_dict(attributes: Any) -> dict[str, Any]:
    inner = getattr(attributes, "_dict", None)
    return inner if type(inner) is dict else dict(attributes or {})


_resource_service_names: dict[int, tuple[Any, Any]] = {}


def _service_names(resources: list[Any]) -> list[Any]:
    # A process's spans almost always share one Resource: one lookup (list.count compares identity first, in C).
    if resources.count(resources[0]) == len(resources):
        return [_service_name(resources[0])] * len(resources)
    return [_service_name(resource) for resource in resources]


def _service_name(resource: Any) -> Any:
    if resource is None:
        return None
    cached = _resource_service_names.get(id(resource))
    if cached is None or cached[0] is not resource:
        cached = (resource, resource.attributes.get("service.name"))
        _resource_service_names[id(resource)] = cached
    return cached[1]


def _array(values: list[Any], arrow_type: pa.DataType) -> pa.Array:
    """A column; a value of the wrong type (an app setting odd attributes) becomes NULL, not a lost batch."""
    try:
        return pa.array(values, type=arrow_type)
    except _CONVERSION_ERRORS:
        cleaned = []
        for value in values:
            try:
                pa.array([value], type=arrow_type)
                cleaned.append(value)
            except _CONVERSION_ERRORS:
                cleaned.append(None)
        return pa.array(cleaned, type=arrow_type)


# --- migrations (append-only: never edit one that has shipped) -------------------------------------

Migration = Callable[[duckdb.DuckDBPyConnection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(func: Migration) -> Migration:
    MIGRATIONS.append((func.__name__, func))
    return func


_M006_COLUMNS = ("api_type", "service_tier", "system_fingerprint", "requested_service_tier", "output_type")
# Columns that later migrations add: m001 has shipped and must keep creating the table it always did.
_ADDED_LATER = frozenset({"cache_savings_usd", "request_hash", *_M006_COLUMNS})


@migration
def m001_spans(con: duckdb.DuckDBPyConnection) -> None:
    columns = ",\n    ".join(f"{name} {sql_type}" for name, sql_type, _ in COLUMNS if name not in _ADDED_LATER)
    con.execute(f"CREATE TABLE spans (\n    {columns}\n)")
    con.execute("CREATE TABLE _segments (segment_id VARCHAR PRIMARY KEY, rows BIGINT, merged_at TIMESTAMP)")


@migration
def m002_cache_savings(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("ALTER TABLE spans ADD COLUMN cache_savings_usd DOUBLE")


@migration
def m003_alerts(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("ALTER TABLE spans ADD COLUMN request_hash VARCHAR")
    # What fired: its id is the dedupe key, so each alert fires once across every process.
    con.execute(
        "CREATE TABLE alerts (alert_id VARCHAR PRIMARY KEY, fired_at TIMESTAMP, kind VARCHAR, "
        "subject VARCHAR, message VARCHAR, details JSON)"
    )


@migration
def m004_unstreamed_calls(con: duckdb.DuckDBPyConnection) -> None:
    # Rows written before a call that did not ask to stream was stored as stream = false.
    con.execute("UPDATE spans SET stream = false WHERE stream IS NULL")


@migration
def m005_priced_calls(con: duckdb.DuckDBPyConnection) -> None:
    # Rows written before a call with a known cost (or none billed) was stored as unpriced = false.
    con.execute("UPDATE spans SET unpriced = false WHERE unpriced IS NULL")


@migration
def m006_openai_columns(con: duckdb.DuckDBPyConnection) -> None:
    # Rows written before keep these in their JSON attributes.
    for column in _M006_COLUMNS:
        con.execute(f"ALTER TABLE spans ADD COLUMN {column} VARCHAR")


class StoreFromTheFuture(RuntimeError):
    """The database was written by a newer llmtrace: this version will not touch it."""


class NotAStore(StoreFromTheFuture):
    """The database holds another application's tables (a mistyped ``db``): llmtrace never writes to it."""


def is_another_applications(tables: set[str]) -> bool:
    """Whether a database with these tables is someone else's: tables, but not llmtrace's migrations record."""
    return bool(tables) and "_migrations" not in tables


def migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Apply every migration this database lacks, each in its own transaction."""
    tables = {row[0] for row in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()").fetchall()}  # fmt: skip
    if is_another_applications(tables):
        raise NotAStore(f"it is not an llmtrace store (its tables: {', '.join(sorted(tables))}); check the db setting")
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
