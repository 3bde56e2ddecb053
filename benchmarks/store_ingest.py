"""Store ingest throughput and writer memory, one process.

Feeds finished LLM spans (made by llmtrace itself, around real OpenAI SDK calls on a mock transport,
so they carry every attribute a production span does) to a StoreWriter as the OTel SDK would (on_end),
then waits until
every span is written to segments and merged into DuckDB; reports spans/s end to end and the
process RSS across the run. Span creation is not timed: it is the SDK's cost, not the store's.

    .venv/bin/python benchmarks/store_ingest.py [--spans 1000000] [--db /tmp/ingest.duckdb]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider  # noqa: E402

import llmtrace  # noqa: E402
from llmtrace import query  # noqa: E402
from llmtrace.store import StoreWriter, resolve  # noqa: E402

def real_spans(provider: TracerProvider, distinct: int) -> None:
    import openai
    from conftest import http_module, openai_client
    from fake_api import FakeAPI

    llmtrace.instrument(tracer_provider=provider, store=False)
    client = openai_client(FakeAPI(http_module(openai)))
    for i in range(distinct):
        with llmtrace.tags(tenant=f"tenant-{i % 300}", feature=f"feature-{i % 30}", user=f"user-{i % 10_000}"):
            stream = i % 3 == 0
            result = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                                    temperature=0.2, max_tokens=64, stream=stream)
            if stream:
                for _ in result:
                    pass
    llmtrace.uninstrument()


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Collect(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--db", default="/tmp/llmtrace-ingest/ingest.duckdb")
    parser.add_argument("--rate", type=int, default=0, help="feed this many spans/s (0: as fast as possible, a burst)")
    parser.add_argument("--distinct", type=int, default=20_000,
                        help="distinct spans made, then fed repeatedly (keeps the generator's memory out of the RSS)")
    args = parser.parse_args()
    shutil.rmtree(Path(args.db).parent, ignore_errors=True)

    collect = Collect()
    provider = TracerProvider()
    provider.add_span_processor(collect)
    real_spans(provider, args.distinct)
    spans = collect.spans

    writer = StoreWriter(resolve(args.db), flush_interval=0.5)
    rss_start = rss_mb()
    samples: list[tuple[int, float]] = []
    done = threading.Event()

    def sample() -> None:  # RSS through the whole run, the final flush and merge included
        while not done.wait(0.1):
            samples.append((0, rss_mb()))

    samples.append((0, rss_start))
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    cpu_start = time.process_time()
    fed = 0
    chunk = args.rate // 10 if args.rate else args.distinct
    next_at = time.perf_counter()
    while fed < args.spans:
        n = min(chunk, args.spans - fed)
        for i in range(fed, fed + n):
            writer.on_end(spans[i % args.distinct])
        fed += n
        if args.rate:
            next_at += 0.1
            time.sleep(max(0.0, next_at - time.perf_counter()))
    assert writer.force_flush(600_000)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    done.set()
    sampler.join()
    writer.shutdown()
    stored = query.span_count(db=args.db)["spans"]
    assert stored == args.spans, (stored, args.spans)

    size = Path(args.db).stat().st_size
    rss = [r for _, r in samples]
    tenth = max(1, len(rss) // 10)
    print("RSS by tenth of the run (MB):", " ".join(f"{max(rss[i:i + tenth]):.0f}" for i in range(0, len(rss), tenth)))
    print(f"spans: {args.spans:,} fed, {stored:,} in DuckDB")
    print(f"ingest: {args.spans / elapsed:,.0f} spans/s end to end (buffer -> rows -> Parquet segments -> merge), {elapsed:.1f} s")
    print(f"CPU: {cpu / args.spans * 1e6:.1f} us per span, every thread (feeding, converting, writing, merging), "
          f"{cpu / elapsed:.1f} cores busy on average")
    mode = f"fed at {args.rate:,} spans/s" if args.rate else "fed as one burst"
    print(f"writer RSS ({mode}): start {rss_start:.0f} MB, during run {min(r for _, r in samples):.0f}-{max(r for _, r in samples):.0f} MB, "
          f"peak (ru_maxrss) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"disk: {size / 1e6:.1f} MB for {stored:,} spans = {size / stored * 1e6 / 1e6:.1f} MB per million spans")


if __name__ == "__main__":
    main()
