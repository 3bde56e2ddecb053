"""The store's span processor: LLM spans go to a buffer on the request path, and a writer thread
turns them into segment files and merges them into DuckDB, off the request path (merges run on a
second, short-lived thread while the writer converts what came next; only a flush someone waits for
merges on the writer thread).

An app thread that keeps the GIL (busy, letting go only for instants) would starve the writer thread: once the
writer is late, the request path hands the GIL over for a moment every few hundred spans (see ``_CHECK_EVERY``).

It is a ledger, so it does not drop spans the way OTel's BatchSpanProcessor does when its queue
fills: the buffer holds up to ``max_buffered`` spans; beyond that new spans are counted and
dropped, with a log line when an episode begins and one, saying how many, when it ends. When the disk or the
database fails, rows wait (in memory, or in segments if only the database is at fault) and arrive once the fault
clears.
"""

from __future__ import annotations

import atexit
import collections
import functools
import logging
import os
import sys
import threading
import time
import typing
import weakref
from typing import TYPE_CHECKING, Any, Callable

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from .._fork import background_work
from .._guard import Fault, internal_errors
from ..config import DEFAULT_MAX_BUFFERED_SPANS
from .files import StorePaths, write_segment

if TYPE_CHECKING:
    from .merge import MergeOutcome

logger = logging.getLogger("llmtrace")

DEFAULT_FLUSH_INTERVAL = 2.0
_SEGMENT_ROWS = 10_000  # rows per segment file at most (and rows held by the writer at once)
# GIL starvation. A thread waiting for the GIL asks its holder to let go only after 5 ms in which no other thread took
# it; an app thread that lets go for an instant (a syscall) and takes it straight back, every millisecond or so, keeps
# resetting that wait, so the writer never gets the GIL back after its first call into C (a CPU-bound loop of SDK calls
# on a mock transport does this: one getrandom() per call; so may an event loop that never waits). Seconds behind its
# interval, the writer then gets the app thread's help: every _CHECK_EVERY spans, the app thread sleeps a moment,
# long enough for the writer to wake and take the GIL (and keep it up to 5 ms). Never while the writer keeps up.
_CHECK_EVERY = 256
_HAND_OVER_S = 0.0005
_LATE_S = 1.0  # beyond twice the flush interval

_writers: weakref.WeakSet[StoreWriter] = weakref.WeakSet()
# Merging opens the DuckDB file (tens of ms): done every few flush intervals, not every flush. Readers see
# unmerged segments anyway, so this does not delay visibility.
_MERGE_EVERY = 5
# Once this many segments are written and not merged (a burst, a sustained ~100k spans/s, a long outage), they are
# merged at once, on another thread, while the writer converts the next ones. Not fewer: each merge rewrites DuckDB's
# last, partial row group (122,880 rows) when it closes the file, so merges of 100k rows took ~20 % more CPU in all
# than one merge at the end.
_BACKLOG_SEGMENTS = 20
# A merge that finds the database locked tries again later (spans wait in segments, which readers see).
# Locked this long, it is worth a log line: someone left the file open (a DuckDB shell, a notebook).
LOCKED_FOR_LONG_S = 60.0
# At shutdown: the last flush's wait, then each thread's (a thread killed inside DuckDB at exit aborts the process).
SHUTDOWN_FLUSH_MS = 30_000
SHUTDOWN_JOIN_S = 10.0


def is_llm_span(span: ReadableSpan) -> bool:
    """Only llmtrace's own LLM-call spans are stored, not the app's HTTP spans and the like."""
    # The fields, not their properties (a Python call each): this runs for every span the app ends.
    scope = span._instrumentation_scope
    return scope is not None and scope._name == "llmtrace"


class StoreWriter(SpanProcessor):
    def __init__(
        self,
        paths: StorePaths,
        *,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        retention_days: float | None = None,
        max_buffered: int = DEFAULT_MAX_BUFFERED_SPANS,
    ) -> None:
        self.paths = paths
        self.flush_interval = flush_interval
        self.retention_days = retention_days
        self.max_buffered = max_buffered
        self.dropped = 0
        self._fault = Fault(
            "llmtrace: %s (LLM calls are not affected; spans are kept and retried)", f"llmtrace: store at {paths.db} works again"
        )
        self._locked = Fault(
            "llmtrace: %s (LLM calls are not affected; spans wait in segments and are merged once it is released; "
            "while a process holds it read-write, reports and the dashboard cannot read it either)",
            f"llmtrace: {paths.db} is merged into again",
        )  # fmt: skip
        self._locked_since: float | None = None
        self._locked_written: Any = None  # the database's state when merges were first found locked
        self._reset_state()
        _writers.add(self)

    def _reset_state(self, stopped: bool = False) -> None:
        # Spans (not yet rows) wait here; deque append/popleft are atomic, so no lock on the request path.
        self._spans: collections.deque[ReadableSpan] = collections.deque()
        self._unwritten: list[ReadableSpan] = []  # spans whose segment write failed
        self._in_hand = 0  # spans taken for the segment being written (counted as lost if the write never ends)
        # One writing at a time: the writer thread's rounds, and a flush run on the caller's thread (before the writer
        # thread exists, or after it stopped). A flush waited for must not end while another thread still writes
        # spans it took (the budget monitor's flush, with an os._exit() right after the app's own).
        self._writing = threading.Lock()
        self._wake = threading.Event()
        self._flushed = threading.Condition()
        self._flush_requests = 0
        self._flushes_done = 0
        self._merge_requested = False
        self._stopped = stopped
        self.ended_after_stop = 0  # calls that ended while it was stopped: not recorded (said once a stop)
        self._dropping = False  # the buffer is full and spans are dropped (an episode, said when it begins and ends)
        self._dropped_before = 0  # self.dropped when the episode began
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        # The merge running on its own thread (the writer goes on converting meanwhile), and what it has not taken yet.
        self._merging: _MergeInBackground | None = None
        self._unmerged_segments = 0
        self._last_merge = time.monotonic()
        self._last_round = time.monotonic()  # when the writer thread last finished a round

    # --- SpanProcessor: the request path --------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if is_llm_span(span):
            self._buffer(span)

    def record_unsampled(self, span: ReadableSpan) -> None:
        """A call whose span the app's sampler dropped: the ledger still records it."""
        self._buffer(span)

    def _buffer(self, span: ReadableSpan) -> None:
        if self._stopped:
            self._missed_when_stopped()
            return
        held = len(self._spans)
        if held + len(self._unwritten) >= self.max_buffered:
            self._drop()
            return
        self._spans.append(span)
        if self._thread is None:
            self._start_thread()
        elif held == _SEGMENT_ROWS - 1:  # a segment's worth: the writer need not wait out its interval
            self._wake.set()
        elif held % _CHECK_EVERY == 0 and held and self._writer_is_late():
            time.sleep(_HAND_OVER_S)  # see _CHECK_EVERY

    def _missed_when_stopped(self) -> None:
        # A call still under way when uninstrument() (or exit) stopped the store, that ended after it.
        self.ended_after_stop += 1
        if self.ended_after_stop == 1:
            logger.warning("llmtrace: a call that was under way when the store stopped (uninstrument() or exit) ended "
                           "after it: not recorded in %s (its span goes to the other exporters)", self.paths.db)  # fmt: skip

    def _writer_is_late(self) -> bool:
        return time.monotonic() - self._last_round > 2 * self.flush_interval + _LATE_S

    def _drop(self) -> None:
        self.dropped += 1
        if not self._dropping:  # an episode begins: one line now, one when it ends (_say_dropping_ended)
            self._dropping = True
            self._dropped_before = self.dropped - 1
            logger.error("llmtrace: store buffer full (%d spans): the calls from now on are not recorded in the store "
                         "until the writer catches up", self.max_buffered)  # fmt: skip

    def _say_dropping_ended(self) -> None:
        """After a round that made room: how many spans the episode cost (and all episodes so far)."""
        if self._dropping and len(self._spans) + len(self._unwritten) < self.max_buffered:
            self._dropping = False
            logger.error("llmtrace: store buffer has room again: %d span(s) were dropped while it was full (%d in all)",
                         self.dropped - self._dropped_before, self.dropped)  # fmt: skip

    def _start_thread(self) -> None:
        with self._thread_lock:
            if self._thread is None:
                self._last_round = time.monotonic()  # its first round is an interval away
                self._thread = threading.Thread(target=self._run, name="llmtrace-store", daemon=True)
                self._thread.start()

    # --- the writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if len(self._spans) < _SEGMENT_ROWS:  # spans that came during the last round may make a segment already
                self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self._stopped:
                return
            with self._flushed:
                requested = self._flush_requests
                merge_requested, self._merge_requested = self._merge_requested, False
            with internal_errors(), background_work():
                # A flush someone waits for merges at once; otherwise a merge every few intervals, on its own thread.
                self._write_and_merge(merge_now=merge_requested, periodic=True)
                self._say_dropping_ended()
            self._last_round = time.monotonic()
            with self._flushed:
                self._flushes_done = requested
                self._flushed.notify_all()

    def _take_spans(self, limit: int) -> list[ReadableSpan]:
        spans = self._spans
        return [spans.popleft() for _ in range(min(limit, len(spans)))]

    def _write_and_merge(self, merge_now: bool = True, periodic: bool = False) -> None:
        """Write what is buffered to segments and merge them: now (someone waits), or on the merge thread when a
        backlog builds up or (``periodic``: the writer thread's rounds) every few intervals."""
        with self._writing:
            self._write_and_merge_now(merge_now, periodic)

    def _write_and_merge_now(self, merge_now: bool, periodic: bool) -> None:
        # Segment by segment, so the writer's memory stays bounded by one segment; only what was
        # buffered when the round began, so a busy app cannot keep the merge from happening.
        from .schema import spans_to_table  # DuckDB and Arrow load here, in the writer thread

        remaining = len(self._spans)
        write_error: OSError | None = None
        while True:
            if self._unwritten:
                batch = self._unwritten
            else:
                batch = self._take_spans(min(_SEGMENT_ROWS, remaining))
                remaining -= len(batch)
            if not batch:
                break
            self._unwritten = []
            self._in_hand = len(batch)
            try:
                write_segment(self.paths, spans_to_table(batch))
            except OSError as exc:
                self._unwritten = batch  # kept: the next round tries again
                write_error = exc
                break
            finally:
                self._in_hand = 0
            self._unmerged_segments += 1
            # DuckDB works without the GIL, so a merge takes the other core, not the writer's time.
            if self._unmerged_segments >= _BACKLOG_SEGMENTS:
                self._merge_in_background()
        if write_error is not None:
            # After the running merge's outcome: a merge that worked must not clear this fault. The error said by its
            # number, without a file name (pyarrow's put it in their text): each attempt writes a new temporary file,
            # and one fault must stay one log line.
            self._take_merge(wait=True)
            reason = os.strerror(write_error.errno) if write_error.errno else write_error.strerror or str(write_error)
            self._fault.report(f"cannot write segments in {self.paths.segments}: {reason}")
            return
        if merge_now:
            self._take_merge(wait=True)
            if self.paths.pending():
                self._merged(self._merge_function())
        elif periodic and time.monotonic() - self._last_merge >= _MERGE_EVERY * self.flush_interval and self.paths.pending():
            self._merge_in_background()
        else:
            self._take_merge(wait=False)

    def _merge_function(self) -> Callable[[], MergeOutcome]:
        from .merge import merge

        self._unmerged_segments = 0
        self._last_merge = time.monotonic()
        return functools.partial(merge, self.paths, self.retention_days)

    def _merge_in_background(self) -> None:
        """Start a merge on its own thread, unless one still runs (the next one takes what it leaves)."""
        if self._take_merge(wait=False):
            self._merging = _MergeInBackground(self._merge_function())

    def _take_merge(self, *, wait: bool) -> bool:
        """Take the background merge's outcome once it is done (waiting for it with ``wait``); False while it runs."""
        merging = self._merging
        if merging is None:
            return True
        if not (wait or merging.done()):
            return False
        self._merging = None
        self._merged(merging.outcome)
        return True

    def _merged(self, outcome: Callable[[], MergeOutcome]) -> None:
        """Take a merge's outcome (running it, or waiting for it) and report how the database fared."""
        try:
            busy = outcome().busy
        except Exception as exc:  # a corrupt or future database, a full disk: segments keep the spans
            self._fault.report(f"cannot merge into {self.paths.db}: {exc}")
            return
        self._fault.clear()
        self._note_lock(busy)

    def _note_lock(self, busy: bool) -> None:
        # Not a fault of the store's health: the spans are written and readers see them.
        if not busy:
            self._locked_since = None
            self._locked.clear()
            return
        now = time.monotonic()
        # The database and its log as they are: another process that merged meanwhile changed them. Processes sharing
        # a store merge in turn, and one may lose every race for a minute while nobody holds the lock for long.
        written = self.paths.written()
        if self._locked_since is None or written != self._locked_written:
            self._locked_since, self._locked_written = now, written
        elif now - self._locked_since >= LOCKED_FOR_LONG_S:
            self._locked.report(f"{self.paths.db} has been locked by another process or connection for over "
                                f"{LOCKED_FOR_LONG_S:.0f} s")  # fmt: skip

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """False while segments cannot be written or merged (the fault is logged)."""
        return self._fault.current is None

    def force_flush(self, timeout_millis: int = 30_000, merge: bool = True) -> bool:
        """Write everything buffered so far to segments (readers see them) and, with ``merge``, merge
        them into the database; True when done within the timeout (False too while segments cannot be written)."""
        if self._thread is None or not self._thread.is_alive():
            with internal_errors(), background_work():
                self._write_and_merge(merge_now=merge)
                return not self._unwritten
            return False
        with self._flushed:
            self._merge_requested = self._merge_requested or merge
            self._flush_requests += 1
            target = self._flush_requests
            self._wake.set()
            done = self._flushed.wait_for(lambda: self._flushes_done >= target, timeout_millis / 1000)
        return done and not self._unwritten  # spans a failed write kept are not written yet

    def shutdown(self) -> None:
        """Flush, then stop the thread and wait for it: a thread killed inside DuckDB at interpreter
        exit aborts the process. Once: the provider's shutdown and llmtrace's exit hook both call it."""
        if self._stopped:
            return
        self.force_flush(SHUTDOWN_FLUSH_MS)
        self._stopped = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=SHUTDOWN_JOIN_S)
        merging = self._merging
        if merging is not None:  # the final flush did not finish: its merge must not be cut off inside DuckDB
            merging.join(timeout=SHUTDOWN_JOIN_S)
        lost = len(self._spans) + len(self._unwritten) + self._in_hand  # in hand: a write that never ended
        if lost:  # the last line the app's log gets about the store must say what it cost
            logger.error("llmtrace: %d span(s) could not be written to %s before the store stopped, and are lost: %s",
                         lost, self.paths.segments, self._fault.current or "the final flush did not finish")
        if self._dropping:  # an episode the writer never ended: what it cost is said here
            logger.error("llmtrace: %d span(s) were dropped in all while the store's buffer was full (%d spans): "
                         "their calls are not in the store", self.dropped, self.max_buffered)  # fmt: skip

    def restart(self, *, flush_interval: float, retention_days: float | None, max_buffered: int) -> None:
        """Take spans again after ``shutdown()`` (instrument() after uninstrument() on the same provider:
        OTel has no way to remove a processor, so the one already there is reused)."""
        self.flush_interval = flush_interval
        self.retention_days = retention_days
        self.max_buffered = max_buffered
        self._reset_state()

    def _after_fork_in_child(self) -> None:
        # The parent still owns the spans it had buffered: the child starts empty, with its own thread (a writer
        # uninstrument() stopped stays stopped: its store is not the child's any more).
        self._reset_state(stopped=self._stopped)


class _MergeInBackground:
    """One merge on a thread of its own; ``outcome()`` waits for it and returns (or raises) what it did."""

    def __init__(self, run: Callable[[], MergeOutcome]) -> None:
        self._result: MergeOutcome | Exception | None = None
        self._thread = threading.Thread(target=self._run, args=(run,), name="llmtrace-store-merge", daemon=True)
        self._thread.start()

    def _run(self, run: Callable[[], MergeOutcome]) -> None:
        with background_work():
            try:
                self._result = run()
            except Exception as exc:  # raised again by outcome(), on the writer thread
                self._result = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def outcome(self) -> MergeOutcome:
        self._thread.join()
        if isinstance(self._result, Exception):
            raise self._result
        if self._result is None:
            raise RuntimeError("the background merge ended without an outcome")
        return self._result


def _shutdown_all_at_exit() -> None:
    for writer in list(_writers):
        writer.shutdown()
    _drop_typing_caches()


def _drop_typing_caches() -> None:
    """Empty the ``typing`` module's caches once the last flush is done.

    A short-lived app loads DuckDB first during that flush, at exit; the caches then still hold DuckDB's
    types when its bindings (nanobind) check for leaks, and ~60 "nanobind: leaked ..." lines reach the
    app's stderr. The caches only save time, and nothing is left to save it for.
    """
    if "duckdb" in sys.modules:
        with internal_errors():
            for clear in getattr(typing, "_cleanups", ()):
                clear()


def _reinit_after_fork() -> None:
    for writer in list(_writers):
        writer._after_fork_in_child()


atexit.register(_shutdown_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)
