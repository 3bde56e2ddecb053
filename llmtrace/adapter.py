"""What a provider module hands the core: patch targets and pure request/response translators.

Adapters never touch a tracer, span or meter; the core (``llmtrace.call``) owns all of that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from .config import Settings
from .content import Message, generated_text
from .pricing import PriceContext
from .sse import RawEventRule
from .usage import Usage


@dataclass(slots=True)
class Result:
    """What one response (or one whole stream) said, provider-neutral."""

    response_model: str | None = None
    response_id: str | None = None
    finish_reasons: tuple[str, ...] = ()
    usage: Usage | None = None
    # All the text a stream generated (the answer, refusals, tool-call arguments, thinking): what an output
    # estimate counts when the provider sent no usage. A whole response leaves it empty: see ``text``.
    output_text: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    # The output as ``gen_ai.output.messages`` (llmtrace.content). Reading a whole response costs time that is
    # wasted when usage is known and content capture is off: built only when needed.
    messages_of: Callable[[], list[Message]] | None = None
    # The provider answered that the generation failed, and the SDK did not raise (an OpenAI Responses
    # ``failed`` response or stream ``error`` event; or a stream the app read raw, where the SDK's stream would have
    # raised): (error type, message).
    failure: tuple[str, str] | None = None
    # How the call was served, where that changes its price (llmtrace.pricing.PriceContext): OpenAI's service
    # tier, Anthropic's speed.
    price_context: PriceContext = ()
    # Hosted searches a stream ran before it ended without usage (an OpenAI Responses stream cut short): billed
    # per call, so the estimated usage carries them. Where the provider sent usage, it holds them.
    web_searches: int = 0
    file_searches: int = 0
    # The answer is not ready (an OpenAI background response, ``queued``): no usage yet, and none to estimate.
    pending: bool = False

    def text(self) -> str:
        """Everything generated, as text: a stream's, or the whole response's read from its messages."""
        if self.output_text or self.messages_of is None:
            return self.output_text
        return generated_text(self.messages_of())


# The SDKs' catch-all error classes: raised for an error the API sent inside a stream that had begun with a 200 (an
# overload, most often), which has no class of its own.
_CATCH_ALL_ERRORS = frozenset({"APIError", "APIStatusError"})


def api_error_type(class_name: str, body: Any) -> str:
    """An SDK error's type on its span: its class, or for the catch-all classes the API's own error type
    (``overloaded_error``, ``server_error``) where the error's body names one; low-cardinality either way."""
    if class_name in _CATCH_ALL_ERRORS and isinstance(body, Mapping):
        inner = body.get("error")  # anthropic: the whole event; openai: the error object itself
        kind = (inner if isinstance(inner, Mapping) else body).get("type")
        if isinstance(kind, str) and kind and kind != "error":
            return kind
    return class_name


class Accumulator(Protocol):
    # time.time_ns() when the first chunk carrying output arrived (0: none yet): the stream's time to first
    # chunk. Not the stream's opening events, which some APIs send before the model has produced anything.
    first_output_ns: int

    def add(self, chunk: Any) -> bool:
        """Take one stream item; return False to hide it from the application."""

    def result(self) -> Result: ...


@dataclass(frozen=True)
class ClientInfo:
    """Where a client sends its requests, resolved once per base URL."""

    provider: str
    address: str | None
    port: int | None
    base_url: str
    accepts_usage_option: bool = False


@dataclass(frozen=True)
class Endpoint:
    """One API operation of one provider (e.g. OpenAI chat completions)."""

    operation: str
    request_attributes: Callable[[Mapping[str, Any]], dict[str, Any]]
    parse: Callable[[Any], Result]
    accumulator: Callable[[bool], Accumulator]  # arg: hide the usage-only chunk we asked for
    estimate_input: Callable[[str, Mapping[str, Any]], int]
    # What the request asks, as the SDK took it (the duplicate-call hash): every part that makes two requests differ.
    input_content: Callable[[Mapping[str, Any]], Any]
    # Content capture: the request's content as attributes (gen_ai.input.messages, system instructions, tools).
    content_attributes: Callable[[Mapping[str, Any]], dict[str, str]]
    client_info: Callable[[Any, Settings], ClientInfo]  # (SDK resource, settings)
    # False for an operation that generates no tokens (embeddings): its usage is input alone, with no output count.
    generates: bool = True
    # Adds ``stream_options.include_usage`` (OpenAI chat/completions streams); None elsewhere.
    wants_usage_option: bool = False
    # Whether this request may get it, beyond its client's host taking it (a call naming its own API version may name
    # one that does not); None: every request does.
    takes_usage_option: Callable[[Mapping[str, Any]], bool] | None = None
    # A stream's raw SSE event as the SDK's stream takes it (llmtrace.sse.RawEventRule), for a stream the app reads
    # raw; None: the endpoint does not stream.
    raw_event: RawEventRule | None = None


# How a target method behaves, which decides the wrapper the core puts around it.
CALL = "call"  # returns a response or a stream
ASYNC_CALL = "async_call"
STREAM_MANAGER = "stream_manager"  # returns a context manager that sends the request on enter
ASYNC_STREAM_MANAGER = "async_stream_manager"
STREAM_OPENER = "stream_opener"  # a stream helper's constructor receiving the raw stream (arg 1)
RETRY_HOOK = "retry_hook"  # called by the SDK before each retry, with the failed response
# Reads back an answer given earlier (OpenAI's responses.retrieve and .cancel): not a call of its own, but it may
# bring the usage of a generation that ran after its call returned (llmtrace.later).
LOOKUP = "lookup"
ASYNC_LOOKUP = "async_lookup"
SDK_TRACER = "sdk_tracer"  # the SDK's own tracer (a function or a property): None while llmtrace traces


@dataclass(frozen=True)
class Target:
    module: str
    name: str  # "Class.method"
    endpoint: Endpoint | None
    kind: str
