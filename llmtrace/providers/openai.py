"""OpenAI SDK adapter: chat completions (+parse/stream), Responses, legacy completions, embeddings."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Mapping

from .. import attributes as A
from .. import content as C
from .. import tokenizer
from ..adapter import (
    ASYNC_CALL, ASYNC_LOOKUP, CALL, LOOKUP, RETRY_HOOK, ClientInfo, Endpoint, Result, Target, api_error_type,
)  # fmt: skip
from ..config import Settings
from ..content import Message
from ..pricing import PriceContext
from ..sse import StreamEnds, json_of
from ..usage import Usage, as_int
from . import openai_content
from ._stainless import RequestTable, client_info_for, counts, field, get, pick, string

# OpenAI-compatible hosts whose provider has a semconv name (or a well-known one).
_HOST_PROVIDERS = {
    "api.openai.com": "openai",
    "eu.api.openai.com": "openai",  # OpenAI's data-residency hosts
    "us.api.openai.com": "openai",
    "api.anthropic.com": "anthropic",  # Anthropic's OpenAI-compatible endpoint
    "api.groq.com": "groq",
    "api.deepseek.com": "deepseek",
    "api.x.ai": "x_ai",
    "api.mistral.ai": "mistral_ai",
    "api.perplexity.ai": "perplexity",
    "api.together.xyz": "together",
    "api.fireworks.ai": "fireworks",
    "openrouter.ai": "openrouter",
    "api.cerebras.ai": "cerebras",
    "generativelanguage.googleapis.com": "gcp.gemini",
}

_COMMON: RequestTable = {
    "model": (A.REQUEST_MODEL, str),
    "temperature": (A.REQUEST_TEMPERATURE, float),
    "top_p": (A.REQUEST_TOP_P, float),
    "frequency_penalty": (A.REQUEST_FREQUENCY_PENALTY, float),
    "presence_penalty": (A.REQUEST_PRESENCE_PENALTY, float),
    "seed": (A.REQUEST_SEED, int),
    "stream": (A.REQUEST_STREAM, bool),
    "stop": (A.REQUEST_STOP_SEQUENCES, str),
    "service_tier": (A.OPENAI_REQUEST_SERVICE_TIER, str),
}
_CHAT_REQUEST: RequestTable = {
    **_COMMON,
    "max_completion_tokens": (A.REQUEST_MAX_TOKENS, int),
    "max_tokens": (A.REQUEST_MAX_TOKENS, int),
    "n": (A.REQUEST_CHOICE_COUNT, int),
}
_RESPONSES_REQUEST: RequestTable = {**_COMMON, "max_output_tokens": (A.REQUEST_MAX_TOKENS, int)}
_EMBEDDINGS_REQUEST: RequestTable = {
    "model": (A.REQUEST_MODEL, str),
    "encoding_format": (A.REQUEST_ENCODING_FORMATS, str),
    "dimensions": (A.EMBEDDINGS_DIMENSION_COUNT, int),
}


_BEDROCK_HOST_STARTS, _BEDROCK_HOST_ENDS = ("bedrock-runtime.", "bedrock-mantle."), (".amazonaws.com", ".api.aws")
# Azure OpenAI resources, reached through AzureOpenAI or a plain client on the v1 API.
_AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")


def _provider_of(client: Any, host: str, settings: Settings) -> str:
    if "Azure" in type(client).__name__ or host.endswith(_AZURE_HOSTS):
        return "azure.ai.openai"
    # The regional hosts of the clouds' OpenAI-compatible endpoints (the SDK's provider=bedrock(...) / vertex(...)).
    if host.startswith(_BEDROCK_HOST_STARTS) and host.endswith(_BEDROCK_HOST_ENDS):
        return "aws.bedrock"
    if host.endswith("aiplatform.googleapis.com"):
        return "gcp.vertex_ai"
    # A gateway, proxy or local server the settings name (provider_hosts) is the provider behind it.
    return settings.host_providers().get(host) or _HOST_PROVIDERS.get(host, host or "openai")


# Azure OpenAI takes stream_options from API version 2024-08-01-preview on (and on its v1 API, which has no version
# or says "preview"/"latest"); an older version answers 400 to it, so those never see it.
_AZURE_OPENAI_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com")
_AZURE_FIRST_USAGE_VERSION = "2024-08-01"


def _accepts_usage_option(client: Any, host: str, settings: Settings) -> bool:
    if host in settings.include_usage_hosts:
        return True
    if not host.endswith(_AZURE_OPENAI_HOSTS):
        return False
    version = _api_version(getattr(client, "_custom_query", None))
    if version is None:
        return "/openai/v1" in str(getattr(client, "base_url", ""))
    return _azure_version_takes_usage(version)


def _api_version(query: Any) -> Any:
    """The ``api-version`` a client's or a call's query parameters name (Azure's), or None."""
    return query.get("api-version") if isinstance(query, Mapping) else None


def _azure_version_takes_usage(version: Any) -> bool:
    if not isinstance(version, str):
        return False
    if version[:4].isdigit():
        return version[:10] >= _AZURE_FIRST_USAGE_VERSION
    return version in ("preview", "latest")


def _request_takes_usage_option(kwargs: Mapping[str, Any]) -> bool:
    """A call naming its own API version (``extra_query``, over its client's): only one that takes the field."""
    version = _api_version(kwargs.get("extra_query"))
    return version is None or _azure_version_takes_usage(version)


# A partial, not a function calling client_info_for: one Python call fewer on every call.
client_info: Callable[[Any, Settings], ClientInfo] = functools.partial(
    client_info_for, provider_of=_provider_of, accepts_usage_option=_accepts_usage_option
)


def _completions_request(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    attrs = pick(kwargs, _CHAT_REQUEST)
    if A.REQUEST_CHOICE_COUNT in attrs and attrs[A.REQUEST_CHOICE_COUNT] == 1:
        del attrs[A.REQUEST_CHOICE_COUNT]
    if isinstance(kwargs.get("stop"), str):
        attrs[A.REQUEST_STOP_SEQUENCES] = (kwargs["stop"],)
    return attrs


def _chat_request(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    attrs = _completions_request(kwargs)
    attrs[A.OPENAI_API_TYPE] = "chat_completions"
    form = kwargs.get("response_format")
    if form is not None:
        _add_output_type(attrs, form)
    return attrs


def _responses_request(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    attrs = pick(kwargs, _RESPONSES_REQUEST)
    attrs[A.OPENAI_API_TYPE] = "responses"
    form = kwargs.get("text_format") or get(kwargs.get("text"), "format")
    if form is not None:
        _add_output_type(attrs, form)
    return attrs


def _add_output_type(attrs: dict[str, Any], form: Any) -> None:
    """``gen_ai.output.type`` of a response format: json for a JSON schema or object (or the pydantic model a
    ``parse()`` is given), text for text."""
    kind = "json_schema" if isinstance(form, type) else get(form, "type")
    if kind in ("json_schema", "json_object"):
        attrs[A.OUTPUT_TYPE] = "json"
    elif kind == "text":
        attrs[A.OUTPUT_TYPE] = "text"


def _embeddings_request(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    attrs = pick(kwargs, _EMBEDDINGS_REQUEST)
    if A.REQUEST_ENCODING_FORMATS in attrs:
        attrs[A.REQUEST_ENCODING_FORMATS] = (attrs[A.REQUEST_ENCODING_FORMATS],)
    return attrs


# --- usage -----------------------------------------------------------------------------------------


def _chat_usage(usage: Any) -> Usage | None:
    """Chat/legacy-completions/embeddings usage: totals that include cached and reasoning tokens."""
    if usage is None:
        return None
    input_total, output_total, total = counts(usage, _CHAT_TOTALS)
    cache_read, cache_write, input_audio = counts(get(usage, "prompt_tokens_details"), _CHAT_PROMPT_DETAILS)
    reasoning, output_audio = counts(get(usage, "completion_tokens_details"), _CHAT_COMPLETION_DETAILS)
    if not cache_read:
        # DeepSeek's count of the prompt read from its cache (billed at the cache-read rate) is a top-level field.
        cache_read = as_int(get(usage, "prompt_cache_hit_tokens"))
    if reasoning and total == input_total + output_total + reasoning:
        # Reasoning counted beside the completion, not in it (xAI's grok models), as the total says: billed all the same.
        output_total += reasoning
    return Usage.from_totals(
        input_total=input_total,
        output_total=output_total,
        cache_read=cache_read,
        cache_write=cache_write,
        reasoning=reasoning,
        input_audio=input_audio,
        output_audio=output_audio,
    )


_CHAT_TOTALS = ("prompt_tokens", "completion_tokens", "total_tokens")
_CHAT_PROMPT_DETAILS = ("cached_tokens", "cache_write_tokens", "audio_tokens")
_CHAT_COMPLETION_DETAILS = ("reasoning_tokens", "audio_tokens")


def _responses_usage(usage: Any, output: Any) -> Usage | None:
    if usage is None:
        return None
    input_details = get(usage, "input_tokens_details")
    counted = Usage.from_totals(
        input_total=as_int(get(usage, "input_tokens")),
        output_total=as_int(get(usage, "output_tokens")),
        cache_read=as_int(get(input_details, "cached_tokens")),
        cache_write=as_int(get(input_details, "cache_write_tokens")),
        reasoning=as_int(get(get(usage, "output_tokens_details"), "reasoning_tokens")),
    )
    counted.web_searches, counted.file_searches = _hosted_searches(output)
    return counted


_HOSTED_SEARCHES = frozenset({"web_search_call", "file_search_call"})


def _hosted_searches(output: Any) -> tuple[int, int]:
    """(web searches, file searches) among a response's output items: the hosted search tools are billed per
    call, and usage does not count them."""
    web = files = 0
    for item in output if isinstance(output, list) else ():
        kind = get(item, "type")
        if kind == "web_search_call":
            # A web search call is a search, a page opened from its results or a find in that page: only
            # the searches are billed. Older items (the preview tool) name no action: each is a search.
            action = get(get(item, "action"), "type")
            web += action is None or action == "search"
        elif kind == "file_search_call":
            files += 1
    return web, files


def _extras(response: Any) -> dict[str, Any]:
    attrs = {}
    tier = get(response, "service_tier")
    if isinstance(tier, str):
        attrs[A.OPENAI_RESPONSE_SERVICE_TIER] = tier
    fingerprint = get(response, "system_fingerprint")
    if isinstance(fingerprint, str):
        attrs[A.OPENAI_RESPONSE_SYSTEM_FINGERPRINT] = fingerprint
    return attrs


def _price_context(extras: Mapping[str, Any]) -> PriceContext:
    tier = extras.get(A.OPENAI_RESPONSE_SERVICE_TIER)
    return (("service_tier", tier),) if tier else ()


# --- chat completions and legacy completions -------------------------------------------------------


def _parse_choices_response(response: Any) -> Result:
    """An SDK model, or the JSON body of an answer the SDK's parse() refused without carrying it (a dict)."""
    choices = get(response, "choices") or ()
    extras = _extras(response)
    reasons = []
    for choice in choices if isinstance(choices, list) else ():  # a loop, not a generator: one call fewer
        reason = get(choice, "finish_reason")
        if type(reason) is str:
            reasons.append(reason)
    model = get(response, "model")
    response_id = get(response, "id")
    return Result(
        response_model=model if isinstance(model, str) else None,
        response_id=response_id if isinstance(response_id, str) else None,
        finish_reasons=tuple(reasons),
        usage=_chat_usage(get(response, "usage")),
        attributes=extras,
        messages_of=lambda: openai_content.choices_output(choices),
        price_context=_price_context(extras),
    )


class _ToolCallDeltas:
    """One streamed tool call: its id and name come in its first delta, its arguments in pieces."""

    __slots__ = ("call_id", "name", "arguments")

    def __init__(self) -> None:
        self.call_id: Any = None
        self.name: Any = None
        self.arguments: list[str] = []


class _ChoicesAccumulator:
    """Chat and legacy completion chunks; usage arrives in a final chunk with no choices."""

    __slots__ = (
        "_hide_usage_chunk", "first_output_ns", "_model", "_id", "_finish", "_text", "_more_text", "_tools", "_usage",
        "_extras",
    )  # fmt: skip

    def __init__(self, hide_usage_chunk: bool) -> None:
        self._hide_usage_chunk = hide_usage_chunk
        self.first_output_ns = 0
        self._model: str | None = None
        self._id: str | None = None
        self._finish: dict[int, str] = {}
        self._text: list[str] = []  # choice 0's, the only choice unless the request set n
        self._more_text: dict[int, list[str]] = {}  # the other choices'
        self._tools: dict[tuple[int, int], _ToolCallDeltas] = {}  # (choice, tool call) index
        self._usage: Any = None
        self._extras: dict[str, Any] = {}

    def add(self, chunk: Any) -> bool:
        # Runs once per streamed token: plain getattr on the SDK's chunk objects, nothing more.
        if not self._model:
            # Not from a chunk naming no model: Azure's first chunk (prompt filter results) has model "" and id "".
            self._model = string(get(chunk, "model")) or None
            if self._model:
                self._id = string(get(chunk, "id")) or None
                self._extras = _extras(chunk)
        choices = getattr(chunk, "choices", None)
        if choices:
            if not self.first_output_ns:  # not Azure's filter-results chunk, nor the usage chunk: no choices
                self.first_output_ns = time.time_ns()
            for choice in choices:
                index = getattr(choice, "index", 0)
                delta = getattr(choice, "delta", None)
                if delta is not None:
                    piece = getattr(delta, "content", None)
                    if not piece:  # a refusal or a deprecated function call instead (or beside an empty text)
                        refusal = getattr(delta, "refusal", None)
                        if type(refusal) is str:
                            piece = refusal
                        elif (function_call := getattr(delta, "function_call", None)) is not None:
                            self._add_call(index, -1, None, function_call)
                        elif (audio := field(delta, "audio")) is not None:  # a spoken answer: its transcript
                            piece = get(audio, "transcript")
                    if calls := getattr(delta, "tool_calls", None):  # may come beside text
                        for call in calls:
                            position, call_id = getattr(call, "index", None), getattr(call, "id", None)
                            self._add_call(index, position, call_id, getattr(call, "function", None))
                else:
                    piece = getattr(choice, "text", None)
                if piece and type(piece) is str:
                    if not index:
                        self._text.append(piece)
                    elif (pieces := self._more_text.get(index)) is not None:
                        pieces.append(piece)
                    else:
                        self._more_text[as_int(index)] = [piece]
                reason = getattr(choice, "finish_reason", None)
                if reason is not None and type(reason) is str:
                    self._finish[as_int(index)] = reason
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self._usage = usage
            if self._hide_usage_chunk and not choices:
                return False
        return True

    def _add_call(self, choice: Any, position: Any, call_id: Any, function: Any) -> None:
        """One tool call's delta: its id and name come first, its arguments in pieces."""
        choice = as_int(choice)
        if type(position) is not int:
            position = self._unindexed_position(choice, call_id)
        deltas = self._tools.get((choice, position))
        if deltas is None:
            deltas = self._tools[(choice, position)] = _ToolCallDeltas()
        if call_id:
            deltas.call_id = call_id
        name = getattr(function, "name", None)
        if name:
            deltas.name = name
        arguments = getattr(function, "arguments", None)
        if type(arguments) is str:
            deltas.arguments.append(arguments)

    def _unindexed_position(self, choice: int, call_id: Any) -> int:
        """Some OpenAI-compatible servers (Gemini's) leave a tool call's index out, sending each call whole: a new
        id is a new call, a delta without one continues the last."""
        positions = [p for c, p in self._tools if c == choice and p >= 0]
        if not positions:
            return 0
        last = max(positions)
        return last if not call_id or self._tools[(choice, last)].call_id == call_id else last + 1

    def _texts(self) -> dict[int, str]:
        texts = {i: "".join(pieces) for i, pieces in self._more_text.items()}
        if self._text:
            texts[0] = "".join(self._text)
        return texts

    def _messages(self) -> list[Message]:
        texts = self._texts()
        parts: dict[int, list[C.Part]] = {i: [C.text(t)] for i, t in texts.items() if t}
        for (choice, _), call in sorted(self._tools.items(), key=lambda item: item[0]):
            parts.setdefault(choice, []).append(C.tool_call(call.call_id, call.name, "".join(call.arguments)))
        indexes = sorted(texts.keys() | self._finish.keys() | parts.keys())
        return [C.output(parts.get(i, []), self._finish.get(i)) for i in indexes]

    def result(self) -> Result:
        arguments = "".join("".join(call.arguments) for call in self._tools.values())
        return Result(
            response_model=self._model,
            response_id=self._id,
            finish_reasons=tuple(self._finish[i] for i in sorted(self._finish)),
            usage=_chat_usage(self._usage),
            output_text="".join(self._texts().values()) + arguments,
            attributes=self._extras,
            messages_of=self._messages,
            price_context=_price_context(self._extras),
        )


def _estimate_chat_input(model: str, kwargs: Mapping[str, Any]) -> int:
    return tokenizer.count_prompt(model, kwargs.get("messages"), kwargs.get("prompt"))


def _chat_content(kwargs: Mapping[str, Any]) -> Any:
    return kwargs.get("messages", kwargs.get("prompt"))


# --- Responses API -------------------------------------------------------------------------------

_RESPONSE_DONE_EVENTS = ("response.completed", "response.incomplete", "response.failed")


def _failure(error: Any, default: str) -> tuple[str, str]:
    """(error type, message) of an error object the API sent instead of raising: its code names the type."""
    return string(get(error, "code")) or default, string(get(error, "message")) or ""


# A background response (``background=True``) comes back before the model has worked: its usage comes later.
_NOT_READY = ("queued", "in_progress")


def _parse_response_object(response: Any) -> Result:
    status = string(get(response, "status"))
    finish = string(get(get(response, "incomplete_details"), "reason")) or status
    extras = _extras(response)
    return Result(
        response_model=string(get(response, "model")),
        response_id=string(get(response, "id")),
        finish_reasons=(finish,) if finish else (),
        usage=_responses_usage(get(response, "usage"), get(response, "output")),
        attributes=extras,
        messages_of=lambda: openai_content.response_output(get(response, "output"), finish),
        # A failed generation comes back as a response (the SDK does not raise): the call failed all the same.
        failure=_failure(get(response, "error"), "failed") if status == "failed" else None,
        price_context=_price_context(extras),
        pending=status in _NOT_READY,
    )


class _ResponsesAccumulator:
    """The final response (completed, incomplete or failed event) says everything; the deltas stand in for it
    when the stream ends without one."""

    __slots__ = ("first_output_ns", "_final", "_created", "_error", "_text", "_calls", "_searches")

    def __init__(self, hide_usage_chunk: bool) -> None:
        self.first_output_ns = 0
        self._final: Any = None
        self._created: Any = None
        self._error: tuple[str, str] | None = None
        self._text: list[str] = []
        self._calls: dict[int, _ToolCallDeltas] = {}  # by output index
        self._searches: list[Any] = []  # finished hosted search calls, billed even if the stream is cut later

    def _call(self, event: Any) -> _ToolCallDeltas:
        index = as_int(get(event, "output_index"))
        call = self._calls.get(index)
        if call is None:
            call = self._calls[index] = _ToolCallDeltas()
        return call

    def add(self, event: Any) -> bool:
        kind = get(event, "type")
        # Output arrives as *.delta events (text, refusal, tool arguments, reasoning summary); response.created
        # and the item/part announcements come first, before the model has produced anything.
        if not self.first_output_ns and type(kind) is str and kind.endswith(".delta"):
            self.first_output_ns = time.time_ns()
        if kind == "response.output_text.delta" or kind == "response.refusal.delta":
            delta = get(event, "delta")
            if isinstance(delta, str):
                self._text.append(delta)
        elif kind == "response.function_call_arguments.delta":
            delta = get(event, "delta")
            if isinstance(delta, str):
                self._call(event).arguments.append(delta)
        elif kind == "response.output_item.added":
            item = get(event, "item")
            if get(item, "type") == "function_call":
                call = self._call(event)
                call.call_id = get(item, "call_id")
                call.name = get(item, "name")
        elif kind == "response.output_item.done":
            item = get(event, "item")
            if get(item, "type") in _HOSTED_SEARCHES:
                self._searches.append(item)
        elif kind in _RESPONSE_DONE_EVENTS:
            self._final = get(event, "response")
        elif kind == "response.created":
            self._created = get(event, "response")
        elif kind == "error":  # the stream's own error event: the SDK hands it on, it does not raise
            self._error = _failure(event, "error")
        return True

    def _messages(self) -> list[Message]:
        parts = [C.text("".join(self._text))] if self._text else []
        for _, call in sorted(self._calls.items()):
            parts.append(C.tool_call(call.call_id, call.name, "".join(call.arguments)))
        return [C.output(parts, None)]

    def result(self) -> Result:
        if self._final is not None:
            return _parse_response_object(self._final)
        partial = _parse_response_object(self._created) if self._created is not None else Result()
        partial.finish_reasons = ()  # the created event says "in_progress": the stream ended before any verdict
        # A stream cut short, whose output is estimated; but a background response's generation goes on on the
        # server, and its usage comes with a later read (a resumed stream): none to estimate (llmtrace.later).
        partial.pending = get(self._created, "background") is True
        # The created event has no output yet: what streamed in is the output.
        partial.output_text = "".join(self._text) + "".join("".join(c.arguments) for c in self._calls.values())
        partial.messages_of = self._messages
        partial.failure = self._error
        partial.web_searches, partial.file_searches = _hosted_searches(self._searches)
        return partial


def _estimate_responses_input(model: str, kwargs: Mapping[str, Any]) -> int:
    value, instructions = kwargs.get("input"), kwargs.get("instructions")
    told = tokenizer.count_text(model, instructions) if isinstance(instructions, str) else 0  # the system prompt
    if isinstance(value, str):
        return told + tokenizer.count_text(model, value)
    return told + tokenizer.count_prompt(model, value if isinstance(value, list) else None)


def _responses_content(kwargs: Mapping[str, Any]) -> Any:
    # The same input in another conversation (previous_response_id) or under other instructions is another request.
    return kwargs.get("instructions"), kwargs.get("previous_response_id"), kwargs.get("input")


# --- embeddings ----------------------------------------------------------------------------------


def _parse_embeddings(response: Any) -> Result:
    usage = get(response, "usage")
    return Result(
        response_model=string(get(response, "model")),
        usage=_chat_usage(usage) if usage is not None else None,
    )


def _estimate_embeddings_input(model: str, kwargs: Mapping[str, Any]) -> int:
    return tokenizer.count_prompt(model, None, kwargs.get("input"))


def _embeddings_content(kwargs: Mapping[str, Any]) -> Any:
    return kwargs.get("input")


def _raw_event(name: str | None, data: str, parsed: Any) -> Any:
    """A raw stream's event as openai's Stream takes it: ``[DONE]`` ends it; the data must be JSON; an object with an
    ``error`` makes it raise an APIError (its body: that error)."""
    if data.startswith("[DONE]"):
        raise StreamEnds()
    event = json_of(parsed)
    if not isinstance(event, Mapping):
        return None  # nothing an accumulator reads
    error = event.get("error")
    if error:
        message = get(error, "message")
        message = message if isinstance(message, str) and message else "An error occurred during streaming"
        raise StreamEnds((api_error_type("APIError", error), message))
    return event


CHAT = Endpoint(
    operation=A.OP_CHAT,
    request_attributes=_chat_request,
    parse=_parse_choices_response,
    accumulator=_ChoicesAccumulator,
    estimate_input=_estimate_chat_input,
    input_content=_chat_content,
    content_attributes=openai_content.chat_input,
    client_info=client_info,
    wants_usage_option=True,
    takes_usage_option=_request_takes_usage_option,
    raw_event=_raw_event,
)
# Legacy completions answer in the same shape as chat completions; only the operation differs.
COMPLETIONS = dataclasses.replace(CHAT, operation=A.OP_TEXT_COMPLETION, request_attributes=_completions_request)
RESPONSES = Endpoint(
    operation=A.OP_CHAT,
    request_attributes=_responses_request,
    parse=_parse_response_object,
    accumulator=_ResponsesAccumulator,
    estimate_input=_estimate_responses_input,
    input_content=_responses_content,
    content_attributes=openai_content.responses_input,
    client_info=client_info,
    raw_event=_raw_event,
)
EMBEDDINGS = Endpoint(
    operation=A.OP_EMBEDDINGS,
    request_attributes=_embeddings_request,
    parse=_parse_embeddings,
    accumulator=_ChoicesAccumulator,
    estimate_input=_estimate_embeddings_input,
    input_content=_embeddings_content,
    content_attributes=openai_content.embeddings_input,
    client_info=client_info,
    generates=False,
)

_CHAT_MODULE = "openai.resources.chat.completions.completions"
_RESPONSES_MODULE = "openai.resources.responses.responses"
_BETA_RESPONSES_MODULE = "openai.resources.beta.responses.responses"  # client.beta.responses: create and compact

# chat.completions.stream() and responses.stream() go through create(): patching them too would
# count those calls twice. parse() posts directly, so it needs its own patch.
TARGETS = (
    Target(_CHAT_MODULE, "Completions.create", CHAT, CALL),
    Target(_CHAT_MODULE, "AsyncCompletions.create", CHAT, ASYNC_CALL),
    Target(_CHAT_MODULE, "Completions.parse", CHAT, CALL),
    Target(_CHAT_MODULE, "AsyncCompletions.parse", CHAT, ASYNC_CALL),
    Target(_RESPONSES_MODULE, "Responses.create", RESPONSES, CALL),
    Target(_RESPONSES_MODULE, "AsyncResponses.create", RESPONSES, ASYNC_CALL),
    Target(_RESPONSES_MODULE, "Responses.parse", RESPONSES, CALL),
    Target(_RESPONSES_MODULE, "AsyncResponses.parse", RESPONSES, ASYNC_CALL),
    # A background response's usage comes with a later read of it (llmtrace.later).
    Target(_RESPONSES_MODULE, "Responses.retrieve", RESPONSES, LOOKUP),
    Target(_RESPONSES_MODULE, "AsyncResponses.retrieve", RESPONSES, ASYNC_LOOKUP),
    Target(_RESPONSES_MODULE, "Responses.cancel", RESPONSES, LOOKUP),
    Target(_RESPONSES_MODULE, "AsyncResponses.cancel", RESPONSES, ASYNC_LOOKUP),
    # A compaction pass is a billed model call: its answer carries the usage of a Responses call.
    Target(_RESPONSES_MODULE, "Responses.compact", RESPONSES, CALL),
    Target(_RESPONSES_MODULE, "AsyncResponses.compact", RESPONSES, ASYNC_CALL),
    Target(_BETA_RESPONSES_MODULE, "Responses.create", RESPONSES, CALL),
    Target(_BETA_RESPONSES_MODULE, "AsyncResponses.create", RESPONSES, ASYNC_CALL),
    Target(_BETA_RESPONSES_MODULE, "Responses.compact", RESPONSES, CALL),
    Target(_BETA_RESPONSES_MODULE, "AsyncResponses.compact", RESPONSES, ASYNC_CALL),
    Target("openai.resources.completions", "Completions.create", COMPLETIONS, CALL),
    Target("openai.resources.completions", "AsyncCompletions.create", COMPLETIONS, ASYNC_CALL),
    Target("openai.resources.embeddings", "Embeddings.create", EMBEDDINGS, CALL),
    Target("openai.resources.embeddings", "AsyncEmbeddings.create", EMBEDDINGS, ASYNC_CALL),
    Target("openai._base_client", "SyncAPIClient._sleep_for_retry", None, RETRY_HOOK),
    Target("openai._base_client", "AsyncAPIClient._sleep_for_retry", None, RETRY_HOOK),
)
