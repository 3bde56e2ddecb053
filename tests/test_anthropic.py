"""Anthropic scenarios: create (stream or not), messages.stream helpers, beta, retries, faults."""

from __future__ import annotations

import gc
from typing import Any

import anthropic
import pytest

import llmtrace

from conftest import anthropic_client, http_module
from fake_api import SSE_HEADERS, FakeAPI, MidStreamError, sse

HTTP = http_module(anthropic)
MODEL = "claude-3-5-haiku-20241022"
KW: dict[str, Any] = {"model": MODEL, "max_tokens": 256, "messages": [{"role": "user", "content": "Say hello"}]}
# haiku 3.5: $0.80 in, $0.08 cache read, $1.00 cache write (5 min), $1.60 cache write (1 h), $4.00 out
# per million tokens (genai-prices data); 150 of the 200 written tokens have the 5-minute TTL, 50 the 1-hour one.
EXPECTED_COST = (30 * 0.8 + 1000 * 0.08 + 150 * 1.0 + 50 * 1.6 + 25 * 4.0) / 1e6


def _api(**kw: Any) -> FakeAPI:
    return FakeAPI(HTTP, **kw)


def _check_usage(a: Any) -> None:
    assert a["gen_ai.usage.input_tokens"] == 1230  # 30 uncached + 1000 cache read + 200 cache write
    assert a["llmtrace.usage.uncached_input_tokens"] == 30
    assert a["gen_ai.usage.cache_read.input_tokens"] == 1000
    assert a["gen_ai.usage.cache_creation.input_tokens"] == 200
    assert a["gen_ai.usage.output_tokens"] == 25
    assert a["llmtrace.cost.usd"] == pytest.approx(EXPECTED_COST, rel=1e-9)
    assert a["gen_ai.provider.name"] == "anthropic"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("is_async", [False, True])
async def test_messages_create(captured: Any, is_async: bool, stream: bool) -> None:
    client = anthropic_client(_api(is_async=is_async), is_async=is_async)
    if is_async:
        result = await client.messages.create(**KW, stream=stream)
        if stream:
            async for _ in result:
                pass
    else:
        result = client.messages.create(**KW, stream=stream)
        if stream:
            for _ in result:
                pass
    (span,) = captured.spans()
    assert span.name == f"chat {MODEL}"
    _check_usage(span.attributes)
    assert span.attributes["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert ("gen_ai.response.time_to_first_chunk" in span.attributes) is stream


@pytest.mark.parametrize("stream", [False, True])
def test_a_fast_mode_call_is_priced_at_fast_mode_rates(captured: Any, stream: bool) -> None:
    import genai_prices

    model = "claude-opus-4-8"
    result = anthropic_client(_api()).messages.create(**{**KW, "model": model}, stream=stream, extra_body={"speed": "fast"})
    if stream:
        list(result)
    a = captured.spans()[0].attributes
    usage = genai_prices.Usage(input_tokens=1230, cache_read_tokens=1000, cache_write_tokens=200, cache_write_1h_tokens=50,
                               output_tokens=25)  # fmt: skip
    fast = genai_prices.calc_price(usage, model, provider_id="anthropic", price_context={"speed": "fast"})
    assert fast.total_price > genai_prices.calc_price(usage, model, provider_id="anthropic").total_price
    assert a["llmtrace.cost.usd"] == pytest.approx(float(fast.total_price), rel=1e-9)
    assert a["llmtrace.cost.price_context"] == "speed=fast"  # what the cost depended on, on the span


@pytest.mark.parametrize("stream", [False, True])
def test_the_web_searches_the_api_ran_are_counted_and_priced(captured: Any, stream: bool) -> None:
    import genai_prices

    model = "claude-sonnet-4-5"
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    result = anthropic_client(_api()).messages.create(**{**KW, "model": model}, stream=stream, tools=[search])
    if stream:
        list(result)
    a = captured.spans()[0].attributes
    assert a["llmtrace.usage.web_searches"] == 2
    tokens = {"input_tokens": 1230, "cache_read_tokens": 1000, "cache_write_tokens": 200, "cache_write_1h_tokens": 50,
              "output_tokens": 25}  # fmt: skip
    with_searches = genai_prices.calc_price(genai_prices.Usage(**tokens, web_searches=2), model, provider_id="anthropic")
    assert with_searches.total_price > genai_prices.calc_price(genai_prices.Usage(**tokens), model, provider_id="anthropic").total_price
    assert a["llmtrace.cost.usd"] == pytest.approx(float(with_searches.total_price), rel=1e-9)



def test_a_stream_cut_after_a_search_ran_keeps_that_search(captured: Any) -> None:
    """The searches are counted in the final usage; a stream cut before it still had its results (and is billed)."""
    start = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
             "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": 30, "output_tokens": 1, "server_tool_use": {"web_search_requests": 0}}}
    use = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
    results = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}
    events: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": use}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "input_json_delta", "partial_json": '{"query": "paris weather"}'}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": results}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "It is"}}),
    ]  # fmt: skip  (the connection ends here: no message_delta)
    client = anthropic_client(lambda request: HTTP.Response(200, headers={"content-type": "text/event-stream"}, content=sse(events)))
    list(client.messages.create(**{**KW, "model": "claude-sonnet-4-5"}, stream=True))
    (span,) = captured.spans()
    a = span.attributes
    assert a["llmtrace.usage.source"] == "estimated" and a["llmtrace.usage.web_searches"] == 1
    assert a["llmtrace.cost.usd"] > 0.01  # $10 per 1,000 searches, beside the tokens


@pytest.mark.parametrize("is_async", [False, True])
async def test_a_raw_stream_whose_provider_sends_an_error_event_fails_as_the_sdks_stream_does(
    captured: Any, is_async: bool
) -> None:
    """The SDK's own stream raises at the error event (an overload, midway); an app passing the stream on raw sees no
    exception, but the call failed all the same."""
    start = {"id": "msg_e", "type": "message", "role": "assistant", "model": MODEL, "content": [], "stop_reason": None,
             "usage": {"input_tokens": 30, "output_tokens": 1}}  # fmt: skip
    body = sse([
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "It is"}}),
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ])  # fmt: skip

    def handler(request: Any) -> Any:
        return HTTP.Response(200, headers=SSE_HEADERS, content=body)

    create = anthropic_client(handler, is_async=is_async).messages.with_streaming_response.create
    if is_async:
        async with create(**KW, stream=True) as response:
            pieces = [piece async for piece in response.iter_bytes()]
    else:
        with create(**KW, stream=True) as response:
            pieces = list(response.iter_bytes())
    assert b"overloaded_error" in b"".join(pieces)
    (raw,) = captured.spans()
    with pytest.raises(anthropic.APIStatusError):
        list(anthropic_client(handler).messages.create(**KW, stream=True))
    parsed = captured.spans()[1]
    assert raw.attributes["error.type"] == parsed.attributes["error.type"] == "overloaded_error"
    assert raw.status.status_code.name == parsed.status.status_code.name == "ERROR"
    assert raw.attributes["gen_ai.usage.output_tokens"] == parsed.attributes["gen_ai.usage.output_tokens"] > 0


def test_sdk_own_tracing_is_off_so_one_call_is_one_span(captured: Any) -> None:
    from opentelemetry import trace

    # Even with a global provider the SDK could use, the call yields exactly llmtrace's span.
    trace.get_tracer_provider()
    anthropic_client(_api()).messages.create(**KW)
    assert [s.instrumentation_scope.name for s in captured.spans()] == ["llmtrace"]


def test_a_client_that_traced_itself_before_instrument_is_one_span_after() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        client = anthropic_client(_api(), open_telemetry={"tracer_provider": provider})
    except TypeError:
        pytest.skip("this anthropic has no tracing of its own")
    client.messages.create(**KW)  # before instrument(): the SDK's own span, and its tracer now cached on the client
    assert [s.instrumentation_scope.name for s in exporter.get_finished_spans()] != ["llmtrace"]
    exporter.clear()
    llmtrace.instrument(tracer_provider=provider, store=False)
    try:
        client.messages.create(**KW)
    finally:
        llmtrace.uninstrument()
    assert [s.instrumentation_scope.name for s in exporter.get_finished_spans()] == ["llmtrace"]
    exporter.clear()
    llmtrace.instrument(tracer_provider=provider, store=False, disable_sdk_tracing=False)  # the app wants both
    try:
        client.messages.create(**KW)
    finally:
        llmtrace.uninstrument()
    assert len(exporter.get_finished_spans()) == 2


def test_the_sdks_own_spans_stay_for_what_llmtrace_does_not_trace_and_parent_its_calls() -> None:
    """Within a call llmtrace traces, the SDK has no tracer; elsewhere it keeps its own: count_tokens, and the tool
    runner's invoke_agent and execute_tool spans, under which the runner's calls are llmtrace's spans."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    tool_runner = getattr(anthropic, "beta_tool", None)
    api = _api()
    asked_for_weather = {"id": "msg_tool", "type": "message", "role": "assistant", "model": MODEL, "stop_reason": "tool_use",
                         "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 5},
                         "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}]}  # fmt: skip

    def handler(request: Any) -> Any:
        if request.url.path.endswith("/count_tokens"):
            return HTTP.Response(200, json={"input_tokens": 12})
        if b'"tools"' in request.content and b"tool_result" not in request.content:
            return HTTP.Response(200, json=asked_for_weather)
        return api(request)

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        client = anthropic_client(handler, open_telemetry={"tracer_provider": provider})
    except TypeError:
        pytest.skip("this anthropic has no tracing of its own")
    llmtrace.instrument(tracer_provider=provider, store=False)
    try:
        client.messages.create(**KW)
        for _ in client.messages.create(**KW, stream=True):
            pass
        with client.messages.stream(**KW) as stream:
            stream.until_done()
        client.beta.messages.create(**KW)
        client.messages.with_raw_response.create(**KW).parse()
        assert client.messages.count_tokens(model=MODEL, messages=KW["messages"]).input_tokens == 12
        if tool_runner is not None:

            @tool_runner
            def weather(city: str) -> str:
                """The weather in a city.

                Args:
                    city: the city
                """
                return "sunny"

            for _ in client.beta.messages.tool_runner(**KW, tools=[weather]):
                pass
    finally:
        llmtrace.uninstrument()
    spans = exporter.get_finished_spans()
    ours = [span for span in spans if span.instrumentation_scope.name == "llmtrace"]
    theirs = {span.name: span for span in spans if span.instrumentation_scope.name != "llmtrace"}
    assert len(ours) == 5 + (2 if tool_runner is not None else 0)  # one span a call: none of the SDK's beside it
    assert list(theirs)[0] == "anthropic.messages.count_tokens"
    if tool_runner is not None:
        agent = theirs["anthropic.messages.tool_runner"]
        assert set(theirs) == {"anthropic.messages.count_tokens", "anthropic.custom_tool_use weather", agent.name}
        assert [span.parent.span_id for span in ours[-2:]] == [agent.context.span_id] * 2  # type: ignore[union-attr]


def test_stream_manager_helpers(captured: Any) -> None:
    client = anthropic_client(_api())
    with client.messages.stream(**KW) as stream:
        text = "".join(stream.text_stream)
    assert text.startswith("w0")
    with client.messages.stream(**KW) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == 25
    with client.messages.stream(**KW) as stream:
        stream.until_done()
    spans = captured.spans()
    assert len(spans) == 3
    for span in spans:
        _check_usage(span.attributes)
        assert span.attributes["gen_ai.request.stream"] is True
        assert span.attributes["gen_ai.response.time_to_first_chunk"] > 0


async def test_async_stream_manager(captured: Any) -> None:
    client = anthropic_client(_api(is_async=True), is_async=True)
    async with client.messages.stream(**KW) as stream:
        chunks = [t async for t in stream.text_stream]
    assert chunks
    (span,) = captured.spans()
    _check_usage(span.attributes)


def test_stream_manager_early_exit_ends_span(captured: Any) -> None:
    client = anthropic_client(_api(chunks=30))
    with client.messages.stream(**KW) as stream:
        for _ in stream.text_stream:
            break
    (span,) = captured.spans()
    assert span.attributes["gen_ai.usage.cache_read.input_tokens"] == 1000  # message_start was seen


def test_beta_messages(captured: Any) -> None:
    client = anthropic_client(_api())
    client.beta.messages.create(**KW)
    with client.beta.messages.stream(**KW) as stream:
        stream.get_final_message()
    spans = captured.spans()
    assert len(spans) == 2
    for span in spans:
        _check_usage(span.attributes)


def test_stream_exception_and_drop(captured: Any) -> None:
    client = anthropic_client(_api(fail_mid_stream=True, chunks=30), max_retries=0)
    # anthropic >= 2.17 raises a failed body read as its APIConnectionError (the transport's error its cause);
    # earlier releases let the transport's error through. The app gets what its SDK raises, and the span names it.
    with pytest.raises((MidStreamError, anthropic.APIConnectionError)) as raised:
        for _ in client.messages.create(**KW, stream=True):
            pass
    error = raised.value
    assert isinstance(error, MidStreamError) or isinstance(error.__cause__, MidStreamError)
    dropped = anthropic_client(_api()).messages.create(**KW, stream=True)
    del dropped
    gc.collect()
    failed, dropped_span = captured.spans()
    assert failed.attributes["error.type"] == type(error).__qualname__
    # No message_delta came: message_start's output count (1) is a placeholder, so the output is estimated
    # from the text that streamed in; the input is still the provider's.
    assert failed.attributes["llmtrace.usage.source"] == "estimated"
    assert failed.attributes["gen_ai.usage.output_tokens"] > 10 and failed.attributes["gen_ai.usage.input_tokens"] == 1230
    assert "error.type" not in dropped_span.attributes


def test_rate_limit_retries(captured: Any) -> None:
    client = anthropic_client(_api(rate_limited=1), max_retries=2)
    client.messages.create(**KW)
    (span,) = captured.spans()
    assert span.attributes["llmtrace.http.attempts"] == 2
    with pytest.raises(anthropic.RateLimitError):
        anthropic_client(_api(rate_limited=5), max_retries=1).messages.create(**KW)
    assert captured.spans()[1].attributes["error.type"] == "RateLimitError"


def test_a_zero_usage_report_is_the_providers_word_and_costs_zero(captured: Any) -> None:
    anthropic_client(_api(usage=False)).messages.create(**KW)
    (span,) = captured.spans()
    # Anthropic always sends usage; an all-zero report is still the provider's word.
    assert span.attributes["llmtrace.usage.source"] == "provider"
    assert span.attributes["llmtrace.cost.usd"] == 0.0


def test_a_stream_cut_before_its_count_estimates_thinking_and_tool_input_too(captured: Any) -> None:
    from llmtrace import tokenizer

    thinking, tool_input = "Weather in Paris: call the tool with the city.", '{"city": "Paris", "unit": "celsius"}'
    start = {"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL, "content": [], "stop_reason": None,
             "stop_sequence": None, "usage": {"input_tokens": 30, "output_tokens": 1}}
    events: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": thinking}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": tool_input}}),
    ]  # the connection ends here: no message_delta, so no output count
    client = anthropic_client(lambda request: HTTP.Response(200, headers={"content-type": "text/event-stream"}, content=sse(events)))
    for _ in client.messages.create(**KW, stream=True):
        pass
    (span,) = captured.spans()
    assert span.attributes["llmtrace.usage.source"] == "estimated"
    assert span.attributes["gen_ai.usage.output_tokens"] == tokenizer.count_text("gpt-4", thinking + tool_input)


@pytest.mark.parametrize("is_async", [False, True])
async def test_an_answer_that_does_not_fit_the_output_format_keeps_its_usage_and_cost(captured: Any, is_async: bool) -> None:
    """messages.parse() raises pydantic's ValidationError (which carries no answer) for an answer that is not the
    format asked for: Anthropic billed it all the same."""
    import pydantic

    class Person(pydantic.BaseModel):
        name: str

    client = anthropic_client(_api(is_async=is_async), is_async=is_async)
    if is_async:
        await client.messages.create(**KW)
        with pytest.raises(pydantic.ValidationError):
            await client.messages.parse(**KW, output_format=Person)
    else:
        client.messages.create(**KW)
        with pytest.raises(pydantic.ValidationError):
            client.messages.parse(**KW, output_format=Person)
    answered, refused = captured.spans()
    keys = ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "llmtrace.usage.source", "llmtrace.cost.usd")
    assert refused.attributes["error.type"] == "ValidationError"
    assert [refused.attributes.get(key) for key in keys] == [answered.attributes[key] for key in keys]
    assert refused.attributes["llmtrace.usage.source"] == "provider" and refused.attributes["llmtrace.cost.usd"] > 0


def test_a_bedrock_call_is_priced_as_the_inference_profile_it_asked_for(captured: Any) -> None:
    """Bedrock answers with the model's own name: only the request says the global profile served it, at its rates
    (the regional ones cost 10 % more)."""
    from genai_prices import Usage, calc_price

    profile = "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
    answer = {"id": "msg_bdrk_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
              "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "stop_sequence": None,
              "usage": {"input_tokens": 1000, "output_tokens": 100}}  # fmt: skip
    transport = HTTP.MockTransport(lambda request: HTTP.Response(200, json=answer))
    try:
        client = anthropic.AnthropicBedrock(api_key="bedrock-key", aws_region="us-east-1", http_client=HTTP.Client(transport=transport))
    except (TypeError, ImportError) as exc:  # an anthropic whose Bedrock client needs AWS credentials (botocore)
        pytest.skip(f"no Bedrock client without botocore here: {exc}")
    client.messages.create(model=profile, max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    (span,) = captured.spans()
    expected = calc_price(Usage(input_tokens=1000, output_tokens=100), model_ref=profile, provider_id="aws")
    assert span.attributes["gen_ai.provider.name"] == "aws.bedrock"
    assert span.attributes["llmtrace.cost.priced_model"] == expected.model.id == profile
    assert span.attributes["llmtrace.cost.usd"] == pytest.approx(float(expected.total_price), rel=1e-9)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("compacted, answered_from", [(9000, 3000), (180_000, 23_000)], ids=["small", "summing-past-200k"])
def test_a_server_side_compaction_pass_is_counted_and_priced(captured: Any, stream: bool, compacted: int, answered_from: int) -> None:
    """Its tokens are only in ``usage.iterations`` ("not included in the top-level usage fields"), yet billed: each
    pass a model call of its own, at the rates its own input takes (Claude's dearer ones start past 200k input
    tokens, which neither pass of the second case reaches, though their sum does)."""
    from genai_prices import Usage, calc_price

    model = "claude-sonnet-4-5"
    compaction = {"type": "compaction", "input_tokens": compacted, "output_tokens": 700, "cache_read_input_tokens": 2000,
                  "cache_creation_input_tokens": 0}  # fmt: skip
    answered = {"type": "message", "input_tokens": answered_from, "output_tokens": 200, "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 0}  # fmt: skip
    usage = {"input_tokens": answered_from, "output_tokens": 200, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0,
             "iterations": [compaction, answered]}  # fmt: skip
    content = [{"type": "compaction", "content": "Summary of the conversation so far"}, {"type": "text", "text": "Sure."}]
    message = {"id": "msg_c", "type": "message", "role": "assistant", "model": model, "content": content,
               "stop_reason": "end_turn", "stop_sequence": None, "usage": usage}  # fmt: skip
    if stream:
        events = [
            ("message_start", {"type": "message_start", "message": {**message, "content": [], "stop_reason": None,
                                                                    "usage": {**usage, "output_tokens": 1, "iterations": None}}}),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Sure."}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": 200, "iterations": [compaction, answered]}}),
            ("message_stop", {"type": "message_stop"}),
        ]  # fmt: skip
        client = anthropic_client(lambda request: HTTP.Response(200, headers=SSE_HEADERS, content=sse(events)))
    else:
        client = anthropic_client(lambda request: HTTP.Response(200, json=message))
    answer = client.beta.messages.create(model=model, max_tokens=1024, messages=[{"role": "user", "content": "go on"}],
                                         context_management={"edits": [{"type": "compact_20260112"}]}, stream=stream)  # fmt: skip
    if stream:
        for _ in answer:
            pass
    (span,) = captured.spans()
    a = span.attributes
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (compacted + 2000 + answered_from, 900)
    assert a["gen_ai.usage.cache_read.input_tokens"] == 2000
    billed = [calc_price(Usage(input_tokens=i["input_tokens"] + i["cache_read_input_tokens"], cache_read_tokens=i["cache_read_input_tokens"],
                               output_tokens=i["output_tokens"]), model_ref=model, provider_id="anthropic").total_price
              for i in (compaction, answered)]  # fmt: skip
    assert a["llmtrace.cost.usd"] == pytest.approx(float(sum(billed)), rel=1e-9)


def test_an_estimated_input_counts_a_system_prompt_given_as_blocks(captured: Any) -> None:
    """A stream the app never read is estimated from the request: its system blocks (with cache_control) included."""
    system = [{"type": "text", "text": "You are a careful assistant. " * 200, "cache_control": {"type": "ephemeral"}}]
    stream = anthropic_client(_api()).messages.create(**KW, system=system, stream=True)
    del stream
    gc.collect()
    (span,) = captured.spans()
    assert span.attributes["llmtrace.usage.source"] == "estimated"
    assert span.attributes["gen_ai.usage.input_tokens"] > 1000  # the system blocks' ~1,200 tokens, not the message's
