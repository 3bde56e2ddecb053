"""OpenAI scenarios: sync/async x stream/not x break/error/dropped, retries, faults, helpers."""

from __future__ import annotations

import gc
import types
import weakref
from typing import Any

import openai
import pytest

from conftest import http_module, openai_client
from fake_api import SSE_HEADERS, FakeAPI, MidStreamError, sse

HTTP = http_module(openai)
MESSAGES = [{"role": "user", "content": "Say hello to the tracing world"}]


def _api(**kw: Any) -> FakeAPI:
    return FakeAPI(HTTP, **kw)


def _only(captured: Any) -> Any:
    spans = captured.spans()
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def test_chat_json_tokens_cost_and_request_attributes(captured: Any) -> None:
    client = openai_client(_api())
    result = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50, temperature=0.2, top_p=0.9)
    assert result.choices[0].message.content == "hello there"
    span = _only(captured)
    a = span.attributes
    assert span.name == "chat gpt-4o-mini"
    assert a["gen_ai.request.max_tokens"] == 50 and a["gen_ai.request.temperature"] == 0.2 and a["gen_ai.request.top_p"] == 0.9
    assert a["gen_ai.usage.input_tokens"] == 120 and a["gen_ai.usage.cache_read.input_tokens"] == 64
    assert a["gen_ai.usage.output_tokens"] == 40 and a["gen_ai.usage.reasoning.output_tokens"] == 10
    assert a["llmtrace.usage.uncached_input_tokens"] == 56 and a["llmtrace.usage.visible_output_tokens"] == 30
    # gpt-4o-mini: $0.15 in, $0.075 cached, $0.60 out per million tokens (genai-prices data)
    assert a["llmtrace.cost.usd"] == pytest.approx((56 * 0.15 + 64 * 0.075 + 40 * 0.6) / 1e6, rel=1e-9)
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["server.address"] == "api.openai.com" and a["server.port"] == 443
    assert a["llmtrace.http.attempts"] == 1
    assert "gen_ai.input.messages" not in a  # content capture is off by default


def test_an_override_is_one_price_whatever_tier_served_the_call(captured: Any) -> None:
    from llmtrace import pricing

    pricing.set_price("gpt-5", input_mtok=1.0, output_mtok=2.0)
    openai_client(_api(served_tier="priority")).chat.completions.create(model="gpt-5", messages=MESSAGES)
    a = _only(captured).attributes
    assert a["llmtrace.cost.source"] == "override" and "llmtrace.cost.price_context" not in a
    assert a["llmtrace.cost.usd"] == pytest.approx((120 * 1.0 + 40 * 2.0) / 1e6)


def test_an_override_holds_whatever_the_case_of_the_models_name(captured: Any) -> None:
    """As the price list matches names: an override of "my-local-model" prices a call to "My-Local-Model"."""
    from llmtrace import pricing

    pricing.set_price("my-local-model", input_mtok=1.0, output_mtok=2.0)
    openai_client(_api()).chat.completions.create(model="My-Local-Model", messages=MESSAGES)
    a = _only(captured).attributes
    assert a["llmtrace.cost.source"] == "override" and a["llmtrace.cost.usd"] == pytest.approx((120 * 1.0 + 40 * 2.0) / 1e6)


def test_a_malformed_price_set_in_code_is_a_config_error_as_in_a_file() -> None:
    import llmtrace
    from llmtrace import pricing

    with pytest.raises(llmtrace.ConfigError, match="price input_mtok for model 'm' must be a non-negative number, got 'x'"):
        pricing.set_price("m", input_mtok="x", output_mtok=1.0)  # type: ignore[arg-type]
    with pytest.raises(llmtrace.ConfigError, match="output_mtok missing"):
        pricing.set_prices({"m": {"input_mtok": 1.0}})


def _audio_call(model: str, audio_in: int = 400, audio_out: int = 250) -> None:
    """A chat completion answered with audio: 500 input and 300 output tokens, these many of them audio."""
    usage = {
        "prompt_tokens": 500, "completion_tokens": 300, "total_tokens": 800,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": audio_in, "text_tokens": 500 - audio_in},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": audio_out, "text_tokens": 300 - audio_out},
    }  # fmt: skip
    answer = {
        "id": "chatcmpl-a", "object": "chat.completion", "created": 1, "model": model, "usage": usage,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": None,
                                 "audio": {"id": "audio_1", "data": "", "expires_at": 1, "transcript": "hi"}}}],
    }  # fmt: skip
    client = openai_client(lambda request: HTTP.Response(200, json=answer))
    client.chat.completions.create(model=model, messages=MESSAGES, modalities=["text", "audio"],
                                   audio={"voice": "alloy", "format": "wav"})


def test_audio_tokens_are_counted_and_priced_at_audio_rates(captured: Any) -> None:
    import genai_prices

    _audio_call("gpt-audio")
    a = _only(captured).attributes
    assert a["llmtrace.usage.input_audio_tokens"] == 400 and a["llmtrace.usage.output_audio_tokens"] == 250
    priced = genai_prices.Usage(input_tokens=500, input_audio_tokens=400, output_tokens=300, output_audio_tokens=250)
    expected = genai_prices.calc_price(priced, "gpt-audio", provider_id="openai")
    as_text = genai_prices.calc_price(genai_prices.Usage(input_tokens=500, output_tokens=300), "gpt-audio", provider_id="openai")
    assert expected.total_price > 2 * as_text.total_price  # audio tokens cost several times text tokens
    assert a["llmtrace.cost.usd"] == pytest.approx(float(expected.total_price), rel=1e-9)


def test_audio_tokens_of_a_model_the_price_list_has_no_audio_rates_for_leave_the_call_unpriced(
    captured: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """genai-prices prices gpt-4o-audio-preview's text only: at those rates its audio tokens would cost several times
    too little. Such a call's cost is unknown, as for a model with no price; its text-only calls are priced."""
    from llmtrace import pricing

    monkeypatch.setattr(pricing, "_warned", set())  # warned once per process: this test's warning, whatever ran before
    price = pricing.price_for("openai", "gpt-4o-audio-preview")
    assert price is not None and not price.prices_audio()  # the price list's fact this test is about
    for _ in range(2):
        _audio_call("gpt-4o-audio-preview")
    _audio_call("gpt-4o-audio-preview", audio_in=0, audio_out=0)
    audio, _, text_only = (span.attributes for span in captured.spans())
    assert audio["llmtrace.cost.unpriced"] is True and "llmtrace.cost.usd" not in audio
    assert audio["llmtrace.usage.input_audio_tokens"] == 400 and audio["gen_ai.usage.output_tokens"] == 300
    assert "llmtrace.cost.unpriced" not in text_only
    assert text_only["llmtrace.cost.usd"] == pytest.approx(price.cost(pricing.Usage(uncached_input=500, visible_output=300)).total)
    warnings = [r.getMessage() for r in caplog.records if "no audio rates" in r.getMessage()]
    assert len(warnings) == 1 and "'gpt-4o-audio-preview'" in warnings[0]

    pricing.set_price("gpt-4o-audio-preview", input_mtok=40.0, output_mtok=80.0)  # the app's own rate, for every token
    _audio_call("gpt-4o-audio-preview")
    overridden = captured.spans()[-1].attributes
    assert overridden["llmtrace.cost.usd"] == pytest.approx((500 * 40.0 + 300 * 80.0) / 1e6)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("tools", [["web_search"], ["file_search"], ["web_search_preview", "file_search"]])
def test_the_hosted_searches_a_response_ran_are_counted_and_priced(captured: Any, stream: bool, tools: list[str]) -> None:
    import genai_prices

    tool_params = [{"type": t, "vector_store_ids": ["vs_1"]} if t == "file_search" else {"type": t} for t in tools]
    result = openai_client(_api()).responses.create(model="gpt-5", input="hi", tools=tool_params, stream=stream)
    if stream:
        list(result)
    a = _only(captured).attributes
    # Two searches and a page opened from their results: only the searches are billed.
    searches = 2 if any(t.startswith("web_search") for t in tools) else 0
    file_searches = 1 if "file_search" in tools else 0
    assert a.get("llmtrace.usage.web_searches") == (searches or None)
    assert a.get("llmtrace.usage.file_searches") == (file_searches or None)
    tokens = {"input_tokens": 200, "cache_read_tokens": 100, "output_tokens": 50, "output_reasoning_tokens": 20}
    expected = genai_prices.calc_price(genai_prices.Usage(**tokens, web_searches=searches, storage_searches=file_searches),
                                       "gpt-5", provider_id="openai")  # fmt: skip
    tokens_only = genai_prices.calc_price(genai_prices.Usage(**tokens), "gpt-5", provider_id="openai")
    assert expected.total_price > tokens_only.total_price
    assert a["llmtrace.cost.usd"] == pytest.approx(float(expected.total_price), rel=1e-9)
    assert a["llmtrace.cost.input_usd"] + a["llmtrace.cost.output_usd"] == pytest.approx(float(tokens_only.total_price))


def test_a_responses_stream_left_after_its_searches_still_counts_them(captured: Any) -> None:
    import genai_prices

    client = openai_client(_api())
    tools = [{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]}]
    for event in client.responses.create(model="gpt-5", input="hi", tools=tools, stream=True):
        if event.type == "response.output_text.delta":
            break  # the searches ran and are billed; the final usage never arrives
    a = _only(captured).attributes
    assert a["llmtrace.usage.source"] == "estimated"
    assert a["llmtrace.usage.web_searches"] == 2 and a["llmtrace.usage.file_searches"] == 1
    tokens = genai_prices.Usage(input_tokens=a["gen_ai.usage.input_tokens"], output_tokens=a["gen_ai.usage.output_tokens"])
    with_searches = genai_prices.Usage(input_tokens=a["gen_ai.usage.input_tokens"], output_tokens=a["gen_ai.usage.output_tokens"],
                                       web_searches=2, storage_searches=1)  # fmt: skip
    expected = genai_prices.calc_price(with_searches, "gpt-5", provider_id="openai").total_price
    assert expected > genai_prices.calc_price(tokens, "gpt-5", provider_id="openai").total_price
    assert a["llmtrace.cost.usd"] == pytest.approx(float(expected), rel=1e-9)


@pytest.mark.parametrize("tier", ["flex", "priority", "default", "scale", None])
@pytest.mark.parametrize("api", ["chat", "chat-stream", "responses", "responses-stream"])
def test_a_call_is_priced_at_the_rates_of_the_service_tier_that_served_it(captured: Any, tier: str | None, api: str) -> None:
    import genai_prices

    # The API names the tier that served the call, whatever was asked ("auto" here): that tier's rates apply.
    client = openai_client(_api(served_tier=tier))
    asked = {"service_tier": "auto"} if tier else {}
    if api.startswith("chat"):
        result = client.chat.completions.create(model="gpt-5", messages=MESSAGES, stream=api.endswith("stream"), **asked)
    else:
        result = client.responses.create(model="gpt-5", input="hi", stream=api.endswith("stream"), **asked)
    if api.endswith("stream"):
        list(result)
    a = _only(captured).attributes
    assert a.get("openai.response.service_tier") == tier
    # Named only where it changed the rates: "default" and "scale" cost the standard ones.
    assert a.get("llmtrace.cost.price_context") == (f"service_tier={tier}" if tier in ("flex", "priority") else None)
    usage = genai_prices.Usage(
        input_tokens=a["gen_ai.usage.input_tokens"], cache_read_tokens=a["gen_ai.usage.cache_read.input_tokens"],
        output_tokens=a["gen_ai.usage.output_tokens"],
    )
    # genai-prices' own calculation for that tier: flex is half the standard rates and priority twice them for
    # gpt-5; a tier without prices of its own (scale), or none named, costs the standard rates.
    expected = genai_prices.calc_price(usage, "gpt-5", provider_id="openai", price_context={"service_tier": tier} if tier else None)
    standard = genai_prices.calc_price(usage, "gpt-5", provider_id="openai")
    assert a["llmtrace.cost.usd"] == pytest.approx(float(expected.total_price), rel=1e-9)
    if tier in ("flex", "priority"):
        assert expected.total_price != standard.total_price


@pytest.mark.parametrize("is_async", [False, True])
async def test_stream_asks_for_usage_and_hides_the_usage_chunk(captured: Any, is_async: bool) -> None:
    api = _api(is_async=is_async)
    client = openai_client(api, is_async=is_async)
    if is_async:
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        chunks = [c async for c in stream]
    else:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        chunks = list(stream)
    assert isinstance(stream, openai.AsyncStream if is_async else openai.Stream)
    assert api.requests[0]["stream_options"] == {"include_usage": True}
    assert len(chunks) == 6 and all(c.choices for c in chunks)  # 5 content + finish, usage chunk hidden
    a = _only(captured).attributes
    assert a["gen_ai.usage.input_tokens"] == 120 and a["llmtrace.usage.source"] == "provider"
    assert a["gen_ai.request.stream"] is True
    assert a["gen_ai.response.time_to_first_chunk"] > 0


@pytest.mark.parametrize("mapping", [dict, types.MappingProxyType], ids=["dict", "other-mapping"])
def test_stream_options_set_by_caller_are_left_alone(captured: Any, mapping: Any) -> None:
    api = _api()
    client = openai_client(api)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                 stream_options=mapping({"include_usage": True})))
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 120  # the caller asked: they see it
    assert _only(captured).attributes["gen_ai.usage.input_tokens"] == 120


def test_other_stream_options_of_the_caller_get_include_usage_beside_them(captured: Any) -> None:
    api = _api()
    client = openai_client(api)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                 stream_options={"include_obfuscation": False}))
    assert api.requests[0]["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert all(c.choices for c in chunks)  # the caller did not ask for the usage chunk: hidden
    assert _only(captured).attributes["llmtrace.usage.source"] == "provider"


def test_the_callers_extra_body_is_sent_with_include_usage_beside_it_and_left_unchanged(captured: Any) -> None:
    api = _api()
    client = openai_client(api)
    extra_body = {"metadata_tag": "nightly"}
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_body=extra_body))
    assert api.requests[0]["stream_options"] == {"include_usage": True} and api.requests[0]["metadata_tag"] == "nightly"
    assert extra_body == {"metadata_tag": "nightly"}
    assert all(c.choices for c in chunks)
    assert _only(captured).attributes["llmtrace.usage.source"] == "provider"


@pytest.mark.parametrize("mapping", [dict, types.MappingProxyType], ids=["dict", "other-mapping"])
def test_stream_options_the_caller_sends_through_extra_body_are_left_alone(captured: Any, mapping: Any) -> None:
    api = _api()
    client = openai_client(api)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                 extra_body=mapping({"stream_options": {"include_usage": True}})))
    assert api.requests[0]["stream_options"] == {"include_usage": True}
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 120  # the caller asked: they see it
    assert _only(captured).attributes["gen_ai.usage.input_tokens"] == 120


def test_compatible_host_never_sees_stream_options_and_usage_is_estimated(captured: Any) -> None:
    api = _api()
    client = openai_client(api, base_url="http://localhost:8000/v1")
    list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert "stream_options" not in api.requests[0]
    a = _only(captured).attributes
    assert a["gen_ai.provider.name"] == "localhost" and a["server.port"] == 8000
    assert a["llmtrace.usage.source"] == "estimated"
    assert a["gen_ai.usage.input_tokens"] > 5 and a["gen_ai.usage.output_tokens"] > 0


@pytest.mark.parametrize("raw", [False, True], ids=["stream", "with_raw_response"])
def test_a_stream_left_without_usage_has_its_tokenizer_built_off_the_apps_thread(
    captured: Any, monkeypatch: pytest.MonkeyPatch, raw: bool
) -> None:
    import threading

    from llmtrace import tokenizer

    # Building an encoding takes ~0.4 s: at the stream's end, on the app's thread, it would stall the app (an asyncio
    # app's whole loop) that long. It starts when the request goes out, on a thread of its own.
    built_on, build = [], tokenizer._encoding
    monkeypatch.setattr(tokenizer, "_encodings", {})
    monkeypatch.setattr(tokenizer, "_encoding", lambda name: (built_on.append(threading.current_thread().name), build(name))[1])
    client = openai_client(_api(), base_url="http://localhost:8000/v1")
    create = client.chat.completions.with_raw_response.create if raw else client.chat.completions.create
    stream = create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    list(stream.parse() if raw else stream)
    assert built_on == ["llmtrace-tokenizer"]
    a = _only(captured).attributes
    assert a["llmtrace.usage.source"] == "estimated" and a["gen_ai.usage.output_tokens"] > 0


def test_a_stream_asked_for_usage_builds_no_tokenizer(captured: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmtrace import tokenizer

    monkeypatch.setattr(tokenizer, "_encodings", {})  # ~75 MB an encoding: never built where no estimate is due
    list(openai_client(_api()).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert tokenizer._encodings == {} and _only(captured).attributes["llmtrace.usage.source"] == "provider"


def test_include_usage_hosts_setting_extends_the_list() -> None:
    import llmtrace.testing

    gateway, openai_itself = _api(), _api()
    with llmtrace.testing.capture(include_usage_hosts=["LLM.internal"]) as captured:  # a gateway, beside OpenAI; any case
        for api, base_url in ((gateway, "https://llm.internal/v1"), (openai_itself, "https://api.openai.com/v1")):
            list(openai_client(api, base_url=base_url).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    for api in (gateway, openai_itself):
        assert api.requests[0]["stream_options"] == {"include_usage": True}
    assert [span.attributes["llmtrace.usage.source"] for span in captured.spans()] == ["provider", "provider"]


def test_provider_hosts_names_and_prices_a_gateway_as_its_provider() -> None:
    import llmtrace.testing

    with llmtrace.testing.capture(provider_hosts=["LLM-Gateway.internal = openai"]) as captured:  # a URL's host: lower case
        openai_client(_api(), base_url="https://llm-gateway.internal/v1").chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        openai_client(_api(), base_url="https://other.internal/v1").chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
    gateway, other = (span.attributes for span in captured.spans())
    assert gateway["gen_ai.provider.name"] == "openai" and gateway["llmtrace.cost.usd"] > 0
    assert other["gen_ai.provider.name"] == "other.internal" and other["llmtrace.cost.unpriced"] is True


def test_provider_hosts_must_be_host_equals_provider() -> None:
    import llmtrace
    from llmtrace import config

    with pytest.raises(llmtrace.ConfigError, match="'gateway-only' is not host=provider"):
        llmtrace.instrument(provider_hosts=["gateway-only"])
    # Pairs that could never apply: a call is matched by its URL's host alone, to a provider llmtrace prices.
    refused = {
        "127.0.0.1:8000=openai": "give the host alone, without a scheme, port or path (127.0.0.1=openai)",
        "https://gw.internal/v1=openai": "give the host alone, without a scheme, port or path (gw.internal=openai)",
        "gw.internal=opnai": "'opnai' is not a provider llmtrace prices (openai, anthropic, ",
    }
    for pair, says in refused.items():
        with pytest.raises(llmtrace.ConfigError) as error:
            llmtrace.instrument(provider_hosts=[pair])
        assert says in str(error.value)
    with pytest.raises(llmtrace.ConfigError, match="^LLMTRACE_PROVIDER_HOSTS: provider_hosts: .* holds more than one pair: separate"):
        config.load({}, {"LLMTRACE_PROVIDER_HOSTS": "a.internal=openai b.internal=groq"})  # a space for a comma: where it was set
    for host, says in (("https://gw.internal", " (gw.internal)"), ("gw.internal:443", " (gw.internal)"), ("a b", "")):
        with pytest.raises(llmtrace.ConfigError) as error:  # include_usage_hosts: matched by the host alone too
            llmtrace.instrument(include_usage_hosts=[host])
        assert str(error.value) == f"instrument(): include_usage_hosts: {host!r}: give each host alone, without a scheme, port or path{says}"


@pytest.mark.parametrize("is_async", [False, True])
async def test_early_break_ends_the_span_once(captured: Any, is_async: bool) -> None:
    client = openai_client(_api(chunks=20, is_async=is_async), is_async=is_async)
    if is_async:
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        async for _ in stream:
            break
        await stream.close()
    else:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        for _ in stream:
            break
        stream.close()
    span = _only(captured)
    assert "error.type" not in span.attributes
    assert span.attributes["llmtrace.usage.source"] == "estimated"


@pytest.mark.parametrize("is_async", [False, True])
async def test_exception_mid_stream_reaches_the_app_and_marks_the_span(captured: Any, is_async: bool) -> None:
    client = openai_client(_api(fail_mid_stream=True, chunks=20, is_async=is_async), is_async=is_async, max_retries=0)
    with pytest.raises(MidStreamError):
        if is_async:
            async for _ in await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
                pass
        else:
            for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
                pass
    span = _only(captured)
    assert span.attributes["error.type"] == "MidStreamError"
    assert span.status.status_code.name == "ERROR"


def test_stream_dropped_unconsumed_still_ends_its_span(captured: Any) -> None:
    client = openai_client(_api())
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert captured.spans() == ()
    del stream
    gc.collect()
    assert len(captured.spans()) == 1


def test_stream_as_context_manager_and_next(captured: Any) -> None:
    client = openai_client(_api())
    with client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True) as stream:
        first = next(stream)
        assert first.choices[0].delta.role == "assistant"
    assert len(captured.spans()) == 1


@pytest.mark.parametrize("is_async", [False, True])
async def test_429_retries_are_counted_and_the_error_is_the_sdks(captured: Any, is_async: bool) -> None:
    client = openai_client(_api(rate_limited=10), is_async=is_async, max_retries=2)
    with pytest.raises(openai.RateLimitError) as info:
        if is_async:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        else:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    a = _only(captured).attributes
    assert a["error.type"] == "RateLimitError" and a["http.response.status_code"] == 429
    assert a["llmtrace.http.attempts"] == 3 and a["llmtrace.http.rate_limited"] == 3
    assert info.value.status_code == 429


def test_a_key_an_error_message_echoes_stays_out_of_the_span(captured: Any) -> None:
    key = "sk-proj-Secret_123-abcdefghijklmnop"

    def proxy(request: Any) -> Any:  # a proxy that repeats what it refused, credentials and all
        said = f"refused {request.headers['authorization']} for {request.url}?key={key[8:]}; key {key}"
        return HTTP.Response(401, json={"error": {"message": said, "type": "invalid_request_error"}})

    client = openai_client(proxy, max_retries=0).with_options(api_key=key)
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert key in str(info.value)  # the app's exception is the SDK's, untouched
    span = _only(captured)
    description = span.status.description
    assert span.attributes["error.type"] == "AuthenticationError" and description.startswith("AuthenticationError: ")
    assert "Secret" not in description and description.count("[REDACTED]") == 3 and "/chat/completions" in description


def test_429_then_success_records_attempts(captured: Any) -> None:
    client = openai_client(_api(rate_limited=1), max_retries=2)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    a = _only(captured).attributes
    assert a["llmtrace.http.attempts"] == 2 and a["llmtrace.http.rate_limited"] == 1 and "error.type" not in a


def test_the_exception_object_is_the_sdks_own(captured: Any) -> None:
    boom = RuntimeError("transport exploded")

    def handler(request: Any) -> Any:
        raise boom

    client = openai_client(handler, max_retries=0)
    with pytest.raises(Exception) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert info.value is boom or info.value.__cause__ is boom
    assert _only(captured).attributes["error.type"] == type(info.value).__qualname__


def test_unknown_model_has_no_cost_never_zero(captured: Any, caplog: pytest.LogCaptureFixture) -> None:
    """No price: no cost attribute, an unpriced flag, one warning per model, and a counter."""
    from llmtrace import pricing

    client = openai_client(_api(model="my-finetune-9000"))
    before = pricing.unpriced_calls
    for _ in range(2):
        client.chat.completions.create(model="my-finetune-9000", messages=MESSAGES)
    for span in captured.spans():
        assert "llmtrace.cost.usd" not in span.attributes
        assert span.attributes["llmtrace.cost.unpriced"] is True
    assert pricing.unpriced_calls == before + 2
    assert sum("my-finetune-9000" in r.message for r in caplog.records) == 1  # one warning per model
    assert sum(p.value for p in captured.metrics()["llmtrace.cost.unpriced_calls"]) == 2
    assert "llmtrace.cost" not in captured.metrics()


def test_price_override_prices_a_fine_tune() -> None:
    import llmtrace.testing

    client = openai_client(_api(model="ft:gpt-4o:acme"))
    with llmtrace.testing.capture(prices={"ft:gpt-4o:acme": {"input_mtok": 10, "output_mtok": 20}}) as captured:
        client.chat.completions.create(model="ft:gpt-4o:acme", messages=MESSAGES)
    a = captured.spans()[0].attributes
    assert a["llmtrace.cost.source"] == "override"
    assert a["llmtrace.cost.usd"] == pytest.approx((120 * 10 + 40 * 20) / 1e6)


def test_the_settings_prices_end_with_uninstrument_and_code_set_ones_stay() -> None:
    """A notebook instrumenting again with other settings (or none) prices as those say, not as the last ones did;
    a price set in code with set_price() is the app's own and stays."""
    import llmtrace.testing

    def cost_of(model: str) -> Any:
        with llmtrace.testing.capture() as captured:
            openai_client(_api(model=model)).chat.completions.create(model=model, messages=MESSAGES)
        return captured.spans()[0].attributes.get("llmtrace.cost.source")

    with llmtrace.testing.capture(prices={"gpt-4o": {"input_mtok": 100, "output_mtok": 100}}):
        pass
    llmtrace.pricing.set_price("gpt-4o-mini", input_mtok=1, output_mtok=2)
    assert (cost_of("gpt-4o"), cost_of("gpt-4o-mini")) == ("genai-prices", "override")


def test_a_price_override_for_one_provider_wins_over_one_for_every_provider(tmp_path: Any) -> None:
    """The same model name served by two hosts at two prices: a self-hosted server's own (its host is its provider)
    beside Groq's price list, and an override for every provider that a provider's own overrides."""
    import llmtrace.testing

    model = "llama-3.3-70b-versatile"
    config = tmp_path / "prices.toml"
    config.write_text(f'[prices."{model}"]\ninput_mtok = 1\noutput_mtok = 2\n\n'
                      f'[provider_prices."llm.internal"."{model.upper()}"]\ninput_mtok = 0.1\noutput_mtok = 0.2\n')
    hosts = {"groq": "https://api.groq.com/openai/v1", "llm.internal": "http://llm.internal:8000/v1"}
    with llmtrace.testing.capture(config_file=str(config)) as captured:
        for base_url in hosts.values():
            openai_client(_api(model=model), base_url=base_url).chat.completions.create(model=model, messages=MESSAGES)
    costs = {s.attributes["gen_ai.provider.name"]: s.attributes["llmtrace.cost.usd"] for s in captured.spans()}
    assert costs == pytest.approx({"groq": (120 * 1 + 40 * 2) / 1e6, "llm.internal": (120 * 0.1 + 40 * 0.2) / 1e6})
    with llmtrace.testing.capture(provider_prices={"llm.internal": {model: {"input_mtok": 0.1, "output_mtok": 0.2}}}) as captured:
        openai_client(_api(model=model), base_url=hosts["groq"]).chat.completions.create(model=model, messages=MESSAGES)
    (span,) = captured.spans()  # another provider's override leaves Groq's calls at its list price
    assert span.attributes["llmtrace.cost.source"] == "genai-prices"
    llmtrace.pricing.reset_overrides()
    # The server answers with a name of its own: the provider's override of the name asked for still wins.
    llmtrace.pricing.set_prices({"served/Llama-3.3": {"input_mtok": 1, "output_mtok": 2}},
                                {"llm.internal": {model: {"input_mtok": 0.1, "output_mtok": 0.2}}})
    with llmtrace.testing.capture() as captured:
        client = openai_client(_api(model="served/Llama-3.3"), base_url=hosts["llm.internal"])
        client.chat.completions.create(model=model, messages=MESSAGES)
    assert captured.spans()[0].attributes["llmtrace.cost.usd"] == pytest.approx((120 * 0.1 + 40 * 0.2) / 1e6)


def test_a_price_override_of_the_requested_model_applies_to_the_snapshot_that_answers() -> None:
    import llmtrace.testing

    client = openai_client(_api(model="gpt-4o-2024-08-06"))  # OpenAI answers gpt-4o with a dated snapshot
    with llmtrace.testing.capture(prices={"gpt-4o": {"input_mtok": 100, "output_mtok": 200}}) as captured:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        client.chat.completions.create(model="gpt-4o-2024-08-06", messages=MESSAGES)  # pinned: still gpt-4o
    for span in captured.spans():
        a = span.attributes
        assert a["gen_ai.response.model"] == "gpt-4o-2024-08-06" and a["llmtrace.cost.source"] == "override"
        assert a["llmtrace.cost.usd"] == pytest.approx((120 * 100 + 40 * 200) / 1e6)


def test_malformed_json_body_surfaces_as_the_sdk_does(captured: Any) -> None:
    client = openai_client(_api(malformed=True), max_retries=0)
    with pytest.raises(Exception) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    span = _only(captured)
    assert span.attributes["error.type"] == type(info.value).__qualname__
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)  # parsed later
    with client.chat.completions.with_streaming_response.create(model="gpt-4o-mini", messages=MESSAGES) as streaming:
        with pytest.raises(type(info.value)):
            streaming.parse()
    with pytest.raises(type(info.value)):
        raw.parse()
    unread, refused = captured.spans()[1:]  # both ended, without an internal error
    assert unread.attributes["llmtrace.usage.source"] == "estimated" and "error.type" not in unread.attributes
    assert refused.attributes["error.type"] == type(info.value).__qualname__


def test_missing_usage_is_estimated_and_priced(captured: Any) -> None:
    client = openai_client(_api(usage=False))
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    a = _only(captured).attributes
    assert a["llmtrace.usage.source"] == "estimated"
    assert a["gen_ai.usage.output_tokens"] == 2  # "hello there"
    assert a["llmtrace.cost.usd"] > 0


@pytest.mark.parametrize("is_async", [False, True])
async def test_responses_create_and_stream(captured: Any, is_async: bool) -> None:
    client = openai_client(_api(is_async=is_async), is_async=is_async)
    if is_async:
        await client.responses.create(model="gpt-4.1-nano", input="hi")
        async for _ in await client.responses.create(model="gpt-4.1-nano", input="hi", stream=True):
            pass
        async with client.responses.stream(model="gpt-4.1-nano", input="hi") as stream:
            final = await stream.get_final_response()
    else:
        client.responses.create(model="gpt-4.1-nano", input="hi")
        for _ in client.responses.create(model="gpt-4.1-nano", input="hi", stream=True):
            pass
        with client.responses.stream(model="gpt-4.1-nano", input="hi") as stream:
            final = stream.get_final_response()
    assert final.output_text == "hello there"
    spans = captured.spans()
    assert len(spans) == 3
    for span in spans:
        a = span.attributes
        assert a["gen_ai.usage.input_tokens"] == 200 and a["gen_ai.usage.cache_read.input_tokens"] == 100
        assert a["gen_ai.usage.reasoning.output_tokens"] == 20 and a["gen_ai.response.id"] == "resp_1"


@pytest.mark.parametrize("is_async", [False, True])
async def test_chat_stream_helper_is_one_span(captured: Any, is_async: bool) -> None:
    client = openai_client(_api(is_async=is_async), is_async=is_async)
    if is_async:
        async with client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as stream:
            completion = await stream.get_final_completion()
    else:
        with client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as stream:
            completion = stream.get_final_completion()
    assert completion.choices[0].message.content.startswith("w1")
    a = _only(captured).attributes
    assert a["gen_ai.usage.input_tokens"] == 120


def test_parse_legacy_completions_and_embeddings(captured: Any) -> None:
    client = openai_client(_api())
    client.chat.completions.parse(model="gpt-4o-mini", messages=MESSAGES)

    def completions(request: Any) -> Any:
        return HTTP.Response(200, json={"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct",
                                        "choices": [{"index": 0, "text": "hi", "finish_reason": "length", "logprobs": None}],
                                        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})

    openai_client(completions).completions.create(model="gpt-3.5-turbo-instruct", prompt="hello")

    def embeddings(request: Any) -> Any:
        return HTTP.Response(200, json={"object": "list", "model": "text-embedding-3-small",
                                        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                                        "usage": {"prompt_tokens": 8, "total_tokens": 8}})

    openai_client(embeddings).embeddings.create(model="text-embedding-3-small", input="hello")
    chat, completion, embedding = captured.spans()
    assert chat.name == "chat gpt-4o-mini"
    assert completion.name == "text_completion gpt-3.5-turbo-instruct"
    assert completion.attributes["gen_ai.usage.output_tokens"] == 7
    assert embedding.name == "embeddings text-embedding-3-small"
    assert embedding.attributes["gen_ai.usage.input_tokens"] == 8
    assert embedding.attributes["llmtrace.cost.usd"] == pytest.approx(8 * 0.02 / 1e6)



def test_token_id_input_without_usage_counts_its_ids(captured: Any) -> None:
    """A server that sends no usage: pre-tokenized input (token ids) has an exact count, never 0 (cost $0)."""

    def no_usage(request: Any) -> Any:
        return HTTP.Response(200, json={"object": "list", "model": "text-embedding-3-small",
                                        "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}]})

    client = openai_client(no_usage, base_url="http://localhost:8000/v1")
    client.embeddings.create(model="text-embedding-3-small", input=[list(range(300)), list(range(200))])
    client.embeddings.create(model="text-embedding-3-small", input=list(range(250)))
    batch, single = captured.spans()
    assert batch.attributes["llmtrace.usage.source"] == "estimated" and batch.attributes["gen_ai.usage.input_tokens"] == 500
    assert single.attributes["gen_ai.usage.input_tokens"] == 250

def test_with_raw_response_and_streaming_response(captured: Any) -> None:
    client = openai_client(_api())
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == "hello there"
    with client.chat.completions.with_streaming_response.create(model="gpt-4o-mini", messages=MESSAGES) as response:
        assert response.parse().usage.prompt_tokens == 120
    raw_stream = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    # The SDK's own object as it is: no read()/iter_bytes() it lacks, its text a property (a str), not a method.
    assert not hasattr(raw_stream, "iter_bytes") and not hasattr(raw_stream, "read")
    assert len(list(raw_stream.parse())) == 6
    assert isinstance(raw_stream.text, str)
    spans = captured.spans()
    assert len(spans) == 3
    assert all(s.attributes["gen_ai.usage.input_tokens"] == 120 for s in spans[:2])
    # A raw stream is sent as the app asked (no usage chunk it could relay): its usage is counted from what streamed.
    assert spans[2].attributes["llmtrace.usage.source"] == "estimated"


def test_a_raw_stream_parsed_in_the_same_expression_ends_with_the_stream(captured: Any) -> None:
    client = openai_client(_api())
    chunks = list(client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, stream=True).parse())
    assert len(chunks) == 6
    a = _only(captured).attributes  # not ended when the raw response was dropped, before the stream was read
    assert a["llmtrace.usage.source"] == "estimated" and a["gen_ai.usage.output_tokens"] > 0  # counted from what streamed


def test_azure_and_compatible_providers(captured: Any) -> None:
    azure = openai.AzureOpenAI(api_key="x", api_version="2024-06-01", azure_endpoint="https://acme.openai.azure.com",
                               http_client=HTTP.Client(transport=HTTP.MockTransport(_api())))
    azure.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    openai_client(_api(), base_url="https://api.groq.com/openai/v1").chat.completions.create(model="llama-3.1-8b-instant", messages=MESSAGES)
    hosts = ("eu.api.openai.com", "acme.cognitiveservices.azure.com", "api.anthropic.com")
    for host, model in zip(hosts, ("gpt-4o-mini", "gpt-4o-mini", "claude-sonnet-4-5")):
        openai_client(_api(), base_url=f"https://{host}/v1").chat.completions.create(model=model, messages=MESSAGES)
    az, groq, eu, az_v1, claude = captured.spans()
    assert az.attributes["gen_ai.provider.name"] == "azure.ai.openai"
    assert az.attributes["server.address"] == "acme.openai.azure.com"
    assert groq.attributes["gen_ai.provider.name"] == "groq"
    # OpenAI's data-residency host, Azure's v1 API through a plain client, Anthropic's compatible endpoint: named
    # (and priced) as their provider, never as an unknown host.
    assert [s.attributes["gen_ai.provider.name"] for s in (eu, az_v1, claude)] == ["openai", "azure.ai.openai", "anthropic"]
    assert all(s.attributes["llmtrace.cost.usd"] > 0 for s in (eu, az_v1, claude))


@pytest.mark.parametrize(("client_of", "asked"), [
    (lambda t: openai.AzureOpenAI(api_key="x", api_version="2024-10-21", azure_endpoint="https://acme.openai.azure.com",
                                  http_client=HTTP.Client(transport=t)), True),
    (lambda t: openai.AzureOpenAI(api_key="x", api_version="2025-04-01-preview", http_client=HTTP.Client(transport=t),
                                  azure_endpoint="https://acme.cognitiveservices.azure.com"), True),
    (lambda t: openai.OpenAI(api_key="x", base_url="https://acme.openai.azure.com/openai/v1/",
                             http_client=HTTP.Client(transport=t)), True),
    (lambda t: openai.AzureOpenAI(api_key="x", api_version="2024-06-01", azure_endpoint="https://acme.openai.azure.com",
                                  http_client=HTTP.Client(transport=t)), False),
    (lambda t: openai.AzureOpenAI(api_key="x", api_version="2024-07-01-preview", http_client=HTTP.Client(transport=t),
                                  azure_endpoint="https://acme.openai.azure.com"), False),
], ids=["2024-10-21", "2025-04-01-preview", "v1 API", "2024-06-01", "2024-07-01-preview"])  # fmt: skip
def test_azure_streams_ask_for_usage_from_the_api_version_that_takes_it(captured: Any, client_of: Any, asked: bool) -> None:
    """Azure OpenAI answers 400 to stream_options before API version 2024-08-01-preview: older ones never see it."""
    api = _api()
    chunks = list(client_of(HTTP.MockTransport(api)).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert ("stream_options" in api.requests[0]) is asked
    assert all(chunk.choices for chunk in chunks)  # the usage chunk llmtrace asked for is not the app's
    a = _only(captured).attributes
    assert a["llmtrace.usage.source"] == ("provider" if asked else "estimated")
    assert a["gen_ai.provider.name"] == "azure.ai.openai"
    # A call that names its own API version gets the field only for a version that takes it.
    for version, takes in (("2024-06-01", False), ("2024-10-21", asked)):
        client_of(HTTP.MockTransport(api)).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                                 extra_query={"api-version": version}).close()  # fmt: skip
        assert ("stream_options" in api.requests[-1]) is takes, version


@pytest.mark.parametrize("is_async", [False, True])
async def test_beta_responses_create_is_traced(captured: Any, is_async: bool) -> None:
    client = openai_client(_api(is_async=is_async), is_async=is_async)
    if is_async:
        await client.beta.responses.create(model="gpt-4.1-nano", input="hi")
    else:
        client.beta.responses.create(model="gpt-4.1-nano", input="hi")
    a = _only(captured).attributes
    assert a["gen_ai.usage.input_tokens"] == 200 and a["gen_ai.response.id"] == "resp_1"


def test_azure_stream_whose_first_chunk_names_no_model(captured: Any) -> None:
    base = {"object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-2024-08-06", "id": "chatcmpl-AZ1"}
    events: list[tuple[str | None, Any]] = [
        # Azure's first chunk: its prompt filter results, before any generation, with an empty model and id.
        (None, {"id": "", "object": "", "created": 0, "model": "", "choices": [], "prompt_filter_results": []}),
        (None, {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}]}),
        (None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        (None, "[DONE]"),
    ]
    azure = openai.AzureOpenAI(
        api_key="x", api_version="2024-10-21", azure_endpoint="https://acme.openai.azure.com",
        http_client=HTTP.Client(transport=HTTP.MockTransport(
            lambda request: HTTP.Response(200, headers={"content-type": "text/event-stream"}, content=sse(events)))),
    )  # fmt: skip
    list(azure.chat.completions.create(model="my-deployment", messages=MESSAGES, stream=True))
    a = _only(captured).attributes
    assert a["gen_ai.response.model"] == "gpt-4o-2024-08-06" and a["gen_ai.response.id"] == "chatcmpl-AZ1"
    assert a["llmtrace.cost.usd"] > 0 and "llmtrace.cost.unpriced" not in a


_IN_PROGRESS = {"id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-4.1-2025-04-14", "status": "in_progress",
                "output": [], "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}
_FAILED = {**_IN_PROGRESS, "status": "failed", "error": {"code": "server_error", "message": "The model failed."},
           "usage": {"input_tokens": 100, "output_tokens": 0, "total_tokens": 100}}
_CREATED_EVENT = ("response.created", {"type": "response.created", "sequence_number": 0, "response": _IN_PROGRESS})


@pytest.mark.parametrize("answer", ["failed response", "failed event", "error event"])
def test_a_failed_responses_generation_is_an_error(captured: Any, answer: str) -> None:
    """The API reports these as data, and the SDK does not raise: the span must still say the call failed."""
    streams = {
        "failed event": [_CREATED_EVENT, ("response.failed", {"type": "response.failed", "sequence_number": 1, "response": _FAILED})],
        "error event": [_CREATED_EVENT, ("error", {"type": "error", "sequence_number": 1, "code": "server_error",
                                                   "message": "The model failed.", "param": None})],
    }

    def handler(request: Any) -> Any:
        if answer == "failed response":
            return HTTP.Response(200, json=_FAILED)
        return HTTP.Response(200, headers={"content-type": "text/event-stream"}, content=sse(streams[answer]))

    client = openai_client(handler)
    if answer == "failed response":
        assert client.responses.create(model="gpt-4.1", input="hi").status == "failed"
    else:
        assert len(list(client.responses.create(model="gpt-4.1", input="hi", stream=True))) == 2
    span = _only(captured)
    assert span.status.status_code.name == "ERROR" and span.status.description == "server_error: The model failed."
    assert span.attributes["error.type"] == "server_error"
    assert span.attributes.get("gen_ai.response.finish_reasons") in (("failed",), None)  # never "in_progress"


def test_a_responses_stream_left_early_has_no_finish_reason(captured: Any) -> None:
    events = [_CREATED_EVENT, ("response.completed", {"type": "response.completed", "sequence_number": 1,
                                                      "response": {**_IN_PROGRESS, "status": "completed"}})]
    client = openai_client(lambda request: HTTP.Response(200, headers={"content-type": "text/event-stream"}, content=sse(events)))
    for _ in client.responses.create(model="gpt-4.1", input="hi", stream=True):
        break  # only the created event (status in_progress) was seen
    span = _only(captured)
    assert "gen_ai.response.finish_reasons" not in span.attributes and span.status.status_code.name == "UNSET"


def test_a_client_per_request_does_not_grow_memory(captured: Any) -> None:
    first = openai_client(_api())
    first.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    url = weakref.ref(first._base_url)
    del first
    for _ in range(600):  # an app that makes a client for each request
        openai_client(_api()).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    gc.collect()
    assert url() is None  # llmtrace keeps nothing of a client that is gone for good
    assert len(captured.spans()) == 601


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("read", ["json", "text", "read"])
async def test_a_streaming_response_read_as_a_whole_body_still_gets_the_providers_usage(
    captured: Any, is_async: bool, read: str
) -> None:
    client = openai_client(_api(is_async=is_async), is_async=is_async)
    if is_async:
        async with client.chat.completions.with_streaming_response.create(model="gpt-4o-mini", messages=MESSAGES) as response:
            body = await getattr(response, read)()  # the app never calls parse()
    else:
        with client.chat.completions.with_streaming_response.create(model="gpt-4o-mini", messages=MESSAGES) as response:
            body = getattr(response, read)()
    assert "hello there" in (body.decode() if isinstance(body, bytes) else str(body))
    a = _only(captured).attributes
    assert a["llmtrace.usage.source"] == "provider" and a["gen_ai.usage.input_tokens"] == 120
    assert a["gen_ai.response.id"] == "chatcmpl-1"


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("read", ["iter_bytes", "iter_text", "iter_lines"])
async def test_a_whole_body_read_in_pieces_still_gets_the_providers_usage(captured: Any, is_async: bool, read: str) -> None:
    """A proxy passing the provider's answer on, piece by piece: the pieces reach it as they come, and the span reads
    the answer at the end."""
    client = openai_client(_api(is_async=is_async), is_async=is_async)
    if is_async:
        async with client.chat.completions.with_streaming_response.create(model="gpt-4o-mini", messages=MESSAGES) as response:
            pieces = [piece async for piece in getattr(response, read)()]
    else:
        with client.chat.completions.with_streaming_response.create(model="gpt-4o-mini", messages=MESSAGES) as response:
            pieces = list(getattr(response, read)())
    body = (b"" if read == "iter_bytes" else "").join(pieces)  # type: ignore[attr-defined]
    assert "hello there" in (body.decode() if isinstance(body, bytes) else body)
    a = _only(captured).attributes
    assert a["llmtrace.usage.source"] == "provider" and a["gen_ai.usage.input_tokens"] == 120
    assert a["gen_ai.response.finish_reasons"] == ("stop",)


async def _read_raw_stream(client: Any, is_async: bool, read: str, **kwargs: Any) -> list[Any]:
    create = client.chat.completions.with_streaming_response.create
    if is_async:
        async with create(model="gpt-4o-mini", messages=MESSAGES, stream=True, **kwargs) as response:
            return [piece async for piece in getattr(response, read)()]
    with create(model="gpt-4o-mini", messages=MESSAGES, stream=True, **kwargs) as response:
        return list(getattr(response, read)())


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("read", ["iter_bytes", "iter_text", "iter_lines"])
async def test_a_stream_passed_on_raw_by_the_app_gets_the_usage_it_carries(captured: Any, is_async: bool, read: str) -> None:
    """An SSE pass-through proxy that asks for usage itself: the span has the provider's count and the whole answer."""
    client = openai_client(_api(is_async=is_async), is_async=is_async)
    pieces = await _read_raw_stream(client, is_async, read, stream_options={"include_usage": True})
    assert any('"usage"' in str(piece) for piece in pieces)  # the app passes every line on, the usage chunk too
    a = _only(captured).attributes
    assert a["llmtrace.usage.source"] == "provider" and a["gen_ai.usage.input_tokens"] == 120
    assert a["gen_ai.usage.output_tokens"] == 40 and a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["gen_ai.response.id"] == "chatcmpl-1" and a["llmtrace.cost.usd"] > 0


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("read", ["iter_bytes", "iter_text", "iter_lines"])
async def test_a_stream_passed_on_raw_without_usage_has_its_output_estimated(captured: Any, is_async: bool, read: str) -> None:
    """Without usage in the stream, the output the app passed on is counted, as for a parsed stream without usage."""
    client = openai_client(_api(is_async=is_async), is_async=is_async)
    await _read_raw_stream(client, is_async, read)
    raw = _only(captured).attributes
    for _ in openai_client(_api()).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                           stream_options={"include_usage": False}):  # fmt: skip
        pass
    parsed = captured.spans()[1].attributes
    assert raw["llmtrace.usage.source"] == parsed["llmtrace.usage.source"] == "estimated"
    assert raw["gen_ai.usage.output_tokens"] == parsed["gen_ai.usage.output_tokens"] > 0
    assert raw["llmtrace.cost.usd"] == parsed["llmtrace.cost.usd"]
    assert raw["gen_ai.response.finish_reasons"] == ("stop",)


@pytest.mark.parametrize("is_async", [False, True])
async def test_a_raw_stream_that_fails_midway_fails_its_span_and_the_app_gets_the_error(captured: Any, is_async: bool) -> None:
    client = openai_client(_api(fail_mid_stream=True, chunks=20, is_async=is_async), is_async=is_async, max_retries=0)
    with pytest.raises(MidStreamError):
        await _read_raw_stream(client, is_async, "iter_bytes")
    span = _only(captured)
    assert span.attributes["error.type"] == "MidStreamError" and span.status.status_code.name == "ERROR"


def _streaming(body: bytes) -> Any:
    return lambda request: HTTP.Response(200, headers=SSE_HEADERS, content=body)


# Characters str.splitlines() cuts a line at, which a JSON string may hold as they are (the others must be escaped).
SPLITLINES_CUTS_AT = "one\u2028two\u2029three\x85four"


def _responses_stream_saying(text: str) -> bytes:
    response = {
        "id": "resp_s", "object": "response", "created_at": 1, "model": "gpt-4o-mini", "status": "completed",
        "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": {"input_tokens": 200, "output_tokens": 50, "total_tokens": 250},
    }  # fmt: skip
    created = {**response, "status": "in_progress", "output": [], "usage": None}
    return sse([
        ("response.created", {"type": "response.created", "sequence_number": 0, "response": created}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_1",
                                        "output_index": 0, "content_index": 0, "delta": text}),
        ("response.completed", {"type": "response.completed", "sequence_number": 2, "response": response}),
    ], ascii=False)  # fmt: skip


@pytest.mark.parametrize("is_async", [False, True])
async def test_a_raw_stream_read_by_lines_keeps_the_events_whose_text_holds_characters_splitlines_cuts_at(
    captured: Any, is_async: bool
) -> None:
    """iter_lines() cuts at U+2028 too, inside the data line of the event that carries the usage: it still counts."""
    body = _responses_stream_saying(SPLITLINES_CUTS_AT)
    client = openai_client(_streaming(body), is_async=is_async)
    create = client.responses.with_streaming_response.create
    if is_async:
        async with create(model="gpt-4o-mini", input="hi", stream=True) as response:
            lines = [line async for line in response.iter_lines()]
    else:
        with create(model="gpt-4o-mini", input="hi", stream=True) as response:
            lines = list(response.iter_lines())
    assert any(line.startswith("two") for line in lines)  # the data lines did reach the app cut
    raw = _only(captured).attributes
    for _ in openai_client(_streaming(body)).responses.create(model="gpt-4o-mini", input="hi", stream=True):
        pass
    parsed = captured.spans()[1].attributes
    assert raw["llmtrace.usage.source"] == parsed["llmtrace.usage.source"] == "provider"
    for key in ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "llmtrace.cost.usd", "gen_ai.response.id",
                "gen_ai.response.finish_reasons"):  # fmt: skip
        assert raw[key] == parsed[key], key


def _chat_stream_failing_with_an_error_event() -> bytes:
    chunk = {"id": "chatcmpl-e", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "partial answer"}, "finish_reason": None}]}  # fmt: skip
    error = {"message": "The server had an error while processing your request.", "type": "server_error"}
    return sse([(None, chunk), (None, {"error": error})])


@pytest.mark.parametrize("is_async", [False, True])
async def test_a_raw_stream_whose_provider_sends_an_error_event_fails_as_the_sdks_stream_does(
    captured: Any, is_async: bool
) -> None:
    """The SDK's own stream raises at the error event; an app passing the stream on raw sees no exception, but the
    call failed all the same."""
    body = _chat_stream_failing_with_an_error_event()
    handler = _streaming(body)
    pieces = await _read_raw_stream(openai_client(handler, is_async=is_async), is_async, "iter_bytes")
    assert b"server_error" in b"".join(pieces)
    raw = _only(captured)
    with pytest.raises(openai.APIError):
        for _ in openai_client(handler).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
            pass
    parsed = captured.spans()[1]
    assert raw.attributes["error.type"] == parsed.attributes["error.type"] == "server_error"
    assert raw.status.status_code.name == parsed.status.status_code.name == "ERROR"
    assert raw.attributes["gen_ai.usage.output_tokens"] == parsed.attributes["gen_ai.usage.output_tokens"] > 0


def test_a_raw_stream_left_early_ends_when_the_response_is_closed(captured: Any) -> None:
    client = openai_client(_api(chunks=20))
    with client.chat.completions.with_streaming_response.create(model="gpt-4o-mini", messages=MESSAGES, stream=True) as response:
        for line in response.iter_lines():
            if "w3" in line:
                break
        assert not captured.spans()  # still open: the app may read on
    a = _only(captured).attributes
    assert 0 < a["gen_ai.usage.output_tokens"] < 20 and a["gen_ai.response.id"] == "chatcmpl-1"


def test_a_tool_call_stream_without_usage_estimates_the_arguments_the_model_wrote(captured: Any) -> None:
    from llmtrace import tokenizer

    arguments = '{"city": "Paris", "unit": "celsius", "days": 5, "details": ["wind", "rain", "humidity"]}'
    pieces = [arguments[i : i + 7] for i in range(0, len(arguments), 7)]
    base = {"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
    first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    events: list[tuple[str | None, Any]] = [
        (None, {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": None, "tool_calls": [first]},
                                     "finish_reason": None}]}),
        *((None, {**base, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]},
                                       "finish_reason": None}]}) for piece in pieces),
        (None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        (None, "[DONE]"),
    ]  # fmt: skip
    stream = lambda request: HTTP.Response(200, headers={"content-type": "text/event-stream"}, content=sse(events))  # noqa: E731
    client = openai_client(stream, base_url="http://localhost:8000/v1")  # a server that sends no usage
    list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    a = _only(captured).attributes
    assert a["llmtrace.usage.source"] == "estimated" and a["gen_ai.response.finish_reasons"] == ("tool_calls",)
    assert a["gen_ai.usage.output_tokens"] == tokenizer.count_text("gpt-4o-mini", arguments) > 10


def _cut_at_max_tokens(request: Any) -> Any:
    """A chat answer the model stopped at max_tokens: billed, though a .parse() with a response_format refuses it."""
    return HTTP.Response(200, json={
        "id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": '{"name": "Ad'}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 16, "total_tokens": 66},
    })


def test_a_billed_answer_that_parse_refuses_keeps_its_usage_and_cost(captured: Any) -> None:
    import pydantic

    class Person(pydantic.BaseModel):
        name: str

    client = openai_client(_cut_at_max_tokens)
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(model="gpt-4o", messages=MESSAGES, response_format=Person)
    raw = client.chat.completions.with_raw_response.parse(model="gpt-4o", messages=MESSAGES, response_format=Person)
    with pytest.raises(openai.LengthFinishReasonError):  # the app's own parse() raises as it would have
        raw.parse()
    refused, read_raw = captured.spans()
    assert refused.attributes["error.type"] == "LengthFinishReasonError"
    for span in (refused, read_raw):
        a = span.attributes
        assert a["llmtrace.usage.source"] == "provider" and a["gen_ai.usage.input_tokens"] == 50
        assert a["gen_ai.usage.output_tokens"] == 16 and a["llmtrace.cost.usd"] > 0
        assert a["gen_ai.response.finish_reasons"] == ("length",)



@pytest.mark.parametrize("is_async", [False, True])
async def test_a_billed_answer_read_through_a_streaming_response_keeps_its_usage(captured: Any, is_async: bool) -> None:
    import pydantic

    class Person(pydantic.BaseModel):
        name: str

    client = openai_client(_cut_at_max_tokens, is_async=is_async)
    streaming = client.chat.completions.with_streaming_response
    for read in ("parse", "json"):  # the app parses (and the SDK refuses), or reads the body itself
        if is_async:
            async with streaming.parse(model="gpt-4o", messages=MESSAGES, response_format=Person) as response:
                if read == "parse":
                    with pytest.raises(openai.LengthFinishReasonError):
                        await response.parse()
                else:
                    await response.json()
        else:
            with streaming.parse(model="gpt-4o", messages=MESSAGES, response_format=Person) as response:
                if read == "parse":
                    with pytest.raises(openai.LengthFinishReasonError):
                        response.parse()
                else:
                    response.json()
    refused, read_body = captured.spans()
    assert refused.attributes["error.type"] == "LengthFinishReasonError"
    assert "error.type" not in read_body.attributes  # the app read the body; nothing failed
    for span in (refused, read_body):
        a = span.attributes
        assert a["llmtrace.usage.source"] == "provider" and a["gen_ai.usage.output_tokens"] == 16
        assert a["llmtrace.cost.usd"] > 0 and a["gen_ai.response.finish_reasons"] == ("length",)

@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_stream_helper_left_early_ends_its_span_at_the_block_exit(captured: Any, api: str) -> None:
    client = openai_client(_api(chunks=20))
    helper = (client.chat.completions.stream(model="gpt-4o", messages=MESSAGES) if api == "chat"
              else client.responses.stream(model="gpt-4o", input="hi"))
    with helper as events:
        for _ in events:
            break
    assert len(captured.spans()) == 1  # ended at the exit, not when the helper is collected

    async def left_early() -> None:
        aclient = openai_client(_api(chunks=20, is_async=True), is_async=True)
        async with aclient.chat.completions.stream(model="gpt-4o", messages=MESSAGES) as stream:
            async for _ in stream:
                break
        assert len(captured.spans()) == 2

    import asyncio

    asyncio.run(left_early())


def test_a_raw_stream_the_app_reads_itself_is_never_sent_the_usage_option(captured: Any) -> None:
    api = _api()
    client = openai_client(api)
    with client.chat.completions.with_streaming_response.create(model="gpt-4o-mini", messages=MESSAGES, stream=True) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: {")]
    assert "stream_options" not in api.requests[0]
    assert all('"choices":[]' not in line.replace(" ", "") for line in lines)  # no usage-only chunk the app must skip
    assert _only(captured).attributes["llmtrace.usage.source"] == "estimated"


def test_an_async_stream_has_aclose_only_where_the_sdks_has_one(captured: Any) -> None:
    import asyncio

    import anthropic

    from conftest import anthropic_client

    async def streams() -> list[Any]:
        aopenai = openai_client(_api(is_async=True), is_async=True)
        aanthropic = anthropic_client(FakeAPI(http_module(anthropic), is_async=True), is_async=True)
        return [await aopenai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True),
                await aanthropic.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES, stream=True)]

    async def compare() -> None:
        for stream in await streams():
            found = hasattr(stream, "aclose")  # what app code that duck-types its streams sees
            assert found == hasattr(stream.__wrapped__, "aclose")
            await (stream.aclose() if found else stream.close())

    asyncio.run(compare())
    assert len(captured.spans()) == 2


def test_a_background_response_not_yet_ready_has_no_made_up_usage(captured: Any) -> None:
    queued = {**_IN_PROGRESS, "status": "queued", "background": True}
    client = openai_client(lambda request: HTTP.Response(200, json=queued))
    assert client.responses.create(model="o3", input="a long task", background=True).status == "queued"
    a = _only(captured).attributes
    assert a["llmtrace.usage.source"] == "none" and "llmtrace.cost.usd" not in a and "gen_ai.usage.input_tokens" not in a


_USAGE_KEYS = ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "llmtrace.usage.source", "llmtrace.cost.usd")


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("is_async", [False, True])
async def test_an_answer_that_does_not_fit_the_format_keeps_its_usage_and_cost(captured: Any, api: str, is_async: bool) -> None:
    """The SDK's .parse() raises pydantic's ValidationError (which carries no answer) for an answer that is not the
    format asked for: the provider billed it all the same."""
    import pydantic

    class Person(pydantic.BaseModel):
        name: str

    client = openai_client(FakeAPI(HTTP, is_async=is_async), is_async=is_async)
    if api == "chat":
        plain = lambda: client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # noqa: E731
        parse = lambda: client.chat.completions.parse(model="gpt-4o", messages=MESSAGES, response_format=Person)  # noqa: E731
    else:
        plain = lambda: client.responses.create(model="gpt-4o", input="hi")  # noqa: E731
        parse = lambda: client.responses.parse(model="gpt-4o", input="hi", text_format=Person)  # noqa: E731
    if is_async:
        await plain()
        with pytest.raises(pydantic.ValidationError):
            await parse()
    else:
        plain()
        with pytest.raises(pydantic.ValidationError):
            parse()
    answered, refused = captured.spans()
    assert refused.attributes["error.type"] == "ValidationError"
    assert [refused.attributes.get(key) for key in _USAGE_KEYS] == [answered.attributes[key] for key in _USAGE_KEYS]
    assert refused.attributes["llmtrace.usage.source"] == "provider" and refused.attributes["llmtrace.cost.usd"] > 0
    assert refused.attributes["gen_ai.response.model"] == answered.attributes["gen_ai.response.model"]


def test_a_raw_answer_that_does_not_fit_the_format_keeps_its_usage_and_cost(captured: Any) -> None:
    import pydantic

    class Person(pydantic.BaseModel):
        name: str

    client = openai_client(FakeAPI(HTTP))
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    raw = client.chat.completions.with_raw_response.parse(model="gpt-4o", messages=MESSAGES, response_format=Person)
    with pytest.raises(pydantic.ValidationError):  # the app's own parse() raises as it would have
        raw.parse()
    answered, read_raw = captured.spans()
    assert [read_raw.attributes.get(key) for key in _USAGE_KEYS] == [answered.attributes[key] for key in _USAGE_KEYS]
    assert read_raw.attributes["llmtrace.usage.source"] == "provider"


_COMPACTED = {"id": "cmp_1", "created_at": 1, "object": "response.compaction",
              "output": [{"type": "message", "id": "m", "role": "user", "status": "completed",
                          "content": [{"type": "input_text", "text": "hi"}]}],
              "usage": {"input_tokens": 50000, "input_tokens_details": {"cached_tokens": 10000}, "output_tokens": 2000,
                        "output_tokens_details": {"reasoning_tokens": 1500}, "total_tokens": 52000}}


@pytest.mark.parametrize("beta", [False, True])
@pytest.mark.parametrize("is_async", [False, True])
async def test_a_compaction_pass_is_a_billed_call(captured: Any, is_async: bool, beta: bool) -> None:
    import genai_prices

    client = openai_client(lambda request: HTTP.Response(200, json=_COMPACTED), is_async=is_async)
    responses = client.beta.responses if beta else client.responses
    compacted = responses.compact(model="gpt-5", previous_response_id="resp_123")
    compacted = await compacted if is_async else compacted
    assert compacted.usage.total_tokens == 52000
    a = _only(captured).attributes
    assert a["gen_ai.request.model"] == "gpt-5" and a["gen_ai.usage.input_tokens"] == 50000
    assert a["gen_ai.usage.cache_read.input_tokens"] == 10000 and a["gen_ai.usage.reasoning.output_tokens"] == 1500
    usage = genai_prices.Usage(input_tokens=50000, cache_read_tokens=10000, output_tokens=2000)
    expected = genai_prices.calc_price(usage, "gpt-5", provider_id="openai").total_price
    assert a["llmtrace.cost.usd"] == pytest.approx(float(expected), rel=1e-9)


def test_request_attributes_and_metrics_have_the_conventions_types_and_keys(captured: Any) -> None:
    """Doubles stay doubles (temperature=1 is not an int on some spans and a double on others), gen_ai.request.stream
    is set if and only if the request streams, OpenAI's refinement names the API and the tier asked for, the output
    type says json for a structured answer, and every metric point carries server.port."""
    import pydantic

    class Answer(pydantic.BaseModel):
        text: str

    client = openai_client(_api(), base_url="https://api.openai.com:8443/v1")
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, temperature=1, top_p=1, stream=False,
                                   service_tier="flex", response_format={"type": "json_object"})  # fmt: skip
    with pytest.raises(pydantic.ValidationError):  # the fake answers "hello there", which is no Answer
        client.chat.completions.parse(model="gpt-4o-mini", messages=MESSAGES, response_format=Answer)
    client.responses.create(model="gpt-4o-mini", input="hi", text={"format": {"type": "text"}})
    chat, parsed, responses = (span.attributes for span in captured.spans())
    assert type(chat["gen_ai.request.temperature"]) is float and type(chat["gen_ai.request.top_p"]) is float
    assert "gen_ai.request.stream" not in chat
    assert (chat["openai.api.type"], chat["openai.request.service_tier"], chat["gen_ai.output.type"]) == ("chat_completions", "flex", "json")
    assert parsed["gen_ai.output.type"] == "json"
    assert (responses["openai.api.type"], responses["gen_ai.output.type"]) == ("responses", "text")
    metrics = captured.metrics()
    for name in ("gen_ai.client.operation.duration", "gen_ai.client.token.usage"):
        assert {point.attributes["server.port"] for point in metrics[name]} == {8443}


def test_embeddings_report_their_input_alone_and_the_dimensions_asked_for(captured: Any) -> None:
    """An embedding generates no tokens: no output count on the span, no output point in the token metric."""

    def embeddings(request: Any) -> Any:
        return HTTP.Response(200, json={"object": "list", "model": "text-embedding-3-small",
                                        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                                        "usage": {"prompt_tokens": 5, "total_tokens": 5}})  # fmt: skip

    openai_client(embeddings).embeddings.create(model="text-embedding-3-small", input="hello", dimensions=3)
    a = _only(captured).attributes
    assert [key for key in a if key.startswith("gen_ai.usage.")] == ["gen_ai.usage.input_tokens"]
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.embeddings.dimension.count"]) == (5, 3)
    assert a["llmtrace.cost.usd"] > 0
    token_points = captured.metrics()["gen_ai.client.token.usage"]
    assert [point.attributes["gen_ai.token.type"] for point in token_points] == ["input"]


@pytest.mark.parametrize(
    ("base_url", "provider"),
    [("https://bedrock-runtime.us-east-1.amazonaws.com/openai/v1", "aws.bedrock"),
     ("https://bedrock-mantle.us-east-1.api.aws/v1", "aws.bedrock"),
     ("https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/us-central1/endpoints/openapi", "gcp.vertex_ai")],
)  # fmt: skip
def test_the_clouds_openai_compatible_endpoints_are_named_as_their_provider(captured: Any, base_url: str, provider: str) -> None:
    openai_client(_api(), base_url=base_url).chat.completions.create(model="some-model", messages=MESSAGES)
    assert _only(captured).attributes["gen_ai.provider.name"] == provider


def _answering(model: str, usage: dict[str, Any], stream: bool) -> tuple[dict[str, Any], Any]:
    """A chat answer "hi" with this usage (as JSON, or streamed with the usage in its last chunk), and a handler that
    serves it."""
    body = {"id": "c", "object": "chat.completion", "created": 1, "model": model, "usage": usage,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}  # fmt: skip
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model}
    events = [(None, {**chunk, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}),
              (None, {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}), (None, "[DONE]")]  # fmt: skip

    def handler(request: Any) -> Any:
        return HTTP.Response(200, headers=SSE_HEADERS, content=sse(events)) if stream else HTTP.Response(200, json=body)

    return body, handler


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_counted_beside_the_completion_is_output_too(captured: Any, stream: bool) -> None:
    """xAI's grok models count reasoning apart from completion_tokens (the total says so): billed as output all the same,
    as genai-prices' own reading of their usage has it."""
    from genai_prices import calc_price, extract_usage

    usage = {"prompt_tokens": 32, "completion_tokens": 9, "total_tokens": 135, "prompt_tokens_details": {"cached_tokens": 6},
             "completion_tokens_details": {"reasoning_tokens": 94}}  # fmt: skip
    body, handler = _answering("grok-3-mini", usage, stream)

    answer = openai_client(handler, base_url="https://api.x.ai/v1").chat.completions.create(model="grok-3-mini", messages=MESSAGES, stream=stream)
    if stream:
        for _ in answer:
            pass
    a = _only(captured).attributes
    truth = extract_usage(body, provider_id="x-ai", api_flavor="chat").usage
    assert (a["gen_ai.usage.output_tokens"], a["gen_ai.usage.reasoning.output_tokens"]) == (truth.output_tokens, 94) == (103, 94)
    assert a["gen_ai.usage.input_tokens"] + a["gen_ai.usage.output_tokens"] == usage["total_tokens"]
    expected = calc_price(truth, model_ref="grok-3-mini", provider_id="x-ai").total_price
    assert a["llmtrace.cost.usd"] == pytest.approx(float(expected), rel=1e-9)


@pytest.mark.parametrize("stream", [False, True])
def test_deepseek_cache_hits_are_read_and_priced_as_cache_reads(captured: Any, stream: bool) -> None:
    """DeepSeek counts the prompt its cache served in top-level ``prompt_cache_hit_tokens`` (hit + miss = prompt):
    billed at its cache-read rate, a fraction of the input rate."""
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    usage = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500,
             "prompt_cache_hit_tokens": 800, "prompt_cache_miss_tokens": 200}  # fmt: skip
    body, handler = _answering("deepseek-chat", usage, stream)

    answer = openai_client(handler, base_url="https://api.deepseek.com").chat.completions.create(
        model="deepseek-chat", messages=MESSAGES, stream=stream
    )
    if stream:
        for _ in answer:
            pass
    a = _only(captured).attributes
    assert a["gen_ai.provider.name"] == "deepseek"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.cache_read.input_tokens"], a["llmtrace.usage.uncached_input_tokens"]) == (1000, 800, 200)
    truth = PriceUsage(input_tokens=1000, cache_read_tokens=800, output_tokens=500)
    expected = calc_price(truth, model_ref="deepseek-chat", provider_id="deepseek").total_price
    assert a["llmtrace.cost.usd"] == pytest.approx(float(expected), rel=1e-9)


def test_an_estimated_responses_input_counts_its_instructions(captured: Any) -> None:
    """A stream cut before its usage came is estimated from all the request sent: the system prompt included."""
    instructions = "You are a careful assistant. " * 200
    import openai

    with pytest.raises((MidStreamError, openai.APIConnectionError)):  # the transport's error, or the SDK's for it
        stream = openai_client(_api(fail_mid_stream=True), max_retries=0).responses.create(
            model="gpt-4o", instructions=instructions, input="hi", stream=True
        )
        for _ in stream:
            pass
    a = _only(captured).attributes
    assert a["llmtrace.usage.source"] == "estimated"
    assert a["gen_ai.usage.input_tokens"] > 1000  # ~1,200 tokens of instructions, not the input's 1


@pytest.mark.parametrize("is_async", [False, True])
async def test_a_stream_helper_that_raises_on_the_answer_fails_the_span_and_the_apps_own_error_does_not(
    captured: Any, is_async: bool
) -> None:
    """chat.completions.stream(response_format=...) raises LengthFinishReasonError at an answer cut at max_tokens, as
    parse() does: the call failed. An error of the app's own code in the block only stops its reading."""
    import openai
    import pydantic

    class Answer(pydantic.BaseModel):
        x: int

    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-2024-08-06"}
    events = [(None, {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": '{"x": 1234'}, "finish_reason": None}]}),
              (None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}), (None, "[DONE]")]  # fmt: skip
    client = openai_client(lambda request: HTTP.Response(200, headers=SSE_HEADERS, content=sse(events)), is_async=is_async)
    request = {"model": "gpt-4o", "messages": MESSAGES, "response_format": Answer, "max_tokens": 4}

    async def read(raise_own: bool) -> None:
        if is_async:
            async with client.chat.completions.stream(**request) as stream:
                async for _ in stream:
                    if raise_own:
                        raise KeyError("the app's own")
        else:
            with client.chat.completions.stream(**request) as stream:
                for _ in stream:
                    if raise_own:
                        raise KeyError("the app's own")

    with pytest.raises(openai.LengthFinishReasonError):
        await read(raise_own=False)
    with pytest.raises(KeyError):
        await read(raise_own=True)
    cut, left = captured.spans()
    assert cut.status.status_code.name == "ERROR" and cut.attributes["error.type"] == "LengthFinishReasonError"
    assert cut.attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert left.status.status_code.name == "UNSET" and "error.type" not in left.attributes


def test_a_raw_response_stream_is_sent_as_the_app_asked(captured: Any) -> None:
    """Through with_raw_response the app may relay the body's lines itself: a usage chunk it did not ask for (with no
    choices) would reach its own clients."""
    import json

    api = _api()
    raw = openai_client(api).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    chunks = [json.loads(line[len("data: "):]) for line in raw.http_response.iter_lines() if line.startswith("data: {")]
    assert "stream_options" not in api.requests[0] and chunks and all(chunk["choices"] for chunk in chunks)
    del raw
    gc.collect()
    (span,) = captured.spans()
    assert span.attributes["gen_ai.request.stream"] is True
