"""The DuckDB store: segments, merges, readers, faults, and several real processes at once."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import duckdb
import pyarrow.parquet as pq
import pytest

from llmtrace import attributes as A
from llmtrace import query
from llmtrace.store import StoreWriter, files, resolve, schema
from llmtrace.store import merge as merge_module
from llmtrace.store import writer as writer_module
from llmtrace.store.merge import merge
from conftest import CountingIds
from store_helpers import (
    MIXED_TENANTS, database_held_by_another_process, emit, emit_at, fill_mixed_store, provider_with_store,
)

HERE = Path(__file__).parent
def last_day() -> query.TimeRange:
    return query.TimeRange.last(query.parse_duration("1d"))  # computed when asked: "now" moves


def _db(tmp_path: Path) -> str:
    return str(tmp_path / "store" / "llmtrace.duckdb")


def _count(db: str) -> dict[str, int]:
    return query.span_count(db=db)


def test_spans_arrive_in_duckdb_with_typed_columns(tmp_path: Path) -> None:
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 5)
    provider.get_tracer("the-app").start_span("GET /search").end()  # not an LLM span: not stored
    assert writer.force_flush()
    con = duckdb.connect(db, read_only=True)
    types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name='spans'").fetchall())
    row = con.execute("SELECT tenant, input_tokens, cost_usd, start_time, service_name, attributes->>'$.\"llmtrace.tag.plan\"' FROM spans LIMIT 1").fetchone()
    con.close()
    assert types["start_time"] == "TIMESTAMP" and types["input_tokens"] == "BIGINT" and types["cost_usd"] == "DOUBLE"
    for public in ("trace_id", "span_id", "parent_span_id", "duration_ms", "provider", "operation", "request_model",
                   "response_model", "user_id", "tenant", "feature", "output_tokens"):
        assert public in types
    assert row[:3] == ("acme", 100, 0.001) and row[4] == "store-test" and row[5] == "pro"

    age = datetime.now(timezone.utc).replace(tzinfo=None) - row[3]
    assert 0 <= age.total_seconds() < 60  # start_time is the span's start, in UTC
    assert _count(db) == {"spans": 5, "distinct_span_ids": 5, "pending_segments": 0}


def test_stored_ids_and_status_read_as_opentelemetry_writes_them(tmp_path: Path) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Status, StatusCode

    db = _db(tmp_path)
    provider = TracerProvider(id_generator=CountingIds())  # ids whose hex text starts with zeros
    writer = StoreWriter(resolve(db), flush_interval=60)
    provider.add_span_processor(writer)
    tracer = provider.get_tracer("llmtrace")
    ended = []
    with tracer.start_as_current_span("app request") as parent:
        for status in (StatusCode.UNSET, StatusCode.OK, StatusCode.ERROR):
            span = tracer.start_span("chat gpt-4o-mini", attributes={A.OPERATION_NAME: "chat"})
            span.set_status(Status(status))
            span.end()
            ended.append(span)
    assert writer.force_flush()
    con = duckdb.connect(db, read_only=True)
    rows = set(con.execute("SELECT trace_id, span_id, parent_span_id, status FROM spans WHERE span_name LIKE 'chat%'").fetchall())
    con.close()
    assert rows == {(trace.format_trace_id(s.context.trace_id), trace.format_span_id(s.context.span_id),
                     trace.format_span_id(parent.get_span_context().span_id), s.status.status_code.name) for s in ended}
    assert all(row[0].startswith("0000") and row[1].startswith("0000") for row in rows)
    assert {row[3] for row in rows} == {"UNSET", "OK", "ERROR"}


def test_readers_see_pending_segments_while_another_process_holds_the_database(tmp_path: Path) -> None:
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 3)
    writer.force_flush()
    with database_held_by_another_process(db) as holder:
        emit(provider, 4)
        assert writer.force_flush()  # cannot merge: the rows wait in a segment
        paths = resolve(db)
        assert len(paths.pending()) == 1
        with pytest.raises(query.StoreError, match=rf"held by another process \(.*python.* \(PID {holder}\)\) for writing"):
            query._ATTACH_WAIT_S, saved = 0.2, query._ATTACH_WAIT_S
            try:
                _count(db)
            finally:
                query._ATTACH_WAIT_S = saved
    assert _count(db)["spans"] == 7  # the lock is gone: the reader merged the waiting segment



def test_a_reader_inside_the_app_waits_less_for_a_store_another_process_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget monitor's reads hold up instrument(), fork() and exit: they give up after a second (the next
    round tries again), where a report waits five for a merge to end."""
    import types

    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 2)
    writer.force_flush()
    clock = [0.0]
    monkeypatch.setattr(query, "time", types.SimpleNamespace(
        monotonic=lambda: clock[0], sleep=lambda seconds: clock.__setitem__(0, clock[0] + seconds)))  # fmt: skip
    with database_held_by_another_process(db):
        for in_app, waited in ((True, 1.0), (False, 5.0)):
            clock[0] = 0.0
            with pytest.raises(query.StoreError, match="held by another process"):
                with query.open_store(db, merge_first=False, in_app=in_app):
                    pass
            assert clock[0] == pytest.approx(waited, abs=0.06)


def test_two_merges_in_one_process_never_race_over_the_same_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer merges on its thread while the app's own llmtrace.query call merges first: the second one waits
    for a later turn (the loser used to find the segments gone, and log a store fault)."""
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 5)
    writer.force_flush(merge=False)
    paths = resolve(db)
    inside, go_on = threading.Event(), threading.Event()
    real = merge_module._merge_with

    def slow(*args: Any) -> list[Path]:
        inside.set()
        go_on.wait(10)
        return real(*args)

    monkeypatch.setattr(merge_module, "_merge_with", slow)
    first: list[Any] = []
    thread = threading.Thread(target=lambda: first.append(merge(paths)))
    thread.start()
    assert inside.wait(10)
    second = merge(paths)
    go_on.set()
    thread.join(10)
    assert second.busy and second.merged_rows == 0 and not second.quarantined
    assert first[0].merged_rows == 5 and _count(db)["spans"] == 5

def test_the_apps_own_connection_to_the_store_holds_merges_off_like_a_lock(tmp_path: Path) -> None:
    """An app that opens the store file itself, in the same process, with DuckDB's default settings: a merge (which
    opens it with its own) waits for it to let go, as for a lock, and loses nothing meanwhile."""
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 2)
    writer.force_flush()
    emit(provider, 3)
    writer.force_flush(merge=False)
    paths = resolve(db)
    apps_own = duckdb.connect(db)
    try:
        outcome = merge(paths)
        assert outcome.busy and outcome.merged_rows == 0 and len(paths.pending()) == 1
    finally:
        apps_own.close()
    assert merge(paths).merged_rows == 3 and _count(db)["spans"] == 5


def test_a_store_under_an_odd_path_merges_every_segment(tmp_path: Path) -> None:
    """Segment footers are read by one DuckDB query that names each file: under a path with "..", glob characters and
    a quote, each is still found by its name (one not found would be set aside as truncated)."""
    (tmp_path / "x").mkdir()
    db = str(tmp_path / "x" / ".." / "o'dd [1] *dir" / "llmtrace.duckdb")
    provider, writer = provider_with_store(db, flush_interval=60)
    for count in (3, 4):
        emit(provider, count)
        writer.force_flush(merge=False)
    paths = resolve(db)
    assert len(paths.pending()) == 2
    outcome = merge(paths)
    assert (outcome.merged_segments, outcome.merged_rows, outcome.quarantined) == (2, 7, [])
    assert _count(db)["spans"] == 7 and not paths.pending()


@pytest.mark.parametrize("where", ["in?folder/llmtrace.duckdb", "llm?trace.duckdb", "back\\slash/llmtrace.duckdb", None])
def test_a_store_path_duckdb_cannot_use_is_refused_before_anything_is_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str | None
) -> None:
    """DuckDB takes what follows a '?' in a database's path for connection options (its write-ahead log would go
    elsewhere, every merge failing at commit), and a backslash for a folder separator: instrument() and readers refuse
    such a path, the default one under a working folder named so included, rather than keep every span in segments
    that never merge."""
    import llmtrace
    from llmtrace import call

    if where is None:
        (tmp_path / "app?1").mkdir()
        monkeypatch.chdir(tmp_path / "app?1")
    db = None if where is None else str(tmp_path / where)
    with pytest.raises(llmtrace.ConfigError, match=r"path with '(\?|\\\\)' in it"):
        llmtrace.instrument(db=db, config_file=os.devnull)
    assert call.runtime is None  # nothing half-applied
    with pytest.raises(llmtrace.ConfigError, match=r"path with '(\?|\\\\)' in it"):
        query.span_count(db=db)
    llmtrace.instrument(db=db, store=False, config_file=os.devnull)  # no store, no path to refuse
    llmtrace.uninstrument()


def test_an_empty_db_or_a_folder_is_refused_not_taken_for_the_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """db = "" (a config template's unset variable) was the working folder itself: the app wrote its segments beside
    it, outside its own folder, and every merge failed on a folder where the database should be."""
    import llmtrace

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for db, says in (("", "db is empty"), ("  ", "db is empty"), (str(tmp_path / "data"), "is a folder: db is the store's database file")):
        with pytest.raises(llmtrace.ConfigError, match=says):
            llmtrace.instrument(db=db, config_file=os.devnull)
        with pytest.raises(llmtrace.ConfigError, match=says):
            query.span_count(db=db)
    assert sorted(p.name for p in tmp_path.parent.iterdir() if p.name.startswith(tmp_path.name)) == [tmp_path.name]


def test_merged_segments_are_deleted_once_the_database_is_let_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Readers and other processes' merges wait for the write lock: deleting the files (a GIL hand-over each, which a
    busy app can make last milliseconds) happens after it is released."""
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 4)
    writer.force_flush(merge=False)
    emit(provider, 3)
    writer.force_flush(merge=False)
    paths = resolve(db)
    segments = paths.pending()
    assert len(segments) == 2
    lock_free_at_delete: list[bool] = []
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self in segments:  # another process opens the database for writing: refused while the merge holds it
            opens = f"import duckdb; duckdb.connect({str(paths.db)!r}).close()"
            lock_free_at_delete.append(subprocess.run([sys.executable, "-c", opens], capture_output=True).returncode == 0)
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    outcome = merge(paths)
    assert outcome.merged_rows == 7 and lock_free_at_delete == [True, True] and not paths.pending()
    assert _count(db)["spans"] == 7


def test_segments_committed_but_not_deleted_are_not_counted_twice(tmp_path: Path) -> None:
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 10)
    paths = resolve(db)
    table = schema.spans_to_table(list(writer._spans))
    writer._spans.clear()
    segment = files.write_segment(paths, table)
    copy = segment.read_bytes()
    merge(paths)
    segment.write_bytes(copy)  # as if the process died after COMMIT, before deleting the file
    assert _count(db)["spans"] == 10
    merge(paths)
    assert not segment.exists() and _count(db)["spans"] == 10


def _truncated(segment: Path) -> None:
    segment.write_bytes(segment.read_bytes()[:200])  # a crash mid-write of a file that was renamed anyway


def _damaged(segment: Path) -> None:
    data = bytearray(segment.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    data[4 : len(data) - footer - 8] = b"\xab" * (len(data) - footer - 12)  # the footer whole, the pages not
    segment.write_bytes(bytes(data))


def _foreign(segment: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # A whole Parquet file, which pyarrow reads, whose values the spans table refuses: not one llmtrace wrote.
    pq.write_table(pa.table({"trace_id": ["x"], "start_time": ["yesterday"], "http_status": ["abc"]}), segment)


def _flipped_byte(kind: str) -> Callable[[Path], None]:
    """A segment llmtrace wrote with one byte flipped (found by flipping bytes at random): pyarrow reads it whole,
    DuckDB's stricter reader refuses it, as a bare duckdb.Error (a Thrift decoding error), or with a message holding
    the damaged bytes, which its Python client raises as a UnicodeDecodeError (see tests/data/README.md)."""

    def spoil(segment: Path) -> None:
        segment.write_bytes((Path(__file__).parent / "data" / f"damaged_segment_{kind}.parquet").read_bytes())

    return spoil


def _ten_spans(db: str) -> Any:
    """Ten spans as the writer turns them into a segment's table (written as many times as a test needs)."""
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 10)
    table = schema.spans_to_table(list(writer._spans))
    writer._spans.clear()
    return table


@pytest.mark.parametrize(
    "spoil, logged", [(_truncated, "truncated by a crash"), (_damaged, "damaged data"), (_foreign, "values the table refuses"),
                      (_flipped_byte("thrift"), "damaged data"), (_flipped_byte("utf8"), "damaged data")],
    ids=["truncated", "damaged", "foreign", "flipped byte (Thrift)", "flipped byte (UTF-8)"],
)  # fmt: skip
def test_an_unreadable_segment_is_quarantined_and_the_rest_merged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, spoil: Callable[[Path], None], logged: str,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = _db(tmp_path)
    paths, table = resolve(db), _ten_spans(db)
    bad = files.write_segment(paths, table)
    good = files.write_segment(paths, table)
    spoil(bad)
    outcome = merge(paths)
    assert outcome.merged_rows == 10 and [p.name for p in outcome.quarantined] == [bad.name]
    assert (paths.quarantine / bad.name).exists() and not good.exists()
    assert logged in caplog.text
    assert query.summary(query.TimeRange.last(timedelta(days=1)), db=db)["calls"] == 10
    # Logged once, by the merge; every reader after it is told its figures leave those calls out.
    from streamlit.testing.v1 import AppTest

    from llmtrace import dashboard
    from llmtrace.cli import main

    assert main(["report", "--db", db, "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert f"1 segment file(s) in {paths.quarantine} could not be read and were set aside" in err and json.loads(out)
    monkeypatch.setenv("LLMTRACE_DB", db)
    page = AppTest.from_file(str(dashboard.APP), default_timeout=60)
    page.run()
    assert any("could not be read and were set aside" in w.value for w in page.sidebar.warning)


def test_each_segment_set_aside_is_logged_with_its_own_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = _db(tmp_path)
    paths, table = resolve(db), _ten_spans(db)
    damaged, foreign = files.write_segment(paths, table), files.write_segment(paths, table)
    _damaged(damaged)
    _foreign(foreign)
    files.write_segment(paths, table)
    assert merge(paths).merged_rows == 10
    reasons = {r.args[0]: r.args[1] for r in caplog.records if "cannot be merged" in r.msg}
    assert reasons.keys() == {damaged.name, foreign.name}
    assert reasons[damaged.name].startswith("damaged data") and foreign.name not in reasons[damaged.name]
    assert reasons[foreign.name].startswith("values the table refuses") and damaged.name not in reasons[foreign.name]


@pytest.mark.parametrize("alone_fits", [True, False])
def test_spans_with_megabytes_of_content_are_merged_or_set_aside_never_left_to_fail_every_merge(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, alone_fits: bool
) -> None:
    """DuckDB takes several times a segment's text in memory: five spans of 5 MB of captured content did not fit in a
    merge's 128 MB, and every merge failed from then on, later spans piling up in segments. Segments that do not fit
    together are merged one at a time with more room; one that does not fit alone is quarantined."""
    if not alone_fits:
        monkeypatch.setattr(merge_module, "_LARGE_MEMORY_LIMIT", merge_module._MEMORY_LIMIT)
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    tracer = provider.get_tracer("llmtrace")
    for i in range(5):
        span = tracer.start_span("chat m", attributes={A.OPERATION_NAME: "chat", A.OUTPUT_MESSAGES: json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": "y" * 5_000_000 + str(i)}]}])})
        span.end()
    writer.force_flush(merge=False)
    emit(provider, 3)
    writer.force_flush(merge=False)
    outcome = merge(resolve(db))
    assert (outcome.merged_segments, len(outcome.quarantined)) == ((2, 0) if alone_fits else (1, 1))
    assert _count(db)["spans"] == (8 if alone_fits else 3)
    if not alone_fits:
        assert "too large to merge within 128MB of memory" in caplog.text
    emit(provider, 2)
    writer.force_flush(merge=False)
    assert merge(resolve(db)).merged_rows == 2  # later merges go on at the usual memory limit


def test_a_refused_segment_ahead_of_one_too_large_for_a_merge_holds_back_neither(tmp_path: Path) -> None:
    """Segments merge oldest first: a file the table refuses, then spans with megabytes of content, then plain ones.
    Each is tried alone: the first set aside, the others merged, however their failures come."""
    db = _db(tmp_path)
    paths = resolve(db)
    files.write_segment(paths, _ten_spans(db))
    merge(paths)  # the database exists
    _foreign(files.write_segment(paths, _ten_spans(db)))
    provider, writer = provider_with_store(db, flush_interval=60)
    tracer = provider.get_tracer("llmtrace")
    for i in range(5):
        span = tracer.start_span("chat m", attributes={A.OPERATION_NAME: "chat", A.OUTPUT_MESSAGES: json.dumps(["y" * 5_000_000 + str(i)])})
        span.end()
    writer.force_flush(merge=False)
    files.write_segment(paths, _ten_spans(db))
    outcome = merge(paths)
    assert (outcome.merged_segments, outcome.merged_rows, len(outcome.quarantined)) == (2, 15, 1)
    assert _count(db)["spans"] == 25 and not paths.pending()


def test_a_commit_that_fails_is_reported_as_itself_not_as_the_rollback_after_it(tmp_path: Path) -> None:
    """A COMMIT that fails (a disk filling during a merge) ends the transaction: the ROLLBACK after it raised "no
    transaction is active", which was logged instead of the disk's error."""
    import duckdb

    con = duckdb.connect(str(tmp_path / "t.duckdb"))
    con.execute("CREATE TABLE spans (start_time TIMESTAMP)")

    class DiskFillsAtCommit:
        def execute(self, sql: str, *args: Any) -> Any:
            if sql == "COMMIT":
                con.execute("ROLLBACK")  # as DuckDB ends a transaction whose commit failed
                raise duckdb.IOException("IO Error: No space left on device")
            return con.execute(sql, *args)

    with pytest.raises(duckdb.IOException, match="No space left"):
        merge_module._commit(DiskFillsAtCommit(), [], 1.0, merge_module.MergeOutcome())  # type: ignore[arg-type]


def test_an_empty_database_at_the_store_path_reads_as_a_store_not_yet_merged_into(tmp_path: Path) -> None:
    """A DuckDB shell (or the app's own connection) that opened the path before the first merge leaves a database with
    no tables: readers see the segments, as before any merge, not a raw CatalogException; a database with other
    tables is not a store."""
    import duckdb

    db = _db(tmp_path)
    Path(db).parent.mkdir(parents=True)
    duckdb.connect(db).close()
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 3)
    writer.force_flush(merge=False)
    assert query.span_count(db=db)["spans"] == 3
    with query.open_store(db, merge_first=False) as con:
        assert query.summary(query.TimeRange.last(timedelta(days=1)), db=con)["calls"] == 3
    assert merge(resolve(db)).merged_rows == 3 and query.span_count(db=db)["spans"] == 3
    first_migration_failed = str(tmp_path / "half.duckdb")
    with duckdb.connect(first_migration_failed) as con:  # migrate() makes its own table before m001's transaction
        con.execute("CREATE TABLE _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    with query.open_store(first_migration_failed, merge_first=False) as con:
        assert query.summary(query.TimeRange.last(timedelta(days=1)), db=con)["calls"] == 0
    # Another application's database (a mistyped db), one with a spans table of its own too: never read as an empty
    # store, never written to (a merge, `llmtrace compact`, the app's writer) — not a table, not a row.
    for tables in (["orders"], ["orders", "spans"]):
        other = str(tmp_path / f"other-{len(tables)}.duckdb")
        with duckdb.connect(other) as con:
            for table in tables:
                con.execute(f"CREATE TABLE {table} (id INTEGER)")
        with pytest.raises(query.StoreError, match=rf"is not an llmtrace store \(its tables: {', '.join(tables)}\)"):
            query.span_count(db=other)
        files.write_segment(resolve(other), schema.spans_to_table([]))
        with pytest.raises(schema.NotAStore, match="not an llmtrace store"):
            merge(resolve(other))
        with duckdb.connect(other) as con:
            assert sorted(row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()) == tables


@pytest.mark.parametrize("spoil", [_truncated, _foreign])
def test_a_segment_that_cannot_be_read_before_a_merge_is_a_clear_store_error(tmp_path: Path, spoil: Any) -> None:
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 3)
    writer.force_flush()  # merged: the database exists
    paths = resolve(db)
    table = schema.spans_to_table([])
    spoil(files.write_segment(paths, table))
    with pytest.raises(query.StoreError, match="cannot be read"):  # a reader that does not merge first (in the app)
        with query.open_store(db, merge_first=False) as con:
            query.summary(query.TimeRange.last(timedelta(days=1)), db=con)
    assert merge(paths).quarantined and _count(db)["spans"] == 3  # the next merge sets the segment aside

def test_spans_in_a_segment_write_that_never_ends_are_counted_lost_at_shutdown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer stuck writing (a disk that does not answer; a child forked while a lock was held): the spans it had
    taken are lost with the process, and the last log line counts them."""
    monkeypatch.setattr(writer_module, "SHUTDOWN_FLUSH_MS", 200)
    monkeypatch.setattr(writer_module, "SHUTDOWN_JOIN_S", 0.2)
    stuck, release = threading.Event(), threading.Event()

    def never_ends(*args: Any) -> Any:
        stuck.set()
        release.wait(20)
        raise OSError("the disk did not answer")

    monkeypatch.setattr(writer_module, "write_segment", never_ends)
    provider, writer = provider_with_store(_db(tmp_path), flush_interval=60)
    emit(provider, 4)
    writer._wake.set()
    assert stuck.wait(20)
    emit(provider, 1)
    try:
        writer.shutdown()
    finally:
        release.set()
        assert writer._thread is not None
        writer._thread.join(20)  # its round ends here, not in the next test's log
    assert "5 span(s) could not be written" in caplog.text


def test_unwritable_folder_keeps_spans_until_it_is_fixed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = _db(tmp_path)
    paths = resolve(db)
    paths.db.parent.mkdir(parents=True)
    paths.segments.write_text("a file where the segment folder should be")
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 6)
    writer.force_flush()
    writer.force_flush()
    assert sum("cannot write segments" in r.message for r in caplog.records) == 1  # one clear line
    paths.segments.unlink()
    writer.force_flush()
    assert _count(db)["spans"] == 6
    assert "works again" in caplog.text


def test_disk_full_keeps_spans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    real = files.write_segment

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module, "write_segment", full)
    emit(provider, 4)
    writer.force_flush()
    monkeypatch.setattr(writer_module, "write_segment", real)
    emit(provider, 1)
    writer.force_flush()
    assert _count(db)["spans"] == 5


def test_spans_dropped_while_the_disk_stays_full_are_counted_at_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An episode of a full buffer that never ends (the disk stays full): the last lines say what it cost."""
    provider, writer = provider_with_store(_db(tmp_path), flush_interval=60)
    writer.max_buffered = 3

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module, "write_segment", full)
    emit(provider, 10)
    writer.force_flush(100)
    writer.shutdown()
    said = [r.getMessage() for r in caplog.records if "span(s)" in r.getMessage()]
    assert said[-2:] == [
        f"llmtrace: 3 span(s) could not be written to {writer.paths.segments} before the store stopped, and are lost: "
        "cannot write segments in " + str(writer.paths.segments) + ": No space left on device",
        "llmtrace: 7 span(s) were dropped in all while the store's buffer was full (3 spans): their calls are not in the store",
    ]


@pytest.mark.parametrize("raised_by", ["the OS", "Arrow"])
def test_a_read_only_folder_is_one_log_line_and_spans_lost_at_exit_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, raised_by: str
) -> None:
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    attempts = iter(range(1_000))

    def read_only(paths: Any, table: Any) -> Any:  # each attempt names its own temporary file
        temporary = str(paths.segments / f"{next(attempts)}.parquet.tmp")
        if raised_by == "the OS":
            raise OSError(errno.EROFS, "Read-only file system", temporary)
        # pyarrow's Parquet writer puts the file's name in the error's text itself
        raise OSError(errno.EROFS, f"Failed to open local file '{temporary}'. Detail: [errno 30] Read-only file system")

    monkeypatch.setattr(writer_module, "write_segment", read_only)
    emit(provider, 3)
    for _ in range(3):
        writer.force_flush()
    assert sum("cannot write segments" in r.message for r in caplog.records) == 1
    writer.shutdown()  # the app exits while the folder is still read-only
    assert "3 span(s) could not be written" in caplog.records[-1].getMessage()
    provider.shutdown()  # at exit, the provider shuts its processors down too: the loss is told once
    assert sum("could not be written" in r.getMessage() for r in caplog.records) == 1


def _small_segments(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Segments of 10 spans, a backlog from 2 of them; returns the names of the threads merges run on."""
    monkeypatch.setattr(writer_module, "_SEGMENT_ROWS", 10)
    monkeypatch.setattr(writer_module, "_BACKLOG_SEGMENTS", 2)
    threads: list[str] = []
    real = merge_module.merge

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(merge_module, "merge", spy)
    return threads


def test_a_backlog_is_merged_on_another_thread_while_the_writer_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = _db(tmp_path)
    merged_on = _small_segments(monkeypatch)
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 95)
    assert writer.force_flush()
    assert "llmtrace-store-merge" in merged_on and writer.healthy
    assert _count(db) == {"spans": 95, "distinct_span_ids": 95, "pending_segments": 0}


def _eventually(condition: Callable[[], bool], seconds: float = 20) -> bool:
    """Polls (the writer works on its own thread): a wait with a deadline, not a sleep."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _writer_of_small_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any, StoreWriter, list[str]]:
    """A store of 10-span segments whose writer only wakes for a segment's worth (its interval is 10 minutes); the
    names of the threads merges run on."""
    db = _db(tmp_path)
    merged_on = _small_segments(monkeypatch)
    provider, writer = provider_with_store(db, flush_interval=600)
    return db, provider, writer, merged_on


def test_a_segments_worth_of_spans_is_written_without_waiting_out_the_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, provider, writer, _ = _writer_of_small_segments(tmp_path, monkeypatch)
    emit(provider, 9)
    emit(provider, 1)  # the tenth: a segment's worth
    assert _eventually(lambda: len(resolve(db).pending()) == 1) and not writer._spans


def test_spans_that_pile_up_during_a_round_are_written_by_the_next_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, provider, writer, _ = _writer_of_small_segments(tmp_path, monkeypatch)
    in_round, go_on = threading.Event(), threading.Event()
    take = writer._take_spans

    def slow_first_take(limit: int) -> Any:
        if not in_round.is_set():
            in_round.set()
            assert go_on.wait(20)
        return take(limit)

    monkeypatch.setattr(writer, "_take_spans", slow_first_take)
    emit(provider, 10)  # a segment's worth: a round begins
    assert in_round.wait(20)
    emit(provider, 15)  # meanwhile (the buffer goes from 10 to 25: no new wake-up)
    go_on.set()
    assert _eventually(lambda: not writer._spans)  # not after the 600 s interval
    assert writer.force_flush() and _count(db)["spans"] == 25


def test_segments_from_many_rounds_make_a_backlog_merged_on_its_own_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, provider, writer, merged_on = _writer_of_small_segments(tmp_path, monkeypatch)  # a backlog of 2; a round writes one
    for _ in range(2):
        emit(provider, 10)
        assert _eventually(lambda: not writer._spans)
    assert _eventually(lambda: merged_on == ["llmtrace-store-merge"] and not resolve(db).pending())
    assert _count(db)["spans"] == 20


def test_periodic_merges_run_on_their_own_thread_so_the_writer_goes_on_converting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _db(tmp_path)
    merged_on = _small_segments(monkeypatch)
    monkeypatch.setattr(writer_module, "_BACKLOG_SEGMENTS", 1000)  # no backlog: only the periodic merge
    provider, writer = provider_with_store(db, flush_interval=0.02)
    emit(provider, 5)
    assert _eventually(lambda: bool(merged_on) and not resolve(db).pending())
    assert set(merged_on) == {"llmtrace-store-merge"}
    emit(provider, 3)
    assert writer.force_flush()  # a flush someone waits for: merged when it returns, the merge running then included
    assert _count(db) == {"spans": 8, "distinct_span_ids": 8, "pending_segments": 0}


def _app_thread_that_keeps_the_gil(until: threading.Event, emit_one: Callable[[], None], seconds: float = 30) -> None:
    """Works ~1 ms in Python between two instants without the GIL (a getrandom() syscall, as an SDK call on a mock
    transport makes): a thread waiting for the GIL then never gets it (its 5 ms wait restarts at every hand-back)."""
    deadline = time.monotonic() + seconds
    while not until.is_set() and time.monotonic() < deadline:
        emit_one()
        x = 0
        for _ in range(20_000):
            x += 1
        os.urandom(8)


def test_an_app_thread_that_keeps_the_gil_does_not_starve_the_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "_CHECK_EVERY", 8)  # production checks every 256 spans; this test emits slowly
    monkeypatch.setattr(writer_module, "_LATE_S", 0.0)
    provider, writer = provider_with_store(_db(tmp_path), flush_interval=0.05)
    emit(provider, 1)  # the writer thread starts, and waits out its interval
    written = threading.Event()
    real_write = writer_module.write_segment

    def write(*args: Any) -> Any:
        path = real_write(*args)
        written.set()
        return path

    monkeypatch.setattr(writer_module, "write_segment", write)
    _app_thread_that_keeps_the_gil(written, lambda: emit(provider, 1))
    assert written.is_set()
    assert writer.force_flush()


def test_an_app_that_waits_on_its_calls_never_hands_the_gil_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "_CHECK_EVERY", 8)
    provider, writer = provider_with_store(_db(tmp_path), flush_interval=0.05)
    emit(provider, 1)
    assert writer.force_flush()  # the writer has loaded Arrow and DuckDB (once per process: a long first round)
    verdicts: list[bool] = []
    is_late = writer._writer_is_late
    monkeypatch.setattr(writer, "_writer_is_late", lambda: verdicts.append(is_late()) or verdicts[-1])
    deadline = time.monotonic() + 2.0  # 40 intervals
    while time.monotonic() < deadline:
        emit(provider, 8)
        time.sleep(0.005)  # the app waits on the network between calls, so the writer gets the GIL
    assert len(verdicts) > 100 and not any(verdicts)
    assert writer.force_flush()


def test_a_background_merge_that_works_does_not_hide_a_failed_segment_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = _db(tmp_path)
    merged_on = _small_segments(monkeypatch)
    real = files.write_segment
    writes = 0

    def full_after_two(*args: Any, **kwargs: Any) -> Any:
        nonlocal writes
        writes += 1
        if writes > 2:  # the third: a background merge of the first two has begun
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(writer_module, "write_segment", full_after_two)
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 50)
    writer.force_flush()
    assert merged_on == ["llmtrace-store-merge"] and _count(db)["spans"] == 20
    assert not writer.healthy and "No space left" in caplog.text
    monkeypatch.setattr(writer_module, "write_segment", real)
    writer.force_flush()
    assert writer.healthy and _count(db) == {"spans": 50, "distinct_span_ids": 50, "pending_segments": 0}


def test_a_background_merge_into_a_corrupt_database_keeps_the_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = _db(tmp_path)
    merged_on = _small_segments(monkeypatch)
    paths = resolve(db)
    paths.db.parent.mkdir(parents=True)
    paths.db.write_bytes(b"this is not a duckdb file" * 100)
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 40)
    writer.force_flush()
    assert "llmtrace-store-merge" in merged_on and "cannot merge" in caplog.text and not writer.healthy
    # Nothing lost: every span waits in a segment (how the 40 fall into segments depends on when the writer woke).
    pending = paths.pending()
    assert len(pending) >= 4 and sum(pq.read_metadata(p).num_rows for p in pending) == 40


@pytest.mark.parametrize("fault", ["corrupt", "future"])
def test_corrupt_or_future_database_keeps_spans_in_segments(tmp_path: Path, fault: str, caplog: pytest.LogCaptureFixture) -> None:
    db = _db(tmp_path)
    paths = resolve(db)
    paths.db.parent.mkdir(parents=True)
    if fault == "corrupt":
        paths.db.write_bytes(b"this is not a duckdb file" * 100)
    else:
        con = duckdb.connect(db)
        schema.migrate(con)
        con.execute("INSERT INTO _migrations VALUES ('m999_from_the_future', now())")
        con.close()
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 3)
    writer.force_flush()
    assert "cannot merge" in caplog.text
    assert sum(1 for _ in paths.pending()) == 1  # nothing lost
    if fault == "future":
        assert "upgrade llmtrace" in caplog.text
    if fault == "corrupt":
        with pytest.raises(query.StoreError, match="cannot be read"):
            _count(db)
    else:  # readable as it is: the waiting segment shows up beside what the database holds
        assert _count(db)["spans"] == 3


def test_older_store_is_upgraded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 2)
    writer.force_flush()

    def m999_test_column(con: duckdb.DuckDBPyConnection) -> None:
        con.execute("ALTER TABLE spans ADD COLUMN upgraded BOOLEAN DEFAULT true")

    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, ("m999_test_column", m999_test_column)])
    merge(resolve(db))
    con = duckdb.connect(db, read_only=True)
    assert con.execute("SELECT count(*) FROM spans WHERE upgraded").fetchone() == (2,)
    assert [r[0] for r in con.execute("SELECT name FROM _migrations ORDER BY name").fetchall()] == [
        "m001_spans", "m002_cache_savings", "m003_alerts", "m004_unstreamed_calls", "m005_priced_calls",
        "m006_openai_columns", "m999_test_column"]
    con.close()


def test_a_store_before_the_openai_columns_gets_them_and_keeps_its_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenAI's API type, service tier and system fingerprint have columns of their own (m006): as JSON, on every
    OpenAI span, they halved the store's ingest. A store made before them is upgraded; its rows keep them in JSON."""
    db = _db(tmp_path)
    resolve(db).db.parent.mkdir(parents=True)
    monkeypatch.setattr(schema, "MIGRATIONS", [(name, step) for name, step in schema.MIGRATIONS if name < "m006"])
    con = duckdb.connect(db)
    schema.migrate(con)  # the database as the llmtrace before m006 made it, with a row of its time
    con.execute("""INSERT INTO spans (span_id, provider, attributes) VALUES ('old', 'openai', '{"openai.api.type":"responses"}')""")
    con.close()
    monkeypatch.undo()
    provider, writer = provider_with_store(db, flush_interval=60)
    emit_at(provider, datetime.utcnow(), **{A.OPENAI_API_TYPE: "chat_completions", A.OPENAI_RESPONSE_SERVICE_TIER: "default",
                                            A.OPENAI_RESPONSE_SYSTEM_FINGERPRINT: "fp_1"})  # fmt: skip
    writer.force_flush()
    merge(resolve(db))
    con = duckdb.connect(db, read_only=True)
    rows = con.execute("SELECT span_id = 'old', api_type, service_tier, system_fingerprint, attributes FROM spans ORDER BY 1").fetchall()
    con.close()
    assert rows == [(False, "chat_completions", "default", "fp_1", "{}"),  # columns, not JSON
                    (True, None, None, None, '{"openai.api.type":"responses"}')]  # fmt: skip


@pytest.mark.parametrize("column, attribute, migration", [("stream", A.REQUEST_STREAM, "m004_unstreamed_calls"),
                                                          ("unpriced", A.COST_UNPRICED, "m005_priced_calls")])
def test_flags_a_span_carries_only_when_true_read_false_old_rows_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, column: str, attribute: str, migration: str
) -> None:
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    with monkeypatch.context() as before:
        # Every migration but this one: the columns added since are in the segments written meanwhile.
        before.setattr(schema, "MIGRATIONS", [(name, step) for name, step in schema.MIGRATIONS if name != migration])
        emit(provider, 2)  # no stream or unpriced attribute: priced calls that did not ask to stream
        writer.force_flush()
        con = duckdb.connect(db)
        con.execute(f"UPDATE spans SET {column} = NULL")  # as rows were stored before the migration
        con.close()
        con = duckdb.connect(db, read_only=True)
        older = con.sql("SELECT * FROM spans LIMIT 1").to_arrow_table()
        con.close()
    files.write_segment(resolve(db), older)  # written by the older llmtrace, still pending at the upgrade
    with query.open_store(db, merge_first=False) as view:  # read while pending (the database's rows: until its migration)
        assert sorted(view.execute(f"SELECT {column}, count(*) FROM spans GROUP BY 1").fetchall(), key=str) == [(False, 1), (None, 2)]
    tracer = provider.get_tracer("llmtrace")
    tracer.start_span("chat", attributes={A.OPERATION_NAME: "chat", attribute: True}).end()
    emit(provider, 1)
    writer.force_flush()
    con = duckdb.connect(db, read_only=True)
    assert con.execute(f"SELECT {column}, count(*) FROM spans GROUP BY 1 ORDER BY 1").fetchall() == [(False, 4), (True, 1)]
    con.close()


def test_segments_from_an_older_llmtrace_read_and_merge_with_null_new_columns(tmp_path: Path) -> None:
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 2)
    writer.force_flush()
    paths = resolve(db)
    con = duckdb.connect(db, read_only=True)
    older = con.sql("SELECT * FROM spans").to_arrow_table().drop_columns(["cache_savings_usd"])  # as before m002
    con.close()
    files.write_segment(paths, older)
    assert _count(db)["spans"] == 4  # the old segment is read while pending, beside the merged rows
    assert query.token_usage(last_day(), db=db)[0]["cache_savings_usd"] == 0
    merge(paths)
    con = duckdb.connect(db, read_only=True)
    assert con.execute("SELECT count(*), count(cache_savings_usd) FROM spans").fetchone() == (4, 0)
    con.close()


def test_retention_is_enforced_at_merge(tmp_path: Path) -> None:
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60, retention_days=1)
    emit(provider, 3)
    writer.force_flush()
    con = duckdb.connect(db)
    con.execute("UPDATE spans SET start_time = start_time - INTERVAL 3 DAY WHERE span_id IN (SELECT span_id FROM spans LIMIT 2)")
    con.close()
    assert merge(resolve(db), retention_days=1).deleted_by_retention == 2
    assert _count(db)["spans"] == 1


def test_four_writer_processes_and_a_reader_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    db = _db(tmp_path)
    writers = [
        subprocess.Popen([sys.executable, str(HERE / "store_helpers.py"), db, "10000", f"tenant-{i}", "0.3"],
                         stdout=subprocess.PIPE, text=True, cwd=HERE)
        for i in range(4)
    ]
    reads = 0
    while any(w.poll() is None for w in writers):
        query.span_count(db=db)  # a reader that also merges, racing the writers
        reads += 1
        time.sleep(0.2)
    for w in writers:
        assert w.wait() == 0 and w.stdout.read().strip() == "done"
    counts = _count(db)  # the last writer's merge may have found the lock taken: its segment is read as pending
    assert counts["spans"] == 40_000 and counts["distinct_span_ids"] == 40_000
    assert merge(resolve(db)).busy is False
    assert _count(db) == {"spans": 40_000, "distinct_span_ids": 40_000, "pending_segments": 0}
    by_tenant = {r["key"]: r for r in query.spend_by("tenant", last_day(), db=db)}
    assert sorted(by_tenant) == [f"tenant-{i}" for i in range(4)]
    for row in by_tenant.values():
        assert row["calls"] == 10_000 and row["cost_usd"] == pytest.approx(10.0)
    assert reads > 0


def test_kill_9_mid_run_loses_at_most_the_unflushed_batch(tmp_path: Path) -> None:
    db = _db(tmp_path)
    script = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
from store_helpers import provider_with_store, emit
provider, writer = provider_with_store({db!r}, flush_interval=0.05)
flushed = 0
while True:
    emit(provider, 500)
    assert writer.force_flush()
    flushed += 500
    print(flushed, flush=True)
"""
    victim = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    confirmed = 0
    while confirmed < 5000:
        confirmed = int(victim.stdout.readline())
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    for line in victim.stdout:  # lines printed before the kill landed
        confirmed = int(line)
    counts = _count(db)  # opens, merges what is whole, and counts: the store is not corrupt
    assert confirmed <= counts["spans"] <= confirmed + 500  # at most the batch in flight is lost
    assert counts["spans"] == counts["distinct_span_ids"] and counts["pending_segments"] == 0
    assert not resolve(db).quarantine.exists()  # a file cut by the kill is a .tmp, never read


def test_after_fork_the_child_writes_its_own_spans_only(tmp_path: Path) -> None:
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 3)  # buffered in the parent at fork time
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            emit(provider, 2, tenant="child")
            code = 0 if writer.force_flush() else 1
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    writer.force_flush()
    rows = {r["key"]: r["calls"] for r in query.spend_by("tenant", last_day(), db=db)}
    assert rows == {"acme": 3, "child": 2}


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_children_that_instrument_themselves_store_their_calls_when_they_exit(tmp_path: Path, method: str) -> None:
    """instrument() in a Process target, or in a pool's initializer (the usual per-worker set-up): a child started by
    fork or forkserver still ends with os._exit(), whoever instrumented it."""
    db = _db(tmp_path)
    script = f"""
import concurrent.futures, multiprocessing, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import llmtrace, openai
from conftest import openai_client, http_module
from fake_api import FakeAPI
from llmtrace import query

def set_up():
    llmtrace.instrument(db={db!r}, flush_interval=600)  # no timed flush: only the child's exit writes its spans

def work(i):
    with llmtrace.tags(tenant=f"child-{{i}}"):
        openai_client(FakeAPI(http_module(openai))).chat.completions.create(
            model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}])

def instrumented_work(i):
    set_up()
    work(i)

if __name__ == "__main__":
    context = multiprocessing.get_context({method!r})
    child = context.Process(target=instrumented_work, args=(0,))
    child.start()
    child.join()
    pool = context.Pool(2, initializer=set_up)
    pool.map(work, range(1, 4))
    pool.close()
    pool.join()
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context, initializer=set_up) as executor:
        list(executor.map(work, range(4, 6)))
    print(sorted(r["key"] for r in query.spend_by("tenant", query.TimeRange.last(__import__("datetime").timedelta(hours=1)), db={db!r})))
"""
    app = tmp_path / "app.py"  # a file: a forkserver's children import the functions they run from it
    app.write_text(script)
    out = subprocess.run([sys.executable, str(app)], capture_output=True, text=True, cwd=tmp_path, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str([f"child-{i}" for i in range(6)])


def test_flush_writes_every_call_so_far_for_an_app_that_ends_without_exit_hooks(tmp_path: Path) -> None:
    db = _db(tmp_path)
    script = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import llmtrace, openai
from conftest import openai_client, http_module
from fake_api import FakeAPI

llmtrace.instrument(db={db!r}, flush_interval=600)  # no timed flush
client = openai_client(FakeAPI(http_module(openai)))
for _ in range(3):
    client.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}])
print(llmtrace.flush(timeout_s=30))
sys.stdout.flush()
os._exit(0)  # no atexit hook runs
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    assert query.span_count(db=db)["spans"] == 3


def test_flush_waits_for_spans_another_thread_is_writing(tmp_path: Path) -> None:
    """A budget declared in code wakes the budget monitor, whose first flush (begun before any span, on its own thread,
    loading DuckDB and Arrow) takes the calls made meanwhile: the app's flush must not return before they are written."""
    db = _db(tmp_path)
    script = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import llmtrace, llmtrace.budgets, openai
from conftest import openai_client, http_module
from fake_api import FakeAPI

llmtrace.instrument(db={db!r}, flush_interval=600)
llmtrace.budgets.add(scope="tenant", key="*", period="month", limit_usd=100)
client = openai_client(FakeAPI(http_module(openai)))
with llmtrace.tags(tenant="acme"):
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}])
print(llmtrace.flush(timeout_s=30))
sys.stdout.flush()
os._exit(0)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    assert query.span_count(db=db)["spans"] == 3


def test_flush_says_false_while_segments_cannot_be_written(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the store's folder would be")
    provider, writer = provider_with_store(str(blocked / "llmtrace.duckdb"), flush_interval=600)
    emit(provider, 2)
    assert writer.force_flush(10_000, merge=False) is False
    writer.shutdown()


_UVICORN_APP = """
import os, sys
sys.path.insert(0, {tests!r})
import llmtrace, openai
from conftest import openai_client, http_module
from fake_api import FakeAPI

llmtrace.instrument(db={db!r}, flush_interval=600)  # no timed flush: only the worker's shutdown writes its spans
client = openai_client(FakeAPI(http_module(openai), is_async=True), is_async=True)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await client.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "hi"}}])
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": str(os.getpid()).encode()}})
"""


def test_uvicorn_workers_store_their_calls_when_stopped(tmp_path: Path) -> None:
    """uvicorn --workers imports the app with its own SIGTERM handler in place, and after its graceful shutdown
    ends each worker by SIGTERM's default action, past atexit hooks."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    db = _db(tmp_path)
    (tmp_path / "served.py").write_text(_UVICORN_APP.format(tests=str(Path(__file__).parent), db=db))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "served:app", "--workers", "2", "--port", str(port),
                               "--log-level", "warning"], cwd=tmp_path, stderr=subprocess.PIPE, text=True)  # fmt: skip
    workers: set[str] = set()
    answered = 0
    try:
        deadline = time.monotonic() + 90
        while (len(workers) < 2 or answered < 10) and time.monotonic() < deadline:  # both workers answer (a call each)
            try:
                workers.add(httpx.get(f"http://127.0.0.1:{port}/", timeout=30).text)
                answered += 1
            except httpx.TransportError:
                time.sleep(0.1)  # a worker still importing the app
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=60)
    finally:
        server.kill()
    assert len(workers) == 2, stderr
    assert query.span_count(db=db)["spans"] == answered, stderr


def test_multiprocessing_children_store_their_calls_when_they_exit(tmp_path: Path) -> None:
    """A multiprocessing child exits with os._exit(): no atexit flush there. A store uninstrument() stopped
    takes nothing from a child forked after it either."""
    db = _db(tmp_path)
    script = f"""
import multiprocessing, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import llmtrace, openai
from conftest import openai_client, http_module
from fake_api import FakeAPI
from llmtrace import query

held = []

def work(i):
    with llmtrace.tags(tenant=f"child-{{i}}"):
        openai_client(FakeAPI(http_module(openai))).chat.completions.create(
            model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}])

def hold_a_stream(i):
    with llmtrace.tags(tenant=f"child-{{i}}"):
        stream = openai_client(FakeAPI(http_module(openai))).chat.completions.create(
            model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}], stream=True)
    next(iter(stream))
    held.append(stream)  # read in part, and held until the child ends

if __name__ == "__main__":
    llmtrace.instrument(db={db!r}, flush_interval=600)  # no timed flush: only the child's exit writes its spans
    fork = multiprocessing.get_context("fork")
    child = fork.Process(target=work, args=(0,))
    child.start()
    child.join()
    child = fork.Process(target=hold_a_stream, args=(10,))
    child.start()
    child.join()
    pool = fork.Pool(2)
    pool.map(work, range(1, 4))
    pool.close()
    pool.join()
    with fork.Pool(2) as pool:  # its exit terminates the workers (SIGTERM) as they end
        pool.map(work, range(4, 6))
    llmtrace.uninstrument()
    llmtrace.instrument(store=False)
    child = fork.Process(target=work, args=(9,))
    child.start()
    child.join()
    print(sorted(r["key"] for r in query.spend_by("tenant", query.TimeRange.last(__import__("datetime").timedelta(hours=1)), db={db!r})))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str([f"child-{i}" for i in (0, 1, 10, 2, 3, 4, 5)])



@pytest.mark.parametrize("server", ["none", "uvicorn-like"])
@pytest.mark.parametrize("collector", ["none", "never answers"])
def test_a_process_stopped_by_sigterm_stores_its_calls_first(tmp_path: Path, server: str, collector: str, request: pytest.FixtureRequest) -> None:
    """docker stop, Kubernetes and systemd send SIGTERM, whose default action skips atexit; uvicorn catches it for
    its graceful shutdown, then restores the handler it found and raises it again. The calls are stored all the
    same, and the process still ends by SIGTERM; an OTLP collector that never answers (whose exporter's retries
    outlast the flush's 8 s) takes none of the store's time."""
    db = _db(tmp_path)
    env = {**os.environ}
    if collector == "never answers":
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=request.getfixturevalue("silent_collector"), OTEL_EXPORTER_OTLP_TIMEOUT="120")
    script = f"""
import signal, sys, time
sys.path.insert(0, {str(HERE)!r})
import llmtrace, openai
from conftest import openai_client, http_module
from fake_api import FakeAPI

llmtrace.instrument(db={db!r}, flush_interval=600)  # no timed flush: only the exit writes the spans
client = openai_client(FakeAPI(http_module(openai)))
for i in range(3):
    with llmtrace.tags(tenant=f"t-{{i}}"):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}])
with llmtrace.tags(tenant="t-held"):  # a stream read in part and still held: its call ends at the exit
    held = client.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "x"}}], stream=True)
next(iter(held))
if {server == "uvicorn-like"}:
    caught = []
    found = signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))
    print("ready", flush=True)
    while not caught:
        time.sleep(0.01)
    signal.signal(signal.SIGTERM, found)  # graceful shutdown done: the signal goes on as it would have
    signal.raise_signal(caught[0])
else:
    print("ready", flush=True)
time.sleep(60)
print("still alive", flush=True)
"""
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=tmp_path, env=env)  # fmt: skip
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGTERM, err
    assert "still alive" not in out and "Traceback" not in err, err
    rows = query.spend_by("tenant", query.TimeRange.last(timedelta(hours=1)), db=db)
    assert sorted(r["key"] for r in rows) == ["t-0", "t-1", "t-2", "t-held"]

def test_untagged_refused_and_unpriced_calls_count_as_they_do_everywhere(tmp_path: Path) -> None:
    db = _db(tmp_path)
    fill_mixed_store(db)
    window = query.TimeRange.last(timedelta(hours=1))
    top = {r["key"]: r for r in query.spend_by("tenant", window, db=db, limit=100)}
    everyone = {r["key"]: r for r in query.spend_by("tenant", window, db=db)}
    assert top[None]["calls"] == 2 and top[None]["p50_ms"] == everyone[None]["p50_ms"] == pytest.approx(1500)
    served = MIXED_TENANTS + 2 + 2 + 1  # tenants, untagged, unpriced, rate-limited: not the 2 a budget refused
    assert sum(r["calls"] for r in query.latency_histogram(window, db=db)) == served
    mine = query.Filters(tenant="self-hosted")
    assert query.summary(window, mine, db=db)["cost_usd"] is None  # unknown, never $0
    assert query.spent(window, mine, db=db) is None
    assert query.spent(window, query.Filters(feature="over-budget"), db=db) == 0.0  # refused: nothing was billed
    # Nor among the slowest calls: a refused call took none of the provider's time.
    assert query.top_calls(window, query.Filters(feature="over-budget"), order="duration", db=db) == []
    assert len(query.top_calls(window, order="duration", limit=1000, db=db)) == MIXED_TENANTS + 5
    # Per key and per bucket alike (the report, the dashboard's charts): $0 where nothing was billed, not unknown.
    features = {r["key"]: r["cost_usd"] for r in query.spend_by("feature", window, db=db)}
    assert features["over-budget"] == 0.0 and features["search"] > 0
    assert {r["key"]: r["cost_usd"] for r in query.spend_by("tenant", window, db=db, limit=100)}["self-hosted"] is None
    buckets = query.spend_over_time("feature", window, "1 hour", db=db)
    assert [r["cost_usd"] for r in buckets if r["key"] == "over-budget"] == [0.0]
    assert [r["cost_usd"] for r in query.spend_over_time("tenant", window, "1 hour", mine, db=db)] == [None]
    assert query.spent(window, query.Filters(tenant="tenant-00"), db=db) == pytest.approx(0.001)
    # Raw SQL: the unpriced calls, and every other call as not unpriced.
    con = duckdb.connect(db, read_only=True)
    assert con.execute("SELECT unpriced, count(*) FROM spans GROUP BY 1 ORDER BY 1").fetchall() == [(False, MIXED_TENANTS + 5), (True, 2)]
    con.close()
    assert query.token_usage(window, mine, db=db)[0]["cost_usd"] is None
    assert query.summary(window, db=db)["cost_usd"] == pytest.approx(0.001 * sum(range(1, MIXED_TENANTS + 1)) + 2 * 0.001)
    # An aware datetime is converted to the store's UTC (bound as it is, DuckDB compared it in local time).
    aware = query.TimeRange(window.since.replace(tzinfo=timezone.utc).astimezone(timezone(timedelta(hours=9))),
                            window.until.replace(tzinfo=timezone.utc))
    assert (aware.since, aware.until) == (window.since, window.until)


def test_instrument_cycles_reuse_one_store_writer(tmp_path: Path) -> None:
    import llmtrace
    from llmtrace.store import writer as writer_module
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    added: list[Any] = []
    original = provider.add_span_processor
    provider.add_span_processor = lambda p: (added.append(p), original(p))  # type: ignore[method-assign]
    db = _db(tmp_path)
    for _ in range(3):
        llmtrace.instrument(tracer_provider=provider, db=db, flush_interval=60)
        emit(provider, 2)
        llmtrace.uninstrument()
    assert len(added) == 1 and len([w for w in writer_module._writers if w.paths == resolve(db)]) == 1
    assert _count(db)["spans"] == 6


def test_the_buffer_cap_is_a_setting_and_spans_past_it_are_dropped_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that cannot keep up (a disk fault, a stalled writer) holds at most ``max_buffered_spans`` in memory."""
    import llmtrace
    from llmtrace import instrumentation
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    db = _db(tmp_path)
    quiet = {"flush_interval": 600, "anomaly_detectors": [], "budget_refresh_interval": 3600}  # no write before the end
    llmtrace.instrument(tracer_provider=provider, db=db, max_buffered_spans=3, **quiet)
    writer = instrumentation._store_writer
    emit(provider, 5)
    assert writer.dropped == 2
    said = [r.getMessage() for r in caplog.records if "store buffer" in r.getMessage()]
    assert said == ["llmtrace: store buffer full (3 spans): the calls from now on are not recorded in the store until "
                    "the writer catches up"]  # once an episode, not once a span
    writer.force_flush()  # a round makes room: the episode ends, and says what it cost
    emit(provider, 5)  # a second episode is said too
    llmtrace.uninstrument()
    said = [r.getMessage() for r in caplog.records if "store buffer" in r.getMessage() or "in all" in r.getMessage()]
    assert said[1:] == [
        "llmtrace: store buffer has room again: 2 span(s) were dropped while it was full (2 in all)",
        "llmtrace: store buffer full (3 spans): the calls from now on are not recorded in the store until the writer catches up",
        "llmtrace: store buffer has room again: 2 span(s) were dropped while it was full (4 in all)",  # the final flush
    ]
    assert _count(db)["spans"] == 6
    llmtrace.instrument(tracer_provider=provider, db=db, max_buffered_spans=10, **quiet)  # the same writer, a new cap
    assert instrumentation._store_writer is writer
    emit(provider, 5)
    llmtrace.uninstrument()
    assert writer.dropped == 4 and _count(db)["spans"] == 11


def test_no_store_file_until_a_span_arrives(tmp_path: Path) -> None:
    provider, writer = provider_with_store(_db(tmp_path), flush_interval=60)
    writer.shutdown()
    assert not resolve(_db(tmp_path)).db.exists()


def test_app_calls_work_while_the_store_is_broken(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import openai

    import llmtrace.testing
    from conftest import http_module, openai_client
    from fake_api import FakeAPI

    db = _db(tmp_path)
    resolve(db).db.parent.mkdir(parents=True)
    resolve(db).db.write_bytes(b"garbage, not a database" * 50)
    with llmtrace.testing.capture(store=True, db=db, flush_interval=60) as captured:
        client = openai_client(FakeAPI(http_module(openai)))
        result = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        assert result.choices[0].message.content == "hello there"
        import importlib

        assert importlib.import_module("llmtrace.instrumentation")._store_writer.force_flush()
    assert len(captured.spans()) == 1
    assert "cannot merge" in caplog.text
    assert len(resolve(db).pending()) == 1  # the span waits in its segment


def test_an_odd_attribute_value_costs_only_that_cell(tmp_path: Path) -> None:
    from llmtrace import attributes as A

    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 2)
    odd = provider.get_tracer("llmtrace").start_span("chat x", attributes={A.OPERATION_NAME: "chat", A.HTTP_STATUS_CODE: "four-oh-four", A.SERVER_PORT: 2**40})
    odd.end()
    writer.force_flush()
    con = duckdb.connect(db, read_only=True)
    rows = con.execute("SELECT http_status, server_port FROM spans WHERE span_name = 'chat x'").fetchall()
    con.close()
    assert rows == [(None, None)] and _count(db)["spans"] == 3


def test_the_store_sees_every_call_when_the_app_samples_traces(tmp_path: Path) -> None:
    import importlib

    import openai
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

    import llmtrace
    from conftest import http_module, openai_client
    from fake_api import FakeAPI

    exported = InMemorySpanExporter()
    provider = TracerProvider(sampler=TraceIdRatioBased(0.01))
    provider.add_span_processor(SimpleSpanProcessor(exported))
    db = _db(tmp_path)
    llmtrace.instrument(tracer_provider=provider, db=db, flush_interval=60)
    try:
        client = openai_client(FakeAPI(http_module(openai)))
        for i in range(200):
            with llmtrace.tags(tenant=f"t{i % 2}"):
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        assert importlib.import_module("llmtrace.instrumentation")._store_writer.force_flush()
    finally:
        llmtrace.uninstrument()
    assert len(exported.get_finished_spans()) < 20  # the traces are sampled...
    rows = {r["key"]: r for r in query.spend_by("tenant", last_day(), db=db)}
    assert rows["t0"]["calls"] == rows["t1"]["calls"] == 100  # ...the ledger is not
    per_call = (56 * 0.15 + 64 * 0.075 + 40 * 0.6) / 1e6  # FakeAPI's usage at gpt-4o-mini's prices
    assert rows["t0"]["cost_usd"] == pytest.approx(100 * per_call)


def _read_key_at_barrier(db: str, barrier: Any, keys: Any) -> None:
    barrier.wait()
    keys.put(files.request_hash_key(resolve(db)).hex())


def test_processes_starting_together_share_one_request_hash_key(tmp_path: Path) -> None:
    """Duplicate calls are found across processes only if they all hash with the store's one key."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for attempt in range(8):  # each attempt a fresh store, eight processes released at once
        db = str(tmp_path / f"race{attempt}.duckdb")
        barrier, keys = context.Barrier(8), context.Queue()
        workers = [context.Process(target=_read_key_at_barrier, args=(db, barrier, keys)) for _ in range(8)]
        for worker in workers:
            worker.start()
        seen = [keys.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
        assert set(seen) == {Path(db + ".key").read_bytes().hex()}
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f".race{attempt}")) == []  # no temporary left


def test_a_reader_and_the_writer_in_one_process_wait_for_each_other(tmp_path: Path) -> None:
    """DuckDB lets one process open a file through one database instance at a time: the writer's merge
    and a reader (the budget monitor, a dashboard session) meeting in one process take turns, no error."""
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 3)
    assert writer.force_flush()
    paths = resolve(db)
    with query.open_store(db) as reader:  # the store attached for reading
        emit(provider, 2)
        assert writer.force_flush(merge=False)
        assert merge(paths).busy  # the merge waits its turn
        assert writer.healthy
        assert reader.execute("SELECT count(*) FROM spans").fetchone() == (3,)
    held = merge_module.open_for_write(paths)  # now the writer holds it; a reader waits for it
    assert held is not None
    release = threading.Timer(0.3, held.close)
    release.start()
    try:
        # The reader waited for the database; the 2 spans the merge left are read from their segment.
        assert _count(db) == {"spans": 5, "distinct_span_ids": 5, "pending_segments": 1}
    finally:
        release.join()
    assert merge(paths).merged_rows == 2


def test_latency_percentiles_are_the_linear_interpolation_of_the_stored_durations(tmp_path: Path) -> None:
    """P50/P95/P99 as the dashboard shows them (spend by key, with and without a limit; the summary; the
    latency page) equal the usual interpolated percentiles of the durations, computed here independently."""
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    start = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=30)
    durations = {"acme": [(i * 37) % 101 * 10 + 5 for i in range(101)], "globex": [50 + 7 * i for i in range(40)]}
    for tenant, values in durations.items():
        for i, ms in enumerate(values):
            emit_at(provider, start + timedelta(seconds=i), ms / 1000, **{A.TENANT: tenant, A.COST_USD: 0.01 if tenant == "acme" else 0.001})
    writer.shutdown()

    def percentile(values: list[float], p: int) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[p - 1]

    everything = durations["acme"] + durations["globex"]
    for limit in (None, 1):
        rows = query.spend_by("tenant", last_day(), db=db, limit=limit)
        assert [row["key"] for row in rows] == ["acme", "globex"][: limit or 2]
        for row in rows:
            assert row["p50_ms"] == pytest.approx(percentile(durations[row["key"]], 50))
            assert row["p99_ms"] == pytest.approx(percentile(durations[row["key"]], 99))
    headline = query.summary(last_day(), db=db)
    assert (headline["p50_ms"], headline["p99_ms"]) == (pytest.approx(percentile(everything, 50)), pytest.approx(percentile(everything, 99)))
    [by_model] = query.latency_percentiles(last_day(), db=db)
    assert (by_model["latency_p50_ms"], by_model["latency_p95_ms"], by_model["latency_p99_ms"]) == tuple(pytest.approx(percentile(everything, p)) for p in (50, 95, 99))


def test_a_models_failed_calls_are_counted_with_its_answered_ones(tmp_path: Path) -> None:
    """A failed call has no response model; the per-model views must not split it from its model's answered
    calls (dated "gpt-4o-mini-2024-07-18"), nor filter it away, or a model's error rate reads 0 % beside a 100 % row."""
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    start = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=30)
    for i in range(4):
        emit_at(provider, start + timedelta(seconds=i))  # answered: gpt-4o-mini-2024-07-18
    emit_at(provider, start + timedelta(seconds=9), **{A.RESPONSE_MODEL: None, A.ERROR_TYPE: "RateLimitError", A.COST_USD: None})
    writer.shutdown()
    [errors] = query.error_rates(last_day(), by="model", db=db)
    assert (errors["key"], errors["calls"], errors["errors"]) == ("gpt-4o-mini", 5, 1)
    assert [row["key"] for row in query.latency_percentiles(last_day(), db=db)] == ["gpt-4o-mini"]
    [spend] = query.spend_by("model", last_day(), db=db)
    assert (spend["key"], spend["calls"]) == ("gpt-4o-mini", 5)
    only = query.Filters(model="gpt-4o-mini")
    assert query.error_rates(last_day(), only, by="model", db=db)[0]["errors"] == 1


def test_a_database_locked_for_long_is_logged_once_and_merged_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone left the file open in a DuckDB shell: merges wait (spans sit in segments, readers see them),
    and past LOCKED_FOR_LONG_S one log line says why; another when merging works again."""
    monkeypatch.setattr(writer_module, "LOCKED_FOR_LONG_S", 0.0)
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    emit(provider, 1)
    assert writer.force_flush()
    with database_held_by_another_process(db):
        for _ in range(3):
            emit(provider, 2)
            assert writer.force_flush()
        assert writer.healthy  # the spans are written; budgets and the dashboard read them from the segments
        locked = [r for r in caplog.records if "has been locked by another process" in r.getMessage()]
        assert len(locked) == 1 and locked[0].levelname == "ERROR"
    emit(provider, 1)
    assert writer.force_flush()
    assert any(r.getMessage() == f"llmtrace: {db} is merged into again" for r in caplog.records)
    assert _count(db) == {"spans": 8, "distinct_span_ids": 8, "pending_segments": 0}


def test_merges_lost_to_other_processes_merging_in_turn_are_not_a_lock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Processes sharing a store merge in turn: one that loses every race for the lock while others merge (the
    database changes between its tries) is not locked out, and no "locked for over 60 s" line is logged."""
    monkeypatch.setattr(writer_module, "LOCKED_FOR_LONG_S", 0.0)
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=60)
    other_provider, other = provider_with_store(db, flush_interval=60)
    real_merge = merge_module.merge

    def lost_to_another_process(paths: Any, retention_days: Any = None) -> Any:
        emit(other_provider, 1)
        other.force_flush(merge=False)
        real_merge(paths)  # another process merged (everything pending) just before this one tried
        return merge_module.MergeOutcome(busy=True)

    monkeypatch.setattr(merge_module, "merge", lost_to_another_process)
    for _ in range(3):
        emit(provider, 1)
        assert writer.force_flush()
    assert "has been locked by another process" not in caplog.text
    assert _count(db)["spans"] == 6
    other.shutdown()


def _expected_row(span: Any) -> dict[str, Any]:
    """What a stored row holds, read from a span's public OpenTelemetry API (the store reads its fields directly)."""
    from opentelemetry import trace

    attributes = dict(span.attributes or {})
    start = span.start_time or 0
    ttfc = attributes.get(A.RESPONSE_TIME_TO_FIRST_CHUNK)
    row: dict[str, Any] = {
        "trace_id": trace.format_trace_id(span.context.trace_id),
        "span_id": trace.format_span_id(span.context.span_id),
        "parent_span_id": trace.format_span_id(span.parent.span_id) if span.parent else None,
        "service_name": span.resource.attributes.get("service.name"),
        "span_name": span.name,
        "start_time": datetime(1970, 1, 1) + timedelta(microseconds=start // 1000),
        "duration_ms": ((span.end_time or start) - start) / 1e6,
        "ttft_ms": ttfc * 1000 if ttfc is not None else None,
        "status": span.status.status_code.name,
    }
    for attribute, column, _, _ in schema._ATTRIBUTE_COLUMNS:
        value = attributes.get(attribute)
        row[column] = list(value) if isinstance(value, tuple) else value
    row["stream"], row["unpriced"] = bool(row["stream"]), bool(row["unpriced"])  # each stored only when true
    extra = {k: v for k, v in attributes.items() if k not in schema._COPIED}
    row["attributes"] = extra
    return row


def test_every_kind_of_span_becomes_the_row_its_public_fields_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import openai
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
    from opentelemetry.trace import SpanContext, Status, StatusCode

    import llmtrace
    from conftest import http_module, openai_client
    from fake_api import FakeAPI

    exported = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}), id_generator=CountingIds())
    provider.add_span_processor(SimpleSpanProcessor(exported))
    llmtrace.instrument(tracer_provider=provider, store=False)
    try:  # llmtrace's own spans: a plain call, a stream (time to first chunk), extra tags (the JSON column)
        client = openai_client(FakeAPI(http_module(openai)))
        with provider.get_tracer("app").start_as_current_span("request"), llmtrace.tags(tenant="acme", plan="pro"):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], temperature=0.2)
            for _ in client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True):
                pass
    finally:
        llmtrace.uninstrument()
    spans: list[Any] = [s for s in exported.get_finished_spans() if s.name != "request"]
    assert len(spans) == 2 and any(A.RESPONSE_TIME_TO_FIRST_CHUNK in s.attributes for s in spans)
    # The SDK's own span (bounded attributes), failed, with an odd value and a tuple; a bare one from another service
    # (no attributes, never ended); a call the app's sampler dropped, as llmtrace hands it to the store.
    sdk = provider.get_tracer("llmtrace").start_span("chat x", attributes={
        A.OPERATION_NAME: "chat", A.SERVER_PORT: 443, A.RESPONSE_FINISH_REASONS: ("stop", "length"), "llmtrace.tag.n": 3})
    sdk.set_status(Status(StatusCode.ERROR, "boom"))
    sdk.end()
    spans.append(sdk)
    spans.append(ReadableSpan("bare", context=SpanContext(5 << 64, 6, False), resource=Resource.create({"service.name": "other"}),
                              start_time=1_700_000_000_123_456_789))
    unsampled = TracerProvider(sampler=ALWAYS_OFF, resource=provider.resource)
    llmtrace.instrument(tracer_provider=unsampled, db=_db(tmp_path), flush_interval=60)
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        import importlib

        writer = importlib.import_module("llmtrace.instrumentation")._store_writer
        spans.extend(writer._spans)
        writer._spans.clear()
    finally:
        llmtrace.uninstrument()
    assert len(spans) == 5 and len({type(s) for s in spans}) == 2  # ReadableSpans and the SDK's Span
    table = schema.spans_to_table(spans).to_pylist()
    for row in table:
        row["attributes"] = json.loads(row["attributes"])
    assert table == [_expected_row(span) for span in spans]
    assert schema.spans_to_table(spans[:2]).to_pylist()[0]["service_name"] == "checkout"  # one resource: the short cut
    # Arrow reads the attributes a slice of spans at a time (it holds the GIL meanwhile): slices join up row for row.
    whole = schema.spans_to_table(spans)
    monkeypatch.setattr(schema, "_GIL_SLICE", 2)
    sliced = schema.spans_to_table(spans)
    assert sliced.equals(whole) and sliced.num_rows == 5


def test_a_wrong_query_argument_is_named_not_blamed_on_the_store() -> None:
    with pytest.raises(TypeError, match=r"Filters.tenant must be one value, a string \(or None for all, UNTAGGED for none\), got \['acme'"):
        query.Filters(tenant=["acme", "globex"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="since .* is after until"):
        query.TimeRange(datetime(2026, 1, 2), datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="TimeRange.since must be a datetime, got '2026-01-01'"):
        query.TimeRange("2026-01-01", datetime(2026, 1, 2))  # type: ignore[arg-type]


def test_reading_a_store_nothing_was_written_to_says_so_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A mistyped path reads as an empty store (as a store with no calls yet does): the log says there is none."""
    missing = str(tmp_path / "typo" / "llmtrace.duckdb")
    assert query.summary(query.TimeRange.last(timedelta(days=1)), db=missing)["calls"] == 0
    assert query.spend_by("tenant", query.TimeRange.last(timedelta(days=1)), db=missing) == []
    said = [r.getMessage() for r in caplog.records if "no store at" in r.getMessage()]
    assert said == [f"llmtrace: no store at {missing} (nothing was written there yet): it reads as empty"]
    with query.open_store(str(tmp_path / "other.duckdb"), in_app=True):  # the app's own budget reads: not a mistake
        pass
    assert len([r for r in caplog.records if "no store at" in r.getMessage()]) == 1


def test_the_query_apis_default_store_is_the_one_an_app_here_writes_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An app in a folder whose llmtrace.toml names its db writes there: llmtrace.query, asked of no store, reads it
    too (as the CLI does), not an empty default store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLMTRACE_DB", raising=False)
    (tmp_path / "llmtrace.toml").write_text('[llmtrace]\ndb = "data/calls.duckdb"\n')
    provider, writer = provider_with_store(str(tmp_path / "data" / "calls.duckdb"), flush_interval=600)
    emit(provider, 3)
    writer.force_flush()
    assert query.span_count()["spans"] == 3
    assert query.summary(last_day())["calls"] == 3
    monkeypatch.setenv("LLMTRACE_DB", str(tmp_path / "other.duckdb"))  # the variable wins, as in the app
    assert query.span_count()["spans"] == 0
    monkeypatch.delenv("LLMTRACE_DB")
    (tmp_path / "llmtrace.toml").write_text('[llmtrace]\ndb = "data/calls.duckdb"\nflush_interval = "soon"\n')
    assert query.span_count()["spans"] == 3  # a setting wrong elsewhere in the file is no reader's concern
    (tmp_path / "llmtrace.toml").write_text('[llmtrace]\ndb = "data/calls.duckdb"\nflush_interval = \n')
    from llmtrace.config import ConfigError

    with pytest.raises(ConfigError, match="malformed TOML"):  # where the store is cannot be told: not an empty one
        query.span_count()
    (tmp_path / "llmtrace.toml").unlink()
    import llmtrace.testing

    with llmtrace.testing.capture(store=True, db=str(tmp_path / "data" / "calls.duckdb"), config_file=os.devnull):
        assert query.span_count()["spans"] == 3  # instrumented: the store this process writes to


def test_a_span_lasting_months_is_stored_with_the_rest_of_its_segment(tmp_path: Path) -> None:
    """Past 2^53 ns (104 days) a duration is no exact double: Arrow's safe cast refused it, and the whole segment's
    spans were lost with it (an OpenAI background response read back long after it was queued, a clock gone wrong)."""
    db = _db(tmp_path)
    provider, writer = provider_with_store(db, flush_interval=600)
    emit(provider, 2)
    emit_at(provider, datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(days=200), duration_s=200 * 86400)
    assert writer.force_flush()
    assert query.span_count(db=db)["spans"] == 3
    longest = query.top_calls(query.TimeRange.last(timedelta(days=365)), order="duration", limit=1, db=db)[0]
    assert longest["duration_ms"] == pytest.approx(200 * 86400 * 1000)


def test_flush_says_false_after_an_internal_error_and_leaves_merging_to_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, internal_errors_fail_tests: list[BaseException]
) -> None:
    import llmtrace
    import llmtrace.testing
    import openai

    from conftest import http_module, openai_client
    from fake_api import FakeAPI
    from llmtrace import instrumentation

    db = _db(tmp_path)
    with llmtrace.testing.capture(store=True, db=db, flush_interval=600):  # the app's own provider (the test's)
        openai_client(FakeAPI(http_module(openai))).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        assert llmtrace.flush(timeout_s=30)
        assert query.span_count(db=db)["pending_segments"] == 1  # written, not merged: that is the writer's, later

        def broken(*args: Any, **kwargs: Any) -> bool:
            raise RuntimeError("llmtrace bug")

        monkeypatch.setattr(instrumentation._store_writer, "force_flush", broken)
        assert llmtrace.flush(timeout_s=30) is False  # not known to be done: an os._exit() must not trust it
        monkeypatch.undo()
        assert llmtrace.flush(None) is False  # type: ignore[arg-type]  # never raises, as its docstring says
    assert [type(e) for e in internal_errors_fail_tests] == [RuntimeError, TypeError]
    internal_errors_fail_tests.clear()  # expected here: the guard contained it


def test_a_segment_a_newer_llmtrace_wrote_is_left_for_it_to_merge(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """During a rolling upgrade, an older process must not set aside (quarantine) the spans of a newer one whose
    segment has a column its database lacks: readers count them, and the newer process merges them once migrated."""
    import pyarrow as pa

    db = _db(tmp_path)
    paths, table = resolve(db), _ten_spans(db)
    newer = files.write_segment(paths, table.append_column("a_column_of_tomorrow", pa.array([1.5] * 10)))
    files.write_segment(paths, table)
    for _ in range(2):
        outcome = merge(paths)
        assert (outcome.merged_rows, outcome.quarantined) == (10 if _ == 0 else 0, [])
    assert paths.pending() == [newer]
    with query.open_store(db, merge_first=False) as view:
        assert query.summary(query.TimeRange.last(timedelta(days=1)), db=view)["calls"] == 20
    said = [r.getMessage() for r in caplog.records if newer.name in r.getMessage()]
    assert said == [f"llmtrace: segment {newer.name} was written by a newer llmtrace (columns a_column_of_tomorrow): left for "
                    "it to merge once it has upgraded the database; readers count it meanwhile"]  # once, not at every merge


def test_a_reader_that_does_not_merge_first_says_a_damaged_segment_plainly(tmp_path: Path) -> None:
    db = _db(tmp_path)
    paths = resolve(db)
    files.write_segment(paths, _ten_spans(db))
    _flipped_byte("thrift")(files.write_segment(paths, _ten_spans(db)))
    with pytest.raises(query.StoreError, match="cannot be read until its next merge: TProtocolException: Invalid data"):
        with query.open_store(db, merge_first=False) as view:
            query.span_count(db=view)
    assert query.summary(query.TimeRange.last(timedelta(days=1)), db=db)["calls"] == 10  # one that merges first sets it aside


def test_a_call_under_way_when_uninstrument_stops_the_store_is_said_not_to_be_in_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import llmtrace
    import openai

    from conftest import http_module, openai_client
    from fake_api import FakeAPI

    db = _db(tmp_path)
    llmtrace.instrument(db=db)
    stream = openai_client(FakeAPI(http_module(openai))).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
    )
    llmtrace.uninstrument()  # the stream is read after it: its call ends with the store stopped
    for _ in stream:
        pass
    assert "a call that was under way when the store stopped (uninstrument() or exit) ended after it" in caplog.text
    assert query.span_count(db=db)["spans"] == 0
