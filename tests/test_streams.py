"""Stream semantics every provider shares: when the first output arrived, and how a stream left early ends."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import anthropic
import openai
import pytest

from conftest import anthropic_client, http_module, openai_client
from fake_api import FakeAPI, sse

MESSAGES = [{"role": "user", "content": "hello"}]
_WAIT_NS = 5_000_000_000  # the model thinks this long after the stream opened, before its first output


def _opens_then_thinks(sdk: Any, first_output: bytes, clock: list[int], prelude: bytes = b"") -> Callable[[Any], Any]:
    """FakeAPI's stream (after ``prelude``, an event of its own), event by event, the clock moving on by
    _WAIT_NS before the first output event."""
    http = http_module(sdk)
    api = FakeAPI(http)

    def handler(request: Any) -> Any:
        events = ([prelude] if prelude else []) + api(request).read().split(b"\n\n")

        def body() -> Iterator[bytes]:
            thought = False
            for event in events:
                if first_output in event and not thought:
                    clock[0] += _WAIT_NS
                    thought = True
                yield event + b"\n\n"

        return http.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    return handler


# Azure OpenAI's first chunk: the prompt's content-filter results, no choices, no model yet.
_AZURE_FILTER_CHUNK = (
    b'data: {"id":"","object":"","created":0,"model":"","choices":[],'
    b'"prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}'
)


def _chat(clock: list[int]) -> None:
    client = openai_client(_opens_then_thinks(openai, b'"delta"', clock, prelude=_AZURE_FILTER_CHUNK))
    list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))


def _responses(clock: list[int]) -> None:
    # response.created, output_item.added and content_part.added come first: the model has produced nothing yet.
    client = openai_client(_opens_then_thinks(openai, b"response.output_text.delta", clock))
    list(client.responses.create(model="gpt-4.1-nano", input="hi", stream=True))


def _messages(clock: list[int]) -> None:
    # message_start and content_block_start come first.
    client = anthropic_client(_opens_then_thinks(anthropic, b"content_block_delta", clock))
    with client.messages.stream(model="claude-3-5-haiku-20241022", max_tokens=64, messages=MESSAGES) as stream:
        stream.until_done()


@pytest.mark.parametrize("api", [_chat, _responses, _messages], ids=["chat", "responses", "anthropic"])
def test_time_to_first_chunk_is_the_first_output_not_the_streams_opening(
    captured: Any, monkeypatch: pytest.MonkeyPatch, api: Callable[[list[int]], None]
) -> None:
    clock = [time.time_ns()]
    monkeypatch.setattr(time, "time_ns", lambda: clock[0])  # frozen but for the model's thinking
    api(clock)
    (span,) = captured.spans()
    assert span.attributes["gen_ai.response.time_to_first_chunk"] == _WAIT_NS / 1e9


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_an_async_stream_left_early_in_asyncio_run_is_not_an_error(captured: Any, sdk: str) -> None:
    """asyncio.run() ends by cancelling the unfinished close of the generator the app broke out of; the
    CancelledError thrown into it then is the event loop's, not the call's."""

    async def first_chunk_only() -> Any:
        if sdk == "openai":
            client = openai_client(FakeAPI(http_module(openai), is_async=True), is_async=True)
            stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        else:
            client = anthropic_client(FakeAPI(http_module(anthropic), is_async=True), is_async=True)
            stream = await client.messages.create(model="claude-3-5-haiku-20241022", max_tokens=64, messages=MESSAGES,
                                                  stream=True)  # fmt: skip
        async for chunk in stream:
            return chunk  # e.g. a classifier that needs only the first token

    assert asyncio.run(first_chunk_only()) is not None
    (span,) = captured.spans()
    assert span.status.status_code.name == "UNSET" and "error.type" not in span.attributes


class _AppBug(Exception):
    pass


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_the_apps_own_error_in_a_stream_block_is_not_the_calls(captured: Any, sdk: str) -> None:
    """The app's code failing while it reads a stream (a client that went away, a bug in its per-chunk code) leaves
    the call a success: the SDK's own errors reach the span where the stream raised them, never at the block's exit."""

    def open_stream(is_async: bool) -> Any:
        if sdk == "openai":
            client = openai_client(FakeAPI(http_module(openai), is_async=is_async), is_async=is_async)
            return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        client = anthropic_client(FakeAPI(http_module(anthropic), is_async=is_async), is_async=is_async)
        return client.messages.create(model="claude-3-5-haiku-20241022", max_tokens=64, messages=MESSAGES, stream=True)

    async def read_async() -> None:
        async with await open_stream(True) as stream:
            async for _ in stream:
                raise _AppBug

    with pytest.raises(_AppBug):
        asyncio.run(read_async())
    with pytest.raises(_AppBug):
        with open_stream(False) as stream:
            next(stream)
            raise _AppBug
    assert len(captured.spans()) == 2
    for span in captured.spans():
        assert span.status.status_code.name == "UNSET" and "error.type" not in span.attributes


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_an_error_the_api_sends_mid_stream_is_named_by_its_type(captured: Any, sdk: str) -> None:
    """An overload after the 200 is how streams most often fail: the SDKs raise their catch-all error class, and the
    span says what the API said instead (as for a status the SDK has a class for)."""
    if sdk == "openai":
        events: list[tuple[str | None, Any]] = [
            (None, {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}),
            (None, {"error": {"message": "The server is overloaded", "type": "server_error", "code": None}}),
        ]  # fmt: skip
        client: Any = openai_client(lambda request: http_module(openai).Response(
            200, headers={"content-type": "text/event-stream"}, content=sse(events)), max_retries=0)  # fmt: skip
        with pytest.raises(openai.APIError):
            list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
        expected = "server_error"
    else:
        events = [
            ("message_start", {"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 30, "output_tokens": 1}}}),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
            ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ]  # fmt: skip
        client = anthropic_client(lambda request: http_module(anthropic).Response(
            200, headers={"content-type": "text/event-stream"}, content=sse(events)), max_retries=0)  # fmt: skip
        with pytest.raises(anthropic.APIStatusError):
            with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=MESSAGES) as stream:
                stream.get_final_text()
        expected = "overloaded_error"
    (span,) = captured.spans()
    assert span.status.status_code.name == "ERROR" and span.attributes["error.type"] == expected


def _open(sdk: str, is_async: bool) -> Any:
    if sdk == "openai":
        client = openai_client(FakeAPI(http_module(openai), is_async=is_async), is_async=is_async)
        return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    client = anthropic_client(FakeAPI(http_module(anthropic), is_async=is_async), is_async=is_async)
    return client.messages.create(model="claude-3-5-haiku-20241022", max_tokens=64, messages=MESSAGES, stream=True)


def _exact_usage(span: Any) -> None:
    a = span.attributes
    assert a["llmtrace.usage.source"] == "provider" and a["gen_ai.usage.output_tokens"] > 0, dict(a)
    assert a["gen_ai.response.finish_reasons"]


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
@pytest.mark.parametrize("how", ["peek", "break and resume"])
def test_a_stream_read_in_two_loops_is_one_call_with_its_exact_usage(captured: Any, sdk: str, how: str) -> None:
    """A peek at the first chunk (``next(iter(stream))``, to see an error before handing the stream on) or a loop left
    and another begun on the same stream: the stream goes on, and so does its span, to the usage that comes last."""
    whole = list(_open(sdk, False))
    stream = _open(sdk, False)
    if how == "peek":
        seen = [next(iter(stream))]
    else:
        seen = []
        for chunk in stream:
            seen.append(chunk)
            break
    assert len(captured.spans()) == 1  # the first stream's; the second goes on
    seen += list(stream)
    assert [type(c) for c in seen] == [type(c) for c in whole]  # the app sees every chunk, and only those, as before
    first, second = captured.spans()
    _exact_usage(second)
    assert dict(second.attributes)["gen_ai.usage.output_tokens"] == dict(first.attributes)["gen_ai.usage.output_tokens"]


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_an_async_stream_read_in_two_loops_is_one_call_with_its_exact_usage(captured: Any, sdk: str) -> None:
    async def read() -> int:
        stream = await _open(sdk, True)
        async for _ in stream:
            break
        return 1 + len([chunk async for chunk in stream])

    assert asyncio.run(read()) > 2
    (span,) = captured.spans()
    _exact_usage(span)


def test_a_stream_left_early_ends_when_it_is_dropped(captured: Any) -> None:
    """At the time it is dropped, not backdated to the loop's end: a block budget's refresh counts a call in the
    store once it has ended by the refresh's snapshot, and this process's own count takes it from when it ended."""
    stream = _open("openai", False)
    for _ in stream:
        break
    assert not captured.spans()  # the app may read on
    dropped = time.time_ns()
    del stream
    (span,) = captured.spans()
    assert span.end_time >= dropped and span.attributes["llmtrace.usage.source"] == "estimated"


def test_a_stream_still_held_at_exit_ends_there_while_another_thread_collects(captured: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """At exit the streams the app still holds end on the exiting thread, before the store and the exporters stop,
    even while another thread runs a garbage collection (handed to the ender thread, they ended after the stop)."""
    import threading

    from llmtrace import stream as streams

    held = _open("openai", False)
    next(iter(held))
    other_thread = threading.get_ident() + 1
    monkeypatch.setattr(streams, "_collecting_on", other_thread)  # a collection under way on another thread
    streams.end_open_streams()
    (span,) = captured.spans()  # ended here and now, not queued
    assert span.attributes["llmtrace.usage.source"] == "estimated"
    streams.end_open_streams()
    del held
    assert len(captured.spans()) == 1  # once


def test_a_stream_collected_while_its_thread_holds_a_lock_ending_a_span_needs_ends_all_the_same(tmp_path: Path) -> None:
    """The garbage collector runs inside whatever allocation comes: here inside the tenant limiter's lock, on the
    thread of a call that is ending. A stream dropped in a reference cycle, ended there, waited for that lock
    forever (and the app's call with it)."""
    script = f"""
import faulthandler, gc, heapq, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
faulthandler.dump_traceback_later(60, exit=True)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import llmtrace, openai
from conftest import openai_client, http_module
from fake_api import FakeAPI
exporter = InMemorySpanExporter(); provider = TracerProvider(); provider.add_span_processor(SimpleSpanProcessor(exporter))
meters = MeterProvider(metric_readers=[InMemoryMetricReader()])
llmtrace.instrument(tracer_provider=provider, meter_provider=meters, store=False)
client = openai_client(FakeAPI(http_module(openai)))
messages = [{{"role": "user", "content": "hi"}}]
gc.disable()  # the cycle below is collected where this script says, not before
with llmtrace.tags(tenant="acme"):
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
cycle = [stream, None]; cycle[1] = cycle
del stream, cycle
nlargest = heapq.nlargest
def collecting_first(*args, **kwargs):  # the limiter's top-K, under its lock: a collection as an allocation there may run
    gc.collect()
    return nlargest(*args, **kwargs)
heapq.nlargest = collecting_first
with llmtrace.tags(tenant="globex"):  # a new tenant: the top-K is worked out again
    client.chat.completions.create(model="gpt-4o-mini", messages=messages)
assert llmtrace.flush()
print(sorted(span.attributes["llmtrace.tenant"] for span in exporter.get_finished_spans()))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['acme', 'globex']"
    assert "llmtrace" not in out.stderr


def _read(pieces: list[Any], lines: bool = False, provider: str = "openai") -> tuple[list[Any], list[Any]]:
    """The events an SSE body's pieces give a provider's accumulator, and the failures they end the call with."""
    from llmtrace.providers import anthropic as anthropic_provider
    from llmtrace.providers import openai as openai_provider
    from llmtrace.sse import EventReader

    rule = {"openai": openai_provider.CHAT.raw_event, "anthropic": anthropic_provider.MESSAGES.raw_event}[provider]
    assert rule is not None
    seen: list[Any] = []
    failures: list[Any] = []
    reader = EventReader(rule, seen.append, failures.append, lines)
    for piece in pieces:
        reader.read(piece)
    reader.end()
    return seen, failures


def _events(pieces: list[Any], lines: bool = False) -> list[Any]:
    seen, failures = _read(pieces, lines)
    assert not failures
    return seen


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_raw_sse_events_are_read_whatever_the_line_endings_and_wherever_the_body_is_cut(ending: str) -> None:
    body = (
        ": a comment\n"
        "event: message_start\ndata: {\"type\": \"a\", \"text\": \"caf\u00e9 \u2028 \u65e5\u672c\"}\n\n"
        "data: {\"type\":\n"  # one event's data over two lines
        "data: \"b\"}\nid: 7\nretry: 10\n\n"
        "data: [1, 2]\n\n"  # JSON, not an object
        "data:{\"type\": \"c\"}\n\n"  # no space after the colon
        "data: {\"type\": \"unfinished\"}\n"  # the body ends before the blank line that would dispatch it
    ).replace("\n", ending).encode()
    expected = [{"type": "a", "text": "caf\u00e9 \u2028 \u65e5\u672c"}, {"type": "b"}, {"type": "c"}]
    for size in (1, 2, 3, 7, len(body)):  # cut inside CRLFs and inside UTF-8 characters
        assert _events([body[i : i + size] for i in range(0, len(body), size)]) == expected, size
    assert _events([body.decode()]) == expected  # iter_text(): str pieces
    if ending != "\r":  # iter_lines() cuts at each line ending, and hands each line on without it
        assert _events(body.decode().split(ending)[:-1], lines=True) == expected  # none after the last ending


@pytest.mark.parametrize("size", [1, 2, 1000])
@pytest.mark.parametrize("tail", ["", "id: 9", "\n"])
def test_a_raw_body_ending_in_a_lone_cr_ends_its_last_event_there(size: int, tail: str) -> None:
    """A CR may be the first half of a CRLF, so it waits for the next piece; the body's end decides it, or a last piece
    that has no line ending of its own (a field the body ends in, never finished)."""
    body = b'data: {"type": "a"}\r\rdata: {"type": "last"}\r\r' + tail.encode()
    assert _events([body[i : i + size] for i in range(0, len(body), size)]) == [{"type": "a"}, {"type": "last"}]
    assert _events([body[:-len(tail) or None], tail.encode()]) == [{"type": "a"}, {"type": "last"}]
    # Pieces with no text in them between (empty, or the first byte of a character) leave the CR held.
    pieces = [body[:-len(tail) or None], b"", b"\xc3", b"\xa9", tail.encode()]
    assert _events(pieces) == [{"type": "a"}, {"type": "last"}]


def test_a_raw_stream_is_read_up_to_where_the_sdks_stream_stops() -> None:
    after = 'data: {"type": "after"}\n\n'
    assert _read([f'data: {{"type": "a"}}\n\ndata: [DONE]\n\n{after}']) == ([{"type": "a"}], [])
    seen, failures = _read([f"data: not json\n\n{after}"])  # the SDK's stream raises where data is not JSON
    assert seen == [] and [kind for kind, _ in failures] == ["JSONDecodeError"]
    error = '{"error": {"message": "overloaded", "type": "server_error"}, "choices": [{"index": 0, "finish_reason": "error"}]}'
    assert _read([f"data: {error}\n\n{after}"]) == ([], [("server_error", "overloaded")])
    nested = '{"type": "error", "error": {"type": "insufficient_quota", "code": "insufficient_quota", "message": "quota"}}'
    assert _read([f"event: error\ndata: {nested}\n\n"]) == ([], [("insufficient_quota", "quota")])  # the Responses API's
    # anthropic's stream goes by the events' names: unnamed events and pings are passed over, an error raises
    seen, failures = _read([f"event: ping\ndata: {{}}\n\n{after}event: error\ndata: oops\n\n{after}"], provider="anthropic")
    assert seen == [] and failures == [("APIStatusError", "oops")]


@pytest.mark.parametrize("text", ["a\u2028b", "a\u2028\u2029b", "\u2028\u2028", "x\u2028:)", "x\u2028id: 1", "x\u2028data: y",
                                  "x\u2028event: y\u2028", "x\u0085\u2028\u2028\u2028"])
def test_raw_sse_lines_cut_where_splitlines_cuts_are_read_whole(text: str) -> None:
    """iter_lines() cuts at U+2028, U+2029 and U+0085 too, inside the JSON strings of a data line; the rest of the line
    may look like anything, an empty line or another field included. The event is read whole (each cut as U+2028)."""
    events = [{"type": "message_start"}, {"type": "text", "text": text}, {"type": "message_stop"}]
    body = "".join(f"event: {e['type']}\ndata: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events)
    lines = body.splitlines()  # as iter_lines() cuts
    assert len(lines) > 3 * len(events)
    cut_as = {**events[1], "text": re.sub("[\u2028\u2029\u0085]", "\u2028", text)}
    for provider in ("openai", "anthropic"):
        assert _read(lines, lines=True, provider=provider) == ([events[0], cut_as, events[2]], [])


def test_raw_sse_lines_held_for_a_cut_that_never_ends_fail_as_data_that_is_not_json() -> None:
    seen, failures = _read(['data: {"type": "a', "", 'data: {"type": "b"}', ""], lines=True)
    assert seen == [] and [kind for kind, _ in failures] == ["JSONDecodeError"]


def test_raw_sse_events_read_as_the_sdks_models_are() -> None:
    (event,) = _events([b'data: {"choices": [{"delta": {"content": "hi"}, "index": 0}], "usage": null}\n\n'])
    assert event.choices[0].delta.content == "hi" and event.usage is None
    assert getattr(event, "model", None) is None  # a field the event lacks: as a model's unset field
    with pytest.raises(AttributeError):
        event.model
