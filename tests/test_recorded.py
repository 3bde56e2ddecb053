"""Replay every recorded OpenAI/Anthropic exchange through the real SDK and check the span."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from genai_prices import Usage as GenaiUsage
from genai_prices import calc_price

from conftest import recorded_rows
from examples.recorded_traffic import recorded_call, recorded_client  # the example's replay serves the tests too

ROWS = recorded_rows()


def _sse_events(body: str) -> list[dict[str, Any]]:
    events = []
    for line in body.splitlines():
        if line.startswith("data:"):
            data = line[5:].strip()
            if data and data != "[DONE]":
                events.append(json.loads(data))
    return events


def provider_truth(row: dict[str, Any]) -> dict[str, int | None] | None:
    """The usage the provider reported, read straight from the recorded body (None if none). A reasoning count
    the provider did not give is None."""
    if row["provider"] == "anthropic":
        usage: dict[str, int] = {}
        events = _sse_events(row["response_body"]) if row["stream"] else [json.loads(row["response_body"])]
        blocks = [e.get("content_block") or {} for e in events] + [b for e in events for b in e.get("content") or ()]
        for event in events:
            for u in (event.get("usage"), (event.get("message") or {}).get("usage")):
                for k, v in (u or {}).items():
                    if isinstance(v, int):
                        usage[k] = v
        if not usage:
            return None
        cache_read = usage.get("cache_read_input_tokens", 0)
        cache_write = usage.get("cache_creation_input_tokens", 0)
        return {
            "input": usage["input_tokens"] + cache_read + cache_write,
            "output": usage["output_tokens"],
            "cache_read": cache_read,
            "cache_write": cache_write,
            # Anthropic counts thinking in output_tokens without a breakdown: 0 only for an answer that did not think.
            "reasoning": None if any(b.get("type") in ("thinking", "redacted_thinking") for b in blocks) else 0,
        }
    if row["stream"]:
        found = None
        for event in _sse_events(row["response_body"]):
            if event.get("usage"):
                found = event["usage"]
            if (event.get("response") or {}).get("usage"):
                found = event["response"]["usage"]
        u = found
    else:
        u = json.loads(row["response_body"]).get("usage")
    if not u:
        return None
    if "input_tokens" in u:  # Responses API
        return {
            "input": u["input_tokens"],
            "output": u["output_tokens"],
            "cache_read": (u.get("input_tokens_details") or {}).get("cached_tokens") or 0,
            "cache_write": 0,
            "reasoning": (u.get("output_tokens_details") or {}).get("reasoning_tokens") or 0,
        }
    return {
        "input": u["prompt_tokens"],
        "output": u.get("completion_tokens") or 0,
        "cache_read": (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
        "cache_write": 0,
        "reasoning": (u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0,
    }


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['provider']}-{r['path'].rsplit('/', 1)[-1]}-{r['index']}-{'sse' if r['stream'] else 'json'}" for r in ROWS])
def test_recorded_exchange(row: dict[str, Any], captured: Any) -> None:
    import anthropic
    import openai

    sdk = anthropic if row["provider"] == "anthropic" else openai
    method, kwargs = recorded_call(row, recorded_client(row))
    body = json.loads(row["request_body"])

    if row["status"] >= 400:
        with pytest.raises(sdk.APIStatusError) as info:
            method(**kwargs)
        (span,) = captured.spans()
        assert span.attributes["error.type"] == type(info.value).__qualname__
        assert span.attributes["http.response.status_code"] == row["status"]
        assert span.status.status_code.name == "ERROR"
        return

    result = method(**kwargs)
    if body.get("stream"):
        for _ in result:
            pass
    (span,) = captured.spans()
    a = span.attributes
    assert span.kind.name == "CLIENT"
    assert span.name == f"{a['gen_ai.operation.name']} {body['model']}"
    assert a["gen_ai.provider.name"] == row["provider"]
    assert a["gen_ai.request.model"] == body["model"]

    if a["gen_ai.operation.name"] == "embeddings":  # no output: its usage is its input alone (the conventions' shape)
        assert [key for key in a if key.startswith("gen_ai.usage.")] == ["gen_ai.usage.input_tokens"]
        assert "llmtrace.usage.visible_output_tokens" not in a
        assert a["llmtrace.usage.uncached_input_tokens"] == a["gen_ai.usage.input_tokens"]
    else:
        buckets = (
            a["llmtrace.usage.uncached_input_tokens"]
            + a["gen_ai.usage.cache_read.input_tokens"]
            + a["gen_ai.usage.cache_creation.input_tokens"]
        )
        assert buckets == a["gen_ai.usage.input_tokens"]
        output = a["llmtrace.usage.visible_output_tokens"] + a.get("gen_ai.usage.reasoning.output_tokens", 0)
        assert output == a["gen_ai.usage.output_tokens"]

    truth = provider_truth(row)
    if truth is None:
        assert a["llmtrace.usage.source"] == "estimated"
        assert a["gen_ai.usage.input_tokens"] > 0
    else:
        assert a["llmtrace.usage.source"] == "provider"
        assert a["gen_ai.usage.input_tokens"] == truth["input"]
        assert a.get("gen_ai.usage.output_tokens", 0) == truth["output"]
        assert a.get("gen_ai.usage.cache_read.input_tokens", 0) == truth["cache_read"]
        assert a.get("gen_ai.usage.cache_creation.input_tokens", 0) == truth["cache_write"]
        embeddings = a["gen_ai.operation.name"] == "embeddings"
        assert a.get("gen_ai.usage.reasoning.output_tokens", 0 if embeddings else None) == truth["reasoning"]

    expected = _genai_prices_cost(row, a)
    assert math.isclose(a["llmtrace.cost.usd"], expected, rel_tol=1e-9, abs_tol=1e-15)
    assert "llmtrace.cost.unpriced" not in a


def _genai_prices_cost(row: dict[str, Any], a: Any) -> float:
    usage = GenaiUsage(
        input_tokens=a["gen_ai.usage.input_tokens"],
        cache_read_tokens=a.get("gen_ai.usage.cache_read.input_tokens", 0),
        cache_write_tokens=a.get("gen_ai.usage.cache_creation.input_tokens", 0),
        output_tokens=a.get("gen_ai.usage.output_tokens", 0),
        output_reasoning_tokens=a.get("gen_ai.usage.reasoning.output_tokens", 0),
    )
    # The tier that served the call, as the recorded body says last (a Responses stream opens with the tier
    # asked for, "auto"); genai-prices prices some OpenAI tiers (priority, flex) apart.
    tiers = re.findall(r'"service_tier": ?"(\w+)"', row["response_body"])
    context = {"service_tier": tiers[-1]} if tiers else None
    for model in (a.get("gen_ai.response.model"), a["gen_ai.request.model"]):
        try:
            return float(calc_price(usage, model, provider_id=row["provider"], price_context=context).total_price)
        except LookupError:
            continue
    raise AssertionError("genai-prices knows neither the response nor the request model")


STREAMS = [r for r in ROWS if r["stream"] and r["status"] < 400]
# What a stream's span says of its answer: the same whether the SDK parsed the events or the app read the raw body.
_ANSWER_ATTRIBUTES = (
    "gen_ai.response.id", "gen_ai.response.model", "gen_ai.response.finish_reasons", "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens", "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.reasoning.output_tokens", "llmtrace.usage.source", "llmtrace.cost.usd",
)  # fmt: skip


def _streaming_response_method(row: dict[str, Any], client: Any) -> Any:
    if row["provider"] == "anthropic":
        return client.messages.with_streaming_response.create
    resource = {"/v1/chat/completions": client.chat.completions, "/v1/completions": client.completions,
                "/v1/responses": client.responses}[row["path"]]  # fmt: skip
    return resource.with_streaming_response.create


@pytest.mark.parametrize("row", STREAMS, ids=[f"{r['provider']}-{r['path'].rsplit('/', 1)[-1]}-{r['index']}" for r in STREAMS])
def test_a_recorded_stream_read_raw_by_the_app_is_counted_as_the_sdks_stream_is(row: dict[str, Any], captured: Any) -> None:
    """An SSE pass-through proxy: the app reads the body's bytes itself (cut anywhere, even inside a UTF-8
    character), and the span still has the tokens, cost and finish reasons the SDK's parsed stream gives."""
    method, kwargs = recorded_call(row, recorded_client(row))
    for _ in method(**kwargs):
        pass
    (parsed,) = captured.spans()

    _, kwargs = recorded_call(row, client := recorded_client(row))
    chunk_size = (1, 5, 64, None)[row["index"] % 4]
    with _streaming_response_method(row, client)(**kwargs) as response:
        body = b"".join(response.iter_bytes(chunk_size))
    assert body.decode() == row["response_body"]  # the app's bytes, untouched
    raw = captured.spans()[1]
    for name in _ANSWER_ATTRIBUTES:
        assert raw.attributes.get(name) == parsed.attributes.get(name), name
    assert raw.attributes["gen_ai.response.time_to_first_chunk"] > 0
