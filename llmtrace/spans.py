"""A call's span, handed to the OTel SDK's span processors without the SDK span's per-call cost.

The SDK's ``Tracer.start_span`` and ``Span`` clean every attribute on the way in, take locks, build
bounded containers and call every processor twice: in a real OpenAI call (the CPU caches full of
the SDK's and httpx's code) that was ~45 µs of llmtrace's ~100. llmtrace builds its attributes
itself, in the forms the SDK stores, so where no one can tell the difference it makes the span itself:
ids from the tracer's id generator, the tracer's sampler deciding (the SDK's stock samplers, which decide
from the parent alone, by their known verdicts), the same parent, trace flags and trace state, resource,
scope and limits as ``start_span`` would give, and, when it ends, the same ``ReadableSpan`` handed to the
same processors' ``on_end``. The span is made current through the OTel context's own ContextVar where the
runtime context is the API's default (the API's functions otherwise).

"No one can tell" means: the tracer is the SDK's own, enabled, without the SDK's self-metrics, and
none of its processors does anything when a span starts or is ending (the SDK's batch and simple
processors, llmtrace's store, most exporters' processors). Anything else (another tracer, a
processor that copies baggage into attributes at start, ...) gets ``tracer.start_span``.
"""

from __future__ import annotations

import dis
import time
from contextvars import ContextVar, Token
from typing import Any, Mapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.sdk.trace import Event, ReadableSpan, SynchronousMultiSpanProcessor
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.sampling import ParentBased, StaticSampler
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import INVALID_SPAN_CONTEXT, Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation import _SPAN_KEY  # the key the API keeps the current span under

from ._guard import report

_SCALARS = frozenset({str, int, float, bool})
_SCALARS_AND_TUPLES = _SCALARS | {tuple}


def stored_as_is(attributes: Mapping[str, Any]) -> bool:
    """True when the SDK would store every value unchanged: scalars, and tuples of strings."""
    values = attributes.values()
    types = set(map(type, values))
    if types <= _SCALARS:
        return True
    if not types <= _SCALARS_AND_TUPLES:
        return False
    for value in values:  # plain loops: a call's end attributes hold one tuple (its finish reasons)
        if type(value) is tuple:
            for item in value:
                if type(item) is not str:
                    return False
    return True


_UNSET = Status(StatusCode.UNSET)
# W3C trace-context level 2 flag, set by newer SDKs when the trace id is random (0 where unknown).
_RANDOM_TRACE_ID = int(getattr(TraceFlags, "RANDOM_TRACE_ID", 0))
# The few flag values a call's span can have, made once: a TraceFlags (an int with a __dict__) is one more object the
# garbage collector tracks for every span the store's buffer holds.
_TRACE_FLAGS = {flags: TraceFlags(flags) for flags in {0, 1, _RANDOM_TRACE_ID, _RANDOM_TRACE_ID | TraceFlags.SAMPLED}}


def _does_nothing(function: Any) -> bool:
    """True when a method's code only returns None (``pass``, or a docstring alone)."""
    code = getattr(function, "__code__", None)
    return code is not None and all(
        ins.opname in ("RESUME", "NOP", "RETURN_VALUE") or (ins.opname in ("LOAD_CONST", "RETURN_CONST") and ins.argval is None)
        for ins in dis.get_instructions(code)
    )


_quiet_types: dict[type, bool] = {}


def _quiet(processor: Any) -> bool:
    """A processor that does nothing when a span starts or is ending (so it cannot tell how it was made)."""
    cls = type(processor)
    quiet = _quiet_types.get(cls)
    if quiet is None:
        hooks = [getattr(cls, name) for name in ("on_start", "_on_ending") if hasattr(cls, name)]
        quiet = _quiet_types[cls] = bool(hooks) and all(map(_does_nothing, hooks))
    return quiet


def _direct_capable(tracer: Any) -> bool:
    """The SDK's own tracer, with the parts this module reads, and the SDK's self-metrics off."""
    metrics = getattr(tracer, "_tracer_metrics", None)
    return (
        type(tracer) is SdkTracer
        and type(tracer.span_processor) is SynchronousMultiSpanProcessor
        and hasattr(tracer.span_processor, "_span_processors")
        and hasattr(tracer, "_instrumentation_scope")
        and hasattr(tracer, "_span_limits")
        # By name: the class lives in a private module that older SDKs do not have.
        and (metrics is None or type(metrics).__name__ == "NoOpTracerMetrics")
    )


# The OTel context's own ContextVar, where the runtime context is the API's default one: making a span current
# through it skips the API's layers of calls (set_span_in_context, set_value, get_current, attach: ~2 µs of a call in
# place). Any other runtime context (OTEL_PYTHON_CONTEXT) goes through the API.
def _runtime_context_var() -> ContextVar[Context] | None:
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    if type(runtime) is ContextVarsRuntimeContext and type(var) is ContextVar and isinstance(_SPAN_KEY, str):
        return var
    return None


_CONTEXT_VAR = _runtime_context_var()


def current_span_context() -> SpanContext:
    """``trace.get_current_span().get_span_context()``."""
    if _CONTEXT_VAR is None:
        return trace.get_current_span().get_span_context()
    span = _CONTEXT_VAR.get().get(_SPAN_KEY)  # only the API's set_span_in_context puts a span there
    return INVALID_SPAN_CONTEXT if span is None else span.get_span_context()  # type: ignore[attr-defined]


def make_current(span: trace.Span) -> Token[Context]:
    """``context.attach(trace.set_span_in_context(span))``: undo with :func:`restore`."""
    if _CONTEXT_VAR is None:
        return otel_context.attach(trace.set_span_in_context(span))
    return _CONTEXT_VAR.set(Context({**_CONTEXT_VAR.get(), _SPAN_KEY: span}))


def restore(token: Token[Context]) -> None:
    """``context.detach(token)``, which never raises either (a token reset twice, or in another context, is a bug
    of llmtrace's, not the app's)."""
    if _CONTEXT_VAR is None:
        otel_context.detach(token)
        return
    try:
        _CONTEXT_VAR.reset(token)
    except (ValueError, RuntimeError) as exc:
        report(exc)


# What a span's sampling decision gives it: (the SAMPLED flag or 0, recording).
Verdict = tuple[int, bool]


def _static_verdict(sampler: Any) -> Verdict | None:
    """The verdict of a sampler that decides the same for every span (the SDK's ALWAYS_ON and ALWAYS_OFF)."""
    if isinstance(sampler, StaticSampler) and type(sampler).should_sample is StaticSampler.should_sample:
        decision = sampler._decision
        return (TraceFlags.SAMPLED if decision.is_sampled() else 0), decision.is_recording()
    return None


def parent_verdicts(sampler: Any) -> tuple[Verdict, ...] | None:
    """The SDK's stock samplers decide from the parent alone (the default, ``ParentBased(ALWAYS_ON)``, and the
    ``always_on``/``always_off``/``parentbased_always_*`` of OTEL_TRACES_SAMPLER): their verdicts with no parent, a
    remote sampled, a remote unsampled, a local sampled and a local unsampled parent, known without asking them
    for every span (~3 µs of a call in place). None for any other sampler: it is asked for every span."""
    verdict = _static_verdict(sampler)
    if verdict is not None:
        return (verdict,) * 5
    if not (isinstance(sampler, ParentBased) and type(sampler).should_sample is ParentBased.should_sample):
        return None
    delegates = (
        sampler._root,
        sampler._remote_parent_sampled,
        sampler._remote_parent_not_sampled,
        sampler._local_parent_sampled,
        sampler._local_parent_not_sampled,
    )
    verdicts = tuple(map(_static_verdict, delegates))
    return None if None in verdicts else verdicts  # type: ignore[return-value]


class CallSpans:
    """Starts the spans of LLM calls on one tracer."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        self._direct = _direct_capable(tracer)
        # (the provider's processors when last looked at, whether all are quiet): one attribute, so
        # threads never read one half of an older verdict with the other half of a newer one.
        self._verdict: tuple[Any, bool] = (None, False)
        # (the tracer's sampler when last looked at, its verdicts by parent or None): the same way.
        self._sampling: tuple[Any, tuple[Verdict, ...] | None] = (None, None)
        if self._direct:
            self._enabled = getattr(tracer, "_is_enabled", lambda: True)
            ids = tracer.id_generator
            is_random = getattr(ids, "is_trace_id_random", None)
            self._root_flags = _RANDOM_TRACE_ID if is_random is not None and is_random() else 0

    def start(self, name: str, attributes: dict[str, Any], start_ns: int) -> trace.Span:
        """The call's span. ``attributes``: llmtrace's own, in forms the SDK stores as they are (``call.add_attributes``)."""
        if self._direct and self._enabled():
            processors = self.tracer.span_processor._span_processors
            checked, quiet = self._verdict
            if processors is not checked:
                # Processors can be added at any time: look again when the provider's tuple changes.
                quiet = all(_quiet(p) for p in processors)
                self._verdict = (processors, quiet)
            if quiet:
                return self._start_direct(name, attributes, start_ns)
        return self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes, start_time=start_ns)

    def _start_direct(self, name: str, attributes: dict[str, Any], start_ns: int) -> trace.Span:
        tracer = self.tracer
        parent: SpanContext | None = current_span_context()
        if parent.is_valid:  # type: ignore[union-attr]
            trace_id = parent.trace_id  # type: ignore[union-attr]
            flags = parent.trace_flags & _RANDOM_TRACE_ID  # type: ignore[union-attr]
        else:
            parent = None
            trace_id = tracer.id_generator.generate_trace_id()
            flags = self._root_flags
        sampler = tracer.sampler
        seen, verdicts = self._sampling
        if sampler is not seen:
            verdicts = parent_verdicts(sampler)
            self._sampling = (sampler, verdicts)
        if verdicts is not None:
            if parent is None:
                sampled, recording = verdicts[0]
            else:
                sampled, recording = verdicts[(1 if parent.is_remote else 3) + (0 if parent.trace_flags & TraceFlags.SAMPLED else 1)]
            trace_state = parent.trace_state if parent is not None else None
            span_attributes: dict[str, Any] = dict(attributes)  # the sampler's own attributes: the call's
        else:
            sampling = sampler.should_sample(None, trace_id, name, SpanKind.CLIENT, attributes, ())
            sampled = TraceFlags.SAMPLED if sampling.decision.is_sampled() else 0
            recording = sampling.decision.is_recording()
            trace_state = sampling.trace_state
            span_attributes = dict(_cleaned(sampling.attributes or {}))  # a sampler may add attributes of its own
        context = SpanContext(
            trace_id,
            tracer.id_generator.generate_span_id(),
            is_remote=False,
            trace_flags=_TRACE_FLAGS[flags | sampled],
            trace_state=trace_state,
        )
        if not recording:
            return NonRecordingSpan(context)
        return CallSpan(tracer, name, context, parent, span_attributes, start_ns)


def _cleaned(attributes: Mapping[str, Any]) -> Mapping[str, Any]:
    """The attributes as the SDK would store them: themselves when they already are."""
    if stored_as_is(attributes):
        return attributes
    return BoundedAttributes(attributes=attributes)  # drops what is not a valid value, logs it


class CallSpan(trace.Span):
    """A recording span that becomes a ``ReadableSpan`` for the tracer's processors when it ends."""

    __slots__ = ("_tracer", "_name", "_context", "_parent", "_attributes", "_events", "_links", "_status", "_start", "_ended")

    def __init__(
        self, tracer: Any, name: str, context: SpanContext, parent: SpanContext | None, attributes: dict[str, Any], start_ns: int
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._context = context
        self._parent = parent
        self._attributes = attributes
        self._events: list[Event] | None = None  # made when the app adds one (rare)
        self._links: list[Link] | None = None
        self._status = _UNSET
        self._start = start_ns
        self._ended = False

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return not self._ended

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if not self._ended:
            self._attributes.update(_cleaned(attributes))

    def set_attribute(self, key: str, value: Any) -> None:
        self.set_attributes({key: value})

    def add_built(self, attributes: Mapping[str, Any]) -> None:
        """Attributes llmtrace built, in the forms the SDK stores: taken as they are (``set_attributes`` checks the
        app's)."""
        if not self._ended:
            self._attributes.update(attributes)

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None) -> None:
        if not self._ended:
            limits = self._tracer._span_limits
            bounded = BoundedAttributes(limits.max_event_attributes, attributes, max_value_len=limits.max_attribute_length)
            if self._events is None:
                self._events = []
            self._events.append(Event(name, bounded, timestamp if timestamp is not None else time.time_ns()))

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        if not self._ended and (context.is_valid or attributes):
            limits = self._tracer._span_limits
            if self._links is None:
                self._links = []
            self._links.append(Link(context, BoundedAttributes(limits.max_link_attributes, attributes)))

    def record_exception(
        self, exception: BaseException, attributes: Any = None, timestamp: int | None = None, escaped: bool = False
    ) -> None:
        # The SDK's own event shape (exception.type/message/stacktrace/escaped): it only calls add_event.
        SdkSpan.record_exception(self, exception, attributes, timestamp, escaped)  # type: ignore[arg-type]

    def update_name(self, name: str) -> None:
        if not self._ended:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK: OK is final, and UNSET never overwrites.
        new = status if isinstance(status, Status) else Status(status, description)
        if self._ended or self._status.status_code is StatusCode.OK or new.status_code is StatusCode.UNSET:
            return
        self._status = new

    def end(self, end_time: int | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        tracer = self._tracer
        limits = tracer._span_limits
        attributes: Mapping[str, Any] = self._attributes
        if limits.max_span_attribute_length is not None or (
            limits.max_span_attributes is not None and len(attributes) > limits.max_span_attributes
        ):
            attributes = BoundedAttributes(
                limits.max_span_attributes, attributes, immutable=True, max_value_len=limits.max_span_attribute_length
            )
        tracer.span_processor.on_end(
            ReadableSpan(
                name=self._name,
                context=self._context,
                parent=self._parent,
                resource=tracer.resource,
                attributes=attributes,
                events=_bounded(self._events, limits.max_events) if self._events else (),
                links=_bounded(self._links, limits.max_links) if self._links else (),
                kind=SpanKind.CLIENT,
                instrumentation_info=getattr(tracer, "instrumentation_info", None),  # deprecated: may go
                status=self._status,
                start_time=self._start,
                end_time=end_time if end_time is not None else time.time_ns(),
                instrumentation_scope=tracer._instrumentation_scope,
            )
        )


def _bounded(items: Sequence[Any], limit: int | None) -> Sequence[Any]:
    return BoundedList.from_seq(limit, items) if limit is not None and len(items) > limit else tuple(items)
