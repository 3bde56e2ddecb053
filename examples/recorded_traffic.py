"""Replay recorded OpenAI and Anthropic traffic through the real SDKs under llmtrace, offline,
and print what it cost per tenant.

Each recorded response is served by an in-process mock transport, so nothing leaves the machine. The test suite
replays the same pairs with ``recorded_client`` and ``recorded_call``.
"""

from __future__ import annotations

import collections
import importlib
import inspect
import json
from pathlib import Path
from typing import Any

import llmtrace
import llmtrace.testing

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "provider_responses.jsonl"
TENANTS = ("acme", "globex", "initech")
FEATURES = ("search", "chat", "summarize")


def _http(sdk: Any) -> Any:
    base = importlib.import_module(sdk.__name__ + "._base_client")
    return importlib.import_module("httpx2" if hasattr(base, "httpx2") else "httpx")


def recorded_client(row: dict[str, Any]) -> Any:
    """A client of the recorded pair's provider whose transport answers with the recorded response."""
    import anthropic
    import openai

    sdk = anthropic if row["provider"] == "anthropic" else openai
    http = _http(sdk)
    headers = {k: v for k, v in row["response_headers"].items() if k.lower() not in ("content-encoding", "content-length")}
    transport = http.MockTransport(lambda request: http.Response(row["status"], headers=headers, content=row["response_body"].encode()))
    if sdk is anthropic:
        return anthropic.Anthropic(api_key="demo", base_url="https://api.anthropic.com", http_client=http.Client(transport=transport), max_retries=0)
    return openai.OpenAI(api_key="demo", base_url="https://api.openai.com/v1", http_client=http.Client(transport=transport), max_retries=0)


def recorded_call(row: dict[str, Any], client: Any) -> tuple[Any, dict[str, Any]]:
    """The SDK method the recorded request went through, and its arguments. Fields this SDK version has no
    parameter for travel in extra_body, as the SDK would send them."""
    if row["provider"] == "anthropic":
        method = client.messages.create
    else:
        method = {
            "/v1/chat/completions": client.chat.completions.create,
            "/v1/completions": client.completions.create,
            "/v1/embeddings": client.embeddings.create,
            "/v1/responses": client.responses.create,
        }[row["path"]]
    body = json.loads(row["request_body"])
    params = inspect.signature(method).parameters
    kwargs = {k: v for k, v in body.items() if k in params}
    if extra := {k: v for k, v in body.items() if k not in params}:
        kwargs["extra_body"] = extra
    return method, kwargs


def _call(row: dict[str, Any]) -> None:
    import anthropic
    import openai

    client = recorded_client(row)
    method, kwargs = recorded_call(row, client)
    try:
        result = method(**kwargs)
        if kwargs.get("stream"):
            for _ in result:
                pass
    except (anthropic.APIStatusError, openai.APIStatusError):
        pass  # two recorded calls are HTTP 400s: they show up as errors, at no cost


def main() -> None:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    with llmtrace.testing.capture() as captured:
        for i, row in enumerate(rows):
            with llmtrace.tags(tenant=TENANTS[i % 3], feature=FEATURES[(i // 3) % 3], user=f"user-{i % 7}"):
                _call(row)
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0, 0, 0.0, 0])
    for span in captured.spans():
        a = span.attributes
        t = totals[a["llmtrace.tenant"]]
        t[0] += 1
        t[1] += a.get("gen_ai.usage.input_tokens", 0)
        t[2] += a.get("gen_ai.usage.output_tokens", 0)
        t[3] += a.get("llmtrace.cost.usd", 0.0)
        t[4] += 1 if "error.type" in a else 0
    print(f"{len(rows)} recorded calls replayed through the real SDKs, {len(captured.spans())} spans\n")
    print(f"{'tenant':<10}{'calls':>7}{'errors':>8}{'input tok':>12}{'output tok':>12}{'cost USD':>12}")
    for tenant, (calls, tin, tout, cost, errors) in sorted(totals.items(), key=lambda kv: -kv[1][3]):
        print(f"{tenant:<10}{calls:>7}{errors:>8}{tin:>12,}{tout:>12,}{cost:>12.6f}")
    print(f"{'total':<10}{sum(t[0] for t in totals.values()):>7}{sum(t[4] for t in totals.values()):>8}"
          f"{sum(t[1] for t in totals.values()):>12,}{sum(t[2] for t in totals.values()):>12,}"
          f"{sum(t[3] for t in totals.values()):>12.6f}")


if __name__ == "__main__":
    main()
