"""llmtrace.spans: a call's span made directly must be the span the SDK's tracer would have made."""

from __future__ import annotations

from typing import Any, Callable

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF, ALWAYS_ON, Decision, ParentBased, SamplingResult, StaticSampler, TraceIdRatioBased, _AlwaysOn,
    _ParentBasedAlwaysOff,
)  # fmt: skip
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

import llmtrace
import llmtrace.testing
from conftest import CountingIds, http_module, openai_client
from fake_api import FakeAPI
from llmtrace.spans import CallSpan, CallSpans, _does_nothing

START, END = 1_700_000_000_000_000_000, 1_700_000_000_250_000_000
REQUEST = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", "gen_ai.request.max_tokens": 64,
           "gen_ai.request.stop_sequences": ("END",), "llmtrace.tenant": "acme"}  # fmt: skip
RESPONSE = {"gen_ai.usage.input_tokens": 412, "llmtrace.cost.usd": 0.00123, "gen_ai.response.finish_reasons": ("stop",)}


def provider(**kwargs: Any) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider(**kwargs)
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp, exporter


def as_dict(span: ReadableSpan) -> dict[str, Any]:
    return {
        "name": span.name,
        "kind": span.kind,
        "context": span.context,
        "parent": span.parent,
        "attributes": dict(span.attributes or {}),
        "dropped_attributes": span.dropped_attributes,
        "events": [(e.name, dict(e.attributes or {}), e.timestamp) for e in span.events],
        "links": [(link.context, dict(link.attributes or {})) for link in span.links],
        "status": (span.status.status_code, span.status.description),
        "times": (span.start_time, span.end_time),
        "resource": span.resource,
        "scope": span.instrumentation_scope,
    }


def both_ways(
    use: Callable[[trace.Span], None], context: Any = None, ids: Callable[[], IdGenerator] = CountingIds, **kwargs: Any
) -> tuple[Any, Any]:
    """The same span made by the SDK's tracer and by CallSpans (each on a fresh, identical provider)."""
    made = []
    for direct in (False, True):
        tp, exporter = provider(id_generator=ids(), **kwargs)
        tracer = tp.get_tracer("llmtrace", "1.0")
        token = otel_context.attach(context) if context is not None else None
        try:
            if direct:
                span = CallSpans(tracer).start("chat gpt-4o", dict(REQUEST), START)
            else:
                span = tracer.start_span("chat gpt-4o", kind=SpanKind.CLIENT, attributes=dict(REQUEST), start_time=START)
        finally:
            if token is not None:
                otel_context.detach(token)
        recording = span.is_recording()
        use(span)
        span.end(end_time=END)
        finished = exporter.get_finished_spans()
        made.append((type(span).__name__, span.get_span_context(), [as_dict(s) for s in finished], recording))
    return made[0], made[1]


def end_as_a_call_does(span: trace.Span) -> None:
    span.set_attributes(RESPONSE)
    span.set_status(Status(StatusCode.ERROR, "RateLimitError: 429"))


def parent_context(sampled: bool, remote: bool = True, state: TraceState | None = None) -> Any:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    parent = SpanContext(0xABC << 64 | 7, 0xDEF, is_remote=remote, trace_flags=flags, trace_state=state)
    return trace.set_span_in_context(NonRecordingSpan(parent))


@pytest.mark.parametrize(
    "context",
    [None, parent_context(True), parent_context(True, remote=False, state=TraceState([("vendor", "x1")]))],
    ids=["root", "remote parent", "local parent with trace state"],
)
def test_direct_span_equals_the_sdk_span(context: Any) -> None:
    sdk, direct = both_ways(end_as_a_call_does, context)
    assert direct[0] == "CallSpan" and sdk[0] != "CallSpan"
    assert direct[1] == sdk[1]  # ids, flags and trace state
    assert direct[2] == sdk[2] and len(sdk[2]) == 1
    assert direct[2][0]["attributes"]["gen_ai.request.stop_sequences"] == ("END",)


def test_random_trace_ids_get_the_same_flags() -> None:
    sdk, direct = both_ways(end_as_a_call_does, ids=RandomIdGenerator)
    assert direct[1].trace_flags == sdk[1].trace_flags and direct[1].trace_flags.sampled
    assert direct[1].trace_id != sdk[1].trace_id


@pytest.mark.parametrize(
    ("sampler", "context"),
    [
        (ParentBased(ALWAYS_OFF), None),
        (ParentBased(StaticSampler(Decision.RECORD_AND_SAMPLE)), parent_context(False)),
        (TraceIdRatioBased(0.0), None),
        (StaticSampler(Decision.RECORD_ONLY), None),  # recorded, handed to processors, not exported as sampled
    ],
    ids=["root dropped", "unsampled parent", "ratio 0", "record only"],
)
def test_samplers_decide_the_same(sampler: Any, context: Any) -> None:
    sdk, direct = both_ways(end_as_a_call_does, context, sampler=sampler)
    assert direct[1] == sdk[1]
    assert direct[2] == sdk[2]
    assert direct[3] == sdk[3]  # recording: a dropped call's span must say so (the store's ledger keeps it)
    assert sdk[1].trace_flags.sampled is False


class SamplesOddTraces(ParentBased):
    """A ParentBased of the app's that decides for itself (against its root, ALWAYS_OFF): it must be asked."""

    def should_sample(self, parent_context: Any, trace_id: int, *args: Any, **kwargs: Any) -> SamplingResult:
        return SamplingResult(Decision.RECORD_AND_SAMPLE, {"app.sampled": "by the app"})


# Samplers whose verdict llmtrace knows from the parent alone (llmtrace.spans.parent_verdicts), each where the parent
# picks a different one of its delegates, and samplers it must ask.
@pytest.mark.parametrize(
    ("sampler", "context"),
    [
        (None, parent_context(False, remote=False)),  # the SDK's default, ParentBased(ALWAYS_ON)
        (None, parent_context(True, remote=False)),
        (None, parent_context(False, remote=True, state=TraceState([("vendor", "x1")]))),
        (_ParentBasedAlwaysOff(None), None),
        (_ParentBasedAlwaysOff(None), parent_context(True, remote=True)),
        (ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON, local_parent_sampled=ALWAYS_OFF), parent_context(False)),
        (ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON, local_parent_sampled=ALWAYS_OFF),
         parent_context(True, remote=False)),
        (_AlwaysOn(None), parent_context(False)),
        (ParentBased(TraceIdRatioBased(0.0)), None),  # a delegate that is not static: asked
        (SamplesOddTraces(ALWAYS_OFF), None),
    ],
    ids=["default local unsampled", "default local sampled", "default remote unsampled", "parentbased_always_off root",
         "parentbased_always_off remote sampled", "mixed remote unsampled", "mixed local sampled", "always_on",
         "ratio root", "app subclass"],
)  # fmt: skip
def test_samplers_known_from_the_parent_decide_as_they_would(sampler: Any, context: Any) -> None:
    sdk, direct = both_ways(end_as_a_call_does, context, **({"sampler": sampler} if sampler is not None else {}))
    assert direct[1] == sdk[1]  # ids, flags (sampled or not) and trace state
    assert direct[2] == sdk[2]  # what reached the processors, the app's sampler's attributes included
    assert direct[3] == sdk[3]


def test_a_tracer_given_another_sampler_is_asked_again() -> None:
    tp, exporter = provider(sampler=ALWAYS_ON)
    tracer = tp.get_tracer("llmtrace")
    spans = CallSpans(tracer)
    spans.start("chat gpt-4o", dict(REQUEST), START).end(END)
    tracer.sampler = ALWAYS_OFF  # type: ignore[attr-defined]
    dropped = spans.start("chat gpt-4o", dict(REQUEST), START)
    dropped.end(END)
    assert not dropped.is_recording() and not dropped.get_span_context().trace_flags.sampled
    assert len(exporter.get_finished_spans()) == 1


def test_span_limits_apply_as_in_the_sdk() -> None:
    limits = SpanLimits(max_span_attributes=4, max_span_attribute_length=3, max_events=1, max_links=1)

    def use(span: trace.Span) -> None:
        end_as_a_call_does(span)
        span.add_event("first", {"a": "long value"}, timestamp=START + 1)
        span.add_event("second", timestamp=START + 2)
        span.add_link(SpanContext(5, 6, is_remote=True), {"k": "v"})
        span.add_link(SpanContext(7, 8, is_remote=True))

    sdk, direct = both_ways(use, span_limits=limits)
    assert direct[2] == sdk[2]
    assert sdk[2][0]["dropped_attributes"] > 0 and len(sdk[2][0]["events"]) == 1


class NotAValue:
    def __str__(self) -> str:
        return "not a value"


NOT_A_VALUE = NotAValue()


def test_what_the_app_does_to_the_current_span_is_kept_as_in_the_sdk() -> None:
    def use(span: trace.Span) -> None:
        span.set_attribute("app.valid", [1, 2])  # a list: stored as a tuple
        span.set_attribute("app.mixed", (1, "a"))  # a tuple of two types: the SDK cleans it
        span.set_attribute("app.odd_items", (NOT_A_VALUE,))
        span.set_attribute("app.invalid", NOT_A_VALUE)  # the SDK logs it, then drops it or keeps its str()
        span.update_name("chat renamed")
        span.record_exception(ValueError("boom"), timestamp=START + 5)
        span.set_status(StatusCode.OK)
        span.set_status(Status(StatusCode.ERROR, "ignored: OK is final"))

    sdk, direct = both_ways(use)
    assert direct[2] == sdk[2]
    assert sdk[2][0]["attributes"]["app.valid"] == (1, 2)
    assert sdk[2][0]["attributes"].get("app.invalid", "not a value") == "not a value"
    assert sdk[2][0]["events"][0][0] == "exception"


def test_an_ended_span_takes_nothing_more_and_ends_once() -> None:
    tp, exporter = provider()
    span = CallSpans(tp.get_tracer("llmtrace")).start("chat m", {}, START)
    span.end(end_time=END)
    span.set_attribute("late", 1)
    span.add_event("late")
    span.end()
    assert [dict(s.attributes or {}) for s in exporter.get_finished_spans()] == [{}]
    assert not span.is_recording()


class StartAttributes(SpanProcessor):
    """A processor that works at span start (like a baggage-to-attributes processor)."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        span.set_attribute("set.at.start", True)


def chat(client: Any) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


def fake_openai() -> Any:
    import openai

    return openai_client(FakeAPI(http_module(openai)))


def test_a_processor_that_works_at_start_gets_the_sdk_span() -> None:
    client = fake_openai()
    with llmtrace.testing.capture() as captured:
        chat(client)
        # Added after instrument(): the next call sees it.
        captured.tracer_provider.add_span_processor(StartAttributes())
        chat(client)
    first, second = captured.spans()
    assert "set.at.start" not in first.attributes and first.attributes["llmtrace.cost.usd"] > 0
    assert second.attributes["set.at.start"] is True and second.attributes["llmtrace.cost.usd"] > 0


@pytest.mark.parametrize("through_api", [False, True], ids=["context var", "runtime context of the app's"])
def test_the_call_span_is_current_during_the_sdk_call(through_api: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import openai

    if through_api:  # an OTEL_PYTHON_CONTEXT of the app's: spans are made current through the API
        monkeypatch.setattr(llmtrace.spans, "_CONTEXT_VAR", None)
    seen: list[trace.Span] = []
    api = FakeAPI(http_module(openai))

    def handler(request: Any) -> Any:
        seen.append(trace.get_current_span())
        seen[-1].set_attribute("app.in.transport", "yes")
        return api(request)

    with llmtrace.testing.capture() as captured:
        outer = captured.tracer_provider.get_tracer("app").start_span("request")
        with trace.use_span(outer, end_on_exit=True):
            chat(openai_client(handler))
            assert trace.get_current_span() is outer
        chat(openai_client(handler))
        assert trace.get_current_span() is trace.INVALID_SPAN
    call, outer_span, root_call = captured.spans()
    assert isinstance(seen[0], CallSpan) and seen[0].get_span_context() == call.context
    assert call.parent == outer_span.context and root_call.parent is None
    assert call.attributes["app.in.transport"] == root_call.attributes["app.in.transport"] == "yes"


class CountingTracer(SdkTracer):
    """A subclass of the SDK's tracer (as vendors ship): llmtrace must let it start its spans."""

    started: list[str] = []

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> trace.Span:
        self.started.append(name)
        return super().start_span(name, *args, **kwargs)


class VendorTracerProvider(TracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        tracer = super().get_tracer(*args, **kwargs)
        tracer.__class__ = CountingTracer
        return tracer


def test_another_tracer_class_starts_its_own_spans() -> None:
    exporter = InMemorySpanExporter()
    vendor = VendorTracerProvider()
    vendor.add_span_processor(SimpleSpanProcessor(exporter))
    client = fake_openai()
    llmtrace.instrument(tracer_provider=vendor, store=False)
    try:
        chat(client)
    finally:
        llmtrace.uninstrument()
    assert CountingTracer.started == ["chat gpt-4o-mini"]
    assert exporter.get_finished_spans()[0].attributes["llmtrace.cost.usd"] > 0


def test_only_methods_that_do_nothing_count_as_quiet() -> None:
    def passes(self: Any, span: Any, parent_context: Any = None) -> None:
        pass

    def documented(self: Any) -> None:
        """Only a docstring."""

    def returns_none(self: Any) -> None:
        return None

    def works(self: Any, span: Any) -> None:
        span.set_attribute("x", 1)

    assert _does_nothing(passes) and _does_nothing(documented) and _does_nothing(returns_none)
    assert not _does_nothing(works) and not _does_nothing(None)
    assert _does_nothing(SimpleSpanProcessor.on_start) and _does_nothing(BatchSpanProcessor.on_start)
    assert not _does_nothing(StartAttributes.on_start)


def test_a_disabled_tracer_makes_no_span() -> None:
    from opentelemetry.sdk import trace as sdk_trace

    config = getattr(sdk_trace, "_TracerConfig", None)
    if config is None:
        pytest.skip("this SDK has no tracer configurator")

    tp, exporter = provider()
    tracer = tp.get_tracer("llmtrace")
    tracer._set_tracer_config(config(is_enabled=False))  # what a tracer configurator does
    span = CallSpans(tracer).start("chat m", dict(REQUEST), START)
    span.end(end_time=END)
    assert not span.is_recording() and exporter.get_finished_spans() == ()


def test_sdk_self_metrics_count_llmtrace_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    reader = InMemoryMetricReader()
    try:
        tp, exporter = provider(meter_provider=MeterProvider(metric_readers=[reader]))
    except TypeError:
        pytest.skip("this SDK has no self-metrics")
    tracer = tp.get_tracer("llmtrace")
    if type(getattr(tracer, "_tracer_metrics", None)).__name__ != "TracerMetrics":
        pytest.skip("this SDK records no self-metrics")
    span = CallSpans(tracer).start("chat m", dict(REQUEST), START)
    span.end(end_time=END)
    data = reader.get_metrics_data()
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics} if data else set()
    assert "otel.sdk.span.started" in names and len(exporter.get_finished_spans()) == 1
