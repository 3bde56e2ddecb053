"""The simulated provider, driven by the real SDKs over loopback HTTP."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any, Iterator

import anthropic
import openai
import pytest

import llmtrace.testing
from llmtrace import attributes as A
from llmtrace.simulator import Faults, SimulatedProvider, _Model

NO_FAULTS = Faults(rate_limit=0, server_error=0, bad_request=0)
LONG_SYSTEM = "Follow the refund policy to the letter. " * 200  # ~2,000 tokens: cacheable


@pytest.fixture
def sim() -> Iterator[SimulatedProvider]:
    with SimulatedProvider(seed=5, latency_scale=0.01, faults=NO_FAULTS) as provider:
        yield provider


def _capture() -> Any:
    # The simulator's host stands for OpenAI, and takes stream_options like api.openai.com.
    return llmtrace.testing.capture(provider_hosts=["127.0.0.1=openai"], include_usage_hosts=["127.0.0.1"])


def _attrs(captured: Any) -> list[dict[str, Any]]:
    return [dict(span.attributes) for span in captured.spans()]


def test_latency_is_heavy_tailed_with_p99_about_8x_p50() -> None:
    rng = random.Random(1)
    draws = sorted(_Model("gpt-4o", rng, 1.0).latency_s for _ in range(20_000))
    p50, p99 = draws[len(draws) // 2], draws[int(len(draws) * 0.99)]
    assert 6.5 < p99 / p50 < 10
    assert 0.8 < p50 / 0.9 < 1.2  # gpt-4o's median is 900 ms


def test_openai_prompt_caching_reasoning_and_stream_usage(sim: SimulatedProvider) -> None:
    client = openai.OpenAI(base_url=sim.openai_base_url, api_key="sim")
    messages: Any = [{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "Can I return shoes?"}]
    with _capture() as captured:
        client.chat.completions.create(model="gpt-4o", messages=messages)
        client.chat.completions.create(model="gpt-4o", messages=messages)
        chunks = list(client.chat.completions.create(model="o4-mini", messages=messages, stream=True))
        client.responses.create(model="o4-mini", input="hello", max_output_tokens=50)
        client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    first, second, streamed, response, embedding = _attrs(captured)
    assert first[A.USAGE_CACHE_READ_INPUT_TOKENS] == 0
    assert second[A.USAGE_CACHE_READ_INPUT_TOKENS] > 1024 and second[A.USAGE_CACHE_READ_INPUT_TOKENS] % 128 == 0
    assert second[A.COST_USD] < first[A.COST_USD] and second[A.COST_CACHE_SAVINGS_USD] > 0
    assert first[A.RESPONSE_MODEL] == "gpt-4o-2024-08-06" and first[A.PROVIDER_NAME] == "openai"
    assert streamed[A.USAGE_SOURCE] == "provider" and streamed[A.USAGE_REASONING_OUTPUT_TOKENS] > 0
    assert streamed[A.RESPONSE_TIME_TO_FIRST_CHUNK] > 0
    assert all(chunk.choices for chunk in chunks)  # the usage-only chunk llmtrace asked for is hidden
    assert response[A.USAGE_REASONING_OUTPUT_TOKENS] > 0 and response[A.USAGE_OUTPUT_TOKENS] <= 50
    assert embedding[A.OPERATION_NAME] == "embeddings" and embedding[A.USAGE_INPUT_TOKENS] == 2
    assert all(a[A.COST_USD] >= 0 and A.COST_UNPRICED not in a for a in (first, second, streamed, response))


def test_anthropic_cache_write_then_read_streamed_and_not(sim: SimulatedProvider) -> None:
    client = anthropic.Anthropic(base_url=sim.anthropic_base_url, api_key="sim")
    system: Any = [{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}]
    messages: Any = [{"role": "user", "content": "hello"}]
    with _capture() as captured:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=100, system=system, messages=messages)
        with client.messages.stream(model="claude-sonnet-4-6", max_tokens=100, system=system, messages=messages) as s:
            text = "".join(s.text_stream)
    wrote, read = _attrs(captured)
    assert text
    assert wrote[A.PROVIDER_NAME] == "anthropic" and wrote[A.USAGE_CACHE_CREATION_INPUT_TOKENS] > 1000
    assert wrote[A.COST_CACHE_SAVINGS_USD] < 0  # a cache write costs more than plain input
    assert read[A.USAGE_CACHE_READ_INPUT_TOKENS] == wrote[A.USAGE_CACHE_CREATION_INPUT_TOKENS]
    assert read[A.COST_CACHE_SAVINGS_USD] > 0 and read[A.RESPONSE_TIME_TO_FIRST_CHUNK] > 0


def test_429_with_retry_after_is_retried_by_the_sdk_and_counted() -> None:
    faults = Faults(rate_limit=0.5, server_error=0, bad_request=0, retry_after_s=0.01)
    with SimulatedProvider(seed=3, latency_scale=0.001, faults=faults) as sim, _capture() as captured:
        client = openai.OpenAI(base_url=sim.openai_base_url, api_key="sim", max_retries=5)
        for _ in range(20):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        requests = sim.requests
    spans = _attrs(captured)
    attempts = sum(a[A.HTTP_ATTEMPTS] for a in spans)
    assert attempts == requests > 20  # every 429 was an attempt the SDK retried, and llmtrace saw it
    assert sum(a.get(A.HTTP_RATE_LIMITED, 0) for a in spans) == requests - 20


def test_errors_reach_the_app_as_the_sdks_exceptions() -> None:
    always = Faults(rate_limit=0, server_error=0, bad_request=1.0)
    with SimulatedProvider(seed=1, latency_scale=0.001, faults=always) as sim, _capture() as captured:
        client = anthropic.Anthropic(base_url=sim.anthropic_base_url, api_key="sim")
        with pytest.raises(anthropic.BadRequestError, match="context length"):
            client.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    (span,) = captured.spans()
    assert span.attributes[A.ERROR_TYPE] == "BadRequestError" and span.attributes[A.HTTP_STATUS_CODE] == 400


def test_overloaded_anthropic_answers_529_and_openai_5xx() -> None:
    always = Faults(rate_limit=0, server_error=1.0, bad_request=0)
    with SimulatedProvider(seed=2, latency_scale=0.001, faults=always) as sim:
        status, _, body = sim.answer("/v1/messages", {"model": "claude-haiku-4-5"})
        assert (status, body["error"]["type"]) == (529, "overloaded_error")
        status, _, body = sim.answer("/v1/chat/completions", {"model": "gpt-4o"})
        assert status in (500, 503) and body["error"]["type"] == "server_error"


def test_output_respects_max_tokens() -> None:
    rng = random.Random(4)
    sizes = [_Model("gpt-4o", rng, 1.0).output_tokens(64) for _ in range(2000)]
    assert max(sizes) == 64 and min(sizes) >= 1
    assert math.isclose(statistics.median(_Model("gpt-4o", rng, 1.0).output_tokens(None) for _ in range(2000)), 180,
                        rel_tol=0.15)


def test_demo_traffic_with_a_seed_is_the_same_however_threads_interleave() -> None:
    from llmtrace import demo

    faults = Faults(rate_limit=0.15, server_error=0.05, bad_request=0.02, retry_after_s=0.01)

    def run() -> tuple[list[tuple[Any, ...]], dict[str, float]]:
        with SimulatedProvider(seed=7, latency_scale=0.002, faults=faults) as sim, _capture() as captured:
            demo.run_burst(demo.Traffic(sim, seed=7), 80, 8)
        calls = sorted(
            tuple(str(a.get(key)) for key in (A.TENANT, A.FEATURE, A.USER_ID, A.REQUEST_MODEL, A.USAGE_INPUT_TOKENS,
                                              A.USAGE_OUTPUT_TOKENS, A.ERROR_TYPE, A.HTTP_ATTEMPTS))
            for a in _attrs(captured)
        )
        spend: dict[str, float] = {}
        for a in _attrs(captured):
            spend[a[A.TENANT]] = spend.get(a[A.TENANT], 0.0) + a.get(A.COST_USD, 0.0)
        return calls, spend

    first_calls, first_spend = run()
    second_calls, second_spend = run()
    assert len(first_calls) == 80 and any(call[6] != "None" for call in first_calls)  # some calls failed
    assert any(call[7] != "1" for call in first_calls)  # and some were retried
    assert second_calls == first_calls
    assert second_spend == pytest.approx(first_spend, rel=1e-12)
