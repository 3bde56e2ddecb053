"""CPU that llmtrace adds per streamed chunk, timed alone (`overhead.py` cannot resolve it below ~2 µs).

Parses a chat-completions stream with the real OpenAI SDK once (mock transport), then replays those
chunk objects to the app bare and through llmtrace's stream proxy (time to first chunk, the
accumulator, hiding the usage chunk), in ABBA blocks. A long and a short replay are timed alike;
per chunk = (long − short) / the difference in chunks, so the per-stream cost (span, usage, cost)
drops out. In a loop the CPU caches stay warm: inside a real stream the cost is somewhat higher.

    .venv/bin/python benchmarks/stream_proxy.py [--quads 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead  # noqa: E402  (the same mocked bodies and request as the overhead benchmark)


class Replay:
    """Stands in for the SDK's Stream object: iterating it yields chunks the SDK already parsed."""

    def __init__(self, chunks: list[Any]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Any:
        return iter(self.chunks)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quads", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20, help="replays per timed block")
    args = parser.parse_args()
    overhead.block_network()

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    import llmtrace
    from llmtrace import call as core
    from llmtrace.providers.openai import CHAT
    from llmtrace.stream import SyncStreamProxy

    _, short_client, long_client = overhead.make_clients()
    request = {**overhead.REQUEST, "stream": True}
    long_chunks = list(long_client.chat.completions.create(**request))
    short_chunks = long_chunks[: overhead.STREAM_CHUNKS - 2] + long_chunks[-2:]  # role, 47 words, finish, usage
    exporter = overhead.CountingExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))  # type: ignore[arg-type]
    llmtrace.instrument(tracer_provider=provider, store=False)
    runtime = core.runtime
    assert runtime is not None
    resource = short_client.chat.completions

    def bare(chunks: list[Any]) -> Callable[[], int]:
        def run() -> int:
            return sum(1 for chunk in Replay(chunks) if chunk.choices)

        return run

    def proxied(chunks: list[Any]) -> Callable[[], int]:
        def run() -> int:
            call = core.Call(CHAT, runtime, resource, request)
            call.request_kwargs()  # asks for usage: the proxy hides the usage-only chunk, as in a real call
            return sum(1 for chunk in SyncStreamProxy(Replay(chunks), call) if chunk.choices)

        return run

    def block(run: Callable[[], int]) -> float:
        start = time.process_time_ns()
        for _ in range(args.repeat):
            run()
        return (time.process_time_ns() - start) / args.repeat / 1000

    costs = {}
    for name, chunks in (("short", short_chunks), ("long", long_chunks)):
        off, on = bare(chunks), proxied(chunks)
        assert off() == on(), "the proxy changed what the app sees"
        deltas = []
        for _ in range(args.quads):
            a1, b1, b2, a2 = block(off), block(on), block(on), block(off)
            deltas.append((b1 + b2 - a1 - a2) / 2)
        costs[name] = statistics.median(deltas)
    extra = len(long_chunks) - len(short_chunks)
    print(f"per stream: {costs['short']:.1f} µs added ({len(short_chunks)} chunks), {costs['long']:.1f} µs ({len(long_chunks)})")
    print(f"per chunk: {(costs['long'] - costs['short']) / extra:.2f} µs added by llmtrace's stream proxy")
    llmtrace.uninstrument()
    provider.shutdown()
    print(f"spans: {exporter.spans} for {2 * (1 + 2 * args.quads * args.repeat)} proxied streams")


if __name__ == "__main__":
    main()
