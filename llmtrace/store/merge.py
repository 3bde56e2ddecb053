"""Merging segments into the DuckDB file: whoever can take its write lock without waiting does it.

One transaction inserts every pending segment and records its id in ``_segments``; files are
deleted only after the commit. A crash between commit and delete leaves files whose ids are
already recorded: the next merge deletes them without inserting them again.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from .files import StorePaths, quarantine, utc_now
from .schema import COLUMN_NAMES, migrate, segment_rows

logger = logging.getLogger("llmtrace")

# DuckDB refuses a second read-write process with an IOException naming the lock.
_LOCK_WORDS = ("lock", "Conflicting")
# Within one process it refuses a second database instance on the same file (the writer's merge and a
# reader such as the budget monitor, at the same moment) with this: as brief, and as harmless, as a lock.
_IN_USE: type[Exception] | tuple[()] = getattr(duckdb, "ResourceInUseException", ())
_OTHER_SETTINGS = "different configuration"
# A merge of 200k rows takes ~14 % less CPU at 128 MB than at 64 MB (the writer's RSS peaks ~30 MB higher).
_MEMORY_LIMIT = "128MB"
# Captured content of megabytes a span: DuckDB needs several times a segment's text to take it (5 spans of 5 MB did not
# fit in 128 MB, and did in 256). Such segments are merged one at a time with this much room; one that still does not
# fit is set aside (quarantined), never left to fail every later merge.
_LARGE_MEMORY_LIMIT = "1GB"
# What DuckDB raises for values it cannot take (a file llmtrace did not write, in the segments folder), as opposed to
# the database or disk failing.
DATA_ERRORS = (duckdb.ConversionException, duckdb.InvalidInputException, duckdb.BinderException, duckdb.TypeMismatchException)
# What a merge may meet besides: DuckDB's own errors, and, for a damaged file whose bytes DuckDB quotes in its message,
# the UnicodeDecodeError its Python client raises in place of that message.
_MERGE_FAILURES = (duckdb.Error, UnicodeDecodeError)
_INSERT_SEGMENTS = f"INSERT INTO spans BY NAME {segment_rows('?')}"


@dataclass
class MergeOutcome:
    merged_segments: int = 0
    merged_rows: int = 0
    quarantined: list[Path] = field(default_factory=list)
    deleted_by_retention: int = 0
    busy: bool = False  # another process holds the write lock: try again later


def is_lock_error(exc: BaseException) -> bool:
    """The database is in use by another writer (or, in this process, another connection): try again later."""
    if isinstance(exc, duckdb.IOException):
        return any(word in str(exc) for word in _LOCK_WORDS)
    if isinstance(exc, duckdb.ConnectionException):
        # The app holds the file open itself, with DuckDB's default settings (not the merge's): in use, like a lock.
        return _OTHER_SETTINGS in str(exc)
    return isinstance(exc, _IN_USE)


def open_for_write(paths: StorePaths) -> duckdb.DuckDBPyConnection | None:
    """The database, migrated, or None when another writer holds it. Other faults raise."""
    paths.db.parent.mkdir(parents=True, exist_ok=True)
    try:
        # This runs inside the user's process: keep DuckDB's memory and threads modest.
        con = duckdb.connect(str(paths.db), config={"memory_limit": _MEMORY_LIMIT, "threads": 1})
    except duckdb.Error as exc:
        if is_lock_error(exc):
            return None
        raise
    try:
        # One thread at a time: connections of one process share the database, and two threads setting up a new store
        # (a merge and an alert's record) would both create its tables, the loser failing.
        with _migrating:
            migrate(con)
    except BaseException:
        con.close()
        raise
    return con


def merged_ids(con: duckdb.DuckDBPyConnection, table: str, candidates: list[str]) -> set[str]:
    """Which of these segment ids are already in the database (looked up by id: the table only grows)."""
    if not candidates:
        return set()
    rows = con.execute(f"SELECT segment_id FROM {table} WHERE segment_id IN (SELECT unnest(?::VARCHAR[]))", [candidates])
    return {row[0] for row in rows.fetchall()}


def _row_counts(con: duckdb.DuckDBPyConnection, segments: list[Path]) -> dict[Path, int | None]:
    """Each segment's row count, None for a truncated or corrupt one. All footers in one query: on the merge thread
    every call that lets go of the GIL costs up to the interpreter's switch interval (5 ms) to take it back while
    the app's threads run Python, and a file at a time that was ~20 ms a segment. File by file only when one fails."""
    if not segments:
        return {}
    try:
        rows = con.execute("SELECT file_name, num_rows FROM parquet_file_metadata(?)", [[str(s) for s in segments]])
        counts = dict(rows.fetchall())
    except _MERGE_FAILURES:
        return {segment: _readable(segment) for segment in segments}
    return {segment: counts.get(str(segment)) for segment in segments}


def _readable(segment: Path) -> int | None:
    """Row count of a complete segment; None for a truncated or corrupt one."""
    try:
        return pq.read_metadata(segment).num_rows
    except Exception:  # any failure to read the footer means the file is not a whole segment
        return None


def _damage(con: duckdb.DuckDBPyConnection, segment: Path) -> str | None:
    """What is wrong with a segment whose footer reads, or None: a page that does not decode (pyarrow reads them all;
    DuckDB's own reader, stricter, may still refuse one: a flipped byte), or values the table refuses (DuckDB takes
    its rows, then rolls back), in a file llmtrace did not write."""
    try:
        pq.read_table(segment)
    except Exception as exc:
        return f"damaged data: {exc}"
    try:
        # Every value decoded (the max of each column) by DuckDB's own reader, nothing written.
        con.execute("SELECT max(COLUMNS(*)) FROM read_parquet(?)", [[str(segment)]]).fetchall()
    except _MERGE_FAILURES as exc:
        if is_lock_error(exc):
            raise
        return f"damaged data: {str(exc).splitlines()[0]}"  # not the SQL that read it, which DuckDB quotes after
    con.execute("BEGIN")
    try:
        con.execute(_INSERT_SEGMENTS, [[str(segment)]])
        return None
    except DATA_ERRORS as exc:
        return f"values the table refuses: {exc}"
    finally:
        _rollback(con)


def _columns_unknown_here(segment: Path) -> list[str]:
    """The columns of a segment this llmtrace does not know: one a newer llmtrace wrote."""
    try:
        return sorted(set(pq.read_schema(segment).names) - set(COLUMN_NAMES))
    except Exception:  # unreadable: that is damage, for _damage to name
        return []


_left_to_newer: set[str] = set()


def _leave_to_a_newer_llmtrace(segment: Path, columns: list[str]) -> None:
    if segment.name not in _left_to_newer:  # once a segment, not at every merge
        _left_to_newer.add(segment.name)
        logger.warning("llmtrace: segment %s was written by a newer llmtrace (columns %s): left for it to merge once it "
                       "has upgraded the database; readers count it meanwhile", segment.name, ", ".join(columns))  # fmt: skip


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.execute("ROLLBACK")
    except duckdb.TransactionException:
        pass  # the failure ended the transaction already (a COMMIT that failed): the failure is what to report


def _quarantine(paths: StorePaths, segment: Path, outcome: MergeOutcome, why: str) -> None:
    outcome.quarantined.append(quarantine(paths, segment))
    logger.error("llmtrace: segment %s cannot be merged (%s); moved to %s", segment.name, why, paths.quarantine)


def merge(paths: StorePaths, retention_days: float | None = None) -> MergeOutcome:
    outcome = MergeOutcome()
    # One merge at a time in this process (the writer's, and a report's or the app's own query merging first): two
    # would race over the same segment files, the loser finding them gone. DuckDB's own lock is per process.
    if not _merging.acquire(blocking=False):
        outcome.busy = True
        return outcome
    try:
        con = open_for_write(paths)
        if con is None:
            outcome.busy = True
            return outcome
        try:
            merged = _merge_with(con, paths, retention_days, outcome)
        finally:
            con.close()
        # After the write lock is let go (readers wait for it): each unlink hands the GIL over, and taking it back can
        # wait out the switch interval. A file left by a crash here has its id recorded: readers skip it, the next merge
        # deletes it.
        for segment in merged:
            segment.unlink(missing_ok=True)
    finally:
        _merging.release()
    return outcome


_merging = threading.Lock()
_migrating = threading.Lock()


def _new_lock_in_child() -> None:
    global _merging, _migrating
    _merging = threading.Lock()  # a merge (or migration) of the parent's does not go on in the child
    _migrating = threading.Lock()


def _merge_with(
    con: duckdb.DuckDBPyConnection, paths: StorePaths, retention_days: float | None, outcome: MergeOutcome
) -> list[Path]:
    """Commit the pending segments; returns the files to delete (all now recorded in ``_segments``)."""
    pending = paths.pending()
    done = merged_ids(con, "_segments", [p.stem for p in pending])
    to_insert: list[tuple[Path, int]] = []
    to_delete = [segment for segment in pending if segment.stem in done]  # committed earlier, crash before delete
    counts = _row_counts(con, [segment for segment in pending if segment.stem not in done])
    for segment, rows in counts.items():
        if rows is None:
            _quarantine(paths, segment, outcome, "truncated by a crash?")
            continue
        to_insert.append((segment, rows))
    try:
        _commit(con, to_insert, retention_days, outcome)
    except _MERGE_FAILURES as exc:
        if is_lock_error(exc):
            raise
        # One segment must not hold back every other one (nor every reader): each alone, the ones that cannot be
        # merged set aside.
        to_insert = _commit_one_at_a_time(con, paths, to_insert, retention_days, outcome)
    outcome.merged_segments = len(to_insert)
    outcome.merged_rows = sum(rows for _, rows in to_insert)
    return [s for s, _ in to_insert] + to_delete


def _commit_one_at_a_time(
    con: duckdb.DuckDBPyConnection,
    paths: StorePaths,
    to_insert: list[tuple[Path, int]],
    retention_days: float | None,
    outcome: MergeOutcome,
) -> list[tuple[Path, int]]:
    """Segments that failed to merge together: each in a transaction of its own, with _LARGE_MEMORY_LIMIT (megabytes of
    captured content a span need it). One that is damaged, refused by the table, or too large even so is quarantined;
    any other failure (the disk, the database) raises. Returns those merged."""
    con.execute(f"SET memory_limit = '{_LARGE_MEMORY_LIMIT}'")
    merged = []
    for entry in to_insert:
        try:
            _commit(con, [entry], None, outcome)
        except duckdb.OutOfMemoryException as exc:
            _quarantine(paths, entry[0], outcome, f"too large to merge within {_LARGE_MEMORY_LIMIT} of memory: {exc}")
            continue
        except _MERGE_FAILURES:
            newer = _columns_unknown_here(entry[0])
            if newer:  # a newer llmtrace's, during a rolling upgrade: its own processes merge it, once they migrated
                _leave_to_a_newer_llmtrace(entry[0], newer)
                continue
            why = _damage(con, entry[0])
            if why is None:
                raise  # not this segment's fault
            _quarantine(paths, entry[0], outcome, why)
            continue
        merged.append(entry)
    con.execute(f"SET memory_limit = '{_MEMORY_LIMIT}'")
    _commit(con, [], retention_days, outcome)
    return merged


def _commit(
    con: duckdb.DuckDBPyConnection, to_insert: list[tuple[Path, int]], retention_days: float | None, outcome: MergeOutcome
) -> None:
    """One transaction: insert these segments and record their ids, then apply retention."""
    con.execute("BEGIN")
    try:
        if to_insert:
            con.execute(_INSERT_SEGMENTS, [[str(segment) for segment, _ in to_insert]])
            con.execute(
                "INSERT INTO _segments SELECT unnest(?::VARCHAR[]), unnest(?::BIGINT[]), now()",
                [[segment.stem for segment, _ in to_insert], [rows for _, rows in to_insert]],
            )
        if retention_days is not None:
            cutoff = utc_now() - timedelta(days=retention_days)
            deleted = con.execute("DELETE FROM spans WHERE start_time < ?", [cutoff]).fetchone()
            outcome.deleted_by_retention = int(deleted[0]) if deleted else 0
        con.execute("COMMIT")
    except BaseException:
        _rollback(con)
        raise


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)
