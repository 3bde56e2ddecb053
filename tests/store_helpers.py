"""Emit LLM spans into a store quickly, as llmtrace's own tracer does (used in-process and by child processes)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from llmtrace import attributes as A
from llmtrace.store import StoreWriter, resolve
from llmtrace.store.files import StorePaths


def provider_with_store(db: str, **kw: Any) -> tuple[TracerProvider, StoreWriter]:
    provider = TracerProvider(resource=Resource.create({"service.name": "store-test"}))
    writer = StoreWriter(resolve(db), **kw)
    provider.add_span_processor(writer)
    return provider, writer


def start_afresh(paths: StorePaths) -> None:
    """Remove a store's own files (database, log, segments), never the folder it is in: that may hold other things
    (a benchmark's --db /tmp/x.duckdb)."""
    shutil.rmtree(paths.segments, ignore_errors=True)
    for leftover in (paths.db, paths.wal):
        leftover.unlink(missing_ok=True)


def emit(provider: TracerProvider, count: int, *, tenant: str = "acme", cost: float = 0.001) -> None:
    tracer = provider.get_tracer("llmtrace")
    for i in range(count):
        span = tracer.start_span(
            "chat gpt-4o-mini",
            kind=SpanKind.CLIENT,
            attributes={
                A.OPERATION_NAME: "chat",
                A.PROVIDER_NAME: "openai",
                A.REQUEST_MODEL: "gpt-4o-mini",
                A.RESPONSE_MODEL: "gpt-4o-mini-2024-07-18",
                A.TENANT: tenant,
                A.FEATURE: "search",
                A.USER_ID: f"user-{i % 10}",
                A.USAGE_INPUT_TOKENS: 100,
                A.USAGE_OUTPUT_TOKENS: 20,
                A.USAGE_UNCACHED_INPUT_TOKENS: 100,
                A.USAGE_VISIBLE_OUTPUT_TOKENS: 20,
                A.COST_USD: cost,
                A.HTTP_ATTEMPTS: 1,
                "llmtrace.tag.plan": "pro",
            },
        )
        span.end()


def emit_at(provider: TracerProvider, start: datetime, duration_s: float = 0.5, **attributes: Any) -> None:
    """One LLM span that started at ``start`` (naive UTC), with these attributes over a plain chat call's (one
    given as None is left out)."""
    base = {A.OPERATION_NAME: "chat", A.PROVIDER_NAME: "openai", A.REQUEST_MODEL: "gpt-4o-mini",
            A.RESPONSE_MODEL: "gpt-4o-mini-2024-07-18", A.TENANT: "acme", A.FEATURE: "search",
            A.USAGE_INPUT_TOKENS: 100, A.USAGE_OUTPUT_TOKENS: 20, A.COST_USD: 0.001, A.HTTP_ATTEMPTS: 1}  # fmt: skip
    start_ns = int(start.replace(tzinfo=timezone.utc).timestamp() * 1e9)
    span = provider.get_tracer("llmtrace").start_span(
        "chat", kind=SpanKind.CLIENT, attributes={k: v for k, v in {**base, **attributes}.items() if v is not None},
        start_time=start_ns
    )
    span.end(end_time=start_ns + int(duration_s * 1e9))


MIXED_TENANTS = 55  # more than a page lists


def fill_mixed_store(db: str) -> None:
    """Calls of every kind a page must count right: many tenants, untagged calls, calls a budget refused, a
    rate-limited failure, a model with no known price."""
    provider, writer = provider_with_store(db, flush_interval=600)
    now = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=5)
    for i in range(MIXED_TENANTS):
        emit_at(provider, now, 0.5, **{A.TENANT: f"tenant-{i:02}", A.COST_USD: 0.001 * (i + 1)})
    for _ in range(2):
        emit_at(provider, now, 1.5, **{A.TENANT: None, A.FEATURE: None})
        emit_at(provider, now, 0.0002, **{A.ERROR_TYPE: "BudgetExceeded", A.COST_USD: None, A.FEATURE: "over-budget"})  # refused, not sent
        emit_at(provider, now, 0.8, **{A.TENANT: "self-hosted", A.REQUEST_MODEL: "llama-local", A.RESPONSE_MODEL: None,
                                       A.COST_USD: None, A.COST_UNPRICED: True})
    emit_at(provider, now, 2.0, **{A.ERROR_TYPE: "RateLimitError", A.HTTP_RATE_LIMITED: 3, A.HTTP_STATUS_CODE: 429,
                                   A.COST_USD: None, A.USAGE_INPUT_TOKENS: None, A.USAGE_OUTPUT_TOKENS: None})
    writer.shutdown()


@contextmanager
def database_held_by_another_process(db: str) -> Iterator[int]:
    """Another process (its PID given) holds the DuckDB file open (its write lock) until the block ends. It waits for
    a reader's brief lock to go first (a dashboard refreshing every second may be reading at that instant)."""
    hold = (
        "import duckdb, sys, time\n"
        "deadline = time.monotonic() + 30\n"
        "while True:\n"
        "    try:\n"
        f"        c = duckdb.connect({db!r})\n"
        "        break\n"
        "    except duckdb.IOException as exc:\n"
        "        if 'lock' not in str(exc) or time.monotonic() > deadline:\n"
        "            raise\n"
        "        time.sleep(0.05)\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


if __name__ == "__main__":  # python store_helpers.py DB COUNT TENANT [flush_interval]
    db, count, tenant = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    interval = float(sys.argv[4]) if len(sys.argv) > 4 else 0.2
    provider, writer = provider_with_store(db, flush_interval=interval)
    emit(provider, count, tenant=tenant)
    assert writer.force_flush(60_000)
    print("done", flush=True)
