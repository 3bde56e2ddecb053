"""Store ingest throughput and writer memory, one process.

Feeds finished LLM spans (made by llmtrace itself, around real OpenAI SDK calls on a mock transport,
so they carry every attribute a production span does) to a StoreWriter as the OTel SDK would (on_end),
then waits until
every span is written to segments and merged into DuckDB; reports spans/s end to end and the
process RSS across the run. Span creation is not timed: it is the SDK's cost, not the store's.

With ``--rate`` the spans come at a steady rate, and it also reports what the store sustains while they
come: rows merged into DuckDB per second from its first merge to the end of the feed, and the backlog
(spans buffered, segments not merged) in each half of the feed: a backlog that does not grow from the
first half to the second is a rate the store keeps up with. End to end then includes draining the
last backlog after the feed (up to ~20 segments), a fixed tail that weighs less the longer the run.

With ``--stalls`` a thread that stands for the app's other threads sleeps 1 ms at a time, and it reports how late
it wakes: how long the store's threads kept the app waiting for the GIL.

    .venv/bin/python benchmarks/store_ingest.py [--spans 1000000] [--db /tmp/ingest.duckdb]
    .venv/bin/python benchmarks/store_ingest.py --spans 6000000 --rate 200000
    .venv/bin/python benchmarks/store_ingest.py --spans 400000 --rate 20000 --stalls
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider  # noqa: E402

import llmtrace  # noqa: E402
from llmtrace import query  # noqa: E402
from llmtrace.store import StoreWriter, resolve  # noqa: E402
from llmtrace.store import merge as merge_module  # noqa: E402
from store_helpers import start_afresh  # noqa: E402

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
    parser.add_argument("--stalls", action="store_true",
                        help="also time an app thread's stalls: a thread sleeping 1 ms at a time, and how late it wakes")
    args = parser.parse_args()
    paths = resolve(args.db)
    start_afresh(paths)

    collect = Collect()
    provider = TracerProvider()
    provider.add_span_processor(collect)
    real_spans(provider, args.distinct)
    spans = collect.spans

    writer = StoreWriter(paths, flush_interval=0.5)
    merges: list[tuple[float, int]] = []  # (when it ended, rows it merged)
    real_merge = merge_module.merge

    def timed_merge(*a: object, **k: object) -> merge_module.MergeOutcome:
        outcome = real_merge(*a, **k)  # type: ignore[arg-type]
        merges.append((time.perf_counter(), outcome.merged_rows))
        return outcome

    merge_module.merge = timed_merge  # the writer looks it up at every merge
    rss_start = rss_mb()
    samples: list[tuple[int, float]] = []
    backlog: list[tuple[float, int, int]] = []  # (when, spans buffered, segments not merged)
    done = threading.Event()

    def sample() -> None:  # RSS through the whole run, the final flush and merge included
        while not done.wait(0.1):
            samples.append((0, rss_mb()))
            backlog.append((time.perf_counter(), len(writer._spans), len(paths.pending())))

    lateness: list[float] = []

    def probe() -> None:  # an app thread: it waits for the GIL whenever the store holds it, as every app thread does
        while not done.is_set():
            before = time.perf_counter()
            time.sleep(0.001)
            lateness.append(time.perf_counter() - before - 0.001)

    samples.append((0, rss_start))
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    prober = threading.Thread(target=probe, daemon=True) if args.stalls else None
    if prober is not None:
        prober.start()
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
    fed_at = time.perf_counter()
    assert writer.force_flush(600_000)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    done.set()
    sampler.join()
    if prober is not None:
        prober.join()
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
    if args.rate:
        during = [(t, rows) for t, rows in merges if t <= fed_at]
        if len(during) > 1:
            rows = sum(r for _, r in during[1:])
            print(f"sustained: {rows / (during[-1][0] - during[0][0]):,.0f} spans/s merged into DuckDB while fed "
                  f"({len(during)} merges during the {fed_at - start:.1f} s feed)")
        half = start + (fed_at - start) / 2
        for name, part in (("first", [b for b in backlog if b[0] < half]), ("second", [b for b in backlog if half <= b[0] <= fed_at])):
            if part:
                print(f"backlog in the {name} half of the feed: at most {max(b[1] for b in part):,} spans buffered and "
                      f"{max(b[2] for b in part)} segments not merged")
        feed = [b for b in backlog if b[0] <= fed_at]
        tenth = max(1, len(feed) // 10)
        print("segments not merged, most by tenth of the feed:", " ".join(str(max(b[2] for b in feed[i:i + tenth])) for i in range(0, len(feed), tenth)))
    if lateness:
        lateness.sort()

        def ms_at(q: float) -> float:
            return lateness[min(len(lateness) - 1, int(len(lateness) * q))] * 1e3

        print(f"app thread stalls (a 1 ms sleep woken late, {len(lateness):,} times): p50 {ms_at(0.5):.2f} ms, "
              f"p99 {ms_at(0.99):.2f} ms, p99.9 {ms_at(0.999):.1f} ms, max {lateness[-1] * 1e3:.1f} ms; "
              f"{sum(x > 0.010 for x in lateness)} over 10 ms")
    mode = f"fed at {args.rate:,} spans/s" if args.rate else "fed as one burst"
    print(f"writer RSS ({mode}): start {rss_start:.0f} MB, during run {min(r for _, r in samples):.0f}-{max(r for _, r in samples):.0f} MB, "
          f"peak (ru_maxrss) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"disk: {size / 1e6:.1f} MB for {stored:,} spans = {size / stored * 1e6 / 1e6:.1f} MB per million spans")


if __name__ == "__main__":
    main()
