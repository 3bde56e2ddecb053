"""Anthropic SDK adapter: messages.create (stream or not), messages.stream(...), parse, beta.messages."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Mapping

from .. import attributes as A
from .. import content as C
from .. import tokenizer
from ..adapter import (
    ASYNC_CALL,
    RETRY_HOOK,
    SDK_TRACER,
    ASYNC_STREAM_MANAGER,
    CALL,
    STREAM_MANAGER,
    STREAM_OPENER,
    ClientInfo,
    Endpoint,
    Result,
    Target,
    api_error_type,
)
from ..config import Settings
from ..content import Message
from ..pricing import PriceContext
from ..sse import StreamEnds, json_of
from ..usage import Usage, as_int
from . import anthropic_content
from ._stainless import RequestTable, client_info_for, field, get, pick, string

_REQUEST: RequestTable = {
    "model": (A.REQUEST_MODEL, str),
    "max_tokens": (A.REQUEST_MAX_TOKENS, int),
    "temperature": (A.REQUEST_TEMPERATURE, float),
    "top_p": (A.REQUEST_TOP_P, float),
    "top_k": (A.REQUEST_TOP_K, int),
    "stop_sequences": (A.REQUEST_STOP_SEQUENCES, str),
    "stream": (A.REQUEST_STREAM, bool),
}


def _provider_of(client: Any, host: str, settings: Settings) -> str:
    name = type(client).__name__
    if "Bedrock" in name:
        return "aws.bedrock"
    if "Vertex" in name:
        return "gcp.vertex_ai"
    return "anthropic"


# A partial, not a function calling client_info_for: one Python call fewer on every call.
client_info: Callable[[Any, Settings], ClientInfo] = functools.partial(client_info_for, provider_of=_provider_of)


def _request_attributes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return pick(kwargs, _REQUEST)


_THINKING_BLOCKS = ("thinking", "redacted_thinking")


def _usage(usage: Any, blocks: Any) -> Usage | None:
    """Anthropic's ``input_tokens`` EXCLUDES cache reads and writes, so it is the uncached bucket. Its
    ``output_tokens`` include any thinking, mostly without a breakdown: an answer that thought then has an unknown
    reasoning count, not 0 (``blocks``: the answer's content blocks)."""
    if usage is None:
        return None
    output = as_int(get(usage, "output_tokens"))
    thinking = get(get(usage, "output_tokens_details"), "thinking_tokens")
    reasoning = min(as_int(thinking), output)
    answer = _pass_usage(usage)
    answer.visible_output -= reasoning
    answer.reasoning = reasoning
    answer.reasoning_known = type(thinking) is int or not _thought(blocks)
    answer.web_searches = as_int(get(get(usage, "server_tool_use"), "web_search_requests"))
    # Server-side compaction (beta context management) is a model call of its own before the answer, billed, whose
    # tokens the top-level fields leave out; priced with the answer's, at the same model's rates.
    compactions = [_pass_usage(one) for one in field(usage, "iterations") or () if get(one, "type") == "compaction"]
    if not compactions:
        return answer
    passes = (answer, *compactions)
    return Usage(
        uncached_input=sum(one.uncached_input for one in passes),
        cache_read=sum(one.cache_read for one in passes),
        cache_write=sum(one.cache_write for one in passes),
        visible_output=sum(one.visible_output for one in passes),
        reasoning=reasoning,
        cache_write_1h=sum(one.cache_write_1h for one in passes),
        reasoning_known=answer.reasoning_known,
        web_searches=answer.web_searches,
        passes=passes,
    )


def _pass_usage(usage: Any) -> Usage:
    """One model pass's tokens (the answer's top-level fields, or an iteration's): all its output visible."""
    written = as_int(get(usage, "cache_creation_input_tokens"))
    return Usage(
        uncached_input=as_int(get(usage, "input_tokens")),
        cache_read=as_int(get(usage, "cache_read_input_tokens")),
        cache_write=written,
        visible_output=as_int(get(usage, "output_tokens")),
        cache_write_1h=_written_for_an_hour(usage, written),
    )


def _written_for_an_hour(usage: Any, written: int) -> int:
    """Of the ``written`` cache tokens, those with the 1-hour TTL (priced higher)."""
    return min(as_int(get(get(usage, "cache_creation"), "ephemeral_1h_input_tokens")), written)


def _thought(blocks: Any) -> bool:
    return any(get(block, "type") in _THINKING_BLOCKS for block in blocks)


def _price_context(usage: Any) -> PriceContext:
    """Fast mode (``usage.speed == "fast"``) has prices of its own."""
    speed = string(get(usage, "speed"))
    return (("speed", speed),) if speed else ()


def _parse(message: Any) -> Result:
    reason = get(message, "stop_reason")
    usage = get(message, "usage")
    return Result(
        response_model=string(get(message, "model")),
        response_id=string(get(message, "id")),
        finish_reasons=(reason,) if isinstance(reason, str) else (),
        usage=_usage(usage, get(message, "content") or ()),
        messages_of=lambda: anthropic_content.response_output(get(message, "content"), string(reason)),
        price_context=_price_context(usage),
    )


# Anthropic's tokenizer is not public; cl100k (GPT-4's) is the closest public approximation.
_TOKENIZER_MODEL = "gpt-4"
_USAGE_FIELDS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens")


# A streamed delta's type -> its field holding generated output (citations and signatures are not output).
_DELTA_FIELDS = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "input_json_delta": "partial_json",
    "compaction_delta": "content",
}


# A streamed block's type -> the field its deltas fill (tool calls: ``input``, as JSON text; any other: ``content``,
# as a compaction block's).
_STREAMED_FIELDS = {"text": "text", "thinking": "thinking"}


class _Accumulator:
    """``message_start`` carries the input side; ``message_delta`` the cumulative output count. Content arrives
    block by block: a ``content_block_start`` announces each (its type, a tool call's id and name), deltas fill it."""

    __slots__ = (
        "first_output_ns", "_model", "_id", "_reason", "_usage", "_output_counted", "_thinking", "_cache_creation",
        "_price_context", "_server_tool_use", "_iterations", "_blocks", "_pieces", "_current",
    )  # fmt: skip

    def __init__(self, hide_usage_chunk: bool) -> None:
        self.first_output_ns = 0
        self._model: str | None = None
        self._id: str | None = None
        self._reason: str | None = None
        self._usage: dict[str, int] | None = None
        self._output_counted = False  # a message_delta gave the output count (message_start's is a placeholder)
        self._thinking: int | None = None  # the output's thinking tokens, where the provider says
        self._cache_creation: Any = None
        self._price_context: PriceContext = ()
        self._server_tool_use: Any = None  # the count of web searches the API ran, cumulative
        self._iterations: Any = None  # per-iteration usage (beta), compaction passes included
        self._blocks: dict[int, Any] = {}  # index -> the block as announced
        self._pieces: dict[int, list[str]] = {}  # index -> its text, thinking or tool input, streamed
        self._current: list[str] = []  # the block streaming now
        self._pieces[0] = self._current

    def _merge_usage(self, usage: Any) -> None:
        if usage is None:
            return
        merged = self._usage if self._usage is not None else {}
        for name in _USAGE_FIELDS:
            value = get(usage, name)
            if isinstance(value, int):  # later events overwrite: counts are cumulative
                merged[name] = value
        thinking = get(get(usage, "output_tokens_details"), "thinking_tokens")
        if isinstance(thinking, int):
            self._thinking = thinking
        cache_creation = get(usage, "cache_creation")
        if cache_creation is not None:
            self._cache_creation = cache_creation
        self._price_context = _price_context(usage) or self._price_context
        server_tool_use = get(usage, "server_tool_use")
        if server_tool_use is not None:
            self._server_tool_use = server_tool_use
        iterations = field(usage, "iterations")
        if iterations is not None:
            self._iterations = iterations
        self._usage = merged

    def add(self, event: Any) -> bool:
        kind = get(event, "type")
        if kind == "content_block_delta":  # output (text, thinking, tool input): message_start comes before any
            if not self.first_output_ns:
                self.first_output_ns = time.time_ns()
            delta = get(event, "delta")
            # By the delta's type: reading a field a model lacks costs microseconds (pydantic's __getattr__).
            field = _DELTA_FIELDS.get(get(delta, "type"))
            piece = get(delta, field) if field is not None else None
            if isinstance(piece, str):
                self._current.append(piece)
        elif kind == "content_block_start":
            # Blocks stream one after the other (start, deltas, stop): the deltas that follow are this block's.
            index = get(event, "index")
            self._blocks[index] = get(event, "content_block")
            self._current = self._pieces[index] = []
        elif kind == "message_start":
            message = get(event, "message")
            self._model = string(get(message, "model"))
            self._id = string(get(message, "id"))
            self._merge_usage(get(message, "usage"))
        elif kind == "message_delta":
            reason = get(get(event, "delta"), "stop_reason")
            if isinstance(reason, str):
                self._reason = reason
            usage = get(event, "usage")
            self._merge_usage(usage)
            self._output_counted = self._output_counted or isinstance(get(usage, "output_tokens"), int)
        return True

    def _block_part(self, index: Any) -> C.Part:
        """The block as a whole answer would hold it: as announced, the field its deltas stream filled in."""
        block = self._blocks.get(index)
        whole = C.generic(block) if block is not None else {"type": "text", "text": ""}  # deltas with no start
        pieces = self._pieces.get(index)
        if pieces:
            kind = whole["type"]
            whole["input" if kind.endswith("tool_use") else _STREAMED_FIELDS.get(kind, "content")] = "".join(pieces)
        return anthropic_content.block_part(whole)

    def _messages(self) -> list[Message]:
        indexes = sorted(self._blocks.keys() | {i for i, pieces in self._pieces.items() if pieces}, key=as_int)
        return [C.output([self._block_part(i) for i in indexes], self._reason)]

    def result(self) -> Result:
        usage = None
        text = "".join("".join(pieces) for pieces in self._pieces.values())
        if self._usage is not None:
            usage = _usage(
                {
                    **self._usage,
                    "output_tokens_details": {"thinking_tokens": self._thinking},
                    "cache_creation": self._cache_creation,
                    "server_tool_use": self._server_tool_use,
                    "iterations": self._iterations,
                },
                self._blocks.values(),
            )
            if usage is not None and not self._output_counted:
                # The stream ended (failed, or the app stopped reading) before the final count: the input is
                # the provider's, the output is estimated from what streamed in, and each search whose results
                # had arrived ran (and is billed).
                searched = sum(get(block, "type") == "web_search_tool_result" for block in self._blocks.values())
                usage = dataclasses.replace(
                    usage, visible_output=tokenizer.count_text(_TOKENIZER_MODEL, text), reasoning=0,
                    source=A.SOURCE_ESTIMATED, reasoning_known=not _thought(self._blocks.values()),
                    web_searches=max(usage.web_searches, searched),
                )
        return Result(
            response_model=self._model,
            response_id=self._id,
            finish_reasons=(self._reason,) if self._reason else (),
            usage=usage,
            output_text=text,
            messages_of=self._messages,
            price_context=self._price_context,
        )


def _estimate_input(model: str, kwargs: Mapping[str, Any]) -> int:
    messages = list(kwargs.get("messages") or ())
    system = kwargs.get("system")
    if isinstance(system, (str, list)):  # text, or text blocks (with cache_control, say)
        messages.insert(0, {"role": "system", "content": system})
    return tokenizer.count_prompt(_TOKENIZER_MODEL, messages)


def _content(kwargs: Mapping[str, Any]) -> Any:
    return kwargs.get("system"), kwargs.get("messages")


def _raw_event(name: str | None, data: str, parsed: Any) -> Any:
    """A raw stream's event as anthropic's Stream takes it, by the event's name: unnamed events and pings are passed
    over; ``error`` makes it raise (an APIStatusError: the stream began with a 200; its body: the data, as JSON where
    it is); other events' data must be JSON."""
    if name is None or name == "ping":
        return None
    if name == "error":
        body = data if isinstance(parsed, ValueError) else parsed
        raise StreamEnds((api_error_type("APIStatusError", body), f"{body}" if body else "Error code: 200"))
    if not data:
        return None
    return json_of(parsed)


MESSAGES = Endpoint(
    operation=A.OP_CHAT,
    request_attributes=_request_attributes,
    parse=_parse,
    accumulator=_Accumulator,
    estimate_input=_estimate_input,
    input_content=_content,
    content_attributes=anthropic_content.request_content,
    client_info=client_info,
    raw_event=_raw_event,
)

_MODULE = "anthropic.resources.messages.messages"
_BETA_MODULE = "anthropic.resources.beta.messages.messages"

# messages.stream() does not go through create(): it gets its own patch, which opens the span when
# the manager sends the request; the MessageStream constructor then receives the raw stream, which
# is where llmtrace watches events (text_stream, get_final_message, until_done all iterate it).
TARGETS = (
    Target(_MODULE, "Messages.create", MESSAGES, CALL),
    Target(_MODULE, "AsyncMessages.create", MESSAGES, ASYNC_CALL),
    Target(_MODULE, "Messages.parse", MESSAGES, CALL),
    Target(_MODULE, "AsyncMessages.parse", MESSAGES, ASYNC_CALL),
    Target(_MODULE, "Messages.stream", MESSAGES, STREAM_MANAGER),
    Target(_MODULE, "AsyncMessages.stream", MESSAGES, ASYNC_STREAM_MANAGER),
    Target(_BETA_MODULE, "Messages.create", MESSAGES, CALL),
    Target(_BETA_MODULE, "AsyncMessages.create", MESSAGES, ASYNC_CALL),
    Target(_BETA_MODULE, "Messages.parse", MESSAGES, CALL),
    Target(_BETA_MODULE, "AsyncMessages.parse", MESSAGES, ASYNC_CALL),
    Target(_BETA_MODULE, "Messages.stream", MESSAGES, STREAM_MANAGER),
    Target(_BETA_MODULE, "AsyncMessages.stream", MESSAGES, ASYNC_STREAM_MANAGER),
    Target("anthropic.lib.streaming._messages", "MessageStream.__init__", None, STREAM_OPENER),
    Target("anthropic.lib.streaming._messages", "AsyncMessageStream.__init__", None, STREAM_OPENER),
    Target("anthropic.lib.streaming._beta_messages", "BetaMessageStream.__init__", None, STREAM_OPENER),
    Target("anthropic.lib.streaming._beta_messages", "BetaAsyncMessageStream.__init__", None, STREAM_OPENER),
    Target("anthropic._base_client", "SyncAPIClient._sleep_for_retry", None, RETRY_HOOK),
    Target("anthropic._base_client", "AsyncAPIClient._sleep_for_retry", None, RETRY_HOOK),
    # anthropic >= 2 traces itself by default: one call must not become two spans. The client's tracer property,
    # not the factory it calls once: a client that made a call before instrument() has its tracer cached.
    Target("anthropic._base_client", "BaseClient._tracer", None, SDK_TRACER),
)
