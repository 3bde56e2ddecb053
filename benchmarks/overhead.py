#!/usr/bin/env python3
"""CPU time that LLM auto-instrumentation adds to one OpenAI SDK call, llmtrace beside its peers.

    bash benchmarks/setup.sh                 # once: venvs under /tmp/llmtrace-bench
    python3 benchmarks/overhead.py --quick   # < 1 min: every config works, spans/call = 1
    python3 benchmarks/overhead.py           # ~10 min on 2 cores: the numbers in README.md

The driver (system python3, stdlib only) runs every config in its own subprocess under the venv
it needs (`--worker NAME`). A worker mocks the HTTP layer, blocks sockets, then alternates blocks
of calls with the instrumentation switched off (A) and on (B) in ABBA order inside the one process:
both arms share heap, caches and host noise, so the per-quad difference B - A is the cost of the
instrumentation alone. Reported: median over quads of that difference, per call.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCH_DIR = Path(os.environ.get("BENCH_DIR", "/tmp/llmtrace-bench"))


@dataclass(frozen=True)
class Config:
    name: str
    venv: str  # directory under BENCH_DIR (see setup.sh)
    dist: str  # the distribution whose version the table shows
    label: str


CONFIGS = [
    Config("baseline", "oai3", "openai", "bare SDK, nothing toggled: the noise floor"),
    Config("manual_span", "oai3", "opentelemetry-sdk", "one hand-made span, 10 attributes: the floor"),
    Config("llmtrace", "oai3", "llmtrace", "`llmtrace.instrument(store=False)`: OTel span only (no content)"),
    Config("llmtrace_store", "oai3", "llmtrace", "`llmtrace.instrument()` defaults: + DuckDB store (no content)"),
    Config("openllmetry", "oai3", "opentelemetry-instrumentation-openai", "OpenLLMetry, defaults (content on)"),
    Config("openinference", "oai3", "openinference-instrumentation-openai", "OpenInference, defaults (content on)"),
    Config("otel_v2", "oai3", "opentelemetry-instrumentation-openai-v2", "official contrib, defaults (no content)"),
    Config("baseline_oai2", "openlit", "openai", "bare SDK, nothing toggled: the noise floor"),
    Config("openlit", "openlit", "openlit", "`openlit.init()`, metrics/events off (content on)"),
]

# What each block measures, in the order timed_block returns them: one table each.
METRICS = {0: "process CPU", 1: "wall clock, median call", 2: "the calling thread's CPU: the request path alone"}
# Calls per block. Blocks are short so host drift inside one ABBA quad stays small.
SYNC_BLOCK, STREAM_BLOCK, LONG_STREAM_BLOCK = 100, 20, 3
STREAM_CHUNKS = 50  # parsed chunks per mocked stream: role + 47 content + finish + usage
# The long stream repeats the text this many times (role + 470 content + finish + usage): the cost per
# chunk is the difference between the two streams, which resolves it far better than stream - sync.
LONG_REPEAT = 10
LONG_STREAM_CHUNKS = 47 * LONG_REPEAT + 3


# =============================================================================================
# Worker: runs inside a benchmark venv. Everything third-party is imported lazily, after the
# socket guard is in place.
# =============================================================================================
def block_network() -> list[str]:
    """Make every connection attempt fail fast, and remember it (reported in the results)."""
    import socket

    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args[-1] if args else kwargs)[:120])
        raise OSError("network blocked by benchmarks/overhead.py")

    socket.getaddrinfo = refuse  # type: ignore[assignment]
    socket.create_connection = refuse  # type: ignore[assignment]
    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    return attempts


TEXT_WORDS = [f"word{i} " for i in range(47)]
EXPECTED_TEXT = "".join(TEXT_WORDS)
MODEL = "gpt-4o-mini-2024-07-18"
USAGE = {
    "prompt_tokens": 412,
    "completion_tokens": 71,
    "total_tokens": 483,
    "prompt_tokens_details": {"cached_tokens": 256},
}
REQUEST: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a terse assistant. " * 40},
        {"role": "user", "content": "Summarise the following text. " + "lorem ipsum " * 40},
    ],
    "temperature": 0.2,
    "max_tokens": 256,
    "user": "u-42",
}


def mock_bodies(repeat: int = 1) -> tuple[bytes, list[bytes]]:
    """A chat.completion JSON body, and an SSE body (the text ``repeat`` times) as one bytes item per event."""
    base = {"id": "chatcmpl-bench", "created": 1_700_000_000, "model": MODEL, "system_fingerprint": "fp_b"}
    completion = {
        **base,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "logprobs": None,
                "message": {"role": "assistant", "content": EXPECTED_TEXT},
            }
        ],
        "usage": USAGE,
    }

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        body = {**base, "object": "chat.completion.chunk", "choices": choices, "usage": usage}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": w}) for w in TEXT_WORDS * repeat]
    events += [chunk({}, "stop"), chunk(None, usage=USAGE), b"data: [DONE]\n\n"]
    assert len(events) - 1 == (STREAM_CHUNKS if repeat == 1 else LONG_STREAM_CHUNKS)
    return json.dumps(completion).encode(), events


def make_clients(network_s: float = 0.0) -> tuple[Any, Any, Any]:
    """Three clients (JSON / SSE / long SSE) on a mock transport, so the handler never has to parse the request.

    base_url is the real OpenAI host because llmtrace only asks for stream usage there; nothing
    leaves the process (MockTransport, plus the socket guard). ``network_s``: each answer waits this long first,
    letting go of the GIL as a socket read does (0: none, the calling thread keeps the GIL).
    """
    import openai

    # openai 3.x is built on httpx2, openai 2.x on httpx.
    if int(openai.__version__.split(".")[0]) >= 3:
        import httpx2 as hx
    else:
        import httpx as hx  # type: ignore[no-redef]
    json_body, events = mock_bodies()
    long_events = mock_bodies(LONG_REPEAT)[1]

    def answered(response: Any) -> Any:
        if network_s:
            time.sleep(network_s)
        return response

    def json_handler(request: Any) -> Any:
        return answered(hx.Response(200, headers={"content-type": "application/json"}, content=json_body))

    def sse_handler(body: list[bytes]) -> Callable[[Any], Any]:
        def handler(request: Any) -> Any:
            # An iterator, so the SDK receives and parses the stream event by event.
            return answered(hx.Response(200, headers={"content-type": "text/event-stream"}, content=iter(body)))

        return handler

    def client(handler: Callable[[Any], Any]) -> Any:
        return openai.OpenAI(
            api_key="x",
            base_url="https://api.openai.com/v1",
            max_retries=0,
            http_client=hx.Client(transport=hx.MockTransport(handler)),
        )

    return client(json_handler), client(sse_handler(events)), client(sse_handler(long_events))


class CountingExporter:
    """Counts spans and drops them: export costs ~nothing, but the batch thread runs as in prod."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


@dataclass
class Toggle:
    """Switches one config's instrumentation on and off; setup leaves it on."""

    on: Callable[[], None]
    off: Callable[[], None]
    notes: str = ""
    is_on: bool = True

    def set(self, on: bool) -> None:
        # Only on a change: instrumentors warn (and some would double-wrap) when asked twice.
        if on != self.is_on:
            (self.on if on else self.off)()
            self.is_on = on


def setup_baseline(tp: Any) -> Toggle:
    return Toggle(lambda: None, lambda: None, "nothing to toggle: both arms are the bare SDK")


def setup_llmtrace(tp: Any) -> Toggle:
    """Spans only, toggled with llmtrace's own instrument()/uninstrument()."""
    import llmtrace

    def on() -> None:
        llmtrace.instrument(tracer_provider=tp, store=False)

    on()
    return Toggle(on, llmtrace.uninstrument, "instrument(store=False) / uninstrument()")


def setup_llmtrace_store(tp: Any) -> Toggle:
    """Defaults, so the DuckDB store's span processor (and its writer thread) is on.

    Not toggled with instrument()/uninstrument(): every instrument() adds a new store processor to
    the provider and uninstrument() can only stop it (an SDK provider cannot drop a processor),
    so stopped processors would pile up in the on arm. Instead instrument() runs once and the
    toggle swaps the SDK methods it patched, as for the peers whose uninstrument() is broken.
    The store writes into the worker's temporary cwd (./.llmtrace/).
    """
    import llmtrace

    def setup() -> str:
        llmtrace.instrument(tracer_provider=tp)
        return "instrument() once"

    return toggle_by_diff(setup)


def setup_instrumentor(module: str) -> Callable[[Any], Toggle]:
    """Peers whose BaseInstrumentor uninstrument() really unwraps: toggle with their own API."""

    def setup(tp: Any) -> Toggle:
        import importlib

        instrumentor = importlib.import_module(module).OpenAIInstrumentor()

        def on() -> None:
            instrumentor.instrument(tracer_provider=tp)

        on()
        return Toggle(on, instrumentor.uninstrument, module)

    return setup


def setup_manual_span(tp: Any) -> Toggle:
    """The least an instrumentation can do: one span, 10 attributes, stream span ended at exhaustion."""
    from openai.resources.chat.completions import Completions
    from opentelemetry.trace import SpanKind

    tracer = tp.get_tracer("bench.manual")
    original = Completions.__dict__["create"]

    def finish(span: Any, rid: str, model: str, reason: str | None, usage: Any) -> None:
        span.set_attribute("gen_ai.response.id", rid)
        span.set_attribute("gen_ai.response.model", model)
        span.set_attribute("gen_ai.response.finish_reasons", (reason or "",))
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        span.end()

    def traced_stream(stream: Any, span: Any) -> Iterator[Any]:
        rid = model = ""
        reason = usage = None
        try:
            for chunk in stream:
                rid, model = chunk.id, chunk.model
                if chunk.choices and chunk.choices[0].finish_reason:
                    reason = chunk.choices[0].finish_reason
                if chunk.usage is not None:
                    usage = chunk.usage
                yield chunk
        finally:
            finish(span, rid, model, reason, usage)

    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        span = tracer.start_span(f"chat {kwargs.get('model')}", kind=SpanKind.CLIENT)
        span.set_attribute("gen_ai.operation.name", "chat")
        span.set_attribute("gen_ai.system", "openai")
        span.set_attribute("gen_ai.request.model", kwargs.get("model", ""))
        span.set_attribute("gen_ai.request.temperature", kwargs.get("temperature", 1.0))
        span.set_attribute("gen_ai.request.max_tokens", kwargs.get("max_tokens", 0))
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            span.record_exception(exc)
            span.end()
            raise
        if kwargs.get("stream"):
            return traced_stream(result, span)
        finish(span, result.id, result.model, result.choices[0].finish_reason, result.usage)
        return result

    def on() -> None:
        Completions.create = create  # type: ignore[method-assign]

    def off() -> None:
        Completions.create = original  # type: ignore[method-assign]

    on()
    return Toggle(on, off)


def openai_class_attrs() -> dict[tuple[type, str], Any]:
    """Every non-dunder attribute of every class defined in an imported `openai.*` module."""
    out: dict[tuple[type, str], Any] = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "openai" or name.startswith("openai.")):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, type) and value.__module__ == name:
                for attr, member in list(vars(value).items()):
                    if not attr.startswith("__"):
                        out[(value, attr)] = member
    return out


def toggle_by_diff(setup: Callable[[], str]) -> Toggle:
    """For libraries whose uninstrument() does not undo their patches: run their setup once, and
    toggle the openai class attributes it replaced (found by diffing before/after).

    Catches wrapt-style patches of SDK classes, which is how both peers that need it hook chat
    completions; anything patched elsewhere stays on in both arms (and so is not in the delta).
    """
    before = openai_class_attrs()
    notes = setup()
    after = openai_class_attrs()
    # Only wrappers count (pydantic models also rebuild some class attributes lazily). A class
    # whose module the setup imported itself has no "before": there only wrapper objects count
    # (openai's own methods are functools.wraps-decorated functions, which have __wrapped__ too),
    # and the original is what the wrapper wraps.
    patched = {
        key: value
        for key, value in after.items()
        if hasattr(value, "__wrapped__")
        and (before[key] is not value if key in before else not isinstance(value, types.FunctionType))
    }
    originals = {key: before.get(key, value.__wrapped__) for key, value in patched.items()}

    def apply(values: dict[tuple[type, str], Any]) -> Callable[[], None]:
        def go() -> None:
            for (cls, attr), value in values.items():
                setattr(cls, attr, value)

        return go

    if not patched:
        raise RuntimeError("setup patched no openai class attribute: nothing to toggle")
    names = sorted(f"{cls.__name__}.{attr}" for cls, attr in patched)
    return Toggle(apply(patched), apply(originals), f"{notes}; toggled {len(names)}: {', '.join(names)}")


def setup_openllmetry(tp: Any) -> Toggle:
    """OpenLLMetry. Its uninstrument() unwraps nothing (it calls unwrap(module, "Class.method"),
    which unwrap() reads as a module attribute named "Class.method"), and instrument() again would
    stack a second wrapper, so the toggle is by diff."""
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor

    def setup() -> str:
        OpenAIInstrumentor().instrument(tracer_provider=tp)
        return "OpenAIInstrumentor().instrument() once"

    return toggle_by_diff(setup)


def setup_openlit(tp: Any) -> Toggle:
    """OpenLIT as a user runs it: openlit.init() with a local pricing file (else it fetches one).

    Its OpenAIInstrumentor._uninstrument is `pass`, so the toggle is by diff. Its other
    instrumentors (httpx, ...) stay on in both arms: they do not fire on MockTransport.
    """
    import openlit

    # OpenLIT prices are USD per 1k tokens.
    price = {"promptPrice": 0.00015, "completionPrice": 0.0006, "cacheReadPrice": 0.000075}
    pricing = {"chat": {"gpt-4o-mini": price, MODEL: price}, "embeddings": {}, "images": {}, "audio": {}}
    path = Path(tempfile.mkdtemp()) / "openlit_pricing.json"
    path.write_text(json.dumps(pricing))

    def setup() -> str:
        # No tracer argument: OpenLIT picks up the global SDK TracerProvider set by the worker.
        openlit.init(pricing_json=str(path), disable_metrics=True, disable_events=True)
        return "openlit.init() once"

    return toggle_by_diff(setup)


SETUPS: dict[str, Callable[[Any], Toggle]] = {
    "baseline": setup_baseline,
    "baseline_oai2": setup_baseline,
    "manual_span": setup_manual_span,
    "llmtrace": setup_llmtrace,
    "llmtrace_store": setup_llmtrace_store,
    "openllmetry": setup_openllmetry,
    "openinference": setup_instrumentor("openinference.instrumentation.openai"),
    "otel_v2": setup_instrumentor("opentelemetry.instrumentation.openai_v2"),
    "openlit": setup_openlit,
}


def call_sync(client: Any) -> str:
    response = client.chat.completions.create(**REQUEST)
    # Reading usage proves the instrumentation did not drop it.
    assert response.usage.prompt_tokens_details.cached_tokens == 256
    return str(response.choices[0].message.content)


def call_stream(client: Any) -> str:
    parts = []
    for chunk in client.chat.completions.create(**REQUEST, stream=True):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
    return "".join(parts)


def timed_block(call: Callable[[Any], str], client: Any, n: int) -> tuple[float, float, float]:
    """(process CPU µs per call, median wall µs per call, the calling thread's CPU µs per call) over n calls.

    Process CPU covers every thread (the span processor's too); GC stays on, as in an app. The calling thread's
    CPU is the request path's alone: a library's own thread that runs during the block is in process CPU only.
    """
    walls = []
    cpu0, thread0 = time.process_time_ns(), time.thread_time_ns()
    for _ in range(n):
        t0 = time.perf_counter_ns()
        call(client)
        walls.append(time.perf_counter_ns() - t0)
    cpu = (time.process_time_ns() - cpu0) / n / 1000
    return cpu, statistics.median(walls) / 1000, (time.thread_time_ns() - thread0) / n / 1000


def background_cpu_ns() -> dict[int, int]:
    """CPU time so far of every live thread but the main one (span processors, writers)."""
    import threading

    out = {}
    for t in threading.enumerate():
        if t is not threading.main_thread() and t.ident is not None:
            try:
                out[t.ident] = time.clock_gettime_ns(time.pthread_getcpuclockid(t.ident))
            except (OSError, ProcessLookupError):
                pass  # it just ended
    return out


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ["openai", "httpx2", "httpx", "opentelemetry-sdk", "wrapt"] + [c.dist for c in CONFIGS]:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def run_worker(name: str, quads: dict[str, int], warmup: int, network_ms: float) -> dict[str, Any]:
    attempts = block_network()
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = CountingExporter()
    tp = TracerProvider()
    counter = BatchSpanProcessor(exporter)  # type: ignore[arg-type]
    tp.add_span_processor(counter)
    trace.set_tracer_provider(tp)  # OpenLIT (and anything calling trace.get_tracer) uses the global
    json_client, sse_client, long_client = make_clients(network_ms / 1000)
    # Import the SDK's lazily loaded resource modules before any library patches them.
    call_sync(json_client)

    t0 = time.perf_counter()
    toggle = SETUPS[name](tp)
    setup_ms = (time.perf_counter() - t0) * 1000

    def count_spans() -> int:
        # Flushing between blocks (untimed) attributes every span to the block that made it. Only
        # our processor: a library's own (llmtrace's store) keeps its production batching.
        counter.force_flush()
        return exporter.spans

    result: dict[str, Any] = {
        "config": name,
        "versions": versions(),
        "setup_ms": setup_ms,
        "notes": toggle.notes,
        "scenarios": {},
    }
    plans = {
        "sync": (call_sync, json_client, SYNC_BLOCK, EXPECTED_TEXT, warmup),
        "stream": (call_stream, sse_client, STREAM_BLOCK, EXPECTED_TEXT, warmup),
        # A long stream takes ten short ones' time: a tenth of the warm-up calls.
        "long_stream": (call_stream, long_client, LONG_STREAM_BLOCK, EXPECTED_TEXT * LONG_REPEAT, max(1, warmup // 10)),
    }
    for scenario, (call, client, block, expected, warmup_calls) in plans.items():
        spans = {"on": 0, "off": 0}
        calls = {"on": 0, "off": 0}
        # Warm both arms, checking the app still gets the whole answer either way.
        for arm in ("on", "off"):
            toggle.set(arm == "on")
            base = count_spans()
            for _ in range(warmup_calls):
                text = call(client)
                if text != expected:
                    raise AssertionError(f"{scenario}/{arm}: app got {text[:60]!r}")
            spans[arm] += count_spans() - base
            calls[arm] += warmup_calls
        quad_rows = []
        tp.force_flush()
        bg_start = background_cpu_ns()
        calls_on_before = calls["on"]
        for _ in range(quads[scenario]):
            arms: dict[str, list[tuple[float, float, float]]] = {"on": [], "off": []}
            for arm in ("off", "on", "on", "off"):
                toggle.set(arm == "on")
                base = count_spans()
                arms[arm].append(timed_block(call, client, block))
                spans[arm] += count_spans() - base
                calls[arm] += block
            quad_rows.append({arm: [sum(x[i] for x in rows) / 2 for i in METRICS] for arm, rows in arms.items()})
        tp.force_flush()  # a library's buffered spans are written now, on its thread, and counted
        bg = sum(ns - bg_start.get(ident, 0) for ident, ns in background_cpu_ns().items())
        result["scenarios"][scenario] = {
            "block": block,
            # Other threads' CPU over the timed quads, per instrumented call. Mostly it lands in
            # both arms alike (it runs on its own schedule), so the A/B delta does not show it.
            "background_us_per_call": bg / 1000 / (calls["on"] - calls_on_before),
            "quads": quad_rows,  # [{"on": [cpu µs, wall µs, calling thread's cpu µs], "off": [...]}, ...]
            "spans_per_call": {arm: spans[arm] / calls[arm] for arm in spans},
        }
    toggle.set(False)
    result["network_attempts"] = attempts
    return result


# =============================================================================================
# Driver: system python3, stdlib only.
# =============================================================================================
def summarize(scenario: dict[str, Any], metric: int) -> dict[str, float]:
    """Median and quartiles over quads of (on - off), plus the bare call's own median."""
    deltas = [q["on"][metric] - q["off"][metric] for q in scenario["quads"]]
    q1, _, q3 = statistics.quantiles(deltas, n=4) if len(deltas) > 1 else (deltas[0],) * 3
    bare = statistics.median(q["off"][metric] for q in scenario["quads"])
    return {"delta": statistics.median(deltas), "q1": q1, "q3": q3, "bare": bare}


def table(results: list[dict[str, Any]], metric: int) -> str:
    kind = METRICS[metric]
    lines = [
        (
            f"µs added per call ({kind}), median over ABBA quads [interquartile range]; "
            f"per chunk = (long stream − stream) / {LONG_STREAM_CHUNKS - STREAM_CHUNKS}, the long stream "
            f"having {LONG_STREAM_CHUNKS} chunks. Other threads: their CPU per instrumented call "
            "(sync / stream), not in the delta."
        ),
        "",
        (
            "| config | what | version (openai) | sync µs/call | stream µs/call | µs/chunk | spans/call "
            "| other threads µs/call | bare sync / stream µs |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cfgs = {c.name: c for c in CONFIGS}
    for r in results:
        cfg = cfgs[r["config"]]
        if "error" in r:
            lines.append(f"| {cfg.name} | {cfg.label} | | BROKEN: {r['error']} | | | | | |")
            continue
        v = r["versions"]
        s, st, long = (summarize(r["scenarios"][k], metric) for k in ("sync", "stream", "long_stream"))
        per_chunk = (long["delta"] - st["delta"]) / (LONG_STREAM_CHUNKS - STREAM_CHUNKS)
        spans = [r["scenarios"][k]["spans_per_call"] for k in ("sync", "stream")]
        span_cell = " / ".join(f"{x['on']:g}" for x in spans)
        bg_cell = " / ".join(f"{r['scenarios'][k]['background_us_per_call']:.0f}" for k in ("sync", "stream"))
        if any(x["off"] for x in spans):  # spans with the instrumentation off: the toggle leaks
            span_cell += " (off: " + " / ".join(f"{x['off']:g}" for x in spans) + ")"
        lines.append(
            f"| {cfg.name} | {cfg.label} | {v.get(cfg.dist, '?')} ({v['openai']}) "
            f"| {s['delta']:+.0f} [{s['q1']:+.0f}…{s['q3']:+.0f}] "
            f"| {st['delta']:+.0f} [{st['q1']:+.0f}…{st['q3']:+.0f}] "
            f"| {per_chunk:+.1f} | {span_cell} | {bg_cell} | {s['bare']:.0f} / {st['bare']:.0f} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} cores, {cpu}, "
        f"Python {platform.python_version()}, load avg at start {os.getloadavg()[0]:.2f}"
    )


def run_config(cfg: Config, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    python = BENCH_DIR / cfg.venv / "bin" / "python"
    if not python.exists():
        return {"config": cfg.name, "error": f"{python} missing: run benchmarks/setup.sh"}
    quads = {"sync": args.sync_quads, "stream": args.stream_quads, "long_stream": args.long_stream_quads}
    params = {"quads": quads, "warmup": args.warmup, "network_ms": args.network_ms}
    # A clean environment and an empty cwd: no LLMTRACE_*/OTEL_* variables or llmtrace.toml leak in.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LLMTRACE_", "OTEL_", "TRACELOOP_", "OPENLIT_", "OPENAI_"))
    }
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run(
            [str(python), str(Path(__file__).resolve()), "--worker", cfg.name, json.dumps(params)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    (out / f"{cfg.name}.stderr").write_text(proc.stderr)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"config": cfg.name, "error": f"exit {proc.returncode}: {tail[:200]}"}
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke test: few quads, < 1 min")
    ap.add_argument("--configs", help="comma-separated subset of: " + ",".join(c.name for c in CONFIGS))
    ap.add_argument("--sync-quads", type=int, default=80, help=f"ABBA quads of {SYNC_BLOCK}-call blocks")
    ap.add_argument("--stream-quads", type=int, default=60, help=f"ABBA quads of {STREAM_BLOCK}-stream blocks")
    ap.add_argument(
        "--long-stream-quads", type=int, default=30, help=f"ABBA quads of {LONG_STREAM_BLOCK}-stream blocks, {LONG_STREAM_CHUNKS} chunks each"
    )
    ap.add_argument("--warmup", type=int, default=100, help="untimed calls per arm and scenario")
    ap.add_argument(
        "--network-ms", type=float, default=0.0,
        help="each mocked answer first waits this long, letting go of the GIL as a network wait does (default 0)",
    )
    ap.add_argument("--worker", nargs=2, metavar=("CONFIG", "PARAMS"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        name, params = args.worker[0], json.loads(args.worker[1])
        print("RESULT " + json.dumps(run_worker(name, params["quads"], params["warmup"], params["network_ms"])), flush=True)
        return

    if args.quick:
        args.sync_quads, args.stream_quads, args.long_stream_quads, args.warmup = 3, 3, 2, 10
    wanted = args.configs.split(",") if args.configs else [c.name for c in CONFIGS]
    unknown = set(wanted) - {c.name for c in CONFIGS}
    if unknown:
        ap.error(f"unknown configs: {', '.join(sorted(unknown))}")
    stamp = dt.datetime.now(dt.timezone.utc)  # noqa: UP017 (runs on 3.10 too)
    out = HERE / "results" / (stamp.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else ""))
    out.mkdir(parents=True)
    # llmtrace is installed editable: record which checkout was measured.
    git = ["git", "-C", str(HERE.parent), "describe", "--always", "--dirty"]
    commit = subprocess.run(git, capture_output=True, text=True, check=False).stdout.strip() or "unknown"
    meta = {
        "date": stamp.isoformat(timespec="seconds"),
        "machine": machine(),
        "llmtrace_commit": commit,
        "args": vars(args),
    }
    print(f"{meta['date']}  {meta['machine']}, llmtrace at {commit}\nresults -> {out}", flush=True)

    results = []
    for cfg in CONFIGS:
        if cfg.name not in wanted:
            continue
        t0 = time.perf_counter()
        r = run_config(cfg, args, out)
        results.append(r)
        status = r.get("error") or ", ".join(
            f"{k} spans/call {v['spans_per_call']['on']:g}" for k, v in r["scenarios"].items()
        )
        print(f"  {cfg.name:14} {time.perf_counter() - t0:5.0f} s  {status}", flush=True)
        if r.get("network_attempts"):
            print(f"    network attempts (blocked): {r['network_attempts'][:3]}", flush=True)

    (out / "raw.json").write_text(json.dumps({**meta, "results": results}, indent=1))
    head = f"{meta['date']} — {meta['machine']}, llmtrace at {commit}"
    if args.network_ms:
        head += f"; each answer waits {args.network_ms:g} ms first (a network wait: the GIL is let go)"
    summary = "\n\n".join([head, *(table(results, metric) for metric in METRICS)])
    (out / "summary.md").write_text(summary + "\n")
    print("\n" + summary)


if __name__ == "__main__":
    main()
