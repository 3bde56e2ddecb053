"""The life of one LLM call: open a CLIENT span, read the response or stream, close it exactly once.

Provider adapters translate; this module emits. Everything here runs inside the user's SDK call,
so every entry point either contains its own errors or is only called inside ``internal_errors()``.
"""

from __future__ import annotations

import contextvars
import json
import marshal
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, get_current_span

from . import attributes as A
from . import pricing
from ._guard import internal_errors, report
from .adapter import Accumulator, Endpoint, Result, api_error_type
from .budgets import BudgetExceeded
from .config import Settings
from .content import to_json
from .context import current_tags
from .metrics import Instruments
from .spans import CallSpan, CallSpans, make_current, restore
from .usage import Usage


@dataclass(frozen=True)
class Runtime:
    """What ``instrument()`` set up; swapped atomically, read once per call."""

    spans: CallSpans  # starts each call's span on the tracer instrument() chose
    settings: Settings
    instruments: Instruments | None
    # Receives calls the app's sampler dropped, so the store (a ledger) still sees every call.
    ledger: Any = None
    guard: Any = None  # the SpendGuard enforcing ``block`` budgets (llmtrace.enforce)
    # Hashes requests for the duplicate-call detector: BLAKE2b keyed with the store's key (shared by its
    # processes), copied per call; None: no hash.
    request_hasher: Any = None


runtime: Runtime | None = None

# The call whose SDK method is running now (retry hooks report to it; nested patched methods
# called by the SDK itself are not traced twice).
active_call: contextvars.ContextVar[Call | None] = contextvars.ContextVar("llmtrace_active_call", default=None)


class Call:
    __slots__ = (
        "endpoint",
        "runtime",
        "span",
        "attrs",
        "kwargs",
        "base_url",
        "accepts_usage_option",
        "start_ns",
        "retries",
        "rate_limited",
        "acc",
        "done",
        "ended",
        "unsampled",
        "unsampled_parent",
        "hold",
        "request_bytes",
        "stream_failure",
    )

    def __init__(self, endpoint: Endpoint, rt: Runtime, instance: Any, kwargs: dict[str, Any]) -> None:
        settings = rt.settings
        info = endpoint.client_info(instance, settings)
        attrs = endpoint.request_attributes(kwargs)
        attrs[A.OPERATION_NAME] = endpoint.operation
        attrs[A.PROVIDER_NAME] = info.provider
        if info.address:
            attrs[A.SERVER_ADDRESS] = info.address
            attrs[A.SERVER_PORT] = info.port
        attrs.update(current_tags())
        if settings.capture_content:
            try:
                attrs.update(endpoint.content_attributes(kwargs))
            except Exception as exc:  # a request llmtrace cannot read: traced, without its content
                report(exc)
        # The request's content serialized once, for its hash and for a block budget's worst case (admit() drops it).
        self.request_bytes: bytes | None = None
        if rt.request_hasher is not None:
            self.request_bytes = _serialized(endpoint.input_content(kwargs))
            attrs[A.REQUEST_HASH] = _request_hash(rt.request_hasher, attrs.get(A.REQUEST_MODEL), self.request_bytes)
        self.accepts_usage_option = info.accepts_usage_option
        self._open(endpoint, rt, attrs, kwargs, info.base_url, time.time_ns())

    def _open(self, endpoint: Endpoint, rt: Runtime, attrs: dict[str, Any], kwargs: dict[str, Any], base_url: str,
              start_ns: int) -> None:  # fmt: skip
        self.hold: Any = None  # what a block budget reserved for this call (llmtrace.enforce.Hold)
        self.endpoint = endpoint
        self.runtime = rt
        self.attrs = attrs
        self.kwargs = kwargs
        self.base_url = base_url
        self.retries = 0
        self.rate_limited = 0
        self.acc: Accumulator | None = None
        # Where the SDK's stream would have raised, in a stream the app reads raw (an error event): (type, message).
        self.stream_failure: tuple[str, str] | None = None
        self.done = False  # finish() began
        self.ended = False  # the span ended
        self.start_ns = start_ns
        self.span = rt.spans.start(self._name(), attrs, start_ns)
        # The app's sampler dropped this span: remember its parent, to hand the call to the store anyway.
        self.unsampled_parent: Any = None
        self.unsampled = rt.ledger is not None and not self.span.is_recording()
        if self.unsampled:
            parent = get_current_span().get_span_context()
            self.unsampled_parent = parent if parent.is_valid else None

    @classmethod
    def later(cls, endpoint: Endpoint, rt: Runtime, attrs: dict[str, Any], base_url: str, parent: SpanContext,
              start_ns: int) -> Call:  # fmt: skip
        """The generation behind an answer read after its call returned (``llmtrace.later``): a span of its own, a
        child of that call's, carrying its request attributes. Its prompt is not kept."""
        call = cls.__new__(cls)
        call.request_bytes = None
        call.accepts_usage_option = False
        token = make_current(NonRecordingSpan(parent))
        try:
            call._open(endpoint, rt, {**attrs, A.BACKGROUND_GENERATION: True}, {}, base_url, start_ns)
        finally:
            restore(token)
        return call

    # --- request side --------------------------------------------------------------------------

    def admit(self) -> Any:
        """Reserve this call against the block budgets it counts against; a BudgetExceeded if one is spent."""
        outcome = self.runtime.guard.admit(self.attrs, self._worst_cost)
        self.request_bytes = None
        if outcome is not None and not isinstance(outcome, Exception):
            self.hold = outcome
            return None
        return outcome

    def _worst_cost(self) -> float:
        """What the call may cost, held against block budgets while it is in flight: its prompt, at ~3 bytes a token
        (English runs ~4, code and JSON ~3, most other scripts 3 bytes or more a token: rarely under), and
        ``max_tokens`` of output at their dearest rates. Output with no ``max_tokens`` counts when the call ends."""
        context = pricing.request_context(self.kwargs)  # a tier or speed asked for (priority costs more)
        price = pricing.price_for(self.attrs[A.PROVIDER_NAME], self.attrs.get(A.REQUEST_MODEL) or "", self.base_url, context)
        if price is None:
            return 0.0
        serialized = self.request_bytes if self.request_bytes is not None else _serialized(self.endpoint.input_content(self.kwargs))
        prompt_tokens = len(serialized) / _BYTES_PER_TOKEN
        max_tokens = self.attrs.get(A.REQUEST_MAX_TOKENS)
        output = max_tokens * price.worst_output_per_token() if isinstance(max_tokens, int) else 0.0
        return prompt_tokens * price.worst_input_per_token() + output

    def request_kwargs(self) -> dict[str, Any]:
        """The kwargs to send: OpenAI streams ask for usage unless the caller said whether to."""
        kwargs = self.kwargs
        if not (self.endpoint.wants_usage_option and kwargs.get("stream") is True):
            return kwargs
        if not self.accepts_usage_option or _streamed_raw(kwargs):  # raw: the app may read the lines itself
            self._estimate_later()
            return kwargs
        options = kwargs.get("stream_options")
        options = options if isinstance(options, Mapping) else {}  # the SDK's NOT_GIVEN, or None
        extra_body = kwargs.get("extra_body")
        if "include_usage" in options or (isinstance(extra_body, Mapping) and "stream_options" in extra_body):
            return kwargs  # the caller said whether to
        takes = self.endpoint.takes_usage_option
        if takes is not None and not takes(kwargs):
            self._estimate_later()
            return kwargs
        self.acc = self.endpoint.accumulator(True)
        if options or not (extra_body is None or isinstance(extra_body, Mapping)):
            return {**kwargs, "stream_options": {**options, "include_usage": True}}  # beside the caller's options
        # The same JSON reaches the API through extra_body, which the SDK copies into the body as it is, while a
        # stream_options argument goes through its per-key request conversion: ~12 µs more a call.
        return {**kwargs, "extra_body": {**(extra_body or {}), "stream_options": {"include_usage": True}}}

    def _estimate_later(self) -> None:
        """A stream not asked for usage: most servers then send none, and its end will estimate it."""
        from .tokenizer import load_in_background  # imported late: tiktoken loads only if ever needed

        load_in_background(self.attrs.get(A.REQUEST_MODEL) or "")

    def note_retry(self, response: Any) -> None:
        self.retries += 1
        if getattr(response, "status_code", None) == 429:
            self.rate_limited += 1

    # --- response side -------------------------------------------------------------------------

    def begin_stream(self) -> Accumulator:
        if self.acc is None:
            self.acc = self.endpoint.accumulator(False)
        return self.acc

    def observe_chunk(self, chunk: Any) -> bool:
        """Per stream item: accumulation (and the time of the first output). Returns False to hide the item.
        Never raises."""
        try:
            return self.acc.add(chunk)  # type: ignore[union-attr]
        except Exception as exc:
            report(exc)
            return True

    def fail_stream(self, failure: tuple[str, str]) -> None:
        """The stream, read raw by the app, got where the SDK's own stream would have raised: the call failed."""
        self.stream_failure = failure

    def end_stream(self, error: BaseException | None = None) -> None:
        """End after a stream: exhausted, closed, exited, failed or dropped. Never raises."""
        if self.done:
            return
        try:
            result = self.acc.result() if self.acc is not None else Result()
            if self.stream_failure is not None:
                result.failure = self.stream_failure
            self.finish(result, error)
        except Exception as exc:
            report(exc)
            self._force_end()

    def fail(self, error: BaseException, answer: Any = None) -> None:
        """The SDK call raised; ``answer``: what the provider answered, where the error does not carry it (a body the
        SDK's parse() refused). Never raises."""
        try:
            carried = billed_answer_in(error)
            answer = carried if carried is not None else answer
            self.finish(self.endpoint.parse(answer) if answer is not None else None, error)
        except Exception as exc:
            report(exc)
            self._force_end()

    def complete(self, response: Any) -> None:
        """A whole (non-streamed) response came back; None: a raw response with no answer to read (the span says
        what it can without one). Never raises."""
        try:
            self.finish(self.endpoint.parse(response) if response is not None else Result(), None)
        except Exception as exc:
            report(exc)
            self._force_end()

    def _force_end(self) -> None:
        """``finish`` failed, or never ran: the span ends all the same (once), and a budget hold is given back."""
        self.done = True
        if not self.ended:
            self.ended = True
            with internal_errors():
                self._release(None)
                self.span.end()

    def _release(self, cost: float | None) -> None:
        if self.hold is not None:
            hold, self.hold = self.hold, None
            self.runtime.guard.settle(hold, cost)

    def finish_later(self, result: Result) -> None:
        """End a ``later`` call with the answer read back. Never raises."""
        if result.usage is None:
            result.pending = True  # a finished answer without usage: its prompt is not kept to estimate from
        try:
            self.finish(result, None)
        except Exception as exc:
            report(exc)
            self._force_end()

    def finish(self, result: Result | None, error: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        end_ns = time.time_ns()
        # Refused by a block budget: never sent, so no HTTP attempt, and no latency or error of the provider's.
        refused = isinstance(error, BudgetExceeded)
        attrs: dict[str, Any] = {A.HTTP_ATTEMPTS: 0 if refused else 1 + self.retries}
        if error is not None and not isinstance(error, Exception):
            error = None  # the app stopped the call (a cancelled task, Ctrl-C, exit): not the call failing
        error_type = failure = None
        if error is not None:
            error_type = _error_type(error)
            failure = f"{type(error).__qualname__}: {error}"
            status = getattr(error, "status_code", None)
            if isinstance(status, int):
                attrs[A.HTTP_STATUS_CODE] = status
                if status == 429:
                    self.rate_limited += 1
        elif result is not None and result.failure is not None:
            error_type, message = result.failure
            failure = f"{error_type}: {message}"
        if error_type is not None:
            attrs[A.ERROR_TYPE] = error_type
        if self.rate_limited:
            attrs[A.HTTP_RATE_LIMITED] = self.rate_limited
        ttfc = None
        first_output_ns = self.acc.first_output_ns if self.acc is not None else 0
        if first_output_ns:
            ttfc = (first_output_ns - self.start_ns) / 1e9
            attrs[A.RESPONSE_TIME_TO_FIRST_CHUNK] = ttfc
        usage = None
        cost = None
        if result is not None:
            usage = result.usage if result.usage is not None or result.pending else self._estimated_usage(result)
            cost = self._add_result(attrs, result, usage)
            if result.pending and result.response_id and A.BACKGROUND_GENERATION not in self.attrs:
                from . import later  # rare: imported when first needed

                later.expect(self, result.response_id)
        else:
            attrs[A.USAGE_SOURCE] = A.SOURCE_NONE
        if self.hold is not None:
            self._release(cost)
        span = self.span
        add_attributes(span, attrs)
        if failure is not None:
            span.set_status(Status(StatusCode.ERROR, _SECRETS.sub("[REDACTED]", failure)[:512]))
        self.ended = True
        span.end(end_time=end_ns)
        instruments = self.runtime.instruments
        if not self.unsampled and instruments is None:
            return
        all_attrs = {**self.attrs, **attrs}
        if self.unsampled:
            self.runtime.ledger.record_unsampled(
                # The span the app's sampler did not record, as the store reads every span.
                ReadableSpan(
                    name=self._name(),
                    context=span.get_span_context(),
                    parent=self.unsampled_parent,
                    resource=getattr(self.runtime.spans.tracer, "resource", None),
                    attributes=all_attrs,
                    kind=SpanKind.CLIENT,
                    status=Status(StatusCode.ERROR if failure is not None else StatusCode.UNSET),
                    start_time=self.start_ns,
                    end_time=end_ns,
                )
            )
        if instruments is not None and not refused:
            instruments.record(
                all_attrs,
                (end_ns - self.start_ns) / 1e9,
                ttfc,
                usage.input_tokens if usage else None,
                usage.output_tokens if usage and self.endpoint.generates else None,
                cost,
                error_type,
            )

    def _name(self) -> str:
        model = self.attrs.get(A.REQUEST_MODEL)
        return f"{self.endpoint.operation} {model}" if model else self.endpoint.operation

    def _estimated_usage(self, result: Result) -> Usage:
        """The provider sent no usage: estimate with the tokenizer (off the common path)."""
        model = result.response_model or self.attrs.get(A.REQUEST_MODEL) or ""
        return Usage(
            uncached_input=self.endpoint.estimate_input(model, self.kwargs),
            visible_output=_estimate_output(model, result.text()),
            source=A.SOURCE_ESTIMATED,
            web_searches=result.web_searches,
            file_searches=result.file_searches,
        )

    def _add_result(self, attrs: dict[str, Any], result: Result, usage: Usage | None) -> float | None:
        if result.response_model:
            attrs[A.RESPONSE_MODEL] = result.response_model
        if result.response_id:
            attrs[A.RESPONSE_ID] = result.response_id
        if result.finish_reasons:
            attrs[A.RESPONSE_FINISH_REASONS] = result.finish_reasons
        if result.attributes:
            attrs.update(result.attributes)
        if self.runtime.settings.capture_content and result.messages_of is not None:
            try:
                attrs[A.OUTPUT_MESSAGES] = to_json(result.messages_of())
            except Exception as exc:  # an answer llmtrace cannot read: its usage and cost are recorded all the same
                report(exc)
        if usage is None:
            attrs[A.USAGE_SOURCE] = A.SOURCE_NONE
            return None
        usage.add_attributes(attrs, self.endpoint.generates)
        provider = self.attrs[A.PROVIDER_NAME]
        request_model = self.attrs.get(A.REQUEST_MODEL) or ""
        model = result.response_model or request_model
        price = pricing.price_for_call(provider, model, request_model, self.base_url, result.price_context)
        if price is None:
            attrs[A.COST_UNPRICED] = True
            pricing.note_unpriced(provider, model)
            return None
        if (usage.input_audio or usage.output_audio) and not price.prices_audio():
            attrs[A.COST_UNPRICED] = True  # a cost at text rates would be several times too low
            pricing.note_unpriced(provider, model, audio=True)
            return None
        cost = price.cost(usage)
        attrs[A.COST_USD] = cost.total
        attrs[A.COST_INPUT_USD] = cost.input
        attrs[A.COST_OUTPUT_USD] = cost.output
        attrs[A.COST_SOURCE] = price.source
        attrs[A.COST_PRICED_MODEL] = price.model
        if price.context:
            attrs[A.COST_PRICE_CONTEXT] = price.context
        if cost.cache_savings:
            attrs[A.COST_CACHE_SAVINGS_USD] = cost.cache_savings
        return cost.total


def add_attributes(span: Span, attrs: dict[str, Any]) -> None:
    """``span.set_attributes(attrs)`` without the SDK validating, again, values llmtrace built itself.

    llmtrace builds every attribute value in a form the SDK stores as it is (a str, bool, int or float, a tuple
    of str; never None, a list or an object: the tests check every span they read), so cleaning them (~0.5 µs
    each in the SDK: ~10 µs for the ~20 attributes a call gets at its end) changes nothing. llmtrace's own spans
    take them as they are (``llmtrace.spans``). The SDK's span takes them into its attribute mapping directly,
    under the same locks ``set_attributes`` takes, when its limits are the defaults (no value-length limit, room
    for every attribute); anything else (another SDK version's internals, limits set by the app) takes the
    public path.
    """
    if type(span) is CallSpan:
        span.add_built(attrs)
        return
    bounded = getattr(span, "_attributes", None)
    if type(bounded) is BoundedAttributes:
        try:
            with span._lock:  # type: ignore[attr-defined]
                if (
                    span._end_time is None  # type: ignore[attr-defined]
                    and not bounded._immutable
                    and bounded.max_value_len is None
                    and (bounded.maxlen is None or len(bounded._dict) + len(attrs) <= bounded.maxlen)
                ):
                    with bounded._lock:
                        bounded._dict.update(attrs)
                    return
        except AttributeError:
            pass  # internals this code does not know: the public path below
    span.set_attributes(attrs)


_BYTES_PER_TOKEN = 3.0

# Secrets an error message may echo back (a proxy repeating the request's API key or bearer token, a key in a URL's
# query): the status description goes to every backend the span reaches. The app's exception keeps its message.
_SECRETS = re.compile(r"\b(?:sk-[\w\-*]{8,}|AIza[\w\-]{20,})|(?<=bearer )[^\s\"',;]+|(?<=[?&]key=)[^&\s\"',;]+", re.IGNORECASE)


def _serialized(content: Any) -> bytes:
    """The plain lists/dicts/strings requests are made of, serialized in C at memcpy speed (repr, which escapes every
    character, took 4 us for a 1.6 kB request, 15 us for 10 kB). Version 0 writes neither back-references nor
    interning marks: equal content gives equal bytes however it was built."""
    try:
        return marshal.dumps(content, 0)
    except ValueError:  # an object marshal does not know (an SDK model in the messages): its repr
        return repr(content).encode()


def _request_hash(keyed: Any, model: Any, serialized_content: bytes) -> str:
    # Keyed BLAKE2b (CPython's own): in a real call, where its code starts cold, a copy, update and digest took
    # ~4.7 us for 1.7 kB against ~9.4 for OpenSSL's sha256 (whose context copy alone took ~2 us), though timed
    # alone in a loop sha256 is faster. The model is marshalled too: self-delimiting, so no two requests run together.
    hasher = keyed.copy()
    hasher.update(_serialized(model))
    hasher.update(serialized_content)
    return hasher.hexdigest()


# The header the SDKs' ``with_streaming_response`` adds to a call's extra headers (``with_raw_response`` sets it to
# "true": its body is read through parse(), whose stream llmtrace wraps and can hide the usage chunk in).
_RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"


def _streamed_raw(kwargs: Mapping[str, Any]) -> bool:
    """A call through ``with_streaming_response`` ("stream") or ``with_raw_response`` ("true"; "raw" for the SDKs'
    custom raw wrappers), whose app may read the body's lines itself (and relay them)."""
    headers = kwargs.get("extra_headers")
    return isinstance(headers, Mapping) and headers.get(_RAW_RESPONSE_HEADER) in ("stream", "true", "raw")


def billed_answer_in(error: BaseException) -> Any:
    """The answer the provider billed though the SDK refused it, or None: the one the error carries (openai's
    ``LengthFinishReasonError`` and ``ContentFilterFinishReasonError`` from ``.parse()``), else the one the SDK's
    response ``parse()`` had read when the step after it raised (a ``.parse()`` whose answer does not fit its
    ``response_format`` / ``text_format`` / ``output_format``: pydantic's ValidationError carries no answer)."""
    answer = getattr(error, "completion", None)
    return answer if answer is not None else _read_before_failing(error)


def _read_before_failing(error: BaseException) -> Any:
    """The answer in the frame of the Stainless SDKs' ``APIResponse.parse`` (and its async and legacy twins) that
    the error left: that method reads the body into ``parsed``, then hands it to the request's post-parser, which
    raised. Read from the traceback, on failures only: no call pays for it."""
    tb = error.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "parse":
            local = frame.f_locals
            if "parsed" in local and type(local.get("self")).__name__.endswith("APIResponse"):
                return local["parsed"]
        tb = tb.tb_next
    return None


def refused_answer(error: Exception, raw: Any) -> Any:
    """What a raw response answered though the SDK's parse() refused it with ``error``: the answer the error carries,
    else the body's JSON (the provider billed the call all the same); None for a body that is not there or not JSON."""
    answer = billed_answer_in(error)
    if answer is not None:
        return answer
    try:
        return json.loads(raw.http_response.content)
    except Exception:  # a body never read (a broken connection) or not JSON: nothing to read usage from
        return None


def _error_type(error: BaseException) -> str:
    return api_error_type(type(error).__qualname__, getattr(error, "body", None))


def _estimate_output(model: str, text: str) -> int:
    from .tokenizer import count_text  # imported late: tiktoken loads only if ever needed

    return count_text(model, text)
